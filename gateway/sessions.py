"""The lifecycle driver: every client connection of this process, from handshake to close.

The Socket.IO layer (``gateway.transport.socketio_layer``) turns what python-engineio reports
and what clients send into calls here; this module turns them into transitions of the table in
``gateway.lifecycle`` and performs the actions behind its resources: the admission slot, the
presence-store entry, the heartbeat, typing, token expiry, the deadlines, the transport. It
knows no sockets: a connection's transport is a :class:`Link`, which a unit test can fake.
Resuming sessions (connection state recovery) is :mod:`gateway.recovery`'s.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from .auth.tokens import AuthError, Identity
from .hub import Hub
from .lifecycle import Connection, ConnectionTable, Event, IllegalTransition, Resource, State
from .observability.logs import connection_id, printable
from .observability.metrics import Metrics
from .pipeline.ratelimit import Buckets
from .protocol.close import RECONNECT_ADVICE, CloseReason, reconnects
from .protocol.errors import UNAVAILABLE, ErrorCode
from .protocol.events import Outbound
from .protocol.timestamps import iso_timestamp
from .recovery import Recovery, digest
from .replay import ReplayLog, without_offset
from .scheduling import DeadlineQueue, DeadlineTimer
from .settings import Settings
from .store.base import StoreUnavailable, UsernameTaken
from .transport import sio_codec
from .transport.admission import Ticket
from .transport.engineio_seam import MessagePacket
from .transport.peers import Peer

log = logging.getLogger("wshub.sessions")


class Link(Protocol):
    """One Engine.IO session, as the gateway writes to it."""

    peer: Peer | None

    @property
    def transport(self) -> str:
        """``websocket`` or ``polling``."""

    def send(self, packet: MessagePacket) -> bool:
        """Queue a Socket.IO packet; False when the client's queue is over its bounds."""

    def finish(self) -> None:
        """Queue an Engine.IO CLOSE after what is queued: the end of a graceful close."""

    def drop_backlog(self) -> None: ...

    async def end(self, *, hard: bool) -> None:
        """End the Engine.IO session now; *hard* also aborts its TCP connection."""

    async def probe(self, within: float) -> bool:
        """An Engine.IO ping now; whether its PONG came within *within* seconds."""


# Engine.IO's reasons for the end of a session, as close labels and lifecycle events.
_ENGINEIO_ENDS: dict[str, tuple[str, Event]] = {
    "client disconnect": ("client_disconnect", Event.CLIENT_CLOSE),
    "transport close": ("transport_close", Event.TRANSPORT_LOST),
    "transport error": ("transport_error", Event.TRANSPORT_LOST),
    "ping timeout": ("ping_timeout", Event.TRANSPORT_LOST),
    "server disconnect": ("server_disconnect", Event.TRANSPORT_LOST),
}


class Outgoing:
    """One replayable message, encoded once for each form its recipients take (with the
    offset as its last argument, or without)."""

    __slots__ = ("_packets", "offset", "text")

    def __init__(self, text: str, offset: str | None) -> None:
        self.text = text
        """The Socket.IO packet, with the offset when there is one."""
        self.offset = offset
        self._packets: list[MessagePacket | None] = [None, None]

    def packet(self, with_offset: bool) -> MessagePacket:
        index = int(with_offset and self.offset is not None)
        packet = self._packets[index]
        if packet is None:
            text = (
                self.text
                if index or self.offset is None
                else without_offset(self.text, self.offset)
            )
            packet = self._packets[index] = MessagePacket(text)
        return packet


class Handed(Enum):
    """What became of a message handed to a session."""

    DELIVERED = "delivered"
    HELD = "held"
    """Kept for a session that is away (or moving here from another node)."""
    REFUSED = "refused"


