"""A connection's lifecycle: one state table, and the resources each state may hold.

Theory of operation
-------------------
A :class:`Connection` is one Socket.IO session of one client. It is created when the client opens
an Engine.IO session and ends in ``CLOSED``; in between it moves only along :data:`TRANSITIONS`.
Anything else (a second CONNECT, an event for a closing connection, a resume of a connection that
is not recovering) raises :class:`IllegalTransition` instead of being silently absorbed.

Every resource a connection holds (its admission slot, its presence-store entry and username,
its heartbeat, its typing indicators, its deadlines, its transport) is named by a
:class:`Resource`, and :data:`ALLOWED` says which a state may hold. The invariant the class keeps
is ``held <= ALLOWED[state]``, at every moment:

* a transition releases, at once, every held resource the new state does not allow, and
  acquires the ones :data:`ENTERS` lists for it (the deadlines, the heartbeat);
* :meth:`Connection.hold` records a resource the driver acquired (an awaited store write, say);
  when the connection has meanwhile reached a state that does not allow it (the client left
  while the store answered), the resource is released straight away;
* :meth:`Connection.give` hands a resource over to another owner (a session that moves to
  another node keeps its store entry), so it is not released here.

Each resource leaves ``held`` exactly once, so it is released exactly once, on every path. The
actions themselves (the store call, the timer, the socket) belong to the driver and reach this
module as a :class:`Resources` implementation: nothing here does I/O, and the table can be
driven in a unit test without a socket (``tests/unit/test_lifecycle.py``).

States::

    PENDING ──connect──▶ CONNECTING ──accept──▶ CONNECTED ──transport lost──▶ RECOVERING
       │                    │    ╲                 │  ▲                           │   │
       │                    │     refuse           │  └───────────resume──────────┘   │
       │                    │       ╲              │                                  │
       │                    │        ▼             ▼                                  │
       ├──server close─────▶ CLOSING ◀──server close─── (also from RECOVERING: ──────┘ closed)
       │                      │
       └─ lost / client close ┴─ lost / client close / abort ──▶ CLOSED ◀── expire / hand over

``RECOVERING`` keeps the session (its id, username and the events addressed to it) after an
abnormal end of its transport, so that the client can resume it; with no recovery window it is
left at once (``EXPIRE``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol


class State(Enum):
    PENDING = "pending"
    """An Engine.IO session without a Socket.IO CONNECT yet; it counts against the caps."""
    CONNECTING = "connecting"
    """The CONNECT is being admitted (authentication, store, recovery)."""
    CONNECTED = "connected"
    """Events flow."""
    RECOVERING = "recovering"
    """The transport ended abnormally; the session waits for its client to resume it."""
    CLOSING = "closing"
    """The server ended the session; the transport is given a bounded time to go."""
    CLOSED = "closed"


class Event(Enum):
    CONNECT = "connect"
    """The client's Socket.IO CONNECT arrived."""
    ACCEPT = "accept"
    """The CONNECT was admitted and answered."""
    REFUSE = "refuse"
    """The CONNECT was refused (CONNECT_ERROR sent)."""
    TRANSPORT_LOST = "transport lost"
    """Transport closed or failed, or the Engine.IO ping timed out: the client may come back."""
    CLIENT_CLOSE = "client close"
    """The client said goodbye (Socket.IO DISCONNECT or Engine.IO CLOSE)."""
    SERVER_CLOSE = "server close"
    """The server ends the session (heartbeat timeout, abuse, drain, ...)."""
    ABORT = "abort"
    """A closing transport did not go within the close timeout: its TCP connection is aborted."""
    RESUME = "resume"
    """A new transport presented this session's private id: the session continues on it."""
    EXPIRE = "expire"
    """A recovering session ends: window over, buffer overflowed, name taken, no recovery."""
    HAND_OVER = "hand over"
    """The session continues elsewhere: another node, or (while connecting) the recovering
    session whose private id this connection presented."""


class Resource(Enum):
    """What a connection may hold. Released in this order: deadlines and the heartbeat first,
    typing (which still needs the store entry to name its sender) before the store entry, the
    admission slot and the transport last."""

    CONNECT_DEADLINE = "connect deadline"
    RECOVERY_DEADLINE = "recovery deadline"
    ABORT_DEADLINE = "abort deadline"
    HEARTBEAT = "heartbeat"
    EXPIRY = "token expiry"
    TYPING = "typing"
    """Typing indicators this connection sends; they stop when its transport goes."""
    PRESENCE = "presence"
    """The presence-store entry: the session id, its username and metadata, its routing."""
    ADMISSION = "admission slot"
    """Counts against the per-address and total caps; belongs to the transport."""
    TRANSPORT = "transport"
    """The Engine.IO session (and its TCP connection)."""


