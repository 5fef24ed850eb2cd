"""Nothing lost, nothing misrouted, when the hub's routing changes: nodes join and die, a
subscription goes deaf, Redis (or the shard holding a channel) goes away, a channel's slot
moves. Real gateways on each Redis topology, lease 1 s, probe every 0.3 s: processes where a
test sends them signals, gateways in this process (each on its own loop and port, started in
a fraction of the time) elsewhere.

A direct message is acknowledged ``success`` only when a node took it for its recipient;
otherwise the sender hears ``TARGET_NOT_FOUND`` (nobody holds the name) or ``UNAVAILABLE``
(it went nowhere: retrying cannot duplicate it).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gateway.store.base import Address
from gateway.store.redis import RedisStore
from gateway.store.route_cache import RouteCache
from tests.support import topologies
from tests.support.client import Client, Clients
from tests.support.hub import Hub, Node, backplane_of, ready
from tests.support.raw import eventually
from tests.support.redis_cluster import ClusterNode, RedisClusterServer, slot_of
from tests.support.redis_proxy import DeafeningProxy
from tests.support.redis_server import RedisServer
from tests.support.server import LiveServer
from tests.support.topologies import Topology
from tests.support.wait import wait_until

LEASE = 1.0
# A dead node's lease runs out within LEASE of its last renewal and a reaper passes every
# LEASE / 3; the rest is slack for a loaded machine.
REAPED_WITHIN = LEASE * 4 / 3 + 0.7


@pytest.fixture(params=topologies.params("single", "cluster"))
def topology(request: pytest.FixtureRequest) -> Topology:
    return topologies.resolve(request, request.param)


@pytest.fixture
def hub(topology: Topology, server_factory: Callable[..., LiveServer]) -> Iterator[Hub]:
    made = Hub(topology, local=server_factory)
    yield made
    made.stop()


@pytest.fixture
def relay(topology: Topology) -> Iterator[DeafeningProxy | None]:
    """On a single Redis, a relay that can silence subscriptions. Asked for before ``hub``,
    so that it stops after the gateways that use it."""
    if topology.cluster is not None:
        yield None
        return
    proxy = DeafeningProxy(6379).start()
    yield proxy
    proxy.stop()


async def direct(sender: Client, target: str, **fields: Any) -> str:
    """Send a direct message; "ok", "not_found" or "unavailable" from its acknowledgement."""
    reply = await sender.call("system:direct", {"target": target, "type": "chat", **fields})
    if reply.get("success") is True:
        return "ok"
    if reply.get("reason") == "User not found":
        return "not_found"
    if reply.get("code") == "UNAVAILABLE":
        return "unavailable"
    raise AssertionError(f"unexpected acknowledgement {reply}")


async def status(node: Node) -> int:
    """The node's /ready status (off the loop: the test may be serving its Redis relay)."""
    return (await asyncio.to_thread(ready, node))[0]


async def becomes(node: Node, code: int, timeout: float = 5) -> None:
    async def reached() -> bool:
        return await status(node) == code

    await wait_until(reached, timeout=timeout)


def a_victim(
    cluster: RedisClusterServer, hub: Hub, *, onto: list[str], away: list[str]
) -> ClusterNode:
    """A master to kill: it gets the slots of the channels *onto* and loses those of *away*;
    never the store's (the presence store keeps working meanwhile)."""
    store = cluster.owner_of("{" + hub.prefix + "}nodes")
    victim, elsewhere = cluster.others(store)
    for channel in away:
        if cluster.owner_of(channel) is victim:
            cluster.move_slot(slot_of(channel), elsewhere)
    for channel in onto:
        cluster.move_slot(slot_of(channel), victim)
    return victim


# -- nodes joining and dying --------------------------------------------------------------


