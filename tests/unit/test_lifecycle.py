"""The connection state table without sockets: every transition, every illegal one, and the
resource invariant (``held <= ALLOWED[state]``, each resource released exactly once) under
random event sequences."""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Awaitable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from gateway.lifecycle import (
    ALLOWED,
    ENTERS,
    LIVE,
    TRANSITIONS,
    Connection,
    ConnectionTable,
    Event,
    IllegalTransition,
    Resource,
    State,
)

S, E, R = State, Event, Resource
# What the driver acquires itself (the rest comes with entering a state).
DRIVER_HELD = frozenset({R.ADMISSION, R.TRANSPORT, R.PRESENCE, R.EXPIRY})
ASYNC_RELEASE = frozenset({R.PRESENCE, R.TYPING, R.TRANSPORT})


class Ledger:
    """A recording :class:`~gateway.lifecycle.Resources`: every acquisition and release, and
    the state the connection was in when an asynchronous release actually ran."""

    def __init__(self) -> None:
        self.live: set[Resource] = set()
        self.acquired: Counter[Resource] = Counter()
        self.released: Counter[Resource] = Counter()
        self.given: Counter[Resource] = Counter()
        self.calls: list[tuple[str, Resource]] = []
        self.ran_in: list[tuple[Resource, State]] = []

    def acquire(self, connection: Connection, resource: Resource) -> None:
        assert resource in ENTERS.get(connection.state, ()), (resource, connection.state)
        self.take(resource)
        self.calls.append(("acquire", resource))

    def take(self, resource: Resource) -> None:
        assert resource not in self.live, f"{resource} acquired twice"
        self.live.add(resource)
        self.acquired[resource] += 1

    def release(self, connection: Connection, resource: Resource) -> Awaitable[None] | None:
        assert resource in self.live, f"{resource} released without being held"
        assert resource not in connection.held
        self.live.discard(resource)
        self.released[resource] += 1
        self.calls.append(("release", resource))
        if resource not in ASYNC_RELEASE:
            return None

        async def finish() -> None:
            self.ran_in.append((resource, connection.state))

        return finish()

    def give(self, connection: Connection, resource: Resource) -> None:
        connection.give(resource)
        self.live.discard(resource)
        self.given[resource] += 1


def new_connection(ledger: Ledger | None = None) -> tuple[Connection, Ledger]:
    ledger = ledger or Ledger()
    connection = Connection("eio", "10.0.0.1", ledger)
    for resource in (R.ADMISSION, R.TRANSPORT):  # what Sessions.open records
        ledger.take(resource)
        assert connection.hold(resource) is None
    return connection, ledger


def path_to(target: State) -> list[Event]:
    """The shortest event sequence from PENDING to *target* (breadth first)."""
    paths: dict[State, list[Event]] = {S.PENDING: []}
    queue = deque([S.PENDING])
    while queue:
        state = queue.popleft()
        for (source, event), after in TRANSITIONS.items():
            if source is state and after not in paths:
                paths[after] = [*paths[state], event]
                queue.append(after)
    return paths[target]


async def reach(target: State) -> tuple[Connection, Ledger]:
    connection, ledger = new_connection()
    for event in path_to(target):
        if event is E.ACCEPT:  # a CONNECT is admitted with a store entry
            ledger.take(R.PRESENCE)
            assert connection.hold(R.PRESENCE) is None
        await connection.fire(event)
    assert connection.state is target
    return connection, ledger


def test_every_state_is_reachable_and_closed_is_final() -> None:
    assert {S.PENDING} | set(TRANSITIONS.values()) == set(State)
    assert not [key for key in TRANSITIONS if key[0] is S.CLOSED]
    assert set(ALLOWED) == set(State) and ALLOWED[S.CLOSED] == frozenset()
    assert {S.CONNECTED} == LIVE
    for state, entered in ENTERS.items():
        assert entered <= ALLOWED[state], state


