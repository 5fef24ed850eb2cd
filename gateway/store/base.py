"""The presence-store interface.

Handlers use only this; backends keep their internals to themselves.

Rules every backend keeps:

* claiming a username is atomic and follows a :class:`Claim` policy: by default a name belongs to
  one connection; authenticated users may hold it from several (``MULTI``); a name is free again
  the moment its last holder disconnects;
* a connection whose transport is gone but whose session may resume is *away*: it keeps its
  name and its routing, and a new claim of its name may displace it (see :meth:`save`); it is
  not connected, so :meth:`clients` does not list it and :meth:`counts` does not count it;
* metadata is replaced as a whole, never mutated in place, so a :class:`Presence` handed out is
  a stable snapshot;
* ``followers_of(name)`` lists the connections whose ``following`` contains *name*.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol


class UsernameTaken(Exception):
    def __init__(self, username: str, holders: Sequence[Address] = ()) -> None:
        super().__init__(f"username {username!r} is already taken")
        self.username = username
        self.holders = list(holders)
        """The live connections that hold it (the caller may probe whether they still are)."""


class Claim(Enum):
    """How a connection claiming a username treats the others that hold it."""

    UNIQUE = "unique"
    """One holder: a live one refuses the claim, an away one is displaced."""
    MULTI = "multi"
    """Any number (one user on several devices)."""
    REPLACE = "replace"
    """The claimant is the only holder afterwards: every other one is displaced."""


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
class Address:
    """Where a connection can be reached: its session id and the node that holds it."""

    sid: str
    node: str
    away: bool = False
    """Its transport is gone; its session may resume (messages to it are held)."""


@dataclass(frozen=True, slots=True)
class Saved:
    presence: Presence
    displaced: list[Address]
    """Connections that lost the name to this claim, removed from the store; their nodes must
    end their sessions (each node also learns it from :meth:`PresenceStore.on_evicted`)."""


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """What a node needs to resume a session that may live on another node."""

    node: str
    pid_hash: str
    away: bool


@dataclass(frozen=True, slots=True)
class Counts:
    active: int
    total: int


class PresenceStore(Protocol):
    node_id: str
    """This process's id in the hub (what :attr:`Address.node` holds for its connections)."""

    async def connect(self, sid: str, connect_time: str, *, pid_hash: str = "") -> None:
        """Register a new connection of this node (no username yet).

        *pid_hash* is a digest of the session's private id (connection state recovery): a
        node that is asked to resume the session checks the client's id against it.
        """

    async def disconnect(self, sid: str) -> Presence | None:
        """Forget a connection, free its username; returns what it was, if known."""

    async def get(self, sid: str) -> Presence | None: ...

    async def save(
        self,
        sid: str,
        username: str | None,
        metadata: Mapping[str, Any],
        *,
        claim: Claim = Claim.UNIQUE,
        evict: str | None = None,
    ) -> Saved:
        """Set the connection's username and metadata at once.

        Raises :class:`UsernameTaken` (and changes nothing) when the *claim* policy does not
        allow it; *evict* names a holder the caller found dead, which is displaced like an
        away one. The previous username, if different, is released.
        """

    async def connections_of(self, username: str) -> Sequence[Address]:
        """The connections that hold *username* (none, or one while names are unique)."""

    async def followers_of(self, username: str) -> Sequence[Address]:
        """The connections whose ``following`` contains *username*."""

    async def clients(self) -> Sequence[Presence]: ...

    async def counts(self) -> Counts: ...

    async def set_away(self, sid: str, away: bool) -> bool:
        """Mark a connection of this node away (its transport went) or back; False when the
        store no longer knows it (it was displaced or reaped meanwhile)."""

    async def record(self, sid: str) -> SessionRecord | None:
        """Where the session *sid* lives, and the digest of its private id."""

    async def move(self, sid: str, to_node: str) -> Presence | None:
        """Hand a connection of this node to *to_node* (its session resumes there); None when
        the store no longer knows it here."""

    def adopt(self, presence: Presence, pid_hash: str) -> None:
        """Take in a connection another node moved here (:meth:`move`)."""

    def on_evicted(self, listener: Callable[[list[str]], Awaitable[None]]) -> None:
        """*listener* gets the connections of this node that other nodes' claims displaced
        (this node must end their sessions); a claimant's own node also learns them from
        :attr:`Saved.displaced`."""

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` when the backend cannot be reached."""

    async def close(self) -> None: ...
