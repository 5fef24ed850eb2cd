"""The route cache on its own: what it keeps, for how long, and what it refuses to keep."""

from __future__ import annotations

from gateway.store.base import Address
from gateway.store.route_cache import RouteCache

BOB_ON_B = (Address("s1", "node-b", False),)
BOB_ON_C = (Address("s2", "node-c", False),)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def a_cache(*, ttl: float = 30.0, size: int = 100) -> tuple[RouteCache, Clock]:
    clock = Clock()
    return RouteCache(ttl=ttl, size=size, clock=clock), clock


def test_an_answer_is_kept_until_its_name_changes() -> None:
    cache, _ = a_cache()
    assert cache.get("bob") is None
    cache.store("bob", BOB_ON_B, cache.ticket())
    assert cache.get("bob") == BOB_ON_B
    assert (cache.hits, cache.misses) == (1, 1)
    cache.forget(["alice"])
    assert cache.get("bob") == BOB_ON_B
    cache.forget(["bob"])
    assert cache.get("bob") is None


def test_an_absent_name_is_kept_as_absent() -> None:
    cache, _ = a_cache()
    cache.store("carol", [], cache.ticket())
    assert cache.get("carol") == ()


def test_an_answer_older_than_a_change_of_its_name_is_not_kept() -> None:
    """Read from Redis before bob moved, stored after the move was announced: dropped."""
    cache, _ = a_cache()
    ticket = cache.ticket()
    cache.forget(["bob"])  # announced while the lookup was in flight
    cache.store("bob", BOB_ON_B, ticket)
    assert cache.get("bob") is None


def test_an_answer_outliving_changes_of_other_names_is_kept() -> None:
    cache, _ = a_cache()
    ticket = cache.ticket()
    cache.forget(["alice", "carol"])
    cache.store("bob", BOB_ON_B, ticket)
    assert cache.get("bob") == BOB_ON_B


def test_an_answer_outliving_a_forget_all_or_too_many_changes_is_not_kept() -> None:
    cache, _ = a_cache()
    ticket = cache.ticket()
    cache.forget_all()
    cache.store("bob", BOB_ON_B, ticket)
    assert cache.get("bob") is None

    ticket = cache.ticket()
    cache.forget([f"user{n}" for n in range(5000)])  # more than it remembers
    cache.store("bob", BOB_ON_B, ticket)
    assert cache.get("bob") is None
    cache.store("bob", BOB_ON_B, cache.ticket())
    assert cache.get("bob") == BOB_ON_B


def test_forget_all_and_forget_node() -> None:
    cache, _ = a_cache()
    for name, route in (("bob", BOB_ON_B), ("carl", BOB_ON_C), ("dora", ())):
        cache.store(name, route, cache.ticket())
    cache.forget_node("node-b")
    assert (cache.get("bob"), cache.get("carl"), cache.get("dora")) == (None, BOB_ON_C, ())
    cache.forget_all()
    assert len(cache) == 0


def test_entries_age_out_and_the_oldest_leaves_first() -> None:
    cache, clock = a_cache(ttl=5.0, size=2)
    cache.store("a", BOB_ON_B, cache.ticket())
    clock.now += 4.9
    assert cache.get("a") == BOB_ON_B
    clock.now += 0.1
    assert cache.get("a") is None  # ttl reached

    cache.store("a", BOB_ON_B, cache.ticket())
    cache.store("b", BOB_ON_B, cache.ticket())
    cache.store("a", BOB_ON_C, cache.ticket())  # refreshed: now the newest
    cache.store("c", BOB_ON_B, cache.ticket())  # full: "b" leaves
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (BOB_ON_C, None, BOB_ON_B)
    assert len(cache) == 2
