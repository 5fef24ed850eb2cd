"""What services need from the transport, and nothing more."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from enum import StrEnum
from typing import Any, Protocol


class CloseReason(StrEnum):
    """Why the server closes a connection. Clients get it in ``system:error`` before the close.

    ``reconnect`` in :data:`RECONNECT_ADVICE` says whether reconnecting makes sense.
    """

    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    RATE_LIMIT = "rate_limit_abuse"
    SLOW_CONSUMER = "slow_consumer"
    TOKEN_EXPIRED = "token_expired"
    SHUTDOWN = "server_shutdown"
    SERVER_FULL = "server_full"


RECONNECT_ADVICE: dict[CloseReason, str] = {
    CloseReason.HEARTBEAT_TIMEOUT: "reconnect",
    CloseReason.RATE_LIMIT: "reconnect later, sending less",
    CloseReason.SLOW_CONSUMER: "reconnect; read your socket faster",
    CloseReason.TOKEN_EXPIRED: "reconnect with a fresh token",
    CloseReason.SHUTDOWN: "reconnect (to another instance)",
    CloseReason.SERVER_FULL: "retry later",
}


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
