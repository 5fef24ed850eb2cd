"""Which Redis the gateway talks to, read from ``WSHUB_REDIS_URL``, and the clients for it.

Three topologies, told apart by the URL's scheme:

========================================================  =======================================
URL                                                       topology
========================================================  =======================================
``redis://[user:pass@]host:port/db`` (``rediss://``)      one Redis (or a primary with replicas)
``redis+sentinel://[:pass@]h1:p1,h2:p2/db/service``       a primary found through Sentinel, which
                                                          follows failovers (``service`` defaults
                                                          to ``mymaster``)
``redis+cluster://[:pass@]h1:p1,h2:p2`` (``rediss+``)     Redis Cluster; the nodes given are where
                                                          the client starts, it finds the others
========================================================  =======================================
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlparse

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from .resp_link import Endpoint, LinkDown

Kind = Literal["standalone", "sentinel", "cluster"]
AnyRedis = aioredis.Redis | RedisCluster
DEFAULT_SERVICE = "mymaster"


@dataclass(frozen=True)
class RedisTarget:
    kind: Kind
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    """Sentinels, or the cluster nodes to start from."""
    service: str = DEFAULT_SERVICE
    options: dict[str, Any] = field(default_factory=dict)
    """username, password, db, ssl."""

    @property
    def sharded(self) -> bool:
        """Whether pub/sub should be sharded (SPUBLISH / SSUBSCRIBE, Redis 7 Cluster)."""
        return self.kind == "cluster"


def parse(url: str) -> RedisTarget:
    """Raises ValueError with a message that names what is wrong with *url*."""
    parsed = urlparse(url)
    scheme = parsed.scheme
    if scheme in ("redis", "rediss", "unix"):
        return RedisTarget("standalone", url)
    base, plus, kind = scheme.partition("+")
    if not plus or base not in ("redis", "rediss") or kind not in ("sentinel", "cluster"):
        raise ValueError(
            f"unsupported Redis URL scheme {scheme!r}: use redis://, rediss://, "
            "redis+sentinel:// or redis+cluster://"
        )
    nodes = tuple(_host_port(item) for item in parsed.netloc.rpartition("@")[2].split(","))
    options: dict[str, Any] = {"ssl": base == "rediss"}
    if parsed.username:
        options["username"] = unquote(parsed.username)
    if parsed.password:
        options["password"] = unquote(parsed.password)
    parts = [part for part in parsed.path.split("/") if part]
    service = DEFAULT_SERVICE
    if kind == "sentinel":
        if parts:
            options["db"] = _int(parts[0], "database")
        if len(parts) > 1:
            service = parts[1]
    elif parts:
        raise ValueError("a redis+cluster:// URL takes no path: Redis Cluster has database 0 only")
    return RedisTarget(kind, url, nodes, service, options)  # type: ignore[arg-type]


def connect(
    target: RedisTarget,
    *,
    timeout: float,
    pool_size: int,
    decode_responses: bool,
) -> AnyRedis:
    """A client for *target*. Every call is bounded by *timeout* (connecting included), a
    dropped connection is retried once at once (a restarted Redis), and a burst of callers
    waits for a pooled connection rather than failing with "Too many connections"."""
    common: dict[str, Any] = {
        "decode_responses": decode_responses,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
    }
    if target.kind == "standalone":
        pool = aioredis.BlockingConnectionPool.from_url(
            target.url,
            max_connections=pool_size,
            timeout=timeout,
            retry=Retry(NoBackoff(), 1),
            **common,
        )
        return aioredis.Redis.from_pool(pool)
    options = dict(target.options)
    if target.kind == "sentinel":
        sentinel_auth = {k: options[k] for k in ("username", "password") if k in options}
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(target.nodes),
            # Bounded like every other call: redis-py's defaults for the Sentinels (a 5 s
            # connect timeout, three retries with backoff) made each store call take about 8 s
            # to fail while no Sentinel answered.
            sentinel_kwargs={
                "socket_timeout": timeout,
                "socket_connect_timeout": timeout,
                "retry": Retry(NoBackoff(), 1),
                **sentinel_auth,
            },
            retry=Retry(NoBackoff(), 1),
            **common,
            **options,
        )
        master: aioredis.Redis = sentinel.master_for(
            target.service,
            connection_pool_class=BlockingSentinelConnectionPool,
            max_connections=pool_size,
            timeout=timeout,
        )
        return master
    return QueuedRedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
        # A few more than may be in use at once: reloading the slot map takes one too.
        max_connections=pool_size + _SPARE_CONNECTIONS,
        permits=pool_size,
        retry=Retry(NoBackoff(), 1),
        **common,
        **options,
    )


@contextmanager
def cancellation_kept() -> Iterator[None]:
    """Around a Redis call: raise CancelledError if the task was cancelled during the call and
    redis-py swallowed it.

    redis-py bounds every send with ``asyncio.wait_for``, which on Python 3.11 returns normally
    when the cancellation comes as the send completes. The request is gone; only
    ``Task.cancelling()`` still counts it. Measured: a task publishing in a loop and cancelled
    at a random moment went on publishing 36 times in 300 on one Redis and 97 in 100 on a
    cluster; a gateway worker whose backplane probe loop lost its cancellation this way never
    finished shutting down. Only a request that arrived during the call counts: code that
    cleans up after a cancellation it did receive may still call Redis.
    """
    task = asyncio.current_task()
    before = task.cancelling() if task is not None else 0
    yield
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError


class Locator:
    """Where a lean link (:mod:`gateway.store.resp_link`) for a pub/sub channel connects: the one
    Redis, the primary that Sentinel names now, or the cluster shard that owns the channel's
    slot. Addresses, credentials and TLS settings are the ones *client* (made by
    :func:`connect`) uses, read from its connection settings: ``connection_kwargs`` and
    ``connection_class`` of its pool or cluster node, ``SSLConnection.ssl_context``,
    ``SentinelConnectionPool.get_master_address`` and the cluster's ``nodes_manager``. None is
    underscored, but not all are in redis-py's documentation: redis is pinned
    (requirements/constraints.txt), and tests/unit/store/test_redis_topology.py and the Sentinel
    and Cluster tests of tests/e2e/test_routing.py fail if they change."""

    def __init__(self, client: AnyRedis) -> None:
        self._client = client
        self._refreshing: asyncio.Task[None] | None = None
        # By address: a TLS context (its CA files read) is made once per server, not per look-up.
        self._endpoints: dict[tuple[str, int | str], Endpoint] = {}

    async def endpoint(self, channel: str) -> Endpoint:
        """Raises :class:`LinkDown` when the topology cannot say (no Sentinel answers, no shard
        owns the slot)."""
        try:
            with cancellation_kept():
                return await self._endpoint(channel)
        except LinkDown:
            raise
        except Exception as exc:  # redis-py raises many kinds; all mean "cannot say now"
            raise LinkDown(f"cannot find the Redis for {channel}: {exc}") from exc

    async def refresh(self) -> None:
        """Reload a cluster's slot map (a slot moved); callers that come meanwhile share it."""
        if not isinstance(self._client, RedisCluster):
            return
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._client.nodes_manager.initialize())
        try:
            with cancellation_kept():
                await asyncio.shield(self._refreshing)
        except Exception as exc:
            raise LinkDown(f"cannot reload the cluster's slot map: {exc}") from exc

    async def aclose(self) -> None:
        """Stop a slot-map reload still under way."""
        if self._refreshing is not None and not self._refreshing.done():
            self._refreshing.cancel()
            with contextlib.suppress(BaseException):
                await self._refreshing

    async def _endpoint(self, channel: str) -> Endpoint:
        client = self._client
        if isinstance(client, RedisCluster):
            # The client itself first (a no-op once done): redis-py 8.1 routes a command
            # through its command table, which only RedisCluster.initialize() loads.
            await client.initialize()
            node = client.get_node_from_key(channel)
            if node is None:
                raise LinkDown(f"no cluster node owns the slot of {channel}")
            settings = {**node.connection_kwargs, "host": node.host, "port": node.port}
            return self._made(node.connection_class, settings)
        pool = client.connection_pool
        settings = dict(pool.connection_kwargs)
        if isinstance(pool, SentinelConnectionPool):
            settings["host"], settings["port"] = await pool.get_master_address()  # type: ignore[no-untyped-call]
        return self._made(pool.connection_class, settings)

    def _made(self, connection_class: type, settings: dict[str, Any]) -> Endpoint:
        address = (
            settings.get("host", "localhost"),
            settings.get("path") or settings.get("port", 6379),
        )
        endpoint = self._endpoints.get(address)
        if endpoint is None:
            endpoint = self._endpoints[address] = _endpoint(connection_class, settings)
        return endpoint


