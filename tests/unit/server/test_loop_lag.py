"""The loop-lag monitor observes how late its timer ran."""

from __future__ import annotations

import asyncio
import time

from gateway.observability.loop_lag import LoopLagMonitor
from gateway.observability.metrics import Metrics


def sample(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(f"wshub_event_loop_lag_seconds_{name}") or 0.0


async def test_a_blocked_loop_is_seen_as_lag() -> None:
    metrics = Metrics()
    monitor = asyncio.create_task(LoopLagMonitor(metrics.loop_lag, interval=0.01).run())
    await asyncio.sleep(0.05)  # a few samples of an idle loop
    idle = sample(metrics, "sum")
    time.sleep(0.08)  # noqa: ASYNC251 - the stall the monitor must see
    await asyncio.sleep(0.03)
    monitor.cancel()
    count, total = sample(metrics, "count"), sample(metrics, "sum")
    assert count >= 3
    assert total - idle >= 0.06  # the stall, less the monitor's own interval
    slow = metrics.registry.get_sample_value("wshub_event_loop_lag_seconds_bucket", {"le": "0.05"})
    assert slow is not None and slow < count  # the stalled sample is above 50 ms
