"""Redis presence store: one view of the hub shared by every worker process on every machine.

Theory of operation
-------------------
Keys, all under one hash tag (``T`` is ``{`` + prefix + ``}``, ``{wshub:}`` by default) so that
a Redis Cluster keeps them in one slot, where a script may touch them together::

    T nodes              set     ids of the nodes that may hold connections (the reaper's registry)
    T node:{id}          string  the node's lease; expires unless renewed every lease_seconds / 3
    T node:{id}:sids     set     the node's connections
    T node:{id}:evicted  list    its connections that other nodes' claims displaced (to end)
    T node:{id}:writes   counter the node's writes that Redis applied (to notice lost ones)
    T conn:{sid}         hash    node, connect_time, username (absent: none), metadata (JSON),
                                 following (JSON array of distinct names), pid (digest of the
                                 session's private id), away ("1" while its transport is gone)
    T user:{name}        hash    sid -> route ("node" or "node away") of each holder of the name
    T followers:{name}   set     sids whose ``following`` contains name
    T live               set     every connection in the cluster
    T away               set     those of them that are away (waiting for recovery): SCARD of
                                 live minus SCARD of away is the active count
    T total              counter connections ever accepted
    T epoch              string  random id of this dataset's life, to notice a wiped Redis

A connection is routed by its ``user:`` entry: a message for a user goes, in one lookup, to the
nodes of its holders. The pub/sub channels that carry it (``gateway.transport.backplane``) are
outside the hash tag, so a cluster spreads them over its shards.

Every write is one Lua script, so Redis runs it alone and whole: a username is claimed, the
previous one released, the metadata written and the follower index updated with no window in
which another process sees a part of it, and a lost connection leaves either all of it or none.
The scripts are idempotent, which makes redis-py's retry after a broken connection safe. Each
declares one key of the tag (so a cluster routes it to the slot's node) and builds the others
from the prefix; in a cluster scripts cannot be pipelined, so bulk work packs many entries into
one call instead.

A node that dies without ``close()`` stops renewing its lease. Every node reaps, on each tick,
the registered nodes whose lease key is gone: in batches, each batch a script that first checks
the lease is still absent, so concurrent reapers share the work and a node that comes back stops
its own reaping at once.

Each node mirrors its own connections locally. After an outage, or when its lease vanished
(Redis restarted empty, or this node stalled long enough to be reaped), :meth:`RedisStore.restore`
makes Redis agree with the mirror again. Writes wait while a restore runs, so it never overwrites
a newer write with an older mirror entry.

Redis can also lose acknowledged writes while it stays up and the lease survives: a Sentinel
failover promotes a replica that had not received the last writes yet, and until the old
primary is turned into a replica, connections still open to it write there (its writes are
then discarded by the resync). Every write script therefore counts the writing node's writes
in ``node:{id}:writes``; each lease tick compares Redis's count with the node's own, and a
shortfall restores the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, TypeVar, cast
from uuid import uuid4

import orjson
from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .base import (
    Address,
    Claim,
    Counts,
    Presence,
    Saved,
    SessionRecord,
    StoreUnavailable,
    UsernameTaken,
)
from .redis_topology import AnyRedis, RedisTarget, cancellation_kept, connect, parse
from .route_cache import RouteCache

log = logging.getLogger("wshub.store")

_T = TypeVar("_T")

# Errors that mean "Redis cannot serve us now", as opposed to a bug in a command or script.
# ReadOnlyError: we reached a replica (failover in progress); OutOfMemoryError: writes refused;
# the cluster ones: a shard is down or its slots are moving.
_UNAVAILABLE: Final = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    OutOfMemoryError,
    ClusterDownError,
    TryAgainError,
    MasterDownError,
)


def unavailable(exc: BaseException) -> bool:
    """Whether *exc* means Redis cannot serve us now (rather than a bug in a command)."""
    if isinstance(exc, (*_UNAVAILABLE, SlotNotCoveredError)):
        return True
    # redis-py's cluster client reports "none of the nodes answers" (when it reloads the slot
    # map: at the first command, and after a node stopped answering) as a bare
    # RedisClusterException, which it also raises for misuse (keys in several slots); only its
    # cause tells an outage apart.
    return isinstance(exc, RedisClusterException) and isinstance(exc.__cause__, _UNAVAILABLE)


# Connections handled per script call or pipeline round trip: large enough to be quick, small
# enough that one script never blocks Redis for long.
_BATCH: Final = 200

_LUA_COMMON: Final = """
local T = ARGV[1]

