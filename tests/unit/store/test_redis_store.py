"""The Redis presence store against a real Redis: one node, several nodes, dead nodes, outages.

Every test runs on a single Redis and on a Redis Cluster (the ``topology`` fixture), works
under its own key prefix and deletes it afterwards, so tests never see each other's keys and
the Redis can be shared. ``WSHUB_TEST_REDIS_URL`` points the single-Redis runs elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from gateway.store.base import Address, StoreUnavailable, UsernameTaken
from gateway.store.redis import RedisStore
from gateway.store.redis_topology import AnyRedis
from tests.support import topologies
from tests.support.redis_cluster import ClusterNode
from tests.support.topologies import Topology
from tests.unit.store.conftest import (
    LEASE,
    REAP_BOUND,
    T0,
    T1,
    StoreFactory,
    eventually,
    follower_sids,
    holders,
    tagged,
    wipe,
)

# -- one node ---------------------------------------------------------------------------------


async def test_presence_snapshots_are_copies(make_store: StoreFactory) -> None:
    store = await make_store("n1")
    await store.connect("a", T0)
    assert await store.get("a") == await store.get("a")
    fresh = await store.get("a")
    assert fresh is not None and (fresh.username, dict(fresh.metadata)) == (None, {})

    metadata = {"following": ["bob", "bob", 7], "profile": {"age": 3}, "status": "busy"}
    saved = (await store.save("a", "alice", metadata)).presence
    metadata["status"] = "changed by the caller afterwards"
    assert saved.connect_time == T0 and saved.metadata["status"] == "busy"
    got = await store.get("a")
    assert got is not None and got == saved and got.metadata is not saved.metadata
    assert got.following == ["bob", "bob", 7] and got.profile == {"age": 3}
    assert await follower_sids(store, "bob") == ["a"]


# -- several nodes on one Redis -------------------------------------------------------------


async def test_nodes_share_names_followers_clients_and_counts(make_store: StoreFactory) -> None:
    n1, n2 = await make_store("n1"), await make_store("n2")
    await n1.connect("a", T0)
    await n2.connect("b", T1)
    await n2.connect("c", T1)
    await n1.save("a", "alice", {"following": ["bob"], "profile": {"x": 1}})
    with pytest.raises(UsernameTaken):
        await n2.save("b", "alice", {})
    await n2.save("b", "bob", {"following": ["alice"]})
    await n2.save("c", "carol", {"following": ["bob"]})

    assert await holders(n2, "alice") == ["a"]
    assert await follower_sids(n1, "bob") == ["a", "c"]
    assert await follower_sids(n1, "alice") == ["b"]
    for node in (n1, n2):
        clients = await node.clients()
        assert [(p.sid, p.username) for p in clients] == [
            ("a", "alice"),
            ("b", "bob"),
            ("c", "carol"),
        ]
        assert clients[0].profile == {"x": 1}
        counts = await node.counts()
        assert (counts.active, counts.total) == (3, 3)

    gone = await n2.disconnect("a")  # any node may drop any connection
    assert gone is not None and (gone.username, gone.following) == ("alice", ["bob"])
    # (n1 still reads "a" from its own copy: in the gateway only the owning node ends its
    # connections, and a reaped one is written back by its owner's restore.)
    assert await n2.get("a") is None and await holders(n1, "alice") == []
    assert await follower_sids(n1, "bob") == ["c"]
    await n1.save("b", "bobby", {})  # and update it
    assert await holders(n2, "bobby") == ["b"]
    assert (await n2.counts()).active == 2


async def test_route_caches_wired_together_follow_every_change(make_store: StoreFactory) -> None:
    """Each node remembers where names are; the changes one node makes reach the other's cache
    (as the backplane carries them in the gateway), so no answer is ever stale."""
    n1 = await make_store("n1", route_cache_seconds=30)
    n2 = await make_store("n2", route_cache_seconds=30)
    n1.on_routes_changed(n2.forget_routes)
    n2.on_routes_changed(n1.forget_routes)
    assert n1.routes is not None
    await n1.connect("a", T0)
    await n2.connect("b", T1)
    assert await n1.connections_of("bob") == []  # absent, and remembered as absent
    await n2.save("b", "bob", {})
    assert await n1.connections_of("bob") == [Address("b", "n2", False)]
    hits = n1.routes.hits
    assert await n1.connections_of("bob") == [Address("b", "n2", False)]
    assert n1.routes.hits == hits + 1  # from memory: no round trip

    await n2.set_away("b", True)  # its transport is gone; it waits for recovery
    assert await n1.connections_of("bob") == [Address("b", "n2", True)]
    moved = await n2.move("b", "n1")  # and resumes on n1
    assert moved is not None
    n1.adopt(moved, "")
    assert await n1.connections_of("bob") == [Address("b", "n1", False)]
    assert await n2.connections_of("bob") == [Address("b", "n1", False)]
    await n1.save("b", "bobby", {})  # renamed by its new holder
    assert await n2.connections_of("bob") == []
    assert await n2.connections_of("bobby") == [Address("b", "n1", False)]
    await n1.disconnect("b")
    assert await n2.connections_of("bobby") == []

    await n1.connect("c", T1)
    await n1.save("c", "carol", {})
    assert await n2.connections_of("carol") == [Address("c", "n1", False)]
    await n1.close()  # a node that closes takes its names with it
    assert await n2.connections_of("carol") == []


async def test_concurrent_claims_of_one_name_have_one_winner(make_store: StoreFactory) -> None:
    n1, n2 = await make_store("n1"), await make_store("n2")
    claimants = [(n1 if i % 2 else n2, f"s{i}") for i in range(40)]
    for node, sid in claimants:
        await node.connect(sid, T0)

    async def claim(node: RedisStore, sid: str) -> str | None:
        try:
            await node.save(sid, "alice", {"following": [sid]})
        except UsernameTaken:
            return None
        return sid

    winners = [sid for sid in await asyncio.gather(*(claim(*c) for c in claimants)) if sid]
    assert len(winners) == 1
    assert await holders(n1, "alice") == await holders(n2, "alice") == winners
    # The losers' metadata was not written either.
    assert [sid for _, sid in claimants if await n1.followers_of(sid)] == winners


async def test_close_removes_the_nodes_connections(
    make_store: StoreFactory, redis: AnyRedis, prefix: str
) -> None:
    n1, n2 = await make_store("n1"), await make_store("n2")
    await n1.connect("a", T0)
    await n1.save("a", "alice", {"following": ["bob"]})
    await n2.connect("b", T0)
    await n1.close()
    assert await holders(n2, "alice") == [] and await follower_sids(n2, "bob") == []
    assert [p.sid for p in await n2.clients()] == ["b"]
    assert await redis.smembers(f"{tagged(prefix)}nodes") == {"n2"}
    assert not [key async for key in redis.scan_iter(match=f"{tagged(prefix)}node:n1*")]


# -- dead nodes -----------------------------------------------------------------------------

NODE_PROCESS = """
import asyncio, sys
from gateway.store.redis import RedisStore

