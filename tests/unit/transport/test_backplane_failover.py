"""A node's publishes follow a Redis Cluster shard that failed over to a replica at another
address, although nothing tells the publisher: no ``MOVED`` comes from a server that is gone,
and the publisher's own subscriptions live on other shards. A cluster of the test's own (the
shared one must keep its shape), two backplanes, no gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any
from uuid import uuid4

import pytest

from gateway.store.redis_topology import parse
from gateway.transport.backplane import Backplane
from tests.support.redis_cluster import RedisClusterServer
from tests.support.wait import wait_until


class Counting:
    def __init__(self) -> None:
        self.delivered: list[str] = []

    def deliver(self, event: str, sids: list[str], packet: str) -> None:
        self.delivered.append(packet)

    async def broadcast_in(self, event: str, packet: str) -> None:
        pass

    async def request(self, body: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def control(self, body: dict[str, Any]) -> None:
        pass


@pytest.fixture
def cluster() -> Iterator[RedisClusterServer]:
    made = RedisClusterServer().start()
    yield made
    made.stop()


def a_prefix(cluster: RedisClusterServer) -> str:
    """One whose receiver channel lives on the first master, and whose sender's channels do not."""
    victim = cluster.nodes[0]
    while True:
        prefix = f"wshub-test:{uuid4().hex[:8]}:"
        if cluster.owner_of(prefix + "ch:node:rx") is victim and all(
            cluster.owner_of(prefix + channel) is not victim for channel in ("ch:node:tx", "ch:all")
        ):
            return prefix


@pytest.fixture
async def nodes(
    cluster: RedisClusterServer,
) -> AsyncIterator[tuple[Backplane, Backplane, Counting]]:
    prefix = a_prefix(cluster)
    inbox = Counting()
    made = [
        Backplane(
            parse(cluster.url),
            inbox if name == "rx" else Counting(),
            node_id=name,
            prefix=prefix,
            probe_timeout=1,
        )
        for name in ("tx", "rx")
    ]
    for backplane in made:
        await backplane.start()
    yield made[0], made[1], inbox
    for backplane in made:
        await backplane.stop()


async def test_publishes_follow_a_shard_that_failed_over(
    cluster: RedisClusterServer, nodes: tuple[Backplane, Backplane, Counting]
) -> None:
    sender, receiver, inbox = nodes
    assert await sender.deliver("rx", "system:direct", ["s1"], "before") == 1
    await asyncio.to_thread(cluster.fail_over, cluster.nodes[0])

    async def hears() -> bool:
        return await receiver.probe()  # it resubscribes at the promoted replica

    await wait_until(hears, timeout=10)
    # The sender's link to the dead master is gone; its next publish finds the new owner.
    taken = [await sender.deliver("rx", "system:direct", ["s1"], f"after {n}") for n in range(5)]
    assert taken == [1] * 5

    async def arrived() -> bool:
        return len(inbox.delivered) == 6

    await wait_until(arrived, timeout=2, step=0.02)
    assert inbox.delivered == ["before", *(f"after {n}" for n in range(5))]
