"""Per-connection rate limits, and disconnection of clients that keep flooding.

Each connection has a bucket for ordinary events, a looser one for cheap events (pings) and a
tighter one for the client listing; heartbeat acknowledgements are never refused. The buckets
live on the connection itself (:attr:`Caller.buckets`), so they go with it. Every refused event
also takes a token from a "strikes" bucket that refills at the ordinary rate: a client that keeps
sending faster than it is allowed empties it and is disconnected, one that backs off never is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..protocol.close import CloseReason
from ..protocol.errors import ErrorCode, GatewayError, Reply
from ..token_bucket import TokenBucket
from .context import EventContext, Next, RateClass


@dataclass(frozen=True, slots=True)
class RatePolicy:
    rate: float
    burst: int
    cheap_rate: float
    cheap_burst: int
    listing_rate: float
    listing_burst: int
    flood_after: int


@dataclass(slots=True)
class Buckets:
    normal: TokenBucket
    cheap: TokenBucket
    listing: TokenBucket
    strikes: TokenBucket

    def of(self, rate_class: RateClass) -> TokenBucket:
        if rate_class is RateClass.CHEAP:
            return self.cheap
        if rate_class is RateClass.LISTING:
            return self.listing
        return self.normal


class RateLimit:
    def __init__(self, policy: RatePolicy, clock: Callable[[], float]) -> None:
        self._policy = policy
        self._clock = clock

    async def __call__(self, ctx: EventContext, call_next: Next) -> Reply | None:
        rate_class = ctx.route.rate_class if ctx.route is not None else RateClass.NORMAL
        if rate_class is RateClass.EXEMPT:
            return await call_next(ctx)
        now = self._clock()
        buckets = ctx.caller.buckets
        if buckets is None:
            buckets = ctx.caller.buckets = self._new(now)
        bucket = buckets.of(rate_class)
        if bucket.take(now):
            return await call_next(ctx)
        wait = bucket.wait_time(now)
        flooding = not buckets.strikes.take(now)
        raise GatewayError(
            ErrorCode.RATE_LIMIT,
            f"Too many events; retry in {wait:.2f} s",
            extra={"retryAfterMs": max(1, round(wait * 1000))},
            close=CloseReason.RATE_LIMIT if flooding else None,
        )

    def _new(self, now: float) -> Buckets:
        p = self._policy
        return Buckets(
            TokenBucket(p.rate, p.burst, now),
            TokenBucket(p.cheap_rate, p.cheap_burst, now),
            TokenBucket(p.listing_rate, p.listing_burst, now),
            TokenBucket(p.rate, p.flood_after, now),
        )