log = logging.getLogger("wshub.lifecycle")

S, E, R = State, Event, Resource

TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.PENDING, E.CONNECT): S.CONNECTING,
    (S.PENDING, E.SERVER_CLOSE): S.CLOSING,
    (S.PENDING, E.TRANSPORT_LOST): S.CLOSED,
    (S.PENDING, E.CLIENT_CLOSE): S.CLOSED,
    (S.CONNECTING, E.ACCEPT): S.CONNECTED,
    (S.CONNECTING, E.REFUSE): S.CLOSING,
    (S.CONNECTING, E.SERVER_CLOSE): S.CLOSING,
    (S.CONNECTING, E.TRANSPORT_LOST): S.CLOSED,
    (S.CONNECTING, E.CLIENT_CLOSE): S.CLOSED,
    (S.CONNECTING, E.HAND_OVER): S.CLOSED,
    (S.CONNECTED, E.TRANSPORT_LOST): S.RECOVERING,
    (S.CONNECTED, E.CLIENT_CLOSE): S.CLOSED,
    (S.CONNECTED, E.SERVER_CLOSE): S.CLOSING,
    (S.CONNECTED, E.HAND_OVER): S.CLOSED,
    (S.RECOVERING, E.RESUME): S.CONNECTED,
    (S.RECOVERING, E.EXPIRE): S.CLOSED,
    (S.RECOVERING, E.SERVER_CLOSE): S.CLOSED,
    (S.RECOVERING, E.HAND_OVER): S.CLOSED,
    (S.CLOSING, E.TRANSPORT_LOST): S.CLOSED,
    (S.CLOSING, E.CLIENT_CLOSE): S.CLOSED,
    (S.CLOSING, E.ABORT): S.CLOSED,
}

ALLOWED: dict[State, frozenset[Resource]] = {
    S.PENDING: frozenset({R.ADMISSION, R.CONNECT_DEADLINE, R.TRANSPORT}),
    S.CONNECTING: frozenset({R.ADMISSION, R.CONNECT_DEADLINE, R.TRANSPORT, R.PRESENCE, R.EXPIRY}),
    S.CONNECTED: frozenset({R.ADMISSION, R.TRANSPORT, R.PRESENCE, R.EXPIRY, R.HEARTBEAT, R.TYPING}),
    S.RECOVERING: frozenset({R.PRESENCE, R.EXPIRY, R.RECOVERY_DEADLINE}),
    S.CLOSING: frozenset({R.ADMISSION, R.TRANSPORT, R.ABORT_DEADLINE}),
    S.CLOSED: frozenset(),
}
"""What each state may hold. Leaving a state releases what the next one does not allow."""

ENTERS: dict[State, frozenset[Resource]] = {
    S.PENDING: frozenset({R.CONNECT_DEADLINE}),
    S.CONNECTED: frozenset({R.HEARTBEAT, R.TYPING}),
    S.RECOVERING: frozenset({R.RECOVERY_DEADLINE}),
    S.CLOSING: frozenset({R.ABORT_DEADLINE}),
}
"""What entering a state acquires by itself (the rest is acquired by the driver, then held)."""

LIVE = frozenset({S.CONNECTED})
"""States whose connections are counted as active and receive events."""


class IllegalTransition(RuntimeError):
    """A step the table does not allow: a bug in the driver or a misbehaving client that the
    driver failed to refuse first. Never silently ignored."""

    def __init__(self, connection: Connection, event: Event) -> None:
        super().__init__(f"{event.value!r} is not allowed in state {connection.state.value!r}")
        self.state = connection.state
        self.event = event


class Resources(Protocol):
    """The driver's actions: acquiring what a state's entry needs and releasing what it held.

    ``release`` may return an awaitable for the part that needs I/O (a store write, telling a
    typing target); :meth:`Connection.fire` awaits it after the state has changed, so nothing
    observes a connection half-way through a step.
    """

    def acquire(self, connection: Connection, resource: Resource) -> None: ...

    def release(self, connection: Connection, resource: Resource) -> Awaitable[None] | None: ...