local function route(node, away)
  if away == '1' then return node .. ' away' end
  return node
end

-- Move sid between follower sets: from the names in old_json to those in new_json.
local function refollow(sid, old_json, new_json)
  local old, new = {}, {}
  for _, name in ipairs(cjson.decode(old_json)) do old[name] = true end
  for _, name in ipairs(cjson.decode(new_json)) do
    new[name] = true
    if not old[name] then redis.call('SADD', T .. 'followers:' .. name, sid) end
  end
  for name in pairs(old) do
    if not new[name] then redis.call('SREM', T .. 'followers:' .. name, sid) end
  end
end

-- One more write of this node that Redis applied (compared with the node's own count).
local function wrote(node)
  redis.call('INCR', T .. 'node:' .. node .. ':writes')
end

local function release(sid, name)
  if name then redis.call('HDEL', T .. 'user:' .. name, sid) end
end

-- Give an existing connection name (false: none) and metadata; the caller checked the claim.
local function apply(sid, name, metadata, following)
  local conn = T .. 'conn:' .. sid
  local old = redis.call('HMGET', conn, 'username', 'following', 'node', 'away')
  if old[1] ~= name then release(sid, old[1]) end
  if name then
    redis.call('HSET', T .. 'user:' .. name, sid, route(old[3], old[4]))
    redis.call('HSET', conn, 'username', name)
  else
    redis.call('HDEL', conn, 'username')
  end
  refollow(sid, old[2] or '[]', following)
  redis.call('HSET', conn, 'metadata', metadata, 'following', following)
end

-- Mark a connection away ('1': its transport is gone, its session waits) or back.
local function mark_away(sid, away)
  if away == '1' then
    redis.call('HSET', T .. 'conn:' .. sid, 'away', '1')
    redis.call('SADD', T .. 'away', sid)
  else
    redis.call('HDEL', T .. 'conn:' .. sid, 'away')
    redis.call('SREM', T .. 'away', sid)
  end
end

-- Forget sid everywhere; returns {connect_time, metadata, username, node} or false.
local function remove(sid)
  local conn = T .. 'conn:' .. sid
  local f = redis.call('HMGET', conn, 'node', 'connect_time', 'username', 'metadata', 'following')
  redis.call('SREM', T .. 'live', sid)
  redis.call('SREM', T .. 'away', sid)
  if not f[1] then return false end
  release(sid, f[3])
  refollow(sid, f[5] or '[]', '[]')
  redis.call('SREM', T .. 'node:' .. f[1] .. ':sids', sid)
  redis.call('DEL', conn)
  return {f[2], f[4] or '{}', f[3], f[1]}
end
"""

# ARGV: T, node, sid, connect_time, pid
_CONNECT: Final = """
local node, sid = ARGV[2], ARGV[3]
local conn = T .. 'conn:' .. sid
wrote(node)
-- A retried call must not count the connection twice.
if redis.call('EXISTS', conn) == 1 then return end
redis.call('HSET', conn, 'node', node, 'connect_time', ARGV[4], 'metadata', '{}',
           'following', '[]', 'pid', ARGV[5])
redis.call('SADD', T .. 'live', sid)
redis.call('SADD', T .. 'node:' .. node .. ':sids', sid)
-- Also here, not only at lease renewal: a node reaped while alive must stay findable.
redis.call('SADD', T .. 'nodes', node)
redis.call('INCR', T .. 'total')
"""

# ARGV: T, sid, has_name ('1'/'0'), name, metadata, following, claim, evict, writer
# Returns {'ok', connect_time, displaced sid, route, ...}, {'taken', holder sid, route, ...}
# or {'missing'}. Displaced holders are removed and queued on their node's evicted list.
_SAVE: Final = """
local sid = ARGV[2]
wrote(ARGV[9])
local f = redis.call('HMGET', T .. 'conn:' .. sid, 'connect_time', 'username')
if not f[1] then return {'missing'} end
local name = ARGV[3] == '1' and ARGV[4]
local claim, evict = ARGV[7], ARGV[8]
local displaced = {}
if name and f[2] ~= name and claim ~= 'multi' then
  local held = redis.call('HGETALL', T .. 'user:' .. name)
  local live = {}
  for i = 1, #held, 2 do
    local other, where = held[i], held[i + 1]
    if other ~= sid then
      local away = string.sub(where, -5) == ' away'
      if claim == 'unique' and not away and other ~= evict then
        table.insert(live, other)
        table.insert(live, where)
      else
        table.insert(displaced, other)
        table.insert(displaced, where)
      end
    end
  end
  if #live > 0 then return {'taken', unpack(live)} end
  for i = 1, #displaced, 2 do
    local gone = remove(displaced[i])
    if gone then redis.call('RPUSH', T .. 'node:' .. gone[4] .. ':evicted', displaced[i]) end
  end
end
apply(sid, name, ARGV[5], ARGV[6])
return {'ok', f[1], unpack(displaced)}
"""

# ARGV: T, writer, n, sid...
_DISCONNECT: Final = """
wrote(ARGV[2])
local removed = {}
for i = 4, 3 + tonumber(ARGV[3]) do
  local gone = remove(ARGV[i])
  if gone then removed[#removed + 1] = gone end
end
return removed
"""

# ARGV: T, node, multi ('1'/'0'), n, then 8 fields per entry:
#   sid, connect_time, has_name, name, metadata, following, pid, away
# Like connect + save, but a name now held by another connection is given up, not an error
# (unless names may have several holders). Returns 'ok' or 'taken' per entry.
_PUT: Final = """
local node, multi = ARGV[2], ARGV[3] == '1'
local statuses = {}
local i = 5
for _ = 1, tonumber(ARGV[4]) do
  local sid = ARGV[i]
  local conn = T .. 'conn:' .. sid
  redis.call('HSET', conn, 'node', node, 'connect_time', ARGV[i + 1], 'pid', ARGV[i + 6])
  mark_away(sid, ARGV[i + 7])
  redis.call('SADD', T .. 'live', sid)
  redis.call('SADD', T .. 'node:' .. node .. ':sids', sid)
  local name = ARGV[i + 2] == '1' and ARGV[i + 3]
  local status = 'ok'
  if name and not multi then
    for _, other in ipairs(redis.call('HKEYS', T .. 'user:' .. name)) do
      if other ~= sid then
        name = false
        status = 'taken'
      end
    end
  end
  apply(sid, name, ARGV[i + 4], ARGV[i + 5])
  statuses[#statuses + 1] = status
  i = i + 8
end
return statuses
"""

# ARGV: T, sid, node, away ('1'/'0'). 1 when the connection is this node's, else 0.
_AWAY: Final = """
local sid = ARGV[2]
wrote(ARGV[3])
local conn = T .. 'conn:' .. sid
local f = redis.call('HMGET', conn, 'node', 'username')
if f[1] ~= ARGV[3] then return 0 end
mark_away(sid, ARGV[4])
if f[2] then redis.call('HSET', T .. 'user:' .. f[2], sid, route(f[1], ARGV[4])) end
return 1
"""

# ARGV: T, sid, from, to. {connect_time, username, metadata} when moved, else false.
_MOVE: Final = """
local sid, from, to = ARGV[2], ARGV[3], ARGV[4]
wrote(from)
local conn = T .. 'conn:' .. sid
local f = redis.call('HMGET', conn, 'node', 'connect_time', 'username', 'metadata')
if f[1] ~= from then return false end
redis.call('HSET', conn, 'node', to)
mark_away(sid, '0')
redis.call('SREM', T .. 'node:' .. from .. ':sids', sid)
redis.call('SADD', T .. 'node:' .. to .. ':sids', sid)
redis.call('SADD', T .. 'nodes', to)
if f[3] then redis.call('HSET', T .. 'user:' .. f[3], sid, to) end
return {f[2], f[3], f[4]}
"""

# ARGV: T, name. {sid, route, ...} of the connections following name.
_FOLLOWERS: Final = """
local out = {}
for _, sid in ipairs(redis.call('SMEMBERS', T .. 'followers:' .. ARGV[2])) do
  local f = redis.call('HMGET', T .. 'conn:' .. sid, 'node', 'away')
  if f[1] then
    out[#out + 1] = sid
    out[#out + 1] = route(f[1], f[2])
  end
end
return out
"""

# ARGV: T, node. The node's evicted connections, taken off its list.
_EVICTED: Final = """
local list = T .. 'node:' .. ARGV[2] .. ':evicted'
local sids = redis.call('LRANGE', list, 0, -1)
redis.call('DEL', list)
return sids
"""

# ARGV: T, node, lease_ms, known_epoch, new_epoch, accepted
# Takes the lease and returns the dataset's epoch. When the epoch is not the one this node knew,
# Redis lost the counter (or the node is new): add what this node accepted, so that after a wipe
# the total is again the sum over the surviving nodes rather than zero. The lease holds the epoch
# it was taken in, so a retried call does not add twice.
_REGISTER: Final = """
local node = ARGV[2]
local lease = T .. 'node:' .. node
local epoch = redis.call('GET', T .. 'epoch')
if not epoch then
  epoch = ARGV[5]
  redis.call('SET', T .. 'epoch', epoch)
end
if epoch ~= ARGV[4] and redis.call('GET', lease) ~= epoch then
  redis.call('INCRBY', T .. 'total', ARGV[6])
end
redis.call('SET', lease, epoch, 'PX', ARGV[3])
redis.call('SADD', T .. 'nodes', node)
return epoch
"""

# ARGV: T, node, batch. Returns -1 when the node holds a lease, else how many were removed.
_REAP: Final = """
local node = ARGV[2]
if redis.call('EXISTS', T .. 'node:' .. node) == 1 then return -1 end
local sids_key = T .. 'node:' .. node .. ':sids'
local sids = redis.call('SPOP', sids_key, ARGV[3])
for _, sid in ipairs(sids) do remove(sid) end
if redis.call('EXISTS', sids_key) == 0 then
  redis.call('SREM', T .. 'nodes', node)
  redis.call('DEL', T .. 'node:' .. node .. ':evicted', T .. 'node:' .. node .. ':writes')
end
return #sids
"""


# Connections to Redis per process (per node of a cluster); callers beyond it wait for one.
POOL_SIZE = 32

EvictionListener = Callable[[list[str]], Awaitable[None]]
# Told the usernames whose routes this node just changed (None: any number of them).
RouteListener = Callable[[list[str] | None], None]

# Usernames whose routes a node remembers (gateway.store.route_cache), about 200 bytes each.
_ROUTES_KEPT = 100_000


@dataclass(frozen=True, slots=True)
class _Local:
    """What this node knows of one of its own connections, kept encoded for a quick restore."""

    connect_time: str
    username: str | None
    metadata: bytes
    following: bytes
    pid_hash: str = ""
    away: bool = False

    def presence(self, sid: str) -> Presence:
        return Presence(sid, self.connect_time, self.username, orjson.loads(self.metadata))


class RedisStore:
    """A :class:`~gateway.store.base.PresenceStore` shared through Redis.

    *node_id* must be unique among the running processes (e.g. ``f"{hostname}:{pid}"``). A
    node's connections vanish from the hub within about ``lease_seconds * 4 / 3`` after it dies
    without :meth:`close`. *timeout* (seconds) bounds every Redis call, connecting included.
    *claim* says how a restore treats names that other connections hold meanwhile.
    *route_cache_seconds* > 0 keeps the answers of :meth:`connections_of`
    (``gateway.store.route_cache``); that is only coherent when the route changes of every
    node reach every other (:meth:`on_routes_changed` to :meth:`forget_routes`: the backplane).
    """

    def __init__(
        self,
        url: str,
        *,
        node_id: str,
        prefix: str = "wshub:",
        lease_seconds: float = 15.0,
        timeout: float = 5.0,
        claim: Claim = Claim.UNIQUE,
        route_cache_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        self.node_id = node_id
        self.target: RedisTarget = parse(url)
        self._tag = "{" + prefix + "}"
        self._slot_key = [self._tag + "nodes"]  # what routes every script in a cluster
        self._lease_seconds = lease_seconds
        self._lease_ms = max(1, round(lease_seconds * 1000))
        self._multi = claim is Claim.MULTI
        self._clock = clock
        self._redis: AnyRedis = connect(
            self.target, timeout=timeout, pool_size=POOL_SIZE, decode_responses=True
        )
        script = self._redis.register_script
        self._connect = script(_LUA_COMMON + _CONNECT)
        self._save = script(_LUA_COMMON + _SAVE)
        self._disconnect = script(_LUA_COMMON + _DISCONNECT)
        self._put = script(_LUA_COMMON + _PUT)
        self._away = script(_LUA_COMMON + _AWAY)
        self._move = script(_LUA_COMMON + _MOVE)
        self._followers = script(_LUA_COMMON + _FOLLOWERS)
        self._evicted = script(_LUA_COMMON + _EVICTED)
        self._register = script(_LUA_COMMON + _REGISTER)
        self._reap = script(_LUA_COMMON + _REAP)

        self._mirror: dict[str, _Local] = {}
        self._eviction_listeners: list[EvictionListener] = []
        self._route_listeners: list[RouteListener] = []
        self.routes: RouteCache | None = None
        if route_cache_seconds > 0:
            self.routes = RouteCache(ttl=route_cache_seconds, size=_ROUTES_KEPT, clock=clock)
        self._accepted = 0
        self._writes = 0
        """This node's writes that Redis acknowledged (see ``node:{id}:writes``)."""
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

    # -- lifecycle

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

    def on_evicted(self, listener: EvictionListener) -> None:
        self._eviction_listeners.append(listener)

    def on_routes_changed(self, listener: RouteListener) -> None:
        """*listener* hears the usernames whose routes this node changed, right after Redis
        applied the change: the backplane tells the other nodes, whose caches forget them."""
        self._route_listeners.append(listener)

    def forget_routes(self, names: list[str] | None) -> None:
        """Another node changed the routes of *names* (None: of any name, or some were missed)."""
        if self.routes is None:
            return
        if names is None:
            self.routes.forget_all()
        else:
            self.routes.forget(names)

    def unreachable(self, node: str) -> None:
        """Node *node* took no message: routes to it are not trusted until asked again."""
        if self.routes is not None:
            self.routes.forget_node(node)

    async def restore(self) -> None:
        """Make Redis hold exactly this node's mirrored connections again, and retake the lease.

        A name that another connection claimed meanwhile stays theirs (unless names may have
        several holders): the connection here keeps its metadata and loses the name (logged).
        Raises :class:`StoreUnavailable`.
        """
        async with self._restore_lock, self._exclusive():
            renewed_at = self._clock()
            args = [self.node_id, self._lease_ms, self._epoch, uuid4().hex, self._accepted]
            self._epoch = cast(str, await self._call(self._register, *args))
            self._renewed_at = renewed_at
            # Left over by a write whose reply was lost, or by a predecessor with this node id.
            listed = cast(
                set[str], await self._redis.smembers(self._key("node", self.node_id, "sids"))
            )
            for sids in _chunks([sid for sid in listed if sid not in self._mirror]):
                await self._call(self._disconnect, self.node_id, len(sids), *sids)
            for entries in _chunks(list(self._mirror.items())):
                fields = [field for sid, entry in entries for field in _put_fields(sid, entry)]
                statuses = await self._call(
                    self._put, self.node_id, "1" if self._multi else "0", len(entries), *fields
                )
                for (sid, entry), status in zip(entries, statuses, strict=True):
                    if status == "taken":
                        log.warning(
                            "username %r of connection %s was claimed by another connection "
                            "while Redis was unavailable; the connection keeps no username",
                            entry.username,
                            sid,
                        )
                        self._mirror[sid] = replace(entry, username=None)
            # Redis holds all of this node's writes now; the count starts again from here.
            await self._redis.set(self._key("node", self.node_id, "writes"), self._writes)
        self._routes_changed(None)  # other nodes may have cached what Redis lacked meanwhile
        if not self._reachable:
            log.info(
                "node %s registered in Redis with %d connection(s)", self.node_id, len(self._mirror)
            )
        self._reachable = True

    # -- PresenceStore

    async def connect(self, sid: str, connect_time: str, *, pid_hash: str = "") -> None:
        async with self._writing():
            with self._guard():
                await self._call(self._connect, self.node_id, sid, connect_time, pid_hash)
            self._writes += 1
            self._mirror[sid] = _Local(connect_time, None, b"{}", b"[]", pid_hash)
            self._accepted += 1

    async def disconnect(self, sid: str) -> Presence | None:
        async with self._writing():
            # The connection is gone whatever Redis answers; should the call fail, the next
            # restore removes what is left of it.
            local = self._mirror.pop(sid, None)
            with self._guard():
                removed = await self._call(self._disconnect, self.node_id, 1, sid)
            self._writes += 1
        if removed:
            connect_time, metadata, username, _ = removed[0]
            if username:
                self._routes_changed([username])
            return Presence(sid, connect_time, username, orjson.loads(metadata))
        if local is not None:
            # Already gone from Redis (reaped, displaced, a retried call): the mirror knows it.
            return local.presence(sid)
        return None

    async def get(self, sid: str) -> Presence | None:
        local = self._mirror.get(sid)
        if local is not None:
            # Only this node writes its own connections, so its copy is the truth (it is what a
            # restore writes back): no round trip for the sender of every event.
            return local.presence(sid)
        with self._guard():
            fields = await self._redis.hmget(
                self._key("conn", sid), ["connect_time", "username", "metadata"]
            )
        return _presence(sid, cast(list[str | None], fields))

    async def save(
        self,
        sid: str,
        username: str | None,
        metadata: Mapping[str, Any],
        *,
        claim: Claim = Claim.UNIQUE,
        evict: str | None = None,
    ) -> Saved:
        encoded = orjson.dumps(dict(metadata))
        # The caller's dict stays theirs: the snapshot gets its own copy.
        decoded: dict[str, Any] = orjson.loads(encoded)
        following = orjson.dumps(_following(decoded))
        name = ("1", username) if username is not None else ("0", "")
        async with self._writing():
            with self._guard():
                reply = await self._call(
                    self._save,
                    sid,
                    *name,
                    encoded,
                    following,
                    claim.value,
                    evict or "",
                    self.node_id,
                )
            self._writes += 1
            status, *rest = reply
            if status == "missing":
                raise KeyError(sid)
            if status == "taken":
                assert username is not None  # only a name can be taken
                raise UsernameTaken(username, _addresses(rest))
            connect_time, *flat = rest
            displaced = _addresses(flat)
            for address in displaced:
                if address.node == self.node_id:
                    self._mirror.pop(address.sid, None)  # this node ends them (Saved.displaced)
            local = self._mirror.get(sid)
            if local is not None:  # not when saving another node's connection
                self._mirror[sid] = replace(
                    local, username=username, metadata=encoded, following=following
                )
        if local is None:
            self._routes_changed(None)  # the name it held before is not known here
        elif local.username != username:
            self._routes_changed([n for n in (local.username, username) if n is not None])
        return Saved(Presence(sid, connect_time, username, decoded), displaced)

    async def connections_of(self, username: str) -> Sequence[Address]:
        cache = self.routes
        if cache is not None and (known := cache.get(username)) is not None:
            return list(known)  # the caller's to change
        ticket = cache.ticket() if cache is not None else 0
        with self._guard():
            routes = cast(dict[str, str], await self._redis.hgetall(self._key("user", username)))
        addresses = [_address(sid, where) for sid, where in routes.items()]
        if cache is not None:
            cache.store(username, addresses, ticket)
        return addresses

    async def followers_of(self, username: str) -> Sequence[Address]:
        with self._guard():
            flat = await self._call(self._followers, username)
        return _addresses(flat)

    async def clients(self) -> Sequence[Presence]:
        with self._guard():
            sids = list(cast(set[str], await self._redis.smembers(self._key("live"))))
            found: list[Presence] = []
            async with self._pipeline() as pipe:
                for chunk in _chunks(sids):
                    for sid in chunk:
                        pipe.hmget(
                            self._key("conn", sid), ["connect_time", "username", "metadata", "away"]
                        )
                    replies = await pipe.execute()
                    found.extend(
                        presence
                        for sid, (*fields, away) in zip(chunk, replies, strict=True)
                        # Gone between the two round trips, or away (not connected).
                        if not away and (presence := _presence(sid, fields)) is not None
                    )
        # The order a single process would give: by arrival.
        found.sort(key=lambda p: (p.connect_time, p.sid))
        return found

    async def counts(self) -> Counts:
        with self._guard():
            async with self._pipeline() as pipe:
                pipe.scard(self._key("live"))
                pipe.scard(self._key("away"))
                pipe.get(self._key("total"))
                live, away, total = await pipe.execute()
        return Counts(active=int(live) - int(away), total=int(total or 0))

    async def set_away(self, sid: str, away: bool) -> bool:
        async with self._writing():
            local = self._mirror.get(sid)
            if local is None:
                return False
            self._mirror[sid] = replace(local, away=away)
            with self._guard():
                mine = await self._call(self._away, sid, self.node_id, "1" if away else "0")
            self._writes += 1
        if local.username is not None:
            self._routes_changed([local.username])  # an away route counts as held, not delivered
        return bool(mine)

    async def record(self, sid: str) -> SessionRecord | None:
        with self._guard():
            node, pid_hash, away = cast(
                list[str | None],
                await self._redis.hmget(self._key("conn", sid), ["node", "pid", "away"]),
            )
        if node is None:
            return None
        return SessionRecord(node, pid_hash or "", away == "1")

    async def move(self, sid: str, to_node: str) -> Presence | None:
        async with self._writing():
            with self._guard():
                moved = await self._call(self._move, sid, self.node_id, to_node)
            self._writes += 1
            self._mirror.pop(sid, None)
        if not moved:
            return None
        connect_time, username, metadata = moved
        if username:
            self._routes_changed([username])
        return Presence(sid, connect_time, username, orjson.loads(metadata or "{}"))

    def adopt(self, presence: Presence, pid_hash: str) -> None:
        metadata = orjson.dumps(dict(presence.metadata))
        following = orjson.dumps(_following(presence.metadata))
        self._mirror[presence.sid] = _Local(
            presence.connect_time, presence.username, metadata, following, pid_hash
        )

    async def ping(self) -> None:
        """Redis answers; and when this node's lease is gone (Redis restarted empty, say), the
        node is unhealthy until its next tick restores its entries."""
        with self._guard():
            leased = await self._redis.exists(self._key("node", self.node_id))
        if not leased:
            self._renewed_at = -math.inf

    # -- internals

    async def _call(self, script: Any, *args: Any) -> Any:
        """Run a script: routed by the tag's key (a cluster sends it to the slot's node)."""
        return await script(keys=self._slot_key, args=[self._tag, *args])

    async def _maintain(self) -> None:
        """Renew the lease (restoring when it vanished or Redis lost writes), reap dead nodes,
        end evicted connections: every lease_seconds / 3."""
        while True:
            await asyncio.sleep(self._lease_seconds / 3)
            try:
                if not self._reachable or not await self._renew() or await self._lost_writes():
                    await self.restore()
                await self._reap_expired()
                await self._end_evicted()
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

    async def _lost_writes(self) -> bool:
        """Whether Redis applied fewer of this node's writes than it acknowledged."""
        # Read before the round trip: writes still in flight can only raise Redis's count. (A
        # write retried after a lost reply counts twice there, hiding one loss at most.)
        acknowledged = self._writes
        with self._guard():
            counted = int(await self._redis.get(self._key("node", self.node_id, "writes")) or 0)
        if counted >= acknowledged:
            return False
        log.warning(
            "Redis lost %d of node %s's writes (a failover, or a restart from an older "
            "snapshot); restoring its connections",
            acknowledged - counted,
            self.node_id,
        )
        return True

    async def _end_evicted(self) -> None:
        with self._guard():
            sids = cast(list[str], await self._call(self._evicted, self.node_id))
        gone = [sid for sid in sids if self._mirror.pop(sid, None) is not None]
        if gone:
            for listener in self._eviction_listeners:
                await listener(gone)

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
        try:
            while True:
                count = int(await self._call(self._reap, node, _BATCH))
                if count < 0:  # it came back
                    return removed
                removed += count
                if count < _BATCH:
                    return removed
        finally:
            if removed:
                self._routes_changed(None)  # the names are not known here, only how many

    def _routes_changed(self, names: list[str] | None) -> None:
        self.forget_routes(names)
        for listener in self._route_listeners:
            listener(names)

    def _key(self, *parts: str) -> str:
        return self._tag + ":".join(parts)

    @contextlib.asynccontextmanager
    async def _pipeline(self) -> AsyncIterator[Any]:
        # Not a MULTI: the pipeline only saves round trips (and holds no scripts: a cluster
        # refuses them in pipelines).
        async with self._redis.pipeline(transaction=False) as pipe:
            yield pipe

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn "Redis cannot serve us" into :class:`StoreUnavailable` and mark the node; end a
        task whose cancellation redis-py swallowed meanwhile."""
        try:
            with cancellation_kept():
                yield
        except Exception as exc:
            if not unavailable(exc):
                raise
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


def _put_fields(sid: str, entry: _Local) -> list[str | bytes]:
    return [
        sid,
        entry.connect_time,
        "0" if entry.username is None else "1",
        entry.username or "",
        entry.metadata,
        entry.following,
        entry.pid_hash,
        "1" if entry.away else "0",
    ]


def _address(sid: str, where: str) -> Address:
    node, _, state = where.partition(" ")
    return Address(sid, node, state == "away")


def _addresses(flat: Sequence[str]) -> list[Address]:
    return [_address(flat[i], flat[i + 1]) for i in range(0, len(flat) - 1, 2)]


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
