"""In-memory stand-ins for the transport, so services run with no network."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.auth.tokens import Identity
from gateway.pipeline.ratelimit import Buckets
from gateway.protocol.close import CloseReason
from gateway.services.ports import Outcome
from gateway.store.base import Address


@dataclass
class FakeCaller:
    """What the pipeline needs of a connection."""

    identity: Identity | None = None
    buckets: Buckets | None = None


@dataclass
class RecordingDelivery:
    sent: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    broadcasts: list[tuple[str, dict[str, Any], bool]] = field(default_factory=list)
    closed: list[tuple[str, CloseReason]] = field(default_factory=list)
    dead: set[str] = field(default_factory=set)
    """Connections that do not answer a probe."""
    probed: list[str] = field(default_factory=list)

    async def send(self, to: Sequence[Address], event: str, payload: Mapping[str, Any]) -> Outcome:
        for address in to:
            self.sent.append((address.sid, event, dict(payload)))
        return Outcome(delivered=len(to))

    async def reply(self, sid: str, event: str, payload: Mapping[str, Any]) -> None:
        self.sent.append((sid, event, dict(payload)))

    async def notify(self, sids: Sequence[str], event: str, payload: Mapping[str, Any]) -> None:
        for sid in sids:
            await self.reply(sid, event, payload)

    async def broadcast(
        self, event: str, payload: Mapping[str, Any], *, local_only: bool = False
    ) -> None:
        self.broadcasts.append((event, dict(payload), local_only))

    async def close(
        self,
        to: str | Address,
        reason: CloseReason,
        message: str,
        *,
        reconnect: bool | None = None,
    ) -> bool:
        self.closed.append((to.sid if isinstance(to, Address) else to, reason))
        return True

    async def alive(self, address: Address) -> bool:
        self.probed.append(address.sid)
        return address.sid not in self.dead

    def to(self, sid: str, event: str) -> list[dict[str, Any]]:
        return [payload for s, e, payload in self.sent if s == sid and e == event]