async def test_a_node_that_joins_is_reached(hub: Hub, clients: Clients) -> None:
    first, second = hub.start_local(2)
    a = await clients.connect(first.url, "alice")
    b = await clients.connect(second.url, "bob")
    (third,) = hub.start_local(1)
    c = await clients.connect(third.url, "carol")
    assert hub.topology.subscribers(hub.channel(third)) == 1
    assert hub.topology.subscribers(hub.broadcast_channel) == 3

    assert await direct(a, "carol", text="to the newcomer") == "ok"
    assert (await c.expect("system:direct"))["text"] == "to the newcomer"
    assert await direct(c, "bob", text="from the newcomer") == "ok"
    assert (await b.expect("system:direct"))["text"] == "from the newcomer"
    await b.emit("system:general", {"type": "news", "n": 7})
    for client in (a, b, c):
        assert (await client.expect("system:general"))["n"] == 7
    for client in (a, b, c):
        await client.expect_none("system:general", within=0.2)
    await a.expect_none("system:direct", within=0)


async def test_a_killed_nodes_users_vanish_and_messages_to_them_never_succeed(
    hub: Hub, clients: Clients
) -> None:
    victim, survivor_node = hub.start(2)
    await clients.connect(victim.url, "doomed")
    survivor = await clients.connect(survivor_node.url, "survivor")
    assert await direct(survivor, "doomed") == "ok"

    victim.signal(signal.SIGKILL)
    victim.wait(5)
    loop = asyncio.get_running_loop()
    killed = loop.time()
    outcomes: list[str] = []
    while not outcomes or outcomes[-1] != "not_found":
        assert loop.time() - killed < REAPED_WITHIN, outcomes
        outcomes.append(await direct(survivor, "doomed"))
        await asyncio.sleep(0.05)
    gone_after = loop.time() - killed
    # Until the reaper removed the name, the dead node's channel had no listener: the
    # messages went nowhere and said so.
    assert set(outcomes[:-1]) <= {"unavailable"}, outcomes
    assert gone_after < REAPED_WITHIN
    listing = await survivor.call("system:clients")
    assert [x["username"] for x in listing["clients"]] == ["survivor"]
    assert hub.topology.channels(f"{hub.prefix}ch:node:*") == [hub.channel(survivor_node)]


async def test_a_stalled_node_is_reaped_then_restores_itself(hub: Hub, clients: Clients) -> None:
    sleeper, watcher_node = hub.start(2)
    await clients.connect(sleeper.url, "sleepy")
    watcher = await clients.connect(watcher_node.url, "watcher")
    sleeper.signal(signal.SIGSTOP)
    try:

        async def reaped() -> bool:
            return await direct(watcher, "sleepy") == "not_found"

        await wait_until(reaped, timeout=REAPED_WITHIN + 1, step=0.1)
        # The name is free while its holder is gone from the hub ...
        listing = await watcher.call("system:clients")
        assert [x["username"] for x in listing["clients"]] == ["watcher"]
    finally:
        sleeper.signal(signal.SIGCONT)

    # ... and the node puts its connection back at its next lease tick.
    async def restored() -> bool:
        return await direct(watcher, "sleepy") == "ok"

    await wait_until(restored, timeout=3, step=0.1)
    await becomes(sleeper, 200)


async def test_names_stay_unique_under_concurrent_claims_across_nodes(
    hub: Hub, clients: Clients
) -> None:
    nodes = hub.start_local(3)
    claimants = [await clients.connect(node.url) for node in nodes for _ in range(4)]
    await asyncio.gather(*(c.emit("system:setData", {"username": "highlander"}) for c in claimants))
    replies = [await c.expect("system:dataSet") for c in claimants]
    winners = [c for c, reply in zip(claimants, replies, strict=True) if reply["success"]]
    assert len(winners) == 1
    assert [r["error"] for r in replies if not r["success"]] == ["Username already taken"] * 11
    listing = await claimants[0].call("system:clients")
    assert [x["username"] for x in listing["clients"] if x["username"]] == ["highlander"]
    assert [x["id"] for x in listing["clients"] if x["username"]] == [winners[0].sid]


# -- deaf subscriptions and failed publishes ------------------------------------------------