async def main(url, prefix, node_id, lease):
    store = RedisStore(url, node_id=node_id, prefix=prefix, lease_seconds=float(lease))
    await store.start()
    await store.connect("doomed", "2026-01-01T00:00:00.000Z")
    await store.save("doomed", "dora", {"following": ["bob"]})
    print("ready", flush=True)
    await asyncio.sleep(60)

asyncio.run(main(*sys.argv[1:]))
"""


@contextlib.asynccontextmanager
async def node_process(
    topology: Topology, prefix: str, node_id: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Another process holding connection "doomed" as "dora"; killed (SIGKILL) at the latest
    when the block ends."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        NODE_PROCESS,
        topology.url,
        prefix,
        node_id,
        str(LEASE),
        cwd=Path(__file__).parents[3],
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        assert await asyncio.wait_for(process.stdout.readline(), 10) == b"ready\n"
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_a_killed_node_is_reaped_within_the_lease(
    make_store: StoreFactory, topology: Topology, prefix: str
) -> None:
    survivor = await make_store("survivor")
    await survivor.connect("b", T0)
    async with node_process(topology, prefix, "victim") as victim:
        assert await holders(survivor, "dora") == ["doomed"]
        assert await follower_sids(survivor, "bob") == ["doomed"]
        victim.kill()
        await victim.wait()

        async def reaped() -> bool:
            return await holders(survivor, "dora") == []

        took = await eventually(reaped, timeout=REAP_BOUND + 1)
    assert took < REAP_BOUND + 0.3, took
    assert await follower_sids(survivor, "bob") == []
    assert [p.sid for p in await survivor.clients()] == ["b"]
    counts = await survivor.counts()
    assert (counts.active, counts.total) == (1, 2)
    await survivor.connect("d", T1)
    await survivor.save("d", "dora", {})  # the name is free again


async def test_a_restarted_node_drops_what_its_predecessor_left(
    make_store: StoreFactory, topology: Topology, prefix: str
) -> None:
    async with node_process(topology, prefix, "n1"):
        pass  # killed before it could clean up, its lease still running
    other = await make_store("n2")
    assert await holders(other, "dora") == ["doomed"]
    successor = await make_store("n1")
    assert await holders(other, "dora") == []
    assert await successor.clients() == []


# -- Redis unavailable ----------------------------------------------------------------------


NOWHERE = {
    "single": "redis://127.0.0.1:1/0",
    "cluster": "redis+cluster://127.0.0.1:1",
    "sentinel": "redis+sentinel://127.0.0.1:1/0/wshub",
}


async def test_unreachable_redis_raises_store_unavailable(topology: Topology, prefix: str) -> None:
    store = RedisStore(NOWHERE[topology.name], node_id="n1", prefix=prefix, timeout=1)
    calls: list[Callable[[], Awaitable[Any]]] = [
        store.start,
        store.ping,
        store.restore,
        lambda: store.connect("a", T0),
        lambda: store.disconnect("a"),
        lambda: store.get("a"),
        lambda: store.save("a", "alice", {}),
        lambda: store.connections_of("alice"),
        lambda: store.followers_of("alice"),
        store.clients,
        store.counts,
    ]
    loop = asyncio.get_running_loop()
    for call in calls:
        began = loop.time()
        with pytest.raises(StoreUnavailable):
            await call()
        # Within the timeout (1 s) plus slack: no retries with backoff on top of it.
        assert loop.time() - began < 2.0
    assert not store.healthy
    await store.close()  # logs, does not raise


class Proxy:
    """A TCP relay to Redis that can be cut and brought back on the same port: an outage."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._url = parts
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        """The Redis URL, password and database kept, through the relay."""
        credentials, _, _ = self._url.netloc.rpartition("@")
        netloc = f"{credentials}@127.0.0.1:{self.port}" if credentials else f"127.0.0.1:{self.port}"
        return urlunsplit(self._url._replace(netloc=netloc))

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