@dataclass(eq=False)
class Client(Connection):
    """A connection with what the gateway keeps for it."""

    link: Link | None = None
    abort_tcp: bool = False
    """Set when the transport is to be cut rather than closed (it did not go in time, or it is
    known to be dead)."""
    ticket: Ticket | None = None
    identity: Identity | None = None
    buckets: Buckets | None = None
    """Rate-limit buckets, made on the first limited event (the pipeline's)."""
    headers: dict[str, str] = field(default_factory=dict)
    """Handshake headers the gateway reads (``authorization``)."""
    skip_binary: int = 0
    """Binary messages still to come of a refused binary packet (ignored as they arrive)."""
    end_label: str = "unknown"
    """How the connection ended, for the metrics: a close reason or Engine.IO's reason."""
    pid: str | None = None
    """The private session id (connection state recovery)."""
    offsets: bool = False
    """Whether this connection's replayable events carry offsets."""
    log: ReplayLog | None = None
    """Replayable events sent and not yet proven read (made on the first one)."""
    ping_mark: int = 0
    """The log's position when the outstanding Engine.IO PING was sent."""
    early: list[Outgoing] | None = None
    """While the session moves here from another node: what arrived for it meanwhile."""

    def packet(self, text: str) -> bool:
        """Send one Socket.IO packet (text) to this client; False when it could not."""
        if self.link is None or self.state not in _WRITABLE or self.close_reason is not None:
            return False
        return self.link.send(MessagePacket(text))


