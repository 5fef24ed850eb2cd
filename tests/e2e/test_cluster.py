"""Several gateway processes on one Redis: one hub. Real processes, real Redis, on each
topology: the shared single Redis and a Redis Cluster (and the main flow on Sentinel)."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from tests.support import topologies
from tests.support.hub import Hub, cluster_env, ready, redis_up
from tests.support.ops import sample, scrape
from tests.support.process import GatewayProcess
from tests.support.redis_server import RedisServer
from tests.support.topologies import Topology
from tests.support.wait import wait_until

__all__ = ["cluster_env", "redis_up"]  # what other e2e modules take from here


@pytest.fixture(params=topologies.params("single", "cluster"))
def topology(request: pytest.FixtureRequest) -> Topology:
    return topologies.resolve(request, request.param)


@pytest.fixture
def hub(topology: Topology) -> Iterator[Hub]:
    made = Hub(topology)
    yield made
    made.stop()


@pytest.fixture
def cluster(hub: Hub) -> list[GatewayProcess]:
    return hub.start(3)


@pytest.mark.parametrize(
    "topology", topologies.params("single", "cluster", "sentinel"), indirect=True
)
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


class Restartable:
    """Redis that the test kills and starts again empty: a private one, or every master of
    the session's cluster."""

    def __init__(self, topology: Topology) -> None:
        self._cluster = topology.cluster
        self._private = RedisServer().start() if self._cluster is None else None
        self.topology = topology if self._private is None else Topology("single", self._private.url)

    def kill(self) -> None:
        if self._private is not None:
            self._private.kill()
            return
        assert self._cluster is not None
        for node in self._cluster.nodes:
            self._cluster.kill(node)

    def start(self) -> None:
        if self._private is not None:
            self._private = RedisServer(port=self._private.port).start()
            return
        assert self._cluster is not None
        self._cluster.restart_all()

    def close(self) -> None:
        if self._private is not None:
            self._private.kill()


@pytest.fixture
def restartable(topology: Topology) -> Iterator[Restartable]:
    made = Restartable(topology)
    yield made
    made.close()


async def test_redis_restart_is_survived(restartable: Restartable, clients) -> None:
    hub = Hub(restartable.topology)
    try:
        nodes = hub.start(2)
        a = await clients.connect(nodes[0].url, "alice")
        b = await clients.connect(nodes[1].url, "bob")
        restartable.kill()

        async def not_ready() -> bool:
            return ready(nodes[0])[0] == 503

        await wait_until(not_ready, timeout=5)
        # a message that cannot cross now gets an error, not silence
        reply = await a.call("system:direct", {"target": "bob", "type": "chat"})
        assert reply["code"] == "UNAVAILABLE"
        restartable.start()  # empty

        async def both_ready() -> bool:
            return all(ready(node)[0] == 200 for node in nodes)

        await wait_until(both_ready, timeout=15)
        listing = await a.call("system:clients")
        assert sorted(x["username"] for x in listing["clients"]) == ["alice", "bob"]
        await a.emit("system:direct", {"target": "bob", "type": "chat", "text": "back"})
        assert (await b.expect("system:direct", timeout=5))["text"] == "back"
    finally:
        await clients.close_all()
        hub.stop()


async def test_several_workers_in_one_process_group(hub: Hub, clients) -> None:
    node = GatewayProcess(args=["--workers", "2"], env=hub.env).start()
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
