"""In-process presence store: the default, for one worker."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .base import Address, Claim, Counts, Presence, Saved, SessionRecord, UsernameTaken

LOCAL_NODE = "local"


@dataclass(frozen=True, slots=True)
class _Entry:
    presence: Presence
    pid_hash: str = ""
    away: bool = False

    def address(self) -> Address:
        return Address(self.presence.sid, LOCAL_NODE, self.away)


class MemoryStore:
    node_id = LOCAL_NODE

    def __init__(self) -> None:
        self._by_sid: dict[str, _Entry] = {}
        self._by_name: dict[str, dict[str, None]] = {}  # name -> its holders, in claim order
        self._followers: dict[str, set[str]] = {}
        self._total = 0

    async def connect(self, sid: str, connect_time: str, *, pid_hash: str = "") -> None:
        self._by_sid[sid] = _Entry(Presence(sid=sid, connect_time=connect_time), pid_hash)
        self._total += 1

    async def disconnect(self, sid: str) -> Presence | None:
        entry = self._remove(sid)
        return entry.presence if entry is not None else None

    async def get(self, sid: str) -> Presence | None:
        entry = self._by_sid.get(sid)
        return entry.presence if entry is not None else None

    async def save(
        self,
        sid: str,
        username: str | None,
        metadata: Mapping[str, Any],
        *,
        claim: Claim = Claim.UNIQUE,
        evict: str | None = None,
    ) -> Saved:
        entry = self._by_sid.get(sid)
        if entry is None:
            raise KeyError(sid)
        current = entry.presence
        displaced: list[Address] = []
        if username is not None and username != current.username:
            displaced = self._displace(sid, username, claim, evict)
        if current.username is not None and current.username != username:
            self._release(sid, current.username)
        if username is not None:
            self._by_name.setdefault(username, {})[sid] = None
        updated = Presence(sid, current.connect_time, username, dict(metadata))
        old, new = set(current.following), set(updated.following)
        self._unfollow(sid, old - new)
        for name in new - old:
            self._followers.setdefault(name, set()).add(sid)
        self._by_sid[sid] = replace(entry, presence=updated)
        return Saved(updated, displaced)

    async def connections_of(self, username: str) -> Sequence[Address]:
        return [self._by_sid[sid].address() for sid in self._by_name.get(username, ())]

    async def followers_of(self, username: str) -> Sequence[Address]:
        return [self._by_sid[sid].address() for sid in self._followers.get(username, ())]

    async def clients(self) -> Sequence[Presence]:
        return [entry.presence for entry in self._by_sid.values() if not entry.away]

    async def counts(self) -> Counts:
        away = sum(1 for entry in self._by_sid.values() if entry.away)
        return Counts(active=len(self._by_sid) - away, total=self._total)

    async def set_away(self, sid: str, away: bool) -> bool:
        entry = self._by_sid.get(sid)
        if entry is None:
            return False
        self._by_sid[sid] = replace(entry, away=away)
        return True

    async def record(self, sid: str) -> SessionRecord | None:
        entry = self._by_sid.get(sid)
        return None if entry is None else SessionRecord(LOCAL_NODE, entry.pid_hash, entry.away)

    async def move(self, sid: str, to_node: str) -> Presence | None:
        return None  # one process: there is no other node to move to

    def adopt(self, presence: Presence, pid_hash: str) -> None:
        raise RuntimeError("the memory store has one node; nothing moves to it")

    def on_evicted(self, listener: Callable[[list[str]], Awaitable[None]]) -> None:
        pass  # the claimant is in this process and ends the displaced sessions itself

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _displace(self, sid: str, username: str, claim: Claim, evict: str | None) -> list[Address]:
        others = [self._by_sid[other] for other in self._by_name.get(username, ()) if other != sid]
        if claim is Claim.MULTI:
            return []
        live = [e for e in others if not e.away and e.presence.sid != evict]
        if live and claim is Claim.UNIQUE:
            raise UsernameTaken(username, [e.address() for e in live])
        for other in others:
            self._remove(other.presence.sid)
        return [other.address() for other in others]

    def _remove(self, sid: str) -> _Entry | None:
        entry = self._by_sid.pop(sid, None)
        if entry is None:
            return None
        if entry.presence.username is not None:
            self._release(sid, entry.presence.username)
        self._unfollow(sid, entry.presence.following)
        return entry

    def _release(self, sid: str, username: str) -> None:
        holders = self._by_name.get(username)
        if holders is not None:
            holders.pop(sid, None)
            if not holders:
                del self._by_name[username]

    def _unfollow(self, sid: str, names: Any) -> None:
        for name in names:
            followers = self._followers.get(name)
            if followers is not None:
                followers.discard(sid)
                if not followers:
                    del self._followers[name]
