"""Per-key rate limits: a token bucket for each API key, in this worker process."""

from __future__ import annotations

from collections.abc import Callable

from ..token_bucket import TokenBucket


class KeyLimiter:
    """``rate`` calls per second per key, ``burst`` at once. Keys are the configured ones, so
    the buckets are few and live as long as the process."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self._rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, key_id: str, cost: int = 1) -> float | None:
        """Take *cost* tokens of *key_id*'s bucket: None when allowed, otherwise the seconds
        until they will be there (nothing is taken then)."""
        now = self._clock()
        bucket = self._buckets.get(key_id)
        if bucket is None:
            bucket = self._buckets[key_id] = TokenBucket(self._rate, self.burst, now)
        if bucket.take(now, cost):
            return None
        return bucket.wait_time(now, cost)
