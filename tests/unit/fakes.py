"""In-memory stand-ins for the transport, so services run with no network."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.services.ports import CloseReason


@dataclass
class RecordingDelivery:
    sent: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    broadcasts: list[tuple[str, dict[str, Any], bool]] = field(default_factory=list)
    closed: list[tuple[str, CloseReason]] = field(default_factory=list)

    async def send(self, sid: str, event: str, payload: Mapping[str, Any]) -> None:
        self.sent.append((sid, event, dict(payload)))

    async def send_many(
        self, sids: Collection[str], event: str, payload: Mapping[str, Any]
    ) -> None:
        for sid in sids:
            await self.send(sid, event, payload)

    async def broadcast(
        self, event: str, payload: Mapping[str, Any], *, local_only: bool = False
    ) -> None:
        self.broadcasts.append((event, dict(payload), local_only))

    async def close(self, sid: str, reason: CloseReason, message: str) -> None:
        self.closed.append((sid, reason))

    def to(self, sid: str, event: str) -> list[dict[str, Any]]:
        return [payload for s, e, payload in self.sent if s == sid and e == event]
