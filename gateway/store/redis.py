"""Redis presence store: one view of the hub shared by every worker process on every machine.

Theory of operation
-------------------
Keys (``P`` is the prefix, ``wshub:`` by default)::

    P nodes              set     ids of the nodes that may hold connections (the reaper's registry)
    P node:{id}          string  the node's lease; expires unless renewed every lease_seconds / 3
    P node:{id}:sids     set     the node's connections
    P conn:{sid}         hash    node, connect_time, username (absent: none), metadata (JSON),
                                 following (JSON array of the distinct names it follows)
    P names              hash    username -> sid
    P followers:{name}   set     sids whose ``following`` contains name
    P live               set     every connection in the cluster (SCARD is the active count)
    P total              counter connections ever accepted
    P epoch              string  random id of this dataset's life, to notice a wiped Redis

Every write is one Lua script, so Redis runs it alone and whole: a username is claimed, the
previous one released, the metadata written and the follower index updated with no window in
which another process sees a part of it, and a lost connection leaves either all of it or none.
The scripts are also idempotent, which makes redis-py's retry after a broken connection safe.
They build their key names from the prefix, so they need a single Redis (or a primary with
replicas), not Redis Cluster.

A node that dies without ``close()`` stops renewing its lease. Every node reaps, on each tick,
the registered nodes whose lease key is gone: in batches, each batch a script that first checks
the lease is still absent, so concurrent reapers share the work and a node that comes back stops
its own reaping at once.

Each node mirrors its own connections locally. After an outage, or when its lease vanished
(Redis restarted empty, or this node stalled long enough to be reaped), :meth:`RedisStore.restore`
makes Redis agree with the mirror again. Writes wait while a restore runs, so it never overwrites
a newer write with an older mirror entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar, cast
from uuid import uuid4

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .base import Counts, Presence, StoreUnavailable, UsernameTaken

log = logging.getLogger("wshub.store")

_T = TypeVar("_T")

# Errors that mean "Redis cannot serve us now", as opposed to a bug in a command or script.
# ReadOnlyError: we reached a replica (failover in progress); OutOfMemoryError: writes refused.
_UNAVAILABLE: Final = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OutOfMemoryError)

# Connections handled per script call or pipeline round trip: large enough to be quick, small
# enough that one script never blocks Redis for long.
_BATCH: Final = 500

_LUA_COMMON: Final = """
local prefix = ARGV[1]

-- Move sid between follower sets: from the names in old_json to those in new_json
-- (JSON arrays of distinct names).
local function refollow(sid, old_json, new_json)
  local old, new = {}, {}
  for _, name in ipairs(cjson.decode(old_json)) do old[name] = true end
  for _, name in ipairs(cjson.decode(new_json)) do
    new[name] = true
    if not old[name] then redis.call('SADD', prefix .. 'followers:' .. name, sid) end
  end
  for name in pairs(old) do
    if not new[name] then redis.call('SREM', prefix .. 'followers:' .. name, sid) end
  end
end

local function release(sid, name)
  if name and redis.call('HGET', prefix .. 'names', name) == sid then
    redis.call('HDEL', prefix .. 'names', name)
  end
end

local function held_by_other(sid, name)
  local holder = redis.call('HGET', prefix .. 'names', name)
  return holder and holder ~= sid
end

-- Give an existing connection name (false: none) and metadata; the caller checked the name.
local function apply(sid, name, metadata, following)
  local conn = prefix .. 'conn:' .. sid
  local old = redis.call('HMGET', conn, 'username', 'following')
  if old[1] ~= name then release(sid, old[1]) end
  if name then
    redis.call('HSET', prefix .. 'names', name, sid)
    redis.call('HSET', conn, 'username', name)
  else
    redis.call('HDEL', conn, 'username')
  end
  refollow(sid, old[2] or '[]', following)
  redis.call('HSET', conn, 'metadata', metadata, 'following', following)
end

-- Forget sid everywhere; returns {connect_time, metadata, username} or false when unknown.
local function remove(sid)
  local conn = prefix .. 'conn:' .. sid
  local f = redis.call('HMGET', conn, 'node', 'connect_time', 'username', 'metadata', 'following')
  redis.call('SREM', prefix .. 'live', sid)
  if not f[1] then return false end
  release(sid, f[3])
  refollow(sid, f[5] or '[]', '[]')
  redis.call('SREM', prefix .. 'node:' .. f[1] .. ':sids', sid)
  redis.call('DEL', conn)
  return {f[2], f[4] or '{}', f[3]}
