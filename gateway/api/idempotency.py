"""``Idempotency-Key``: a retry within the window gets the first answer and delivers nothing.

A call that carries a key *begins* under a scope (the API key's id and the idempotency key) and
the digest of its request (method and canonical body):

* nothing remembered under the scope: the call is *owned* and runs; a success is then *finished*
  (remembered for ``window`` seconds with its answer), anything else *released*, so that a call
  that delivered nothing (a validation error, an unknown user, Redis down) may be retried;
* the same digest, finished: :class:`Replay` of the stored answer;
* the same digest, still running (or its node died while running it): :class:`InProgress`,
  until the first call finishes or its claim expires after ``pending_ttl`` seconds;
* another digest: :class:`Mismatch`.

The memory backend keeps the records in this process (one worker). The Redis backend keeps
them under the store's hash tag, ``{prefix}api:idem:<scope>``, so every node of a cluster sees
the same ones; each step is one Lua script, so two nodes never both own a key.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol

import orjson

from ..store.base import StoreUnavailable
from ..store.redis import unavailable
from ..store.redis_topology import AnyRedis

PENDING_SECONDS: Final = 30.0
"""How long a call may hold its key unfinished; far longer than any call takes, short enough
that a node that died mid-call does not block the key for the whole window."""

# Redis cannot serve now (as opposed to a bug in a script): the call is answered UNAVAILABLE.


@dataclass(frozen=True, slots=True)
class Stored:
    """A finished call's answer, as sent."""

    status: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Owned:
    token: str
    """Proof of ownership for :meth:`Idempotency.finish` and :meth:`Idempotency.release`."""


@dataclass(frozen=True, slots=True)
class Replay:
    stored: Stored


@dataclass(frozen=True, slots=True)
class InProgress:
    pass


@dataclass(frozen=True, slots=True)
class Mismatch:
    pass


Begun = Owned | Replay | InProgress | Mismatch


class Idempotency(Protocol):
    async def begin(self, scope: str, digest: str) -> Begun:
        """Raises :class:`~gateway.store.base.StoreUnavailable`."""

    async def finish(self, scope: str, owned: Owned, stored: Stored) -> None:
        """Remember *stored* for the window. Raises StoreUnavailable."""

    async def release(self, scope: str, owned: Owned) -> None:
        """Forget an owned, unfinished call. Raises StoreUnavailable."""

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class _Record:
    digest: str
    token: str
    expires: float
    stored: Stored | None = None


def _answer(record: _Record, digest: str) -> Begun:
    if record.digest != digest:
        return Mismatch()
    if record.stored is None:
        return InProgress()
    return Replay(record.stored)


class MemoryIdempotency:
    """Records in a dict, in the order they were written. Finished records all live ``window``
    seconds, so the oldest are at the front and expire first; unfinished ones are never kept
    longer than that either."""

    def __init__(
        self,
        window: float,
        *,
        clock: Callable[[], float],
        pending_ttl: float = PENDING_SECONDS,
    ) -> None:
        self._window = window
        self._pending_ttl = min(pending_ttl, window)
        self._clock = clock
        self._records: dict[str, _Record] = {}

    def __len__(self) -> int:
        return len(self._records)

    async def begin(self, scope: str, digest: str) -> Begun:
        now = self._clock()
        self._expire(now)
        record = self._records.get(scope)
        if record is not None and record.expires > now:
            return _answer(record, digest)
        token = secrets.token_hex(8)
        self._put(scope, _Record(digest, token, now + self._pending_ttl))
        return Owned(token)

    async def finish(self, scope: str, owned: Owned, stored: Stored) -> None:
        record = self._records.get(scope)
        if record is not None and record.token == owned.token and record.stored is None:
            self._put(scope, replace(record, stored=stored, expires=self._clock() + self._window))

    async def release(self, scope: str, owned: Owned) -> None:
        record = self._records.get(scope)
        if record is not None and record.token == owned.token and record.stored is None:
            del self._records[scope]

    async def close(self) -> None:
        self._records.clear()

    def _put(self, scope: str, record: _Record) -> None:
        self._records.pop(scope, None)  # to the end: the order of writing
        self._records[scope] = record

    def _expire(self, now: float) -> None:
        while self._records:
            scope, record = next(iter(self._records.items()))
            if record.expires > now:
                return
            del self._records[scope]


# KEYS[1] the record; ARGV[1] the claim to write, ARGV[2] its lifetime (ms).
# The record if there is one, else nil after writing the claim.
_BEGIN: Final = """
local current = redis.call('GET', KEYS[1])
if current then return current end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""
# ARGV[1] the claim, ARGV[2] the finished record, ARGV[3] its lifetime (ms).
_FINISH: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""
# ARGV[1] the claim.
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisIdempotency:
    """Records as JSON strings: a claim ``{"d": digest, "t": token}``, a finished call
    ``{"d": digest, "s": status, "b": body}``. The claim itself is the token."""

    def __init__(
        self,
        client: AnyRedis,
        *,
        prefix: str,
        window: float,
        pending_ttl: float = PENDING_SECONDS,
    ) -> None:
        self._client = client
        self._tag = "{" + prefix + "}api:idem:"
        self._window_ms = max(1, round(window * 1000))
        self._pending_ms = max(1, round(min(pending_ttl, window) * 1000))
        self._begin = client.register_script(_BEGIN)
        self._finish = client.register_script(_FINISH)
        self._release = client.register_script(_RELEASE)

    async def begin(self, scope: str, digest: str) -> Begun:
        claim = orjson.dumps({"d": digest, "t": secrets.token_hex(8)}).decode()
        current = await self._call(self._begin, scope, claim, self._pending_ms)
        if current is None:
            return Owned(claim)
        record: dict[str, Any] = orjson.loads(current)
        if record.get("d") != digest:
            return Mismatch()
        if "s" not in record:
            return InProgress()
        return Replay(Stored(int(record["s"]), str(record["b"]).encode()))

    async def finish(self, scope: str, owned: Owned, stored: Stored) -> None:
        digest = orjson.loads(owned.token)["d"]
        done = orjson.dumps({"d": digest, "s": stored.status, "b": stored.body.decode()})
        await self._call(self._finish, scope, owned.token, done, self._window_ms)

    async def release(self, scope: str, owned: Owned) -> None:
        await self._call(self._release, scope, owned.token)

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, script: Any, scope: str, *args: Any) -> Any:
        try:
            return await script(keys=[self._tag + scope], args=list(args))
        except Exception as exc:
            if not unavailable(exc):  # the presence store's rule: one list of what is an outage
                raise
            raise StoreUnavailable(f"Redis unavailable: {exc}") from exc