async def test_ready_is_503_while_a_nodes_subscription_is_deaf(
    topology: Topology, relay: DeafeningProxy | None, hub: Hub, clients: Clients
) -> None:
    if relay is not None:
        # The deaf node reaches Redis through a relay that silences its subscriptions.
        await _deaf_through_a_relay(hub, clients, relay)
        return
    # On a cluster: the master serving the deaf node's channel dies.
    assert topology.cluster is not None
    hearing, deaf = hub.start_local(2)
    a = await clients.connect(hearing.url, "alice")
    b = await clients.connect(deaf.url, "bob")
    channel = hub.channel(deaf)
    victim = a_victim(
        topology.cluster, hub, onto=[channel], away=[hub.channel(hearing), hub.broadcast_channel]
    )

    async def resubscribed() -> bool:
        return topology.subscribers(channel) == 1

    await wait_until(resubscribed, timeout=5)
    await asyncio.to_thread(topology.cluster.kill, victim)
    try:
        await becomes(deaf, 503)
        assert await status(hearing) == 200
        assert await direct(a, "bob", text="lost") == "unavailable"
    finally:
        await asyncio.to_thread(topology.cluster.restart, victim)
    await becomes(deaf, 200, timeout=10)
    assert await direct(a, "bob", text="heard") == "ok"
    assert (await b.expect("system:direct"))["text"] == "heard"
    await b.expect_none("system:direct", within=0.2)


async def _deaf_through_a_relay(hub: Hub, clients: Clients, proxy: DeafeningProxy) -> None:
    (hearing,) = hub.start_local(1)
    (deaf,) = hub.start_local(1, url=proxy.url)
    a = await clients.connect(hearing.url, "alice")
    b = await clients.connect(deaf.url, "bob")
    assert await direct(a, "bob", text="before") == "ok"
    assert (await b.expect("system:direct"))["text"] == "before"

    proxy.deafen()
    await becomes(deaf, 503)
    assert await status(hearing) == 200
    proxy.hear()
    await becomes(deaf, 200)

    # The probe restarted the deaf subscriptions: what was sent to them meanwhile is gone
    # (pub/sub is at most once); what is sent now arrives.
    async def heard() -> bool:
        if await direct(a, "bob", text="after") != "ok":
            return False
        return (await b.expect("system:direct"))["text"] == "after"

    await wait_until(heard, timeout=5)


async def test_failed_publishes_deliver_nothing_and_a_retry_delivers_once(
    topology: Topology, server_factory: Callable[..., LiveServer], clients: Clients
) -> None:
    private = RedisServer().start() if topology.cluster is None else None
    hub = Hub(
        Topology("single", private.url) if private is not None else topology,
        local=server_factory,
    )
    try:
        sender_node, other_node = hub.start_local(2)
        a = await clients.connect(sender_node.url, "alice")
        neighbour = await clients.connect(sender_node.url, "anna")
        b = await clients.connect(other_node.url, "bob")
        victim: ClusterNode | None = None
        if topology.cluster is not None:
            # The shard holding bob's channel and the broadcast channel dies; the store lives.
            victim = a_victim(
                topology.cluster,
                hub,
                onto=[hub.channel(other_node), hub.broadcast_channel],
                away=[hub.channel(sender_node)],
            )
            await asyncio.to_thread(topology.cluster.kill, victim)
        else:
            assert private is not None
            private.kill()

        assert await direct(a, "bob", text="dm") == "unavailable"
        ack = await a.call("system:general", {"type": "news", "n": 1})
        assert ack["code"] == "UNAVAILABLE"
        for client in (a, neighbour, b):
            await client.expect_none("system:general", within=0.2)
        await b.expect_none("system:direct", within=0)

        if victim is not None:
            assert topology.cluster is not None
            await asyncio.to_thread(topology.cluster.restart, victim)
        else:
            assert private is not None
            private = RedisServer(port=private.port).start()
        await becomes(sender_node, 200, timeout=10)
        await becomes(other_node, 200, timeout=10)
        assert await direct(a, "bob", text="dm") == "ok"
        assert (await b.expect("system:direct"))["text"] == "dm"
        ack = await a.call("system:general", {"type": "news", "n": 1})
        assert ack["success"] is True
        for client in (a, neighbour, b):
            assert (await client.expect("system:general"))["n"] == 1
        for client in (a, neighbour, b):
            await client.expect_none("system:general", within=0.2)
        await b.expect_none("system:direct", within=0)
    finally:
        await clients.close_all()
        if private is not None:
            private.kill()


# -- a slot move --------------------------------------------------------------------------