class Outage:
    """Redis goes away and comes back empty: through a relay that is cut (one Redis), or by
    killing the cluster master that serves the store's slot and restarting it."""

    def __init__(self, topology: Topology, redis: AnyRedis, prefix: str) -> None:
        self._topology = topology
        self._redis = redis
        self._prefix = prefix
        self._proxy = Proxy(topology.url) if topology.cluster is None else None
        self._killed: ClusterNode | None = None

    async def start(self) -> str:
        """The URL the store should use."""
        if self._proxy is None:
            return self._topology.url
        await self._proxy.start()
        return self._proxy.url

    async def cut(self) -> None:
        if self._proxy is not None:
            await self._proxy.stop()
            return
        cluster = self._topology.cluster
        assert cluster is not None
        self._killed = cluster.owner_of(tagged(self._prefix))
        await asyncio.to_thread(cluster.kill, self._killed)

    async def mend(self) -> None:
        if self._proxy is not None:
            await wipe(self._redis, self._prefix)  # what a restart without persistence leaves
            await self._proxy.start()
            return
        cluster = self._topology.cluster
        assert cluster is not None and self._killed is not None
        await asyncio.to_thread(cluster.restart, self._killed)  # no persistence: empty

    async def close(self) -> None:
        if self._proxy is not None:
            await self._proxy.stop()


@pytest.fixture
async def outage(topology: Topology, redis: AnyRedis, prefix: str) -> AsyncIterator[Outage]:
    made = Outage(topology, redis, prefix)
    yield made
    await made.close()


# (On Sentinel an outage of the primary is a failover: see the test after the next one.)
@pytest.mark.parametrize("topology", topologies.params("single", "cluster"), indirect=True)
async def test_outage_then_empty_restart_restores_the_node(
    make_store: StoreFactory, outage: Outage
) -> None:
    store = await make_store("n1", url=await outage.start(), timeout=1)
    await store.connect("a", T0)
    await store.save("a", "alice", {"following": ["bob"], "profile": {"x": 1}})
    assert store.healthy

    await outage.cut()
    with pytest.raises(StoreUnavailable):
        await store.ping()
    assert not store.healthy
    with pytest.raises(StoreUnavailable):
        await store.connect("b", T1)

    await outage.mend()

    async def healthy() -> bool:
        return store.healthy

    await eventually(healthy, timeout=LEASE)  # the next lease tick restores
    restored = await store.get("a")
    assert restored is not None
    assert (restored.username, restored.profile) == ("alice", {"x": 1})
    assert await holders(store, "alice") == ["a"] and await follower_sids(store, "bob") == ["a"]
    assert [p.sid for p in await store.clients()] == ["a"]  # "b" was never accepted
    counts = await store.counts()
    assert (counts.active, counts.total) == (1, 1)


