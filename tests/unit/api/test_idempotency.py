"""Idempotency records: the same semantics in process and in Redis; expiry by the window."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from uuid import uuid4

import pytest
import redis

from gateway.api.idempotency import (
    Idempotency,
    InProgress,
    MemoryIdempotency,
    Mismatch,
    Owned,
    RedisIdempotency,
    Replay,
    Stored,
)
from gateway.store.base import StoreUnavailable
from gateway.store.redis_topology import connect, parse

REDIS_URL = os.environ.get("WSHUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ANSWER = Stored(200, b'{"delivered":1}')


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def prefix() -> Iterator[str]:
    """A private key prefix on the test Redis, wiped afterwards."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except (OSError, redis.ConnectionError) as exc:
        client.close()
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    prefix = f"wshub-test:{uuid4().hex}:"
    yield prefix
    for key in client.scan_iter(match="{" + prefix + "}*"):
        client.delete(key)
    client.close()


def in_redis(prefix: str, url: str = REDIS_URL, **kw: float) -> RedisIdempotency:
    client = connect(parse(url), timeout=1.0, pool_size=4, decode_responses=False)
    return RedisIdempotency(client, prefix=prefix, **{"window": 60.0, **kw})


@pytest.fixture(params=["memory", "redis"])
async def records(request: pytest.FixtureRequest) -> AsyncIterator[Idempotency]:
    made: Idempotency
    if request.param == "memory":
        made = MemoryIdempotency(60.0, clock=Clock())
    else:
        made = in_redis(request.getfixturevalue("prefix"))
    yield made
    await made.close()


async def test_a_finished_call_is_replayed(records: Idempotency) -> None:
    owned = await records.begin("k1:abc", "digest-1")
    assert isinstance(owned, Owned)
    await records.finish("k1:abc", owned, ANSWER)
    assert await records.begin("k1:abc", "digest-1") == Replay(ANSWER)
    assert await records.begin("k1:abc", "digest-1") == Replay(ANSWER)


async def test_a_running_call_is_in_progress(records: Idempotency) -> None:
    assert isinstance(await records.begin("k1:abc", "digest-1"), Owned)
    assert await records.begin("k1:abc", "digest-1") == InProgress()


async def test_another_request_under_the_same_key_is_a_mismatch(records: Idempotency) -> None:
    owned = await records.begin("k1:abc", "digest-1")
    assert isinstance(owned, Owned)
    assert await records.begin("k1:abc", "digest-2") == Mismatch()
    await records.finish("k1:abc", owned, ANSWER)
    assert await records.begin("k1:abc", "digest-2") == Mismatch()


async def test_a_released_call_may_run_again(records: Idempotency) -> None:
    first = await records.begin("k1:abc", "digest-1")
    assert isinstance(first, Owned)
    await records.release("k1:abc", first)
    second = await records.begin("k1:abc", "digest-2")  # another body is fine now
    assert isinstance(second, Owned)
    await records.release("k1:abc", first)  # a stale owner cannot release the new claim
    assert await records.begin("k1:abc", "digest-2") == InProgress()


async def test_scopes_are_apart(records: Idempotency) -> None:
    assert isinstance(await records.begin("k1:abc", "digest-1"), Owned)
    assert isinstance(await records.begin("k2:abc", "digest-1"), Owned)


async def test_memory_records_expire_with_the_window() -> None:
    clock = Clock()
    records = MemoryIdempotency(10.0, clock=clock, pending_ttl=2.0)
    owned = await records.begin("a", "d")
    assert isinstance(owned, Owned)
    clock.now += 2.5  # the claim ran out: its node is taken for dead
    late = await records.begin("a", "d")
    assert isinstance(late, Owned)
    await records.finish("a", owned, ANSWER)  # the first owner's finish is ignored
    assert await records.begin("a", "d") == InProgress()
    await records.finish("a", late, ANSWER)
    clock.now += 9.9
    assert await records.begin("a", "d") == Replay(ANSWER)
    clock.now += 0.2
    assert isinstance(await records.begin("a", "d"), Owned)


async def test_memory_records_are_pruned_oldest_first() -> None:
    clock = Clock()
    records = MemoryIdempotency(10.0, clock=clock)
    for n in range(5):
        owned = await records.begin(f"s{n}", "d")
        assert isinstance(owned, Owned)
        await records.finish(f"s{n}", owned, ANSWER)
        clock.now += 1.0
    assert len(records) == 5
    clock.now += 7.5  # s0..s2 are older than 10 s now
    assert isinstance(await records.begin("new", "d"), Owned)
    assert len(records) == 3  # s3, s4 and the new claim


async def test_redis_records_expire_with_the_window(prefix: str) -> None:
    records = in_redis(prefix, window=0.4, pending_ttl=0.2)
    try:
        owned = await records.begin("a", "d")
        assert isinstance(owned, Owned)
        await asyncio.sleep(0.3)
        late = await records.begin("a", "d")
        assert isinstance(late, Owned)
        await records.finish("a", late, ANSWER)
        assert await records.begin("a", "d") == Replay(ANSWER)
        await asyncio.sleep(0.5)
        assert isinstance(await records.begin("a", "d"), Owned)
    finally:
        await records.close()


async def test_two_nodes_share_redis_records(prefix: str) -> None:
    one, other = in_redis(prefix), in_redis(prefix)
    try:
        owned = await one.begin("k1:abc", "d")
        assert isinstance(owned, Owned)
        assert await other.begin("k1:abc", "d") == InProgress()
        await one.finish("k1:abc", owned, ANSWER)
        assert await other.begin("k1:abc", "d") == Replay(ANSWER)
    finally:
        await one.close()
        await other.close()


async def test_redis_unreachable_is_store_unavailable() -> None:
    from tests.support.process import free_port

    records = in_redis("nowhere:", url=f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(StoreUnavailable):
            await records.begin("a", "d")
    finally:
        await records.close()
