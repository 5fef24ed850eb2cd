"""Who may open a connection: a total cap, a per-address cap and a per-address connect rate.

The client address is the peer's, or, when the peer is a trusted proxy, the right-most
address of ``X-Forwarded-For`` that is not itself a trusted proxy (RFC 7239 section 7.4: only
the entries added by our own proxies can be believed).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..token_bucket import TokenBucket

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Idle per-address buckets kept before the full ones are swept.
_SWEEP_AT = 10_000


@dataclass(frozen=True, slots=True)
class AdmissionPolicy:
    max_connections: int
    max_per_address: int
    connect_rate: float
    connect_burst: int


class Admission:
    def __init__(self, policy: AdmissionPolicy, clock: Callable[[], float]) -> None:
        self._policy = policy
        self._clock = clock
        self._open: Counter[str] = Counter()
        self._buckets: dict[str, TokenBucket] = {}

    def admit(self, address: str) -> str | None:
        """Count the connection in and return None, or return why it is refused."""
        p = self._policy
        if self._open.total() >= p.max_connections:
            return f"server full ({p.max_connections} connections)"
        if self._open[address] >= p.max_per_address:
            return f"too many connections from your address (max {p.max_per_address})"
        now = self._clock()
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= _SWEEP_AT:
                self._sweep(now)
            bucket = self._buckets[address] = TokenBucket(p.connect_rate, p.connect_burst, now)
        if not bucket.take(now):
            return f"connecting too fast; retry in {bucket.wait_time(now):.1f} s"
        self._open[address] += 1
        return None

    def release(self, address: str) -> None:
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]

    def _sweep(self, now: float) -> None:
        for address in [a for a, b in self._buckets.items() if b.is_full(now)]:
            if address not in self._open:
                del self._buckets[address]


def client_address(peer: str, forwarded_for: str | None, trusted: Sequence[IPNetwork]) -> str:
    if not forwarded_for or not _is_trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


def _is_trusted(address: str, trusted: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)
