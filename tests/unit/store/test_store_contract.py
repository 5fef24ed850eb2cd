"""What every presence store promises (store/base.py), checked on each backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.store.base import PresenceStore, UsernameTaken
from gateway.store.memory import MemoryStore
from tests.unit.store.conftest import T0, T1, StoreFactory


@pytest.fixture(params=["memory", "redis"])
async def store(
    request: pytest.FixtureRequest, make_store: StoreFactory
) -> AsyncIterator[PresenceStore]:
    yield MemoryStore() if request.param == "memory" else await make_store("n1")


async def test_usernames_are_unique_and_released(store: PresenceStore) -> None:
    await store.connect("a", T0)
    await store.connect("b", T0)
    await store.save("a", "alice", {})
    with pytest.raises(UsernameTaken):
        await store.save("b", "alice", {})
    await store.disconnect("a")
    await store.save("b", "alice", {})
    assert await store.sid_of("alice") == "b"


async def test_follower_index_follows_updates_and_disconnects(store: PresenceStore) -> None:
    for sid in ("a", "b"):
        await store.connect(sid, T0)
    await store.save("a", "alice", {"following": ["bob", "carol"]})
    assert await store.followers_of("bob") == ["a"]
    await store.save("a", "alice", {"following": ["carol"]})
    assert await store.followers_of("bob") == []
    await store.disconnect("a")
    assert await store.followers_of("carol") == []


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
    assert (await store.sid_of("alice"), await store.sid_of("alicia")) == (None, "a")
    await store.save("a", None, {})
    assert await store.sid_of("alicia") is None
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
    assert await store.sid_of("bob") == "b"
    assert (await store.followers_of("carol"), await store.followers_of("dave")) == (["b"], [])
