"""Every garbage collection is observed once, under its generation."""

from __future__ import annotations

import gc

from gateway.observability.gc_pauses import watch_collections
from gateway.observability.metrics import Metrics


def sample(metrics: Metrics, name: str, generation: str) -> float | None:
    return metrics.registry.get_sample_value(
        f"wshub_gc_pause_seconds_{name}", {"generation": generation}
    )


def test_each_collection_is_timed_under_its_generation() -> None:
    metrics = Metrics()
    was_enabled = gc.isenabled()
    gc.disable()  # only the collections below run
    try:
        callback = watch_collections(metrics.gc_pauses)
        gc.collect(1)
        gc.collect(2)
        gc.collect(2)
        gc.callbacks.remove(callback)
        gc.collect(2)  # no longer watched
    finally:
        if was_enabled:
            gc.enable()
    counts = [sample(metrics, "count", g) for g in ("0", "1", "2")]
    assert counts == [0.0, 1.0, 2.0]
    total = sample(metrics, "sum", "2")
    assert total is not None and total > 0
