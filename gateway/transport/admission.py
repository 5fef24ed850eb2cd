"""Who may open an Engine.IO session: a total cap, a per-address cap and a per-address rate.

Admission happens at the Engine.IO handshake, before python-engineio creates a session: a
session counts against the caps from its first request, whether or not its Socket.IO CONNECT
ever comes. An admitted handshake gets a :class:`Ticket`; the connection holds it as its
admission slot (``Resource.ADMISSION``) and returns it exactly once when its transport ends.

The client address is the peer's, or, when the peer is a trusted proxy, the right-most
address of ``X-Forwarded-For`` that is not itself a trusted proxy (RFC 7239 section 7.4: only
the entries added by our own proxies can be believed).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..protocol.errors import UNAVAILABLE, ErrorCode
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


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a handshake is refused, as the HTTP answer says it."""

    status: int
    code: str | int
    """A gateway code (``RATE_LIMIT``), or Engine.IO's own numeric one for protocol errors."""
    message: str
    retry_after: float | None = None

    def body(self) -> dict[str, object]:
        body: dict[str, object] = {"code": self.code, "message": self.message}
        if self.retry_after is not None:
            body["retryAfterMs"] = max(1, round(self.retry_after * 1000))
        return body


class Ticket:
    """One admitted session's slot. Released exactly once; a second release is a bug."""

    __slots__ = ("_admission", "address", "released")

    def __init__(self, admission: Admission, address: str) -> None:
        self._admission = admission
        self.address = address
        self.released = False

    def release(self) -> None:
        if self.released:
            raise RuntimeError(f"admission slot of {self.address} released twice")
        self.released = True
        self._admission._return(self.address)


class Admission:
    def __init__(self, policy: AdmissionPolicy, clock: Callable[[], float]) -> None:
        self._policy = policy
        self._clock = clock
        self._open: Counter[str] = Counter()
        self._buckets: dict[str, TokenBucket] = {}

    @property
    def open(self) -> int:
        """Slots held: every Engine.IO session of this process, whatever its state."""
        return self._open.total()

    def held_by(self, address: str) -> int:
        return self._open[address]

    def admit(self, address: str) -> Ticket | Refusal:
        p = self._policy
        if self._open.total() >= p.max_connections:
            return Refusal(503, UNAVAILABLE, f"server full ({p.max_connections} connections)")
        if self._open[address] >= p.max_per_address:
            return Refusal(
                429,
                ErrorCode.RATE_LIMIT.value,
                f"too many connections from your address (max {p.max_per_address})",
            )
        now = self._clock()
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= _SWEEP_AT:
                self._sweep(now)
            bucket = self._buckets[address] = TokenBucket(p.connect_rate, p.connect_burst, now)
        if not bucket.take(now):
            wait = bucket.wait_time(now)
            return Refusal(
                429, ErrorCode.RATE_LIMIT.value, f"connecting too fast; retry in {wait:.1f} s", wait
            )
        self._open[address] += 1
        return Ticket(self, address)

    def _return(self, address: str) -> None:
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
    hops = [_ip(hop) for hop in forwarded_for.split(",")]
    for hop in reversed(hops):
        if hop is None:
            return peer  # not an address: the chain cannot be read past this point
        if not _is_trusted(str(hop), trusted):
            return str(hop)
    return str(hops[0]) if hops and hops[0] is not None else peer


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _is_trusted(address: str, trusted: Sequence[IPNetwork]) -> bool:
    ip = _ip(address)
    return ip is not None and any(ip in network for network in trusted)