@pytest.mark.parametrize(
    ("state", "event"), list(TRANSITIONS), ids=[f"{s.name}-{e.name}" for s, e in TRANSITIONS]
)
async def test_every_transition_of_the_table(state: State, event: Event) -> None:
    connection, ledger = await reach(state)
    before = set(connection.held)
    moves: list[tuple[State, State]] = []
    connection.listener = lambda c, old, new: moves.append((old, new))
    ledger.ran_in.clear()
    assert connection.can(event)
    assert await connection.fire(event) is TRANSITIONS[state, event]
    after = connection.state
    assert moves == [(state, after)]
    assert connection.held <= ALLOWED[after]
    assert connection.held == (before & ALLOWED[after]) | ENTERS.get(after, frozenset())
    # What was let go was released, each once; asynchronous releases ran after the step.
    for resource in before - ALLOWED[after]:
        assert ledger.released[resource] == 1, resource
    assert all(state_then is after for _, state_then in ledger.ran_in)


ILLEGAL = [(s, e) for s in State for e in Event if (s, e) not in TRANSITIONS]


@pytest.mark.parametrize(
    ("state", "event"), ILLEGAL, ids=[f"{s.name}-{e.name}" for s, e in ILLEGAL]
)
async def test_everything_else_raises_and_changes_nothing(state: State, event: Event) -> None:
    connection, ledger = await reach(state)
    held, calls = set(connection.held), list(ledger.calls)
    assert not connection.can(event)
    with pytest.raises(IllegalTransition) as raised:
        await connection.fire(event)
    assert (raised.value.state, raised.value.event) == (state, event)
    assert str(raised.value) == f"{event.value!r} is not allowed in state {state.value!r}"
    assert (connection.state, connection.held, ledger.calls) == (state, held, calls)


async def test_releases_come_in_the_order_of_the_resource_enum() -> None:
    connection, ledger = await reach(S.CONNECTED)
    ledger.take(R.EXPIRY)
    assert connection.hold(R.EXPIRY) is None
    ledger.calls.clear()
    await connection.fire(E.CLIENT_CLOSE)
    assert ledger.calls == [
        ("release", R.HEARTBEAT),
        ("release", R.EXPIRY),
        ("release", R.TYPING),
        ("release", R.PRESENCE),
        ("release", R.ADMISSION),
        ("release", R.TRANSPORT),
    ]
    assert [r for r, _ in ledger.ran_in] == [R.TYPING, R.PRESENCE, R.TRANSPORT]
    assert {state for _, state in ledger.ran_in} == {S.CLOSED}  # after the step, not during


async def test_hold_in_a_state_that_does_not_allow_it_releases_at_once() -> None:
    connection, ledger = await reach(S.CLOSING)  # the client left while the store answered
    ledger.take(R.PRESENCE)
    release = connection.hold(R.PRESENCE)
    assert release is not None and R.PRESENCE not in connection.held
    assert ledger.released[R.PRESENCE] == 1
    await release
    assert ledger.ran_in == [(R.PRESENCE, S.CLOSING)]
    ledger.take(R.EXPIRY)
    assert connection.hold(R.EXPIRY) is None  # released synchronously: nothing to await
    assert ledger.released[R.EXPIRY] == 1 and R.EXPIRY not in connection.held


async def test_hold_twice_is_a_bug() -> None:
    connection, _ = await reach(S.CONNECTING)
    with pytest.raises(RuntimeError, match="transport is already held"):
        connection.hold(R.TRANSPORT)


async def test_give_hands_a_resource_over_without_releasing_it() -> None:
    connection, ledger = await reach(S.CONNECTED)
    ledger.give(connection, R.PRESENCE)  # the session continues on another node
    await connection.fire(E.HAND_OVER)
    assert connection.state is S.CLOSED and connection.held == set()
    assert ledger.released[R.PRESENCE] == 0 and ledger.given[R.PRESENCE] == 1
    assert ledger.released[R.ADMISSION] == ledger.released[R.TRANSPORT] == 1
    with pytest.raises(KeyError):
        connection.give(R.PRESENCE)