@pytest.mark.parametrize("topology", topologies.params("cluster"), indirect=True)
async def test_a_slot_move_during_traffic_loses_nothing_acknowledged(
    topology: Topology, server_factory: Callable[..., LiveServer], clients: Clients
) -> None:
    cluster = topology.cluster
    assert cluster is not None
    hub = Hub(
        topology,
        extra={"WSHUB_RATE_LIMIT": "1000", "WSHUB_RATE_LIMIT_BURST": "1000"},
        local=server_factory,
    )
    try:
        sender_node, receiver_node = hub.start_local(2)
        a = await clients.connect(sender_node.url, "alice")
        b = await clients.connect(receiver_node.url, "bob")
        channel = hub.channel(receiver_node)
        destination = cluster.others(cluster.owner_of(channel))[0]
        outcomes: dict[int, str] = {}
        moved = asyncio.Event()

        async def traffic() -> None:
            n = 0
            while len(outcomes) < 400 and not (moved.is_set() and _settled(outcomes)):
                outcomes[n] = await direct(a, "bob", n=n)
                n += 1
                await asyncio.sleep(0.005)

        sending = asyncio.create_task(traffic())
        await asyncio.sleep(0.3)
        await asyncio.to_thread(cluster.move_slot, slot_of(channel), destination)
        moved.set()
        await sending

        received: list[int] = []
        while not b.events["system:direct"].empty():
            received.append(b.events["system:direct"].get_nowait()["n"])
        acknowledged = [n for n, outcome in sorted(outcomes.items()) if outcome == "ok"]
        # Every acknowledged message arrived, once and in order; the few sent while bob's
        # node resubscribed at the new owner were refused, none silently lost.
        assert received == acknowledged
        refused = [n for n, outcome in outcomes.items() if outcome != "ok"]
        assert set(outcomes[n] for n in refused) <= {"unavailable"}
        assert len(refused) < 20, refused
        with destination.client() as client:
            assert client.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1] == 1
        assert await status(receiver_node) == 200
    finally:
        await clients.close_all()


def _settled(outcomes: dict[int, str]) -> bool:
    """The last 20 messages all went through."""
    last = [outcomes[n] for n in sorted(outcomes)[-20:]]
    return len(last) == 20 and set(last) == {"ok"}


# -- targeted routing ---------------------------------------------------------------------


def frames(server: LiveServer) -> dict[str, float]:
    """The node's wshub_backplane_frames_received, by kind."""
    counts: dict[str, float] = {}
    for metric in backplane_of(server).frames_received.collect():
        for s in metric.samples:
            if s.name.endswith("_total"):
                counts[s.labels["kind"]] = s.value
    return counts


async def test_direct_messages_are_decoded_by_their_node_only(
    topology: Topology, hub: Hub, clients: Clients
) -> None:
    """Three nodes: A's messages to B's client are decoded by B, never by C; each node listens
    on its own channel and on the broadcast one, and on nothing else."""
    prefix = hub.prefix
    a, b, c = hub.start_local(3)
    alice = await clients.connect(a.url, "alice")
    bob = await clients.connect(b.url, "bob")
    await clients.connect(c.url, "carol")
    own = [backplane_of(s).own_channel for s in (a, b, c)]
    for channel in own:
        assert topology.subscribers(channel) == 1
    assert topology.subscribers(f"{prefix}ch:all") == 3
    assert topology.channels(f"{prefix}ch:*") == sorted([*own, f"{prefix}ch:all"])

    before = [frames(s) for s in (a, b, c)]
    for n in range(25):
        assert await direct(alice, "bob", n=n) == "ok"
    assert [(await bob.expect("system:direct"))["n"] for _ in range(25)] == list(range(25))
    after = [frames(s) for s in (a, b, c)]
    delivered = [
        x.get("deliver", 0) - y.get("deliver", 0) for x, y in zip(after, before, strict=True)
    ]
    assert delivered == [0, 25, 0]
    for x, y in zip(after, before, strict=True):
        for kind in ("request", "answer", "control"):
            assert x.get(kind, 0) == y.get(kind, 0), kind
    # Broadcasts, and every node's probes, do reach every node.
    await alice.emit("system:general", {"type": "news"})
    await bob.expect("system:general")

    async def everyone_decoded_it() -> bool:
        return all(frames(s).get("broadcast", 0) >= 1 for s in (a, b, c))

    await wait_until(everyone_decoded_it, timeout=3)
    assert all(frames(s).get("probe", 0) > 0 for s in (a, b, c))


