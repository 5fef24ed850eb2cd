"""The presence-store interface.

Handlers use only this; backends keep their internals to themselves.

Rules every backend keeps:

* a username belongs to at most one connected client; claiming is atomic, and a name is free
  again the moment its holder disconnects;
* metadata is replaced as a whole, never mutated in place, so a :class:`Presence` handed out is
  a stable snapshot;
* ``followers_of(name)`` lists the connections whose ``following`` contains *name*.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class UsernameTaken(Exception):
    def __init__(self, username: str) -> None:
        super().__init__(f"username {username!r} is already taken")
        self.username = username


class StoreUnavailable(Exception):
    """The backend cannot be reached; the event that needed it fails, nothing is half-applied."""


@dataclass(frozen=True, slots=True)
class Presence:
    sid: str
    connect_time: str
    username: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def following(self) -> list[str]:
        following = self.metadata.get("following")
        return following if isinstance(following, list) else []

    @property
    def profile(self) -> dict[str, Any]:
        profile = self.metadata.get("profile")
        return profile if isinstance(profile, dict) else {}


@dataclass(frozen=True, slots=True)
class Counts:
    active: int
    total: int


class PresenceStore(Protocol):
    async def connect(self, sid: str, connect_time: str) -> None:
        """Register a new connection (no username yet)."""

    async def disconnect(self, sid: str) -> Presence | None:
        """Forget a connection, free its username; returns what it was, if known."""

    async def get(self, sid: str) -> Presence | None: ...

    async def save(self, sid: str, username: str | None, metadata: Mapping[str, Any]) -> Presence:
        """Set the connection's username and metadata at once.

        Raises :class:`UsernameTaken` (and changes nothing) when another connection holds
        *username*. The previous username, if different, is released.
        """

    async def sid_of(self, username: str) -> str | None: ...

    async def followers_of(self, username: str) -> Sequence[str]: ...

    async def clients(self) -> Sequence[Presence]: ...

    async def counts(self) -> Counts: ...

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` when the backend cannot be reached."""

    async def close(self) -> None: ...
