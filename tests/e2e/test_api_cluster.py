"""The server API on two gateway processes sharing one Redis: every method crosses nodes, and an
Idempotency-Key holds across them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.e2e.test_cluster import cluster_env, redis_up
from tests.support.api import KEY, SENDER, api
from tests.support.process import GatewayProcess
from tests.support.redis_server import RedisServer
from tests.support.wait import wait_until

pytestmark = pytest.mark.skipif(not redis_up(), reason="no Redis on 127.0.0.1:6379")


@pytest.fixture
def nodes() -> Iterator[list[GatewayProcess]]:
    env = cluster_env(WSHUB_API_KEYS=KEY)
    started = [GatewayProcess(env=env).start() for _ in range(2)]
    yield started
    for node in started:
        node.stop()


async def test_every_method_across_nodes(nodes, clients) -> None:
    one, two = nodes
    alice = await clients.connect(one.url, "alice")
    bob = await clients.connect(two.url, "bob")
    fan = await clients.new(two.url).connect()
    await fan.login("fan", following=["alice"])

    notified = await api(one.url, "notify", {"to": ["alice", "bob"], "type": "t", "content": {}})
    assert notified.status == 200
    assert (notified.body["connections"], notified.body["delivered"]) == (2, 2)
    for client in (alice, bob):
        assert (await client.expect("system:notification"))["sender"] == SENDER

    followers = await api(
        one.url, "notify", {"followersOf": "alice", "type": "post", "content": {"id": 1}}
    )
    assert followers.body["delivered"] == 1
    assert (await fan.expect("system:notification"))["content"] == {"id": 1}

    direct = await api(one.url, "direct", {"target": "bob", "type": "chat", "text": "hi"})
    assert direct.status == 200 and direct.body["delivered"] == 1
    got = await bob.expect("system:direct")
    assert (got["text"], got["sender"]) == ("hi", SENDER)

    broadcast = await api(two.url, "broadcast", {"type": "news", "n": 1})
    assert broadcast.status == 200 and broadcast.body["connections"] == 3
    for client in (alice, bob, fan):
        assert (await client.expect("system:general"))["n"] == 1
        await client.expect_none("system:general", within=0.2)  # once on each node

    presence = await api(one.url, "presence", {"username": "bob"})
    assert presence.body == {"username": "bob", "online": True, "connections": 1, "away": 0}
    stats = await api(two.url, "stats")
    assert stats.body == {"activeConnections": 3, "totalConnections": 3}

    ended = await api(one.url, "disconnect", {"username": "bob", "message": "Bye"})
    assert ended.body == {"connections": 1, "ended": 1, "failed": 0}
    notice = await bob.expect("system:disconnect", timeout=5)
    assert (notice["reason"], notice["message"]) == ("backend_disconnect", "Bye")
    await asyncio.wait_for(bob.disconnected.wait(), 5)

    async def bob_gone() -> bool:
        answer = await api(two.url, "presence", {"username": "bob"})
        return answer.body["connections"] == 0

    await wait_until(bob_gone, timeout=5)


async def test_a_retry_on_the_other_node_does_not_deliver_twice(nodes, clients) -> None:
    one, two = nodes
    bob = await clients.connect(two.url, "bob")
    body = {"to": ["bob"], "type": "order", "content": {"id": 9}}
    headers = {"Idempotency-Key": "order-9"}
    first = await api(one.url, "notify", body, headers=headers)
    retry = await api(two.url, "notify", body, headers=headers)
    assert first.status == retry.status == 200
    assert retry.body == first.body and retry.headers["idempotent-replayed"] == "true"
    assert (await bob.expect("system:notification"))["content"] == {"id": 9}
    await bob.expect_none("system:notification", within=0.5)
    other = await api(two.url, "notify", {**body, "content": {"id": 10}}, headers=headers)
    assert (other.status, other.body["code"]) == (422, "IDEMPOTENCY_MISMATCH")


async def test_redis_down_is_unavailable(clients) -> None:
    redis = RedisServer().start()
    node = GatewayProcess(env=cluster_env(redis.url, WSHUB_API_KEYS=KEY)).start()
    try:
        await clients.connect(node.url, "alice")
        redis.kill()
        for headers in ({}, {"Idempotency-Key": "k-1"}):
            answer = await api(
                node.url,
                "notify",
                {"to": ["alice"], "type": "t", "content": {}},
                headers=headers,
            )
            assert (answer.status, answer.body) == (
                503,
                {
                    "code": "UNAVAILABLE",
                    "message": "Not delivered: the service is briefly unavailable; retry",
                },
            )
            assert answer.headers["retry-after"] == "1"
    finally:
        await clients.close_all()
        node.stop()
        redis.kill()
