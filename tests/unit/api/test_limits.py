"""Per-key token buckets with an injected clock."""

from __future__ import annotations

import pytest

from gateway.api.limits import KeyLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = KeyLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.take("k1") for _ in range(3)] == [None, None, None]
    assert limiter.take("k1") == pytest.approx(0.5)
    clock.now = 0.5
    assert limiter.take("k1") is None
    assert limiter.take("k1") == pytest.approx(0.5)


def test_keys_have_their_own_buckets() -> None:
    limiter = KeyLimiter(rate=1.0, burst=1, clock=Clock())
    assert limiter.take("k1") is None
    assert limiter.take("k1") is not None
    assert limiter.take("k2") is None


def test_a_cost_that_is_not_there_takes_nothing() -> None:
    clock = Clock()
    limiter = KeyLimiter(rate=10.0, burst=5, clock=clock)
    assert limiter.take("k1", 3) is None
    assert limiter.take("k1", 3) == pytest.approx(0.1)  # 2 left, 1 more in 0.1 s
    assert limiter.take("k1", 2) is None  # the refused call took none of the 2