class Sessions:
    """Implements :class:`gateway.lifecycle.Resources` and drives every connection through
    the table."""

    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        metrics: Metrics,
        *,
        clock: Callable[[], float],
        new_sid: Callable[[], str] = lambda: secrets.token_urlsafe(15),
    ) -> None:
        self.settings = settings
        self.hub = hub
        self.metrics = metrics
        self.table = ConnectionTable()
        self.table.on_change(self._moved)
        self.recovery = Recovery(settings, self, hub.store, metrics, clock=clock)
        self._clock = clock
        self._new_sid = new_sid
        self._connect_deadlines: DeadlineQueue[Client] = DeadlineQueue()
        self._abort_deadlines: DeadlineQueue[Client] = DeadlineQueue()
        self._recovery_deadlines: DeadlineQueue[Client] = DeadlineQueue()
        self._timer = DeadlineTimer(
            _Deadlines(self._connect_deadlines, self._abort_deadlines, self._recovery_deadlines),
            clock,
        )
        self._log_bodies = settings.log_bodies

    # -- what the Socket.IO layer reports

    def open(
        self, eio_sid: str, link: Link, ticket: Ticket, headers: dict[str, str], *, offsets: bool
    ) -> Client:
        """A new Engine.IO session, admitted at its handshake: PENDING."""
        client = Client(eio_sid, ticket.address, self, link=link, ticket=ticket, headers=headers)
        client.offsets = offsets
        client.held.update({Resource.ADMISSION, Resource.TRANSPORT})
        self.table.track(client)
        return client

    async def connect(self, client: Client, auth: Any) -> None:
        """The client's CONNECT: resume its session, admit a new one, or refuse it."""
        await client.fire(Event.CONNECT)
        try:
            client.identity = self.hub.authenticate(auth, client.headers)
        except AuthError as exc:
            await self._refuse(client, "auth", f"authentication failed: {exc}", ErrorCode.FORBIDDEN)
            return
        pid = auth.get("pid") if isinstance(auth, dict) and self.recovery.enabled else None
        if isinstance(pid, str):
            offset = auth.get("offset") if isinstance(auth, dict) else None
            if await self.recovery.resume(client, pid, offset if isinstance(offset, str) else None):
                return
            if client.state is not State.CONNECTING:
                return  # the client went while its session was looked for
        await self._admit(client)

    async def _admit(self, client: Client) -> None:
        sid = client.sid = self._new_sid()
        connection_id.set(sid)
        client.pid = self.recovery.private_id(sid) if self.recovery.enabled else None
        try:
            await self.hub.store.connect(
                sid, iso_timestamp(), pid_hash=digest(client.pid) if client.pid else ""
            )
        except StoreUnavailable as exc:
            await self._refuse_unavailable(client, exc)
            return
        if not await self.held(client, Resource.PRESENCE):
            return  # the client went while the store answered; its entry is gone again
        identity = client.identity
        if identity is not None:
            try:
                await self.hub.presence.claim(sid, identity.username, {})
            except UsernameTaken:
                await self._refuse(
                    client,
                    "duplicate_user",
                    f"user {identity.username!r} is already connected",
                    ErrorCode.DUPLICATE_USERNAME,
                )
                return
            except StoreUnavailable as exc:
                await self._refuse_unavailable(client, exc)
                return
            if not await self.watch_expiry(client):
                return
        if client.state is not State.CONNECTING:
            return  # ended while the store answered (its resources are released)
        self.table.by_sid[sid] = client
        client.packet(sio_codec.encode_connect(sid, client.pid))
        await client.fire(Event.ACCEPT)
        self.welcome(client)

    def welcome(self, client: Client) -> None:
        self.metrics.connections_opened.inc()
        if client.link is not None:
            log.info("connected from %s via %s", client.address, client.link.transport)
        welcome = self.hub.system.welcome()
        self.reply(client, welcome.event, welcome.payload)

    async def event(
        self, client: Client, name: Any, args: list[Any], size: int, ack_id: int | None
    ) -> None:
        """One client event (a Socket.IO EVENT packet of a connected client)."""
        if self._log_bodies:
            log.debug("event %s: %s", printable(name), printable(args, 2000))
        assert client.sid is not None
        ack = await self.hub.handle(
            client.sid, client, name, tuple(args), size, wants_ack=ack_id is not None
        )
        if ack_id is not None and client.state is State.CONNECTED:
            client.packet(sio_codec.encode_ack(ack_id, ack))

    async def refuse_packet(self, client: Client, problem: str, size: int) -> None:
        """A malformed or binary packet from a connected client: charged, answered locally."""
        assert client.sid is not None
        await self.hub.handle_malformed(client.sid, client, problem, size)

    async def ended(self, client: Client, engineio_reason: str) -> None:
        """python-engineio says the session is over (client close, transport end, ping timeout)."""
        if client.state is State.CLOSED:
            return
        label, event = _ENGINEIO_ENDS.get(
            engineio_reason, ("transport_error", Event.TRANSPORT_LOST)
        )
        if client.state is not State.CLOSING:
            client.end_label = label
        if await client.fire(event) is State.RECOVERING:
            await self.recovery.away(client)

    async def client_disconnect(self, client: Client) -> None:
        """The client's Socket.IO DISCONNECT: its session ends; its Engine.IO session stays and
        may CONNECT again (as with the reference server), as a new session."""
        assert client.link is not None and client.ticket is not None and client.eio_sid
        successor = Client(
            client.eio_sid,
            client.address,
            self,
            link=client.link,
            ticket=client.ticket,
            headers=client.headers,
            buckets=client.buckets,  # a new session on the same transport is not a fresh start
        )
        successor.offsets = client.offsets
        client.give(Resource.TRANSPORT)
        client.give(Resource.ADMISSION)
        client.link = client.ticket = None
        client.end_label = "client_disconnect"
        successor.held.update({Resource.ADMISSION, Resource.TRANSPORT})
        self.table.track(successor)
        await client.fire(Event.CLIENT_CLOSE)

    async def close(
        self,
        client: Client,
        reason: CloseReason,
        message: str,
        *,
        reconnect: bool | None = None,
        at_once: bool = False,
    ) -> None:
        """End *client* for *reason*: tell it why, then close it (a closing one is left be).

        *reconnect* overrides whether the client should come back by itself (the reason's
        default otherwise, :func:`~gateway.protocol.close.reconnects`). *at_once* ends the
        Engine.IO session now instead of giving the client ``close_timeout`` to fetch the rest.
        """
        if client.state in (State.CLOSING, State.CLOSED):
            return
        comes_back = reconnects(reason) if reconnect is None else reconnect
        if client.state is State.CONNECTED and reason is not CloseReason.SLOW_CONSUMER:
            notice = disconnect_notice(reason, message, comes_back)
            self.reply(client, Outbound.DISCONNECT_NOTICE, notice)
            if not comes_back:
                # A Socket.IO DISCONNECT: the official clients then do not reconnect by
                # themselves; without it they see the transport close and do.
                client.packet(sio_codec.encode_disconnect())
        client.close_reason = reason
        client.end_label = reason.value
        if await client.fire(Event.SERVER_CLOSE) is not State.CLOSING:
            return  # a recovering session: nothing to tell, no transport to close
        assert client.link is not None
        if reason is CloseReason.SLOW_CONSUMER:
            # It does not read: its backlog is freed now and its connection cut.
            client.link.drop_backlog()
            client.abort_tcp = True
            await client.fire(Event.ABORT)
        elif at_once:
            await client.fire(Event.ABORT)  # the session ends; its TCP connection is left be
        else:
            client.link.finish()

    async def protocol_error(self, client: Client, problem: str, *, at_once: bool = False) -> None:
        """The client broke the protocol: one log line, and its session ends (*at_once*:
        without a goodbye to fetch, when the client was told already)."""
        log.info("protocol error from %s: %s", client.address, problem)
        message = f"Protocol error: {problem}"
        await self.close(client, CloseReason.PROTOCOL_ERROR, message, at_once=at_once)

    async def adopt_transport(self, session: Client, new: Client) -> None:
        """Connection state recovery: *new* (connecting, on a fresh transport) presented the
        private id of *session* (recovering): the transport and its admission slot move to
        *session*, which is connected again, and *new* ends without having been a session."""
        link, ticket, eio_sid = new.link, new.ticket, new.eio_sid
        assert link is not None and ticket is not None and eio_sid is not None
        new.give(Resource.TRANSPORT)
        new.give(Resource.ADMISSION)
        new.link = new.ticket = None
        new.end_label = "resumed"
        await new.fire(Event.HAND_OVER)
        session.link, session.ticket, session.eio_sid = link, ticket, eio_sid
        session.headers, session.offsets, session.skip_binary = new.headers, new.offsets, 0
        session.identity = new.identity or session.identity
        session.abort_tcp, session.close_reason = False, None
        session.ping_mark = session.log.last_seq if session.log is not None else 0
        self.table.by_eio[eio_sid] = session
        await session.fire(Event.RESUME)
        for resource in (Resource.ADMISSION, Resource.TRANSPORT):
            release = session.hold(resource)
            assert release is None, "a resumed session may hold its transport"

    def transport_of(self, sid: str) -> str | None:
        """``websocket`` or ``polling`` for a connection of this process; None otherwise."""
        client = self.table.by_sid.get(sid)
        link = client.link if isinstance(client, Client) else None
        return link.transport if link is not None else None

    async def probe(self, sid: str, within: float) -> bool:
        """Whether connection *sid* of this process answers a ping now (an away one does not)."""
        client = self.table.by_sid.get(sid)
        if (
            not isinstance(client, Client)
            or client.link is None
            or client.state is not State.CONNECTED
        ):
            return False
        return await client.link.probe(within)

    async def evicted(self, sids: list[str]) -> None:
        """Other nodes' claims took these connections' names (and their store entries)."""
        for sid in sids:
            client = self.table.by_sid.get(sid)
            if isinstance(client, Client):
                await self.close(client, CloseReason.SESSION_REPLACED, SESSION_REPLACED)

    def spawn(self, work: Awaitable[None]) -> None:
        """Run *work* on its own (from a callback that cannot wait), holding on to it until done."""
        task = asyncio.ensure_future(work)
        _background.add(task)
        task.add_done_callback(_background.discard)

    def reply(self, client: Client, event: str, payload: Mapping[str, Any]) -> None:
        """An event to *client* that is not replayed on recovery (replies, notices)."""
        if not client.packet(sio_codec.encode_event(event, payload)):
            self._undeliverable(client)

    def deliver(self, client: Client, message: Outgoing) -> Handed:
        """A message to *client*: sent (and kept until its receipt is proven), kept for a
        session that is away, or refused."""
        state = client.state
        keeps = message.offset is not None and client.pid is not None
        if state is State.CONNECTED and client.close_reason is None and client.link is not None:
            if not client.link.send(message.packet(client.offsets)):
                self._undeliverable(client)
                return Handed.REFUSED
            if keeps:
                assert message.offset is not None
                self.recovery.keep(client, message.offset, message.text)
            return Handed.DELIVERED
        if not keeps:
            return Handed.REFUSED
        assert message.offset is not None
        if state is State.CONNECTING and client.early is not None:
            client.early.append(message)
            return Handed.HELD
        if state is not State.RECOVERING:
            return Handed.REFUSED
        if client.log is not None and client.log.full:
            # Keeping more would mean replaying less than was sent: the session ends instead,
            # and its client starts afresh (and knows it: recovered is false).
            self.metrics.events_dropped.inc()
            self.spawn(self.recovery.expire(client, "overflow"))
            return Handed.REFUSED
        self.recovery.keep(client, message.offset, message.text)
        self.metrics.events_held.inc()
        return Handed.HELD

    def _undeliverable(self, client: Client) -> None:
        """*client* refused a packet: over its queue bounds. Drop it, once."""
        if client.state is not State.CONNECTED or client.close_reason is not None:
            return
        log.warning("closing: slow consumer")
        client.close_reason = CloseReason.SLOW_CONSUMER  # refuses every further packet now
        self.spawn(self.close(client, CloseReason.SLOW_CONSUMER, "Slow consumer"))

    async def drain(self, window: float, tick: float) -> None:
        """Close every connection, in batches spread over *window* seconds."""
        clients = [_client(c) for c in self.table.by_eio.values()]
        clients += [_client(c) for c in self.table.by_sid.values() if c.state is State.RECOVERING]
        if not clients:
            return
        batches = max(1, min(len(clients), int(window / tick)))
        size = -(-len(clients) // batches)
        pause = window / batches
        log.info("draining %d connections in %d batches over %.1f s", len(clients), batches, window)
        for start in range(0, len(clients), size):
            batch = clients[start : start + size]
            await asyncio.gather(
                *(self.close(c, CloseReason.SHUTDOWN, DRAIN_MESSAGE) for c in batch),
                return_exceptions=True,
            )
            if start + size < len(clients):
                await asyncio.sleep(pause)

    async def run(self) -> None:
        """Connect, abort and recovery deadlines, forever; one task for every connection."""
        while True:
            await self._timer.wait_due()
            now = self._clock()
            for client in self._connect_deadlines.pop_due(now, limit=_CHUNK):
                client.held.discard(Resource.CONNECT_DEADLINE)
                if client.state in (State.PENDING, State.CONNECTING):
                    log.info("no Socket.IO CONNECT from %s in time; closing", client.address)
                    await self.close(client, CloseReason.CONNECT_TIMEOUT, "No CONNECT in time")
            for client in self._abort_deadlines.pop_due(now, limit=_CHUNK):
                client.held.discard(Resource.ABORT_DEADLINE)
                if client.state is State.CLOSING:
                    log.info("closing connection did not go in time; aborting it")
                    client.abort_tcp = True
                    await client.fire(Event.ABORT)
            for client in self._recovery_deadlines.pop_due(now, limit=_CHUNK):
                client.held.discard(Resource.RECOVERY_DEADLINE)
                await self.recovery.expire(client, "window")
            await asyncio.sleep(0)

    # -- lifecycle.Resources

    def acquire(self, connection: Connection, resource: Resource) -> None:
        client = _client(connection)
        now = self._clock()
        if resource is Resource.CONNECT_DEADLINE:
            self._connect_deadlines.set(client, now + self.settings.connect_timeout)
        elif resource is Resource.ABORT_DEADLINE:
            self._abort_deadlines.set(client, now + self.settings.close_timeout)
        elif resource is Resource.RECOVERY_DEADLINE:
            self._recovery_deadlines.set(client, now + self.recovery.window)
        elif resource is Resource.HEARTBEAT:
            assert client.sid is not None
            self.hub.heartbeat.connected(client.sid)
            return
        elif resource is Resource.TYPING:
            return  # indicators are started by the client's own events
        else:
            raise AssertionError(f"{resource} is acquired by the driver, not on entry")
        self._timer.poke()

    def release(self, connection: Connection, resource: Resource) -> Awaitable[None] | None:
        client = _client(connection)
        sid = client.sid
        if resource is Resource.CONNECT_DEADLINE:
            self._connect_deadlines.discard(client)
        elif resource is Resource.ABORT_DEADLINE:
            self._abort_deadlines.discard(client)
        elif resource is Resource.RECOVERY_DEADLINE:
            self._recovery_deadlines.discard(client)
        elif resource is Resource.HEARTBEAT:
            assert sid is not None
            self.hub.heartbeat.disconnected(sid)
        elif resource is Resource.EXPIRY:
            assert sid is not None
            self.hub.expiry.forget(sid)
        elif resource is Resource.TYPING:
            assert sid is not None
            return self.hub.typing.disconnected(sid)
        elif resource is Resource.PRESENCE:
            assert sid is not None
            return self._forget_presence(sid)
        elif resource is Resource.ADMISSION:
            assert client.ticket is not None
            client.ticket.release()
        elif resource is Resource.TRANSPORT:
            return self._end_transport(client)
        return None

    # -- internals

    async def held(self, client: Client, resource: Resource) -> bool:
        """Record an acquired resource; False when the connection moved on meanwhile (and the
        resource is released again)."""
        release = client.hold(resource)
        if release is None:
            return True
        await release
        return False

    async def watch_expiry(self, client: Client) -> bool:
        """End an authenticated connection when its token expires; False when it moved on."""
        if client.identity is None:
            return True
        assert client.sid is not None
        self.hub.expiry.watch(client.sid, client.identity.expires_at)
        return await self.held(client, Resource.EXPIRY)

    async def _refuse(
        self, client: Client, kind: str, message: str, code: str | None = None
    ) -> None:
        self.metrics.connections_refused.labels(kind).inc()
        log.info("refused connection from %s: %s", client.address, message)
        if client.state is not State.CONNECTING:
            return  # the client is gone already
        data = {"code": code} if code is not None else None
        client.packet(sio_codec.encode_connect_error(sio_codec.MAIN_NAMESPACE, message, data))
        client.end_label = f"refused_{kind}"
        await client.fire(Event.REFUSE)
        if client.link is not None:
            client.link.finish()

    async def _refuse_unavailable(self, client: Client, exc: StoreUnavailable) -> None:
        self.metrics.store_errors.inc()
        log.warning("refused a connection: presence store unavailable: %s", exc)
        await self._refuse(client, "store", "the service is briefly unavailable", UNAVAILABLE)

    async def _forget_presence(self, sid: str) -> None:
        try:
            await self.hub.store.disconnect(sid)
        except StoreUnavailable as exc:
            # The store forgets the entry once it is back (restore re-adds only live ones).
            self.metrics.store_errors.inc()
            log.warning("could not remove the connection from the store: %s", exc)
        except Exception:
            # Whatever the store says, the connection is gone: never skip the rest of the cleanup.
            self.metrics.store_errors.inc()
            log.exception("removing the connection from the store failed")

    async def _end_transport(self, client: Client) -> None:
        link, client.link = client.link, None
        if client.eio_sid is not None and self.table.by_eio.get(client.eio_sid) is client:
            del self.table.by_eio[client.eio_sid]  # python-engineio's callbacks stop here
        if link is not None:
            await link.end(hard=client.abort_tcp)

    def _moved(self, table: ConnectionTable, connection: Connection, before: State) -> None:
        self.metrics.connections_active.set(table.active)
        if connection.state is State.CLOSED:
            client = _client(connection)
            self.metrics.connections_closed.labels(client.end_label).inc()
            log.info("disconnected: %s", client.end_label)


class _Deadlines:
    def __init__(self, *queues: DeadlineQueue[Client]) -> None:
        self._queues = queues

    def next_deadline(self) -> float | None:
        deadlines = [d for q in self._queues if (d := q.next_deadline()) is not None]
        return min(deadlines) if deadlines else None


def _client(connection: Connection) -> Client:
    assert isinstance(connection, Client)
    return connection


DRAIN_MESSAGE = "The server is shutting down; reconnect to another instance"
SESSION_REPLACED = "Another connection took this session's username"
_CHUNK = 500
_WRITABLE = frozenset({State.PENDING, State.CONNECTING, State.CONNECTED})
_background: set[asyncio.Task[Any]] = set()


def disconnect_notice(reason: CloseReason, message: str, comes_back: bool) -> dict[str, Any]:
    advice = RECONNECT_ADVICE[reason]
    if comes_back != reconnects(reason):  # overridden for this close
        advice = "reconnect" if comes_back else "do not reconnect"
    return {
        "reason": reason.value,
        "message": message,
        "reconnect": advice,
        "timestamp": iso_timestamp(),
    }


__all__ = [
    "Client",
    "Handed",
    "IllegalTransition",
    "Link",
    "Outgoing",
    "Sessions",
    "disconnect_notice",
]