def _endpoint(connection_class: type, settings: dict[str, Any]) -> Endpoint:
    tls = None
    if issubclass(connection_class, SSLConnection):
        # redis-py's own reading of the ssl_* settings (certificate checks, CA, client cert).
        ssl_settings = {k: v for k, v in settings.items() if k.startswith("ssl_")}
        tls = SSLConnection(**ssl_settings).ssl_context.get()
    return Endpoint(
        host=settings.get("host", "localhost"),
        port=int(settings.get("port", 6379)),
        path=settings.get("path"),
        username=settings.get("username"),
        password=settings.get("password"),
        tls=tls,
        client_name=settings.get("client_name"),
    )


class BlockingSentinelConnectionPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """The primary's connections, found through Sentinel, queued like a single Redis's: past
    ``max_connections`` a caller waits for one (up to ``timeout``).

    redis-py's Sentinel pool does not block: past its limit (100 unless told) a command fails
    at once with "Too many connections", so a burst of simultaneous events on a Sentinel setup
    failed as "unavailable" (300 simultaneous disconnects did, in the store tests).
    """


_SPARE_CONNECTIONS = 4
# Set while a task runs a command under a permit, so that what that command runs in turn (a
# pipeline resends a redirected command on its own) does not wait for a second one.
_permitted: ContextVar[bool] = ContextVar("wshub_redis_permitted", default=False)