# -- route caches -------------------------------------------------------------------------


def route_cache_of(server: LiveServer) -> RouteCache:
    assert server.gateway is not None
    store = server.gateway.hub.store
    assert isinstance(store, RedisStore) and store.routes is not None
    return store.routes


async def forgets(server: LiveServer, name: str) -> None:
    """Until *server*'s route cache no longer answers for *name* (an announcement reached it)."""
    cache = route_cache_of(server)
    await eventually(lambda: cache.get(name) is None, timeout=3)


async def cached_route(sender: Client, server: LiveServer, name: str) -> list[str]:
    """Direct messages to *name* until *server* keeps its route (an announcement that arrives
    while a lookup is out keeps that answer out of the cache); the nodes it routes to."""
    cache = route_cache_of(server)

    async def kept() -> tuple[Address, ...] | None:
        assert await direct(sender, name) == "ok"
        return cache.get(name)

    return [address.node for address in await eventually(kept, timeout=3)]


async def test_a_user_who_moves_is_followed_by_every_nodes_route_cache(
    hub: Hub, clients: Clients
) -> None:
    a, b, c = hub.start_local(3)
    alice = await clients.connect(a.url, "alice")
    bob = await clients.connect(b.url, "bob")
    assert await cached_route(alice, a, "bob") == [backplane_of(b).node_id]

    await bob.close()
    await forgets(a, "bob")
    assert await direct(alice, "bob", n=2) == "not_found"
    assert route_cache_of(a).get("bob") == ()  # remembered as absent ...
    bob_again = await clients.connect(c.url, "bob")
    await forgets(a, "bob")  # ... until the name is claimed again, on another node
    assert await direct(alice, "bob", n=3) == "ok"
    assert (await bob_again.expect("system:direct"))["n"] == 3
    assert await cached_route(alice, a, "bob") == [backplane_of(c).node_id]
    assert frames(b).get("routes", 0) > 0 and frames(c).get("routes", 0) > 0


async def test_announcements_missed_while_unsubscribed_forget_every_route(
    hub: Hub, clients: Clients
) -> None:
    a, b = hub.start_local(2)
    alice = await clients.connect(a.url, "alice")
    await clients.connect(b.url, "bob")
    await cached_route(alice, a, "bob")
    plane = backplane_of(a)

    async def resubscribe() -> None:
        # The broadcast subscription restarts, as after a lost connection or a failed probe.
        plane._restart(plane.broadcast_channel)

    a.call(resubscribe)
    await eventually(lambda: len(route_cache_of(a)) == 0, timeout=3)
    assert await direct(alice, "bob") == "ok"  # asked again, and found


# -- a Sentinel failover ------------------------------------------------------------------


@pytest.mark.parametrize("topology", topologies.params("sentinel"), indirect=True)
async def test_a_sentinel_failover_is_followed_and_lost_writes_restored(
    topology: Topology, hub: Hub, clients: Clients
) -> None:
    sentinel = topology.sentinel
    assert sentinel is not None
    first, second = hub.start_local(2)
    a = await clients.connect(first.url, "alice")
    b = await clients.connect(second.url, "bob")
    new = await asyncio.to_thread(sentinel.promote)
    # Until the old primary becomes a replica, the gateways' open connections still write to
    # it: carol's entry may land there, to be discarded by the resync.
    c = await clients.connect(first.url, "carol")
    await asyncio.to_thread(sentinel.demote, new)

    await becomes(first, 200, timeout=10)
    await becomes(second, 200, timeout=10)

    async def everyone_reachable() -> bool:
        return [await direct(b, name) for name in ("alice", "carol")] == ["ok", "ok"]

    await wait_until(everyone_reachable, timeout=5, step=0.2)
    assert [(await a.expect("system:direct"))["type"], (await c.expect("system:direct"))["type"]]
    impostor = await clients.connect(second.url)
    await impostor.emit("system:setData", {"username": "carol"})
    assert (await impostor.expect("system:dataSet"))["error"] == "Username already taken"
    await a.emit("system:general", {"type": "news", "n": 3})
    for client in (a, b, c, impostor):
        assert (await client.expect("system:general"))["n"] == 3
