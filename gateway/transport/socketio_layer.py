"""The Socket.IO v5 layer: python-engineio's sessions and each client's packets, into the
lifecycle driver (:class:`~gateway.sessions.Sessions`).

Only the main namespace is served. What each state accepts (anything else is a protocol error
that ends the session with one log line, as the reference server does):

============  ==============================================================================
state         packets
============  ==============================================================================
PENDING       CONNECT ``/`` (admitted) or another namespace (``44 Invalid namespace``)
CONNECTING    nothing: the client must wait for the answer to its CONNECT
CONNECTED     EVENT (to the hub; a malformed or binary one is answered ``INVALID_FORMAT``),
              DISCONNECT (the session ends; the Engine.IO session stays, and may CONNECT again)
CLOSING       ignored: the session is over
============  ==============================================================================

Event names never select a handler here: every EVENT goes to the hub, whose routing table
knows only the contract's events, so a client EVENT named ``connect``, ``disconnect`` or ``*``
is an unknown event like any other (python-socketio looks handlers up by name first, and such
an event reached its connect, disconnect and catch-all handlers).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from engineio import packet as eio_packet

from ..lifecycle import State
from ..observability.logs import connection_id
from ..protocol.codec import dumps, loads
from ..sessions import Client, Sessions
from ..settings import Settings
from . import engineio_seam, sio_codec
from .admission import Ticket
from .engineio_seam import PING_PACKET, EngineServer, EngineSocket, MessagePacket
from .gate import SCOPE_TICKET
from .peers import Peer, Peers, peer_of
from .pings import Pings
from .sio_codec import PacketError, PacketType

log = logging.getLogger("wshub.transport")


class OrjsonCodec:
    """The ``json`` module interface python-engineio expects (for its OPEN packet)."""

    @staticmethod
    def dumps(value: Any, **_: Any) -> str:
        return dumps(value)

    @staticmethod
    def loads(text: str | bytes, **_: Any) -> Any:
        return loads(text)


class Link:
    """One Engine.IO session, as the gateway writes to it: bounded, and able to cut its TCP
    connection."""

    __slots__ = ("_layer", "peer", "socket")

    def __init__(self, layer: SocketIOLayer, socket: EngineSocket, peer: Peer | None) -> None:
        self._layer = layer
        self.socket = socket
        self.peer = peer

    @property
    def transport(self) -> str:
        return "websocket" if self.socket.upgraded else "polling"

    def send(self, packet: MessagePacket) -> bool:
        socket = self.socket
        if socket.closed:
            return False
        layer = self._layer
        if (
            socket.queue.qsize() >= layer.max_packets
            or socket.queued_bytes + len(packet.data) > layer.max_bytes
        ):
            return False
        socket.push(packet)
        return True

    def finish(self) -> None:
        self.socket.push(eio_packet.Packet(eio_packet.CLOSE))

    def drop_backlog(self) -> None:
        self.socket.discard_queued()

    async def probe(self, within: float) -> bool:
        return await self._layer.pings.probe(self.socket, within)

    async def end(self, *, hard: bool) -> None:
        layer = self._layer
        layer.pings.forget(self.socket)
        if hard:
            self.socket.discard_queued()
            layer.peers.abort(self.peer)
        await engineio_seam.end(self.socket)


class SocketIOLayer:
    def __init__(
        self, settings: Settings, sessions: Sessions, peers: Peers, clock: Callable[[], float]
    ) -> None:
        origins = settings.cors_origins
        self.sessions = sessions
        self.peers = peers
        self.max_packets = settings.max_outbound_queue
        self.max_bytes = settings.max_outbound_bytes
        self._max_depth = settings.max_payload_depth
        self.eio = EngineServer(
            self,
            ping_interval=settings.engineio_ping_interval,
            ping_timeout=settings.engineio_ping_timeout,
            max_http_buffer_size=settings.max_frame_bytes,
            cors_allowed_origins="*" if "*" in origins else origins,
            json=OrjsonCodec,
        )
        self.eio.on("connect", self._on_connect)
        self.eio.on("message", self._on_message)
        self.eio.on("disconnect", self._on_disconnect)
        self.pings: Pings[EngineSocket] = Pings(
            self,
            interval=settings.engineio_ping_interval,
            timeout=settings.engineio_ping_timeout,
            clock=clock,
        )

    # -- python-engineio's handlers

    async def _on_connect(self, eio_sid: str, environ: dict[str, Any]) -> bool:
        ticket = environ["asgi.scope"].pop(SCOPE_TICKET, None)
        socket = self.eio.socket(eio_sid)
        if not isinstance(ticket, Ticket) or socket is None:
            # Only the gate opens sessions, with a ticket; anything else is refused.
            if isinstance(ticket, Ticket):
                ticket.release()
            return False
        link = Link(self, socket, peer_of(environ["asgi.scope"]))
        authorization = environ.get("HTTP_AUTHORIZATION")
        headers = {"authorization": authorization} if authorization else {}
        offsets = self.sessions.recovery.wants_offsets(
            environ.get("HTTP_USER_AGENT", ""), environ.get("QUERY_STRING", "")
        )
        self.sessions.open(eio_sid, link, ticket, headers, offsets=offsets)
        return True

    async def _on_message(self, eio_sid: str, data: str | bytes) -> None:
        client = self.sessions.table.by_eio.get(eio_sid)
        if not isinstance(client, Client):
            return
        if client.sid is not None:
            connection_id.set(client.sid)
        if isinstance(data, bytes):
            await self._binary_message(client, len(data))
            return
        try:
            packet = sio_codec.decode(data, max_depth=self._max_depth)
        except PacketError as exc:
            if client.state is State.CONNECTED:
                problem = f"Malformed Socket.IO packet: {exc}"
                await self.sessions.refuse_packet(client, problem, len(data))
            elif client.state is not State.CLOSING:
                await self.sessions.protocol_error(client, f"malformed packet: {exc}")
            return
        await self._packet(client, packet, len(data))

    async def _on_disconnect(self, eio_sid: str, reason: str) -> None:
        client = self.sessions.table.by_eio.get(eio_sid)
        if isinstance(client, Client):  # not ours to tell when the gateway ended it itself
            await self.sessions.ended(client, reason)

    # -- Socket.IO packets, by state

    async def _packet(self, client: Client, packet: sio_codec.Packet, size: int) -> None:
        state, kind = client.state, packet.type
        if state is State.CLOSING:
            return
        if kind is PacketType.CONNECT:
            if packet.namespace != sio_codec.MAIN_NAMESPACE:
                client.packet(sio_codec.encode_connect_error(packet.namespace, "Invalid namespace"))
            elif state is State.PENDING:
                await self.sessions.connect(client, packet.data)
            else:
                await self.sessions.protocol_error(client, "CONNECT on a connected session")
            return
        if state is not State.CONNECTED:
            await self.sessions.protocol_error(client, f"{kind.name} before CONNECT")
            return
        if packet.namespace != sio_codec.MAIN_NAMESPACE:
            problem = f"Not connected to namespace {packet.namespace}"
            await self.sessions.refuse_packet(client, problem, size)
        elif kind is PacketType.EVENT:
            name, *args = packet.data
            await self.sessions.event(client, name, args, size, packet.id)
        elif kind is PacketType.DISCONNECT:
            await self.sessions.client_disconnect(client)
        elif kind in (PacketType.BINARY_EVENT, PacketType.BINARY_ACK):
            client.skip_binary = packet.attachments
            await self.sessions.refuse_packet(
                client, "Binary attachments are not supported; send JSON", size
            )
        # ACK: the gateway asks clients for no acknowledgement; a stray one is ignored.

    async def _binary_message(self, client: Client, size: int) -> None:
        if client.skip_binary:
            client.skip_binary -= 1  # an attachment of a refused binary packet
        elif client.state is State.CONNECTED:
            await self.sessions.refuse_packet(
                client, "Binary attachments are not supported; send JSON", size
            )
        elif client.state is not State.CLOSING:
            await self.sessions.protocol_error(client, "binary message before CONNECT")

    # -- engineio_seam.SessionEvents

    def pong(self, socket: EngineSocket) -> None:
        self.pings.pong(socket)

    def schedule_ping(self, socket: EngineSocket) -> None:
        self.pings.schedule(socket)

    async def protocol_error(self, socket: EngineSocket, problem: str) -> None:
        client = self.sessions.table.by_eio.get(socket.sid)
        if isinstance(client, Client):
            await self.sessions.protocol_error(client, problem)

    # -- pings.PingTarget

    def send_ping(self, socket: EngineSocket) -> None:
        socket.push(PING_PACKET)
        client = self.sessions.table.by_eio.get(socket.sid)
        if isinstance(client, Client) and client.log is not None:
            client.ping_mark = client.log.last_seq

    def answered(self, socket: EngineSocket) -> None:
        # A PONG proves the client read everything queued before the PING: one ordered stream.
        client = self.sessions.table.by_eio.get(socket.sid)
        if isinstance(client, Client) and client.log is not None:
            client.log.confirm(client.ping_mark)

    async def timed_out(self, socket: EngineSocket) -> None:
        # As python-engineio does: a CLOSE is written (it updates a half-open peer's state).
        await socket.close(wait=False, abort=False, reason=self.eio.reason.PING_TIMEOUT)

    # -- gate.SessionControl

    async def seen(self, eio_sid: str, peer: Peer | None) -> bool:
        """A request for session *eio_sid*; False when there is no such session (any more)."""
        socket = self.eio.socket(eio_sid)
        if socket is None or socket.closed:
            return False
        if self.pings.overdue(socket):
            await self.timed_out(socket)  # its PONG is late: the session is over, say so now
            return False
        client = self.sessions.table.by_eio.get(eio_sid)
        if isinstance(client, Client) and client.link is not None and peer is not None:
            client.link.peer = peer  # a polling session moves between TCP connections
        return True

    def end_session(self, eio_sid: str, problem: str, *, at_once: bool = False) -> None:
        client = self.sessions.table.by_eio.get(eio_sid)
        if isinstance(client, Client):
            self.sessions.spawn(self.sessions.protocol_error(client, problem, at_once=at_once))

    def upgraded(self, eio_sid: str) -> bool:
        socket = self.eio.socket(eio_sid)
        return socket is not None and bool(socket.upgraded)
