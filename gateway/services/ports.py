"""What services need from the transport, and nothing more."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Protocol

from ..protocol.close import CloseReason


class Delivery(Protocol):
    async def send(self, sid: str, event: str, payload: Mapping[str, Any]) -> None:
        """Send to one connection (on any process)."""

    async def send_many(
        self, sids: Collection[str], event: str, payload: Mapping[str, Any]
    ) -> None:
        """Send one payload to several connections; it is encoded once."""

    async def broadcast(
        self, event: str, payload: Mapping[str, Any], *, local_only: bool = False
    ) -> None:
        """Send to every connected client; with *local_only*, only to this process's clients."""

    async def close(self, sid: str, reason: CloseReason, message: str) -> None:
        """Tell the client why, then disconnect it."""
