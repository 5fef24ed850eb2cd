"""Periodic ``system:stats``: at most one per interval, and only when the figures changed."""

from __future__ import annotations

import asyncio

from ..protocol.events import Outbound
from ..protocol.timestamps import iso_timestamp
from ..store.base import Counts, PresenceStore
from .ports import Delivery


class StatsService:
    def __init__(self, store: PresenceStore, delivery: Delivery, *, interval: float) -> None:
        self._store = store
        self._delivery = delivery
        self._interval = interval
        self._last_sent: Counts | None = None

    async def tick(self) -> bool:
        """Send the figures if they moved since the last time; True when sent."""
        counts = await self._store.counts()
        if counts == self._last_sent or counts.active == 0:
            return False
        self._last_sent = counts
        # Every process sends the (cluster-wide) figures to its own clients.
        await self._delivery.broadcast(
            Outbound.STATS,
            {
                "activeConnections": counts.active,
                "totalConnections": counts.total,
                "timestamp": iso_timestamp(),
            },
            local_only=True,
        )
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.tick()
