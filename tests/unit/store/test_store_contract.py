"""What every presence store promises (store/base.py), checked on each backend: memory, and
Redis on each topology (the ``topology`` fixture of conftest.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from gateway.store.base import Address, Claim, PresenceStore, UsernameTaken
from gateway.store.memory import MemoryStore
from tests.support import topologies
from tests.support.topologies import Topology
from tests.unit.store.conftest import T0, T1, StoreFactory, follower_sids, holders


@pytest.fixture(params=["memory", *topologies.params("single", "cluster", "sentinel")])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def topology(backend: str, request: pytest.FixtureRequest) -> Topology:
    """conftest's, chosen by *backend* here (so that the memory store runs once)."""
    return topologies.resolve(request, backend)


@pytest.fixture
def new_store(
    backend: str, request: pytest.FixtureRequest
) -> Callable[[], Awaitable[PresenceStore]]:
    if backend == "memory":

        async def memory() -> PresenceStore:
            return MemoryStore()

        return memory
    # Only a Redis backend needs the Redis fixtures (and their topology).
    make_store: StoreFactory = request.getfixturevalue("make_store")
    return lambda: make_store("n1")


@pytest.fixture
async def store(new_store: Callable[[], Awaitable[PresenceStore]]) -> PresenceStore:
    return await new_store()


async def test_usernames_are_unique_and_released(store: PresenceStore) -> None:
    await store.connect("a", T0)
    await store.connect("b", T0)
    await store.save("a", "alice", {})
    with pytest.raises(UsernameTaken) as taken:
        await store.save("b", "alice", {})
    assert taken.value.holders == [Address("a", store.node_id)]
    await store.disconnect("a")
    await store.save("b", "alice", {})
    assert await holders(store, "alice") == ["b"]


async def test_follower_index_follows_updates_and_disconnects(store: PresenceStore) -> None:
    for sid in ("a", "b"):
        await store.connect(sid, T0)
    await store.save("a", "alice", {"following": ["bob", "carol"]})
    assert await store.followers_of("bob") == [Address("a", store.node_id)]
    await store.save("a", "alice", {"following": ["carol"]})
    assert await follower_sids(store, "bob") == []
    await store.disconnect("a")
    assert await follower_sids(store, "carol") == []


async def test_counts_keep_the_total(store: PresenceStore) -> None:
    await store.connect("a", T0)
    await store.connect("b", T0)
    await store.disconnect("a")
    counts = await store.counts()
    assert (counts.active, counts.total) == (1, 2)


async def test_renames_release_the_old_name(store: PresenceStore) -> None:
    await store.connect("a", T0)
    await store.save("a", "alice", {})
    await store.save("a", "alice", {})  # its own name again
    await store.save("a", "alicia", {})
    assert (await holders(store, "alice"), await holders(store, "alicia")) == ([], ["a"])
    await store.save("a", None, {})
    assert await holders(store, "alicia") == []
    with pytest.raises(KeyError):
        await store.save("nobody", "nemo", {})
    gone = await store.disconnect("a")
    assert gone is not None and gone.connect_time == T0 and gone.username is None
    assert await store.get("a") is None
    assert await store.disconnect("a") is None
    assert await store.clients() == []


async def test_a_refused_claim_changes_nothing(store: PresenceStore) -> None:
    await store.connect("a", T0)
    await store.connect("b", T1)
    await store.save("a", "alice", {})
    await store.save("b", "bob", {"following": ["carol"], "status": "here"})
    with pytest.raises(UsernameTaken):
        await store.save("b", "alice", {"following": ["dave"]})
    b = await store.get("b")
    assert b is not None and (b.username, b.metadata["status"]) == ("bob", "here")
    assert await holders(store, "bob") == ["b"]
    assert (await follower_sids(store, "carol"), await follower_sids(store, "dave")) == (["b"], [])


async def test_an_away_holder_is_displaced_by_a_claim(store: PresenceStore) -> None:
    await store.connect("a", T0)
    await store.connect("b", T1)
    await store.save("a", "alice", {"following": ["carol"]})
    assert await store.set_away("a", True)
    assert await store.connections_of("alice") == [Address("a", store.node_id, away=True)]
    saved = await store.save("b", "alice", {})
    assert saved.displaced == [Address("a", store.node_id, away=True)]
    assert await holders(store, "alice") == ["b"]
    # The displaced connection is gone from the store, followers and all.
    assert await store.get("a") is None and await follower_sids(store, "carol") == []
    assert not await store.set_away("a", False)


async def test_evict_displaces_a_holder_found_dead(store: PresenceStore) -> None:
    for sid in ("a", "b", "c"):
        await store.connect(sid, T0)
    await store.save("a", "alice", {})
    with pytest.raises(UsernameTaken):
        await store.save("b", "alice", {}, evict="c")  # evicting someone else changes nothing
    saved = await store.save("b", "alice", {}, evict="a")
    assert saved.displaced == [Address("a", store.node_id)]
    assert await holders(store, "alice") == ["b"]


async def test_multi_keeps_every_holder_and_replace_keeps_one(store: PresenceStore) -> None:
    for sid in ("a", "b", "c"):
        await store.connect(sid, T0)
    await store.save("a", "alice", {}, claim=Claim.MULTI)
    saved = await store.save("b", "alice", {}, claim=Claim.MULTI)
    assert saved.displaced == [] and await holders(store, "alice") == ["a", "b"]
    replaced = await store.save("c", "alice", {}, claim=Claim.REPLACE)
    assert sorted(a.sid for a in replaced.displaced) == ["a", "b"]
    assert await holders(store, "alice") == ["c"]


async def test_record_knows_the_node_and_the_private_id(store: PresenceStore) -> None:
    await store.connect("a", T0, pid_hash="digest")
    record = await store.record("a")
    assert record is not None and (record.node, record.pid_hash, record.away) == (
        store.node_id,
        "digest",
        False,
    )
    await store.set_away("a", True)
    record = await store.record("a")
    assert record is not None and record.away
    assert await store.record("nobody") is None


async def test_away_connections_are_neither_listed_nor_counted(store: PresenceStore) -> None:
    for sid in ("a", "b"):
        await store.connect(sid, T0)
    await store.save("a", "alice", {})
    assert await store.set_away("a", True)
    assert [p.sid for p in await store.clients()] == ["b"]
    counts = await store.counts()
    assert (counts.active, counts.total) == (1, 2)
    assert await store.connections_of("alice") == [Address("a", store.node_id, away=True)]
    assert await store.set_away("a", False)  # resumed
    assert sorted(p.sid for p in await store.clients()) == ["a", "b"]
    assert (await store.counts()).active == 2
    await store.set_away("a", True)
    await store.disconnect("a")  # an away connection that ends leaves no trace in the counts
    assert (await store.counts()).active == 1