async def test_the_table_follows_its_connections() -> None:
    table = ConnectionTable()
    changes: list[tuple[State, State]] = []
    table.on_change(lambda t, c, before: changes.append((before, c.state)))
    first, _ = new_connection()
    second, _ = new_connection()
    second.eio_sid = "eio-2"
    table.track(first)
    table.track(second)
    assert table.by_eio == {"eio": first, "eio-2": second}
    assert table.by_state[S.PENDING] == 2 and table.active == 0
    for connection, sid in ((first, "a"), (second, "b")):
        await connection.fire(E.CONNECT)
        connection.sid = sid
        table.by_sid[sid] = connection
        await connection.fire(E.ACCEPT)
    assert table.active == 2 and [c.sid for c in table.live()] == ["a", "b"]
    await first.fire(E.CLIENT_CLOSE)
    assert table.by_sid == {"b": second} and table.active == 1
    assert table.by_state == Counter({S.CONNECTED: 1, S.CLOSED: 1, S.PENDING: 0, S.CONNECTING: 0})
    assert changes == [
        (S.PENDING, S.CONNECTING),
        (S.CONNECTING, S.CONNECTED),
        (S.PENDING, S.CONNECTING),
        (S.CONNECTING, S.CONNECTED),
        (S.CONNECTED, S.CLOSED),
    ]
    with pytest.raises(AssertionError):
        table.track(first)  # tracked once


# -- random sequences ----------------------------------------------------------------------


class LifecycleMachine(RuleBasedStateMachine):
    """Any sequence of events, holds and gives; the invariant holds throughout, and once the
    connection is CLOSED every resource it ever acquired was released or given, once."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.connection, self.ledger = new_connection()

    def teardown(self) -> None:
        self.loop.close()

    @rule(event=st.sampled_from(list(Event)))
    def fire(self, event: Event) -> None:
        connection = self.connection
        state = connection.state
        if (state, event) in TRANSITIONS:
            assert self.loop.run_until_complete(connection.fire(event)) is connection.state
        else:
            with pytest.raises(IllegalTransition):
                self.loop.run_until_complete(connection.fire(event))
            assert connection.state is state

    @rule(resource=st.sampled_from(sorted(DRIVER_HELD, key=lambda r: r.value)))
    def hold(self, resource: Resource) -> None:
        if resource in self.connection.held:
            with pytest.raises(RuntimeError):
                self.connection.hold(resource)
            return
        self.ledger.take(resource)
        release = self.connection.hold(resource)
        allowed = resource in ALLOWED[self.connection.state]
        assert (release is None) == (allowed or resource not in ASYNC_RELEASE)
        if release is not None:
            self.loop.run_until_complete(release)  # type: ignore[arg-type]
        assert (resource in self.connection.held) == allowed

    @precondition(lambda self: bool(self.connection.held))
    @rule(data=st.data())
    def give(self, data: Any) -> None:
        resource = data.draw(st.sampled_from(sorted(self.connection.held, key=lambda r: r.value)))
        self.ledger.give(self.connection, resource)

    @invariant()
    def held_is_allowed(self) -> None:
        assert self.connection.held <= ALLOWED[self.connection.state]
        assert self.connection.held == self.ledger.live

    @invariant()
    def each_resource_left_once(self) -> None:
        ledger = self.ledger
        for resource in Resource:
            still = 1 if resource in self.connection.held else 0
            assert ledger.acquired[resource] == (
                ledger.released[resource] + ledger.given[resource] + still
            ), resource
        if self.connection.state is S.CLOSED:
            assert self.connection.held == set() and ledger.live == set()


LifecycleMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=30)
test_random_sequences_keep_the_invariant = LifecycleMachine.TestCase


@settings(max_examples=300)
@given(choices=st.lists(st.integers(0, 10), max_size=12))
def test_every_path_to_closed_releases_everything(choices: list[int]) -> None:
    """Random legal paths, then the way out to CLOSED: nothing is left held, and every
    acquisition (a resumed session enters CONNECTED again) had its one release."""
    loop = asyncio.new_event_loop()
    try:
        connection, ledger = new_connection()
        for choice in choices:
            if connection.state is S.CLOSED:
                break
            options = sorted(
                (e for (s, e) in TRANSITIONS if s is connection.state), key=lambda e: e.value
            )
            event = options[choice % len(options)]
            if event is E.ACCEPT:
                ledger.take(R.PRESENCE)
                assert connection.hold(R.PRESENCE) is None
            loop.run_until_complete(connection.fire(event))
        while connection.state is not S.CLOSED:
            state = connection.state
            event = next(
                e
                for e in (E.CLIENT_CLOSE, E.EXPIRE, E.ABORT, E.TRANSPORT_LOST)
                if (state, e) in TRANSITIONS
            )
            loop.run_until_complete(connection.fire(event))
        assert connection.held == set() and ledger.live == set()
        assert ledger.acquired == ledger.released
    finally:
        loop.close()
