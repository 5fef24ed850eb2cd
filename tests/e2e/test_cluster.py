"""Several gateway processes on one Redis: one hub. Real processes, real Redis."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator

import pytest

from tests.support.ops import get, sample, scrape
from tests.support.process import GatewayProcess
from tests.support.redis_server import RedisServer
from tests.support.wait import wait_until

REDIS = "redis://127.0.0.1:6379/0"


def redis_up() -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not redis_up(), reason="no Redis on 127.0.0.1:6379")


def cluster_env(url: str = REDIS, **extra: str) -> dict[str, str]:
    return {
        "WSHUB_BACKEND": "redis",
        "WSHUB_REDIS_URL": url,
        "WSHUB_REDIS_PREFIX": f"wshub-e2e-{uuid.uuid4().hex[:8]}:",
        "WSHUB_REDIS_LEASE_SECONDS": "1",
        "WSHUB_BACKPLANE_PROBE_INTERVAL": "0.3",
        "WSHUB_BACKPLANE_PROBE_TIMEOUT": "0.5",
        "WSHUB_STATS_INTERVAL": "0.3",
        **extra,
    }


@pytest.fixture
def cluster() -> Iterator[list[GatewayProcess]]:
    env = cluster_env()
    nodes = [GatewayProcess(env=env).start() for _ in range(3)]
    yield nodes
    for node in nodes:
        node.stop()


def ready(node: GatewayProcess) -> tuple[int, dict[str, object]]:
    status, body = get(node.url + "/ready")
    return status, json.loads(body)


async def test_one_hub_across_processes(cluster, clients) -> None:
    a = await clients.connect(cluster[0].url, "alice")
    b = await clients.connect(cluster[1].url)
    await b.login("bob", following=["alice"])
    c = await clients.connect(cluster[2].url)
    # usernames are unique across processes
    await c.emit("system:setData", {"username": "alice"})
    assert (await c.expect("system:dataSet"))["error"] == "Username already taken"
    assert (await c.expect("system:error"))["code"] == "DUPLICATE_USERNAME"
    await c.login("carol")
    # direct message crosses processes
    await a.emit("system:direct", {"target": "bob", "type": "chat", "text": "hi"})
    got = await b.expect("system:direct")
    assert got["text"] == "hi" and got["sender"]["username"] == "alice"
    assert (await a.expect("system:directSent"))["success"] is True
    # broadcast reaches every process exactly once
    await a.emit("system:general", {"type": "news", "n": 1})
    for client in (a, b, c):
        assert (await client.expect("system:general"))["n"] == 1
        await client.expect_none("system:general", within=0.2)
    # notification to followers on another process
    ack = await a.call("system:notification", {"type": "post", "content": {"id": 9}})
    assert ack["recipientCount"] == 1
    assert (await b.expect("system:notification"))["content"] == {"id": 9}
    # typing crosses processes
    await c.emit("system:typingStart", {"target": "alice"})
    assert (await a.expect("system:typingUpdate"))["sender"]["username"] == "carol"
    # one client list, stats summed
    listing = await c.call("system:clients")
    assert sorted(x["username"] for x in listing["clients"]) == ["alice", "bob", "carol"]

    async def stats_show_three() -> bool:
        while not a.events["system:stats"].empty():
            if a.events["system:stats"].get_nowait()["activeConnections"] == 3:
                return True
        return False

    await wait_until(stats_show_three, timeout=5)
    assert ready(cluster[0])[0] == 200


async def test_a_killed_process_frees_its_names(cluster, clients) -> None:
    await clients.connect(cluster[0].url, "doomed")
    survivor = await clients.connect(cluster[1].url, "survivor")
    cluster[0].signal(signal.SIGKILL)
    cluster[0].wait(5)

    async def name_free() -> bool:
        listing = await survivor.call("system:clients")
        return [x["username"] for x in listing["clients"]] == ["survivor"]

    # (a step of 0.25 s: system:clients has its own rate limit, 5 per second)
    await wait_until(name_free, timeout=5, step=0.25)  # lease 1 s: reaped within ~1.4 s
    await survivor.login("doomed")


async def test_redis_restart_is_survived(clients) -> None:
    redis = RedisServer().start()
    env = cluster_env(redis.url)
    nodes = [GatewayProcess(env=env).start() for _ in range(2)]
    try:
        a = await clients.connect(nodes[0].url, "alice")
        b = await clients.connect(nodes[1].url, "bob")
        redis.kill()

        async def not_ready() -> bool:
            return ready(nodes[0])[0] == 503

        await wait_until(not_ready, timeout=5)
        # a message that cannot cross now gets an error, not silence
        reply = await a.call("system:direct", {"target": "bob", "type": "chat"})
        assert reply["code"] == "UNAVAILABLE" or reply.get("success") is False
        redis = RedisServer(port=redis.port).start()  # restarted empty

        async def both_ready() -> bool:
            return all(ready(node)[0] == 200 for node in nodes)

        await wait_until(both_ready, timeout=15)
        listing = await a.call("system:clients")
        assert sorted(x["username"] for x in listing["clients"]) == ["alice", "bob"]
        await a.emit("system:direct", {"target": "bob", "type": "chat", "text": "back"})
        assert (await b.expect("system:direct", timeout=5))["text"] == "back"
    finally:
        await clients.close_all()
        for node in nodes:
            node.stop()
        redis.kill()


async def test_several_workers_in_one_process_group(clients) -> None:
    env = cluster_env()
    node = GatewayProcess(args=["--workers", "2"], env=env).start()
    try:
        users = [await clients.connect(node.url, f"user{n}") for n in range(12)]
        listing = await users[0].call("system:clients")
        assert listing["count"] == 12
        for n in range(1, 12):
            await users[0].emit("system:direct", {"target": f"user{n}", "type": "t", "n": n})
        for n in range(1, 12):
            assert (await users[n].expect("system:direct"))["n"] == n
        text = await scrape(node.url)
        # both workers' connections in one scrape
        assert sample(text, "wshub_connections_active") == 12.0
    finally:
        await clients.close_all()
        node.stop()