end
"""

# ARGV: prefix, node, sid, connect_time
_CONNECT: Final = """
local node, sid = ARGV[2], ARGV[3]
local conn = prefix .. 'conn:' .. sid
-- A retried call must not count the connection twice.
if redis.call('EXISTS', conn) == 1 then return end
redis.call('HSET', conn, 'node', node, 'connect_time', ARGV[4], 'metadata', '{}', 'following', '[]')
redis.call('SADD', prefix .. 'live', sid)
redis.call('SADD', prefix .. 'node:' .. node .. ':sids', sid)
-- Also here, not only at lease renewal: a node reaped while alive must stay findable.
redis.call('SADD', prefix .. 'nodes', node)
redis.call('INCR', prefix .. 'total')
"""

# ARGV: prefix, sid, has_name ('1'/'0'), name, metadata, following
# Returns {'ok', connect_time}, {'taken'} or {'missing'}.
_SAVE: Final = """
local sid = ARGV[2]
local name = ARGV[3] == '1' and ARGV[4]
local connect_time = redis.call('HGET', prefix .. 'conn:' .. sid, 'connect_time')
if not connect_time then return {'missing'} end
if name and held_by_other(sid, name) then return {'taken'} end
apply(sid, name, ARGV[5], ARGV[6])
return {'ok', connect_time}
"""

# ARGV: prefix, sid
_DISCONNECT: Final = """
return remove(ARGV[2])
"""

# ARGV: prefix, node, sid, connect_time, has_name, name, metadata, following
# Like connect + save, but a name now held by another connection is given up, not an error.
_PUT: Final = """
local node, sid = ARGV[2], ARGV[3]
local name = ARGV[5] == '1' and ARGV[6]
redis.call('HSET', prefix .. 'conn:' .. sid, 'node', node, 'connect_time', ARGV[4])
redis.call('SADD', prefix .. 'live', sid)
redis.call('SADD', prefix .. 'node:' .. node .. ':sids', sid)
local status = 'ok'
if name and held_by_other(sid, name) then
  name = false
  status = 'taken'
end
apply(sid, name, ARGV[7], ARGV[8])
return status
"""

# ARGV: prefix, node, lease_ms, known_epoch, new_epoch, accepted
# Takes the lease and returns the dataset's epoch. When the epoch is not the one this node knew,
# Redis lost the counter (or the node is new): add what this node accepted, so that after a wipe
# the total is again the sum over the surviving nodes rather than zero. The lease holds the epoch
# it was taken in, so a retried call does not add twice.
_REGISTER: Final = """
local node = ARGV[2]
local lease = prefix .. 'node:' .. node
local epoch = redis.call('GET', prefix .. 'epoch')
if not epoch then
  epoch = ARGV[5]
  redis.call('SET', prefix .. 'epoch', epoch)
end
if epoch ~= ARGV[4] and redis.call('GET', lease) ~= epoch then
  redis.call('INCRBY', prefix .. 'total', ARGV[6])
