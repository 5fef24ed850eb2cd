"""Ends connections whose token expires: a token checked only at the handshake would otherwise
outlive its expiry on a long-lived connection. One timer for all connections."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..protocol.close import CloseReason
from ..scheduling import DeadlineQueue, DeadlineTimer
from ..services.ports import Delivery

_CHUNK = 100


class SessionExpiry:
    def __init__(self, delivery: Delivery, wall_clock: Callable[[], float]) -> None:
        self._delivery = delivery
        self._clock = wall_clock
        self._queue: DeadlineQueue[str] = DeadlineQueue()
        self._timer = DeadlineTimer(self._queue, wall_clock)

    def watch(self, sid: str, expires_at: float) -> None:
        self._queue.set(sid, expires_at)
        self._timer.poke()

    def forget(self, sid: str) -> None:
        self._queue.discard(sid)

    async def run(self) -> None:
        while True:
            await self._timer.wait_due()
            # In chunks, yielding between them: tokens issued together expire together.
            for sid in self._queue.pop_due(self._clock(), limit=_CHUNK):
                await self._delivery.close(sid, CloseReason.TOKEN_EXPIRED, "Your token has expired")
            await asyncio.sleep(0)
