"""What services need from the transport, and nothing more."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..protocol.close import CloseReason
from ..store.base import Address


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of a message sent to some connections."""

    delivered: int = 0
    """Handed to a live connection (its own node's queue)."""
    held: int = 0
    """Kept for a session that is away and may resume (connection state recovery)."""
    failed: int = 0
    """Could not be handed on: its node did not take it, or the connection just went."""

    @property
    def reached(self) -> int:
        return self.delivered + self.held


class Delivery(Protocol):
    async def send(self, to: Sequence[Address], event: str, payload: Mapping[str, Any]) -> Outcome:
        """A message for these connections, wherever they are; encoded once.

        Raises :class:`~gateway.store.base.StoreUnavailable` when nothing could be handed on
        (the backplane is down), so that the sender can be told "not delivered, retry".
        """

    async def reply(self, sid: str, event: str, payload: Mapping[str, Any]) -> None:
        """An answer to a connection of this process (the sender of the event being handled)."""

    async def notify(self, sids: Sequence[str], event: str, payload: Mapping[str, Any]) -> None:
        """One payload to these connections of this process, not replayed on recovery
        (heartbeat warnings); encoded once and handed out in chunks."""

    async def broadcast(
        self, event: str, payload: Mapping[str, Any], *, local_only: bool = False
    ) -> None:
        """To every connected client; with *local_only*, only to this process's clients (and
        then not kept for recovering sessions: heartbeats, stats, certificate refreshes)."""

    async def close(
        self,
        to: str | Address,
        reason: CloseReason,
        message: str,
        *,
        reconnect: bool | None = None,
    ) -> bool:
        """Tell the client why, then disconnect it (a connection of this process by id, or any
        connection by address; an away session just ends). *reconnect* overrides whether it
        should come back by itself. False when the connection's node could not be told."""

    async def alive(self, address: Address) -> bool:
        """Whether the connection still answers (an Engine.IO ping, about a second at most).
        An away session does not; a node that does not answer counts as not alive."""
