"""Heartbeat rounds: one every interval, and no burst of missed rounds after a stalled loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from gateway.services.heartbeat import HeartbeatService
from tests.unit.fakes import RecordingDelivery


class StallingDelivery(RecordingDelivery):
    """Records when each round went out; the first round blocks the loop for *stall* seconds."""

    def __init__(self, stall: float) -> None:
        super().__init__()
        self.stall = stall
        self.rounds: list[float] = []
        self.fourth = asyncio.Event()

    async def broadcast(
        self, event: str, payload: Mapping[str, Any], *, local_only: bool = False
    ) -> None:
        self.rounds.append(time.monotonic())
        if len(self.rounds) == 4:
            self.fourth.set()
        if len(self.rounds) == 1:
            time.sleep(self.stall)  # noqa: ASYNC251 - a loop stalled for several rounds


async def test_a_loop_stalled_for_rounds_does_not_run_them_back_to_back() -> None:
    interval, timeout = 0.06, 0.01
    delivery = StallingDelivery(stall=4 * interval)
    service = HeartbeatService(
        delivery, interval=interval, timeout=timeout, warn_after=2, max_missed=5
    )
    service.connected("a")  # rounds go out only to a book with connections
    task = asyncio.create_task(service.run())
    try:
        await asyncio.wait_for(delivery.fourth.wait(), timeout=10)
    finally:
        task.cancel()
    gaps = [b - a for a, b in zip(delivery.rounds, delivery.rounds[1:], strict=False)]
    # Every round, the ones after the stall included, at least an interval after the previous.
    assert all(gap >= interval * 0.9 for gap in gaps), gaps