async def test_restore_after_a_wipe_keeps_names_claimed_meanwhile(
    make_store: StoreFactory,
    redis: AnyRedis,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    n1 = await make_store("n1")
    await n1.connect("a", T0)
    await n1.connect("b", T0)
    await n1.save("a", "alice", {"following": ["carol"]})
    await n1.save("b", "bob", {"status": "here"})
    await wipe(redis, prefix)
    n2 = await make_store("n2")
    await n2.connect("c", T1)
    await n2.save("c", "bob", {})

    with caplog.at_level(logging.WARNING, logger="wshub.store"):
        await n1.restore()
    assert "'bob'" in caplog.text

    assert await holders(n2, "alice") == ["a"] and await follower_sids(n2, "carol") == ["a"]
    assert await holders(n2, "bob") == ["c"]
    b = await n2.get("b")
    assert b is not None and (b.username, b.metadata["status"]) == (None, "here")
    await n1.save("b", "bobby", {})  # the mirror knows it has no name now
    counts = await n2.counts()
    assert (counts.active, counts.total) == (3, 3)  # n1's two and n2's one


async def test_healthy_needs_a_current_lease(make_store: StoreFactory) -> None:
    now = [0.0]
    store = await make_store("n1", clock=lambda: now[0])
    assert store.healthy
    now[0] += LEASE
    assert not store.healthy  # the other nodes may have reaped this one by now


async def test_a_burst_of_disconnects_waits_for_the_pool(make_store: StoreFactory) -> None:
    """Far more simultaneous calls than pooled connections: queued, not failed."""
    store = await make_store("n1")
    sids = [f"s{i}" for i in range(300)]
    await asyncio.gather(*(store.connect(sid, T0) for sid in sids))
    await asyncio.gather(*(store.save(sid, f"user{sid}", {}) for sid in sids))
    gone = await asyncio.gather(*(store.disconnect(sid) for sid in sids))
    assert all(presence is not None for presence in gone)
    assert (await store.counts()).active == 0


@pytest.mark.parametrize("topology", topologies.params("sentinel"), indirect=True)
async def test_writes_lost_in_a_failover_are_restored(
    topology: Topology,
    make_store: StoreFactory,
    redis: AnyRedis,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Sentinel failover: the store's open connections still write to the old primary until
    it is made a replica, which discards those writes. The node notices at its next tick."""
    sentinel = topology.sentinel
    assert sentinel is not None
    n1 = await make_store("n1", lease_seconds=3 * LEASE)  # a tick a second
    await n1.connect("a", T0)
    await n1.save("a", "alice", {"following": ["carol"]})
    # Replicated before the failover (the stream is in order: WAIT for a write made after).
    await redis.set(f"{tagged(prefix)}mark", "1")
    assert await redis.execute_command("WAIT", 1, 5000) == 1
    new = await asyncio.to_thread(sentinel.promote)
    # n1's lease must not lapse on the new primary meanwhile (its renewals go to the old one):
    # the lost writes alone must be what brings it to restore.
    lease = f"{tagged(prefix)}node:n1"
    await redis.set(lease, await redis.get(lease) or "", px=60_000)
    await n1.connect("b", T1)  # on a connection to the old primary
    await n1.save("b", "bob", {})
    await asyncio.to_thread(sentinel.demote, new)
    n2 = await make_store("n2")  # connects to the new primary

    async def restored() -> bool:
        return await holders(n2, "bob") == ["b"]

    with caplog.at_level(logging.WARNING, logger="wshub.store"):
        await eventually(restored, timeout=1.5 * LEASE)  # (n1 may have restored already)
    assert "Redis lost 2 of node n1's writes" in caplog.text
    assert "lost its lease" not in caplog.text
    assert await holders(n2, "alice") == ["a"] and await follower_sids(n2, "carol") == ["a"]
    assert [p.sid for p in await n2.clients()] == ["a", "b"]
    await n2.connect("c", T1)
    with pytest.raises(UsernameTaken):
        await n2.save("c", "bob", {})


async def test_a_cancelled_task_stops_at_its_next_redis_call(make_store: StoreFactory) -> None:
    """redis-py (asyncio.wait_for on Python 3.11) swallows a cancellation that arrives as a
    command is sent; the store raises it again, so a loop around it ends when told."""
    store = await make_store("n1")

    async def poll() -> None:
        while True:
            await store.counts()

    for n in range(30):
        task = asyncio.ensure_future(poll())
        await asyncio.sleep(n / 3000)  # somewhere in the first 10 ms: mostly mid-command
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2)
        assert task in done and task.cancelled(), f"cancellation {n} was lost"


async def test_cleanup_after_a_cancellation_may_still_use_the_store(
    make_store: StoreFactory,
) -> None:
    store = await make_store("n1")
    await store.connect("a", T0)
    await store.connect("b", T0)
    entered = asyncio.Event()

    async def serve_then_clean_up() -> None:
        try:
            entered.set()
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await store.disconnect("a")  # a cancellation received is not a lost one
            await store.disconnect("b")
            raise

    task = asyncio.ensure_future(serve_then_clean_up())
    await entered.wait()
    task.cancel()
    await asyncio.wait({task}, timeout=2)
    assert task.cancelled()
    assert (await store.counts()).active == 0