end
redis.call('SET', lease, epoch, 'PX', ARGV[3])
redis.call('SADD', prefix .. 'nodes', node)
return epoch
"""

# ARGV: prefix, node, batch. Returns -1 when the node holds a lease, else how many were removed.
_REAP: Final = """
local node = ARGV[2]
if redis.call('EXISTS', prefix .. 'node:' .. node) == 1 then return -1 end
local sids_key = prefix .. 'node:' .. node .. ':sids'
local sids = redis.call('SPOP', sids_key, ARGV[3])
for _, sid in ipairs(sids) do remove(sid) end
if redis.call('EXISTS', sids_key) == 0 then redis.call('SREM', prefix .. 'nodes', node) end
return #sids
"""


# Connections to Redis per process; callers beyond it wait for one (up to `timeout`).
POOL_SIZE = 32


@dataclass(frozen=True, slots=True)
class _Local:
    """What this node knows of one of its own connections, kept encoded for a quick restore."""

    connect_time: str
    username: str | None
    metadata: bytes
    following: bytes


class RedisStore:
    """A :class:`~gateway.store.base.PresenceStore` shared through Redis.

    *node_id* must be unique among the running processes (e.g. ``f"{hostname}:{pid}"``). A
    node's connections vanish from the hub within about ``lease_seconds * 4 / 3`` after it dies
    without :meth:`close`. *timeout* (seconds) bounds every Redis call, connecting included;
    options in the URL's query string (``?socket_timeout=…``) take precedence.
    """

    def __init__(
        self,
        url: str,
        *,
        node_id: str,
        prefix: str = "wshub:",
        lease_seconds: float = 15.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        self.node_id = node_id
        self._prefix = prefix
        self._lease_seconds = lease_seconds
        self._lease_ms = max(1, round(lease_seconds * 1000))
        self._clock = clock
        # One immediate retry reconnects a pooled connection that Redis closed (a restart);
        # redis-py's default backoff would stall every call for seconds during an outage.
        # A blocking pool queues callers when all connections are busy: the default pool
        # fails them with "Too many connections", which a burst of disconnects (a drain, a
        # network blip, 500 clients leaving at once) reaches easily.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=POOL_SIZE,
            timeout=timeout,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )
        self._redis = aioredis.Redis.from_pool(pool)
        script = self._redis.register_script
        self._connect = script(_LUA_COMMON + _CONNECT)
        self._save = script(_LUA_COMMON + _SAVE)
        self._disconnect = script(_LUA_COMMON + _DISCONNECT)
        self._put = script(_LUA_COMMON + _PUT)
        self._register = script(_LUA_COMMON + _REGISTER)
        self._reap = script(_LUA_COMMON + _REAP)

        self._mirror: dict[str, _Local] = {}
        self._accepted = 0
        self._epoch = ""
        self._reachable = False
        self._renewed_at = -math.inf
        self._task: asyncio.Task[None] | None = None
        # Writes run concurrently with each other, never with a restore.
        self._restore_lock = asyncio.Lock()
        self._restoring = False
        self._writers = 0
        self._no_writers = asyncio.Event()
        self._not_restoring = asyncio.Event()
        self._not_restoring.set()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Take this node's lease and start renewing it and reaping dead nodes.

        Raises :class:`StoreUnavailable` when Redis cannot be reached.
        """
        await self.restore()
        self._task = asyncio.create_task(self._maintain(), name=f"wshub:redis-lease:{self.node_id}")

    async def close(self) -> None:
        """Stop the background task, remove this node's connections and close the pool."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            with self._guard():
                await self._redis.delete(self._key("node", self.node_id))
                await self._reap_node(self.node_id)
        except StoreUnavailable:
            log.warning(
                "Redis unreachable while closing node %s; other nodes will reap its %d "
                "connection(s) once its lease expires",
                self.node_id,
                len(self._mirror),
            )
        self._mirror.clear()
        self._reachable = False
        await self._redis.aclose()

    @property
    def healthy(self) -> bool:
        """Whether Redis answers and this node's lease is current.

        False from an outage until the next successful :meth:`restore`, and once the last
        renewal is older than the lease (other nodes may have reaped this one meanwhile).
        """
        return self._reachable and self._clock() - self._renewed_at < self._lease_seconds

    async def restore(self) -> None:
        """Make Redis hold exactly this node's mirrored connections again, and retake the lease.

        A name that another node claimed meanwhile stays theirs: the connection here keeps its
        metadata and loses the name (logged). Raises :class:`StoreUnavailable`.
        """
        async with self._restore_lock, self._exclusive(), self._pipeline() as pipe:
            renewed_at = self._clock()
            self._epoch = cast(
                str,
                await self._register(
                    args=[
                        self._prefix,
                        self.node_id,
                        self._lease_ms,
                        self._epoch,
                        uuid4().hex,
                        self._accepted,
                    ]
                ),
            )
            self._renewed_at = renewed_at
            # Left over by a write whose reply was lost, or by a predecessor with this node id.
            listed = cast(
                set[str], await self._redis.smembers(self._key("node", self.node_id, "sids"))
            )
            for sids in _chunks([sid for sid in listed if sid not in self._mirror]):
                for sid in sids:
                    await self._disconnect(args=[self._prefix, sid], client=pipe)
                await pipe.execute()
            for entries in _chunks(list(self._mirror.items())):
                for sid, entry in entries:
                    await self._put(args=self._put_args(sid, entry), client=pipe)
                for (sid, entry), status in zip(entries, await pipe.execute(), strict=True):
                    if status == "taken":
                        log.warning(
                            "username %r of connection %s was claimed by another connection "
                            "while Redis was unavailable; the connection keeps no username",
                            entry.username,
                            sid,
                        )
                        self._mirror[sid] = _Local(
                            entry.connect_time, None, entry.metadata, entry.following
                        )
        if not self._reachable:
            log.info(
                "node %s registered in Redis with %d connection(s)", self.node_id, len(self._mirror)
            )
        self._reachable = True

    # -- PresenceStore ------------------------------------------------------------------------

    async def connect(self, sid: str, connect_time: str) -> None:
        async with self._writing():
            with self._guard():
                await self._connect(args=[self._prefix, self.node_id, sid, connect_time])
            self._mirror[sid] = _Local(connect_time, None, b"{}", b"[]")
            self._accepted += 1

    async def disconnect(self, sid: str) -> Presence | None:
        async with self._writing():
            # The connection is gone whatever Redis answers; should the call fail, the next
            # restore removes what is left of it.
            local = self._mirror.pop(sid, None)
            with self._guard():
                removed = await self._disconnect(args=[self._prefix, sid])
        if removed:
            connect_time, metadata, username = removed
            return Presence(sid, connect_time, username, orjson.loads(metadata))
        if local is not None:
            # Already gone from Redis (reaped, or a retried call): the mirror still knows it.
            return Presence(sid, local.connect_time, local.username, orjson.loads(local.metadata))
        return None

    async def get(self, sid: str) -> Presence | None:
        local = self._mirror.get(sid)
        if local is not None:
            # Only this node writes its own connections, so its copy is the truth (it is what a
            # restore writes back): no round trip for the sender of every event.
            return Presence(sid, local.connect_time, local.username, orjson.loads(local.metadata))
        with self._guard():
            fields = await self._redis.hmget(
                self._key("conn", sid), ["connect_time", "username", "metadata"]
            )
        return _presence(sid, cast(list[str | None], fields))

    async def save(self, sid: str, username: str | None, metadata: Mapping[str, Any]) -> Presence:
        encoded = orjson.dumps(dict(metadata))
        # The caller's dict stays theirs: the snapshot gets its own copy.
        decoded: dict[str, Any] = orjson.loads(encoded)
        following = orjson.dumps(_following(decoded))
        async with self._writing():
            with self._guard():
                reply = await self._save(
                    args=[
                        self._prefix,
                        sid,
                        "0" if username is None else "1",
                        username or "",
                        encoded,
                        following,
                    ]
                )
            if reply[0] == "missing":
                raise KeyError(sid)
            if reply[0] == "taken":
                assert username is not None  # only a name can be taken
                raise UsernameTaken(username)
            connect_time: str = reply[1]
            if sid in self._mirror:  # not when saving another node's connection
                self._mirror[sid] = _Local(connect_time, username, encoded, following)
        return Presence(sid, connect_time, username, decoded)

    async def sid_of(self, username: str) -> str | None:
        with self._guard():
            return cast(str | None, await self._redis.hget(self._key("names"), username))

    async def followers_of(self, username: str) -> Sequence[str]:
        with self._guard():
            return list(
                cast(set[str], await self._redis.smembers(self._key("followers", username)))
            )

    async def clients(self) -> Sequence[Presence]:
        with self._guard():
            sids = list(cast(set[str], await self._redis.smembers(self._key("live"))))
            found: list[Presence] = []
            async with self._pipeline() as pipe:
                for chunk in _chunks(sids):
                    for sid in chunk:
                        pipe.hmget(self._key("conn", sid), ["connect_time", "username", "metadata"])
                    replies = await pipe.execute()
                    found.extend(
                        presence
                        for sid, fields in zip(chunk, replies, strict=True)
                        # Gone between the two round trips.
                        if (presence := _presence(sid, fields)) is not None
                    )
        # The order a single process would give: by arrival.
        found.sort(key=lambda p: (p.connect_time, p.sid))
        return found

    async def counts(self) -> Counts:
        with self._guard():
            async with self._pipeline() as pipe:
                pipe.scard(self._key("live"))
                pipe.get(self._key("total"))
                active, total = await pipe.execute()
        return Counts(active=int(active), total=int(total or 0))

    async def ping(self) -> None:
        with self._guard():
            await self._redis.ping()

    # -- internals ----------------------------------------------------------------------------

    async def _maintain(self) -> None:
        """Renew the lease and reap dead nodes every lease_seconds / 3; restore when needed."""
        while True:
            await asyncio.sleep(self._lease_seconds / 3)
            try:
                if not self._reachable or not await self._renew():
                    await self.restore()
                await self._reap_expired()
            except StoreUnavailable:
                pass  # logged by _guard when it began; the next tick tries again
            except Exception:
                # This loop keeps the node alive in the hub: never let one failure end it.
                log.exception("lease maintenance of node %s failed", self.node_id)

    async def _renew(self) -> bool:
        """Extend the lease; False when it had vanished (expired, or Redis restarted empty)."""
        renewed_at = self._clock()
        with self._guard():
            renewed = await self._redis.pexpire(self._key("node", self.node_id), self._lease_ms)
        if not renewed:
            log.warning("node %s lost its lease; restoring its connections", self.node_id)
            return False
        self._renewed_at = renewed_at
        return True

    async def _reap_expired(self) -> None:
        with self._guard():
            nodes = [
                node
                for node in cast(set[str], await self._redis.smembers(self._key("nodes")))
                if node != self.node_id  # this node restores itself instead
            ]
            if not nodes:
                return
            async with self._pipeline() as pipe:
                for node in nodes:
                    pipe.exists(self._key("node", node))
                leases = await pipe.execute()
            for node, leased in zip(nodes, leases, strict=True):
                if not leased:
                    removed = await self._reap_node(node)
                    if removed:
                        log.warning(
                            "node %s let its lease expire; removed its %d connection(s)",
                            node,
                            removed,
                        )

    async def _reap_node(self, node: str) -> int:
        """Remove the connections of a node without a lease; how many were removed."""
        removed = 0
        while True:
            count = int(await self._reap(args=[self._prefix, node, _BATCH]))
            if count < 0:  # it came back
                return removed
            removed += count
            if count < _BATCH:
                return removed

    def _put_args(self, sid: str, entry: _Local) -> list[str | bytes]:
        return [
            self._prefix,
            self.node_id,
            sid,
            entry.connect_time,
            "0" if entry.username is None else "1",
            entry.username or "",
            entry.metadata,
            entry.following,
        ]

    def _key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    @contextlib.asynccontextmanager
    async def _pipeline(self) -> AsyncIterator[Pipeline]:
        # Not a MULTI: each script is atomic on its own; the pipeline only saves round trips.
        async with self._redis.pipeline(transaction=False) as pipe:
            yield pipe

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn "Redis cannot serve us" into :class:`StoreUnavailable` and mark the node."""
        try:
            yield
        except _UNAVAILABLE as exc:
            if self._reachable:
                log.warning(
                    "Redis unavailable (%s); node %s will restore when it returns",
                    exc,
                    self.node_id,
                )
            self._reachable = False
            raise StoreUnavailable(f"Redis unavailable: {exc}") from exc

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[None]:
        while self._restoring:
            await self._not_restoring.wait()
        self._writers += 1
        try:
            yield
        finally:
            self._writers -= 1
            if not self._writers:
                self._no_writers.set()

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        self._restoring = True
        self._not_restoring.clear()
        try:
            while self._writers:
                self._no_writers.clear()
                await self._no_writers.wait()
            with self._guard():
                yield
        finally:
            self._restoring = False
            self._not_restoring.set()


def _presence(sid: str, fields: list[str | None]) -> Presence | None:
    connect_time, username, metadata = fields
    if connect_time is None:
        return None
    return Presence(sid, connect_time, username, orjson.loads(metadata or "{}"))


def _following(metadata: Mapping[str, Any]) -> list[str]:
    """The distinct names the follower index needs; same rule as :attr:`Presence.following`."""
    following = metadata.get("following")
    if not isinstance(following, list):
        return []
    return list(dict.fromkeys(name for name in following if isinstance(name, str)))


def _chunks(items: list[_T]) -> Iterator[list[_T]]:
    for start in range(0, len(items), _BATCH):
        yield items[start : start + _BATCH]
