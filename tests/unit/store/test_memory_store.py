import pytest

from gateway.store.base import UsernameTaken
from gateway.store.memory import MemoryStore

T0 = "2026-01-01T00:00:00.000Z"


async def test_usernames_are_unique_and_released() -> None:
    store = MemoryStore()
    await store.connect("a", T0)
    await store.connect("b", T0)
    await store.save("a", "alice", {})
    with pytest.raises(UsernameTaken):
        await store.save("b", "alice", {})
    await store.disconnect("a")
    await store.save("b", "alice", {})
    assert await store.sid_of("alice") == "b"


async def test_follower_index_follows_updates_and_disconnects() -> None:
    store = MemoryStore()
    for sid in ("a", "b"):
        await store.connect(sid, T0)
    await store.save("a", "alice", {"following": ["bob", "carol"]})
    assert await store.followers_of("bob") == ["a"]
    await store.save("a", "alice", {"following": ["carol"]})
    assert await store.followers_of("bob") == []
    await store.disconnect("a")
    assert await store.followers_of("carol") == []


async def test_counts_keep_the_total() -> None:
    store = MemoryStore()
    await store.connect("a", T0)
    await store.connect("b", T0)
    await store.disconnect("a")
    counts = await store.counts()
    assert (counts.active, counts.total) == (1, 2)
