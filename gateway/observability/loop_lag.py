"""How late the event loop runs what is due: the stall every connection of a worker feels.

A coroutine that sleeps ``interval`` wakes late by however long the loop was busy with other
work when the timer fell due (a crowd served in one pass, a garbage collection, a blocking call).
Node exposes the same figure (``monitorEventLoopDelay``); here it is a histogram,
``wshub_event_loop_lag_seconds``, sampled ``1 / interval`` times a second.
"""

from __future__ import annotations

import asyncio

from prometheus_client import Histogram


class LoopLagMonitor:
    def __init__(self, lags: Histogram, *, interval: float = 0.1) -> None:
        self._lags = lags
        self._interval = interval

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self._interval
            await asyncio.sleep(self._interval)
            self._lags.observe(max(0.0, loop.time() - due))