Listener = Callable[["Connection", State, State], None]
TableListener = Callable[["ConnectionTable", "Connection", State], None]


@dataclass(eq=False)
class Connection:
    """One client session. ``sid`` is its Socket.IO id (``None`` until its CONNECT is taken)."""

    eio_sid: str | None
    address: str
    """The client's address (after trusted proxies), for the per-address caps and the logs."""
    resources: Resources
    listener: Listener | None = None
    sid: str | None = None
    state: State = State.PENDING
    held: set[Resource] = field(default_factory=set)
    close_reason: Any = None
    """Why the server is ending the connection (a :class:`~gateway.protocol.close.CloseReason`)."""
    data: dict[str, Any] = field(default_factory=dict)
    """The driver's per-connection state (identity, transport handle, rate buckets, ...)."""

    def __post_init__(self) -> None:
        self._enter(self.state)

    def can(self, event: Event) -> bool:
        return (self.state, event) in TRANSITIONS

    async def fire(self, event: Event) -> State:
        """Take one step of the table; release what the new state does not allow."""
        target = TRANSITIONS.get((self.state, event))
        if target is None:
            raise IllegalTransition(self, event)
        before = self.state
        self.state = target
        pending = self._reconcile()
        self._enter(target)
        if self.listener is not None:
            self.listener(self, before, target)
        for release in pending:
            # Each release runs whatever the previous one met: a store that is down must not
            # keep the transport open or the slot taken.
            try:
                await release
            except Exception:
                log.exception("releasing a resource of a %s connection failed", target.value)
        return target

    def hold(self, resource: Resource) -> Awaitable[None] | None:
        """Record *resource* as acquired by the driver.

        Returns the release to await when the current state does not allow it (the connection
        moved on while the resource was being acquired): it is released at once.
        """
        if resource in self.held:
            raise RuntimeError(f"{resource.value} is already held")
        self.held.add(resource)
        if resource in ALLOWED[self.state]:
            return None
        return self._release(resource)

    def give(self, resource: Resource) -> None:
        """Hand *resource* to another owner: it leaves this connection without being released."""
        self.held.remove(resource)

    def holds(self, resource: Resource) -> bool:
        return resource in self.held

    def _enter(self, state: State) -> None:
        for resource in ENTERS.get(state, ()):
            if resource not in self.held:
                self.resources.acquire(self, resource)
                self.held.add(resource)

    def _reconcile(self) -> list[Awaitable[None]]:
        allowed = ALLOWED[self.state]
        pending = []
        # The enum's order (see Resource).
        for resource in Resource:
            if resource in self.held and resource not in allowed:
                release = self._release(resource)
                if release is not None:
                    pending.append(release)
        return pending

    def _release(self, resource: Resource) -> Awaitable[None] | None:
        self.held.discard(resource)
        return self.resources.release(self, resource)


class ConnectionTable:
    """Every connection of this process, found by transport and by session id.

    The figures the rest of the gateway reads (active connections, connections by state) are
    kept here, moved only by the connections' own transitions.
    """

    def __init__(self) -> None:
        self.by_eio: dict[str, Connection] = {}
        self.by_sid: dict[str, Connection] = {}
        self.by_state: Counter[State] = Counter()
        self._on_change: list[TableListener] = []

    def on_change(self, callback: TableListener) -> None:
        """*callback* runs after every state change, with the connection and its old state."""
        self._on_change.append(callback)

    @property
    def active(self) -> int:
        return sum(self.by_state[state] for state in LIVE)

    def track(self, connection: Connection) -> None:
        """Take a new connection in; it reports its transitions here from now on."""
        assert connection.listener is None
        connection.listener = self._moved
        self.by_state[connection.state] += 1
        if connection.eio_sid is not None:
            self.by_eio[connection.eio_sid] = connection

    def live(self) -> Iterator[Connection]:
        """Connected sessions, in the order they connected."""
        return (c for c in list(self.by_sid.values()) if c.state in LIVE)

    def _moved(self, connection: Connection, before: State, after: State) -> None:
        self.by_state[before] -= 1
        self.by_state[after] += 1
        sid = connection.sid
        if after is State.CLOSED and sid is not None and self.by_sid.get(sid) is connection:
            del self.by_sid[sid]
        for callback in self._on_change:
            callback(self, connection, before)
