"""In-process presence store: the default, for one worker."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .base import Counts, Presence, UsernameTaken


class MemoryStore:
    def __init__(self) -> None:
        self._by_sid: dict[str, Presence] = {}
        self._by_name: dict[str, str] = {}
        self._followers: dict[str, set[str]] = {}
        self._total = 0

    async def connect(self, sid: str, connect_time: str) -> None:
        self._by_sid[sid] = Presence(sid=sid, connect_time=connect_time)
        self._total += 1

    async def disconnect(self, sid: str) -> Presence | None:
        presence = self._by_sid.pop(sid, None)
        if presence is None:
            return None
        if presence.username is not None and self._by_name.get(presence.username) == sid:
            del self._by_name[presence.username]
        self._unfollow(sid, presence.following)
        return presence

    async def get(self, sid: str) -> Presence | None:
        return self._by_sid.get(sid)

    async def save(self, sid: str, username: str | None, metadata: Mapping[str, Any]) -> Presence:
        current = self._by_sid.get(sid)
        if current is None:
            raise KeyError(sid)
        if username is not None and self._by_name.get(username, sid) != sid:
            raise UsernameTaken(username)
        if current.username is not None and current.username != username:
            self._by_name.pop(current.username, None)
        if username is not None:
            self._by_name[username] = sid
        updated = Presence(sid, current.connect_time, username, dict(metadata))
        old, new = set(current.following), set(updated.following)
        self._unfollow(sid, old - new)
        for name in new - old:
            self._followers.setdefault(name, set()).add(sid)
        self._by_sid[sid] = updated
        return updated

    async def sid_of(self, username: str) -> str | None:
        return self._by_name.get(username)

    async def followers_of(self, username: str) -> Sequence[str]:
        return list(self._followers.get(username, ()))

    async def clients(self) -> Sequence[Presence]:
        return list(self._by_sid.values())

    async def counts(self) -> Counts:
        return Counts(active=len(self._by_sid), total=self._total)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _unfollow(self, sid: str, names: Any) -> None:
        for name in names:
            followers = self._followers.get(name)
            if followers is not None:
                followers.discard(sid)
                if not followers:
                    del self._followers[name]
