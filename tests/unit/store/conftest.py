"""Fixtures shared by the store tests: a real Redis under a private key prefix per test, on
each topology (:mod:`tests.support.topologies`): the shared single Redis and a Redis Cluster."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import uuid4

import pytest

from gateway.store.redis import RedisStore
from gateway.store.redis_topology import AnyRedis, connect, parse
from tests.support import topologies
from tests.support.topologies import Topology

LEASE = 1.0
# A dead node's lease runs out within LEASE, and a reaper passes within LEASE / 3 after that.
REAP_BOUND = LEASE + LEASE / 3
T0 = "2026-01-01T00:00:00.000Z"
T1 = "2026-01-01T00:00:01.000Z"

StoreFactory = Callable[..., Awaitable[RedisStore]]


@pytest.fixture(params=topologies.params("single", "cluster", "sentinel"))
def topology(request: pytest.FixtureRequest) -> Topology:
    return topologies.resolve(request, request.param)


@pytest.fixture
async def redis(topology: Topology) -> AsyncIterator[AnyRedis]:
    """A client of the test's Redis for looking behind the store's back (a cluster client on a
    cluster: it finds each key's node)."""
    client = connect(parse(topology.url), timeout=5, pool_size=4, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(redis: AnyRedis) -> AsyncIterator[str]:
    prefix = f"wshub-test:{uuid4().hex}:"
    yield prefix
    await wipe(redis, prefix)


@pytest.fixture
async def make_store(topology: Topology, prefix: str) -> AsyncIterator[StoreFactory]:
    """``await make_store("n1")``: a started node under the test's prefix, closed afterwards."""
    stores: list[RedisStore] = []

    async def make(node_id: str, *, url: str | None = None, **kw: Any) -> RedisStore:
        kw.setdefault("lease_seconds", LEASE)
        store = RedisStore(url or topology.url, node_id=node_id, prefix=prefix, **kw)
        stores.append(store)
        await store.start()
        return store

    yield make
    for store in stores:
        await store.close()


def tagged(prefix: str) -> str:
    """Where the store keeps its keys: under the prefix as one hash tag (a cluster slot)."""
    return "{" + prefix + "}"


async def wipe(redis: AnyRedis, prefix: str) -> None:
    """Delete every key under *prefix*: what a Redis restarted without persistence looks like."""
    for pattern in (f"{prefix}*", f"{tagged(prefix)}*"):
        keys = [key async for key in redis.scan_iter(match=pattern.replace("[", "\\["), count=1000)]
        if keys:
            await redis.delete(*keys)


async def holders(store: Any, username: str) -> list[str]:
    """The sids holding *username*, in claim order."""
    return [address.sid for address in await store.connections_of(username)]


async def follower_sids(store: Any, username: str) -> list[str]:
    return sorted(address.sid for address in await store.followers_of(username))


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float) -> float:
    """Poll *check* until it holds; the seconds it took."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"still false after {timeout} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start