class QueuedRedisCluster(RedisCluster):
    """A cluster client whose callers queue for a connection, as a single Redis's blocking pool
    makes them do.

    redis-py's cluster client has no blocking pool: past ``max_connections`` to a node a command
    fails at once with MaxConnectionsError (and a pipeline that meets it closes every connection
    of the client before it retries), so a burst of a few dozen simultaneous events would fail
    as "unavailable". At most *permits* commands or pipelines run at once here; each holds at
    most one connection per node, so the per-node limit is never reached.
    """

    def __init__(self, *args: Any, permits: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._permits = asyncio.Semaphore(permits)

    @asynccontextmanager
    async def permit(self) -> AsyncIterator[None]:
        if _permitted.get():
            yield
            return
        async with self._permits:
            token = _permitted.set(True)
            try:
                yield
            finally:
                _permitted.reset(token)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.permit():
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> Any:
        if shard_hint:  # what the base class refuses, refused the same way
            return super().pipeline(transaction, shard_hint)
        # (redis-py's typing marks an attribute abstract that its own ClusterPipeline, made the
        # same way by the base class, never defines.)
        return _QueuedPipeline(self, transaction)  # type: ignore[abstract]


class _QueuedPipeline(ClusterPipeline):
    cluster_client: QueuedRedisCluster

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        async with self.cluster_client.permit():
            return await super().execute(raise_on_error, allow_redirections)


def _host_port(item: str) -> tuple[str, int]:
    host, colon, port = item.rpartition(":")
    if not colon or not host:
        raise ValueError(f"Redis node {item!r} needs a host and a port")
    return host.strip("[]"), _int(port, "port")


def _int(text: str, what: str) -> int:
    if not text.isdigit():
        raise ValueError(f"Redis URL {what} {text!r} is not a number")
    return int(text)
