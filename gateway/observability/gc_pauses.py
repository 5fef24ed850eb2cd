"""How long the garbage collector stops the event loop, per generation.

A collection runs inside whatever allocation triggered it, so every connection of the worker
waits for it; it is invisible in event latencies (it lands on whoever is next) and was about
half of the event loop's lag in a reconnect storm (bench/README.md). ``gc.callbacks`` is the public
hook: it is called with ``"start"`` and ``"stop"`` around each collection.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Histogram

GcCallback = Callable[[str, dict[str, Any]], None]


def timing_collections(pauses: Histogram) -> GcCallback:
    """A ``gc.callbacks`` entry that observes each collection's duration in *pauses*
    (labelled by ``generation``)."""
    children = {generation: pauses.labels(generation=str(generation)) for generation in (0, 1, 2)}
    started = 0.0

    def callback(phase: str, info: dict[str, Any]) -> None:
        nonlocal started
        if phase == "start":
            started = time.perf_counter()
        else:
            children[info["generation"]].observe(time.perf_counter() - started)

    return callback


def watch_collections(pauses: Histogram) -> GcCallback:
    """Start observing every collection of this process; returns the callback to remove."""
    callback = timing_collections(pauses)
    gc.callbacks.append(callback)
    return callback
