"""python-engineio, held to what an edge gateway needs. The only module that touches its internals.

python-engineio serves the Engine.IO v4 protocol (handshake, long-polling, WebSocket, upgrades,
CORS) and we keep all of that. What it does not do, or does in a way that fails a hostile
client, is fixed here, in a subclass of its socket:

* **Reading and writing without a task per message.** ``AsyncSocket`` reads every WebSocket
  message through ``ensure_future`` plus ``wait_for`` and polls its queue through ``wait_for``;
  task creation is where a Python Socket.IO server spends most of its time. We read and poll
  under ``asyncio.timeout``, which arms one timer and creates no task.
* **One ping timer for the process.** ``AsyncSocket.schedule_ping`` starts a task per socket that
  sleeps ``ping_interval``, and ``send`` checks the ping timeout on every packet; we hand both
  to :class:`~gateway.transport.pings.PingScheduler` (one task, in chunks) and run the server
  with ``monitor_clients=False`` (its sweep task goes too).
* **The ping interval advertised exactly.** ``AsyncServer._handle_connect`` advertises
  ``int(ping_interval + grace) * 1000``: 2.5 s becomes 2000 ms and 0.3 s becomes 0, and the
  official client then gives up with "ping timeout". :meth:`EngineSocket.send` writes the exact
  value into the OPEN packet it carries.
* **Invalid packets end the session with one log line**, where ``AsyncSocket`` logs a traceback
  and keeps reading.
* **A server-side CLOSE ends the WebSocket** as soon as it is written, instead of the writer
  waiting out its poll timeout for a client that may never answer.
* **Bytes queued per socket are counted**, so the transport can bound a slow consumer in bytes
  as well as in packets.

Hooks that are private, each guarded by ``tests/unit/transport/test_engineio_seam.py`` (the
upstream code they replace is fingerprinted; a changed fingerprint fails the test) and pinned by
the exact version in ``requirements/constraints.txt``:

* ``engineio.async_socket.AsyncSocket`` is rebound to :class:`EngineSocket` (python-engineio
  builds its sockets from that module attribute in ``AsyncServer._handle_connect``);
* the overridden methods of ``AsyncSocket``: ``send``, ``poll``, ``receive``, ``schedule_ping``,
  ``check_ping_timeout`` and ``_websocket_handler``;
* ``AsyncServer.sockets`` is read to find the socket of a session (python-engineio keeps it
  there before it fires ``connect``).

Everything else the gateway uses is python-engineio's public API: ``AsyncServer(...)``, its
``connect`` / ``message`` / ``disconnect`` handlers and ``handle_request``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable
from typing import Any, Protocol

import engineio
import engineio.async_socket
from engineio import exceptions, packet

log = logging.getLogger("wshub.engineio")

# Packet types a client may send on a session (Engine.IO v4): PING only as the upgrade probe.
CLIENT_PACKETS = frozenset({packet.CLOSE, packet.PONG, packet.MESSAGE, packet.UPGRADE, packet.NOOP})


class SessionEvents(Protocol):
    """What the Engine.IO layer tells the Socket.IO layer about one socket, beyond messages."""

    def pong(self, socket: EngineSocket) -> None: ...

    def schedule_ping(self, socket: EngineSocket) -> None: ...

    async def protocol_error(self, socket: EngineSocket, problem: str) -> None:
        """End *socket*'s session for *problem*; what the client is told is queued on return."""


class EngineServer(engineio.AsyncServer):  # type: ignore[misc]
    """python-engineio's ASGI server, with :class:`EngineSocket` sockets."""

    def __init__(self, events: SessionEvents, *, ping_interval: float, **kwargs: Any) -> None:
        super().__init__(
            async_mode="asgi",
            ping_interval=ping_interval,
            monitor_clients=False,  # pings and their timeouts: gateway.transport.pings
            logger=log,
            **kwargs,
        )
        self.session_events = events
        # Its translate_request defines a class for every request: a type object and a
        # reference cycle per request, left for the cyclic collector.
        self._async: dict[str, Any] = {**self._async, "translate_request": translate_request}
        install()

    def socket(self, eio_sid: str) -> EngineSocket | None:
        socket = self.sockets.get(eio_sid)
        return socket if isinstance(socket, EngineSocket) else None


class _Body:
    """The request body as python-engineio reads it (``environ['wsgi.input']``); the gate has
    checked it and replays it whole (what python-engineio's per-request class does)."""

    __slots__ = ("_event", "_payload", "_receive")

    def __init__(self, event: dict[str, Any], receive: Callable[[], Any]) -> None:
        self._event = event
        self._receive = receive
        self._payload: bytes | None = None

    async def read(self, length: int | None = None) -> bytes:
        if self._payload is None and self._event["type"] == "http.request":
            self._payload = self._event.get("body") or b""
            while self._event.get("more_body"):
                self._event = await self._receive()
                if self._event["type"] == "http.request" and (
                    length is None or len(self._payload) < length
                ):
                    self._payload += self._event.get("body") or b""
        payload = self._payload or b""
        if length is None:
            self._payload = b""
            return payload
        self._payload = payload[length:]
        return payload[:length]


async def translate_request(scope: dict[str, Any], receive: Any, send: Any) -> dict[str, Any]:
    """``engineio.async_drivers.asgi.translate_request`` with its body class defined once."""
    event = await receive()
    if event["type"] not in ("http.request", "websocket.connect"):
        return {}
    query_string = ""
    raw_uri = scope["path"]
    if scope.get("query_string"):
        with contextlib.suppress(UnicodeDecodeError):
            query_string = scope["query_string"].decode("utf-8")
            raw_uri += "?" + query_string
    environ: dict[str, Any] = {
        "wsgi.input": _Body(event, receive),
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.async": True,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "SERVER_SOFTWARE": "asgi",
        "REQUEST_METHOD": scope.get("method", "GET"),
        "PATH_INFO": scope["path"],
        "QUERY_STRING": query_string,
        "RAW_URI": raw_uri,
        "SCRIPT_NAME": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "0",
        "SERVER_NAME": "asgi",
        "SERVER_PORT": "0",
        "asgi.receive": receive,
        "asgi.send": send,
        "asgi.scope": scope,
    }
    for raw_name, raw_value in scope["headers"]:
        try:
            name, value = raw_name.upper().decode("utf-8"), raw_value.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if name == "CONTENT-TYPE":
            environ["CONTENT_TYPE"] = value
        elif name == "CONTENT-LENGTH":
            environ["CONTENT_LENGTH"] = value
        else:
            key = "HTTP_" + name.replace("-", "_")
            environ[key] = f"{environ[key]},{value}" if key in environ else value
    environ["wsgi.url_scheme"] = environ.get("HTTP_X_FORWARDED_PROTO", "http")
    return environ


class EngineSocket(engineio.async_socket.AsyncSocket):  # type: ignore[misc]
    server: EngineServer
    sid: str
    queue: asyncio.Queue[Any]
    closed: bool
    closing: bool
    connected: bool
    upgrading: bool
    upgraded: bool

    queued_bytes = 0
    """Bytes waiting in ``queue``: MESSAGE payloads, as encoded."""

    def _silence_timeout(self) -> float:
        return float(self.server.ping_interval + self.server.ping_timeout)

    async def send(self, pkt: Any) -> None:
        """python-engineio's way in (the OPEN packet, NOOPs); the gateway calls :meth:`push`."""
        if pkt.packet_type == packet.OPEN:
            # Milliseconds, exactly: not int(seconds) * 1000 as AsyncServer._handle_connect has.
            pkt.data["pingInterval"] = round(self.server.ping_interval * 1000)
            pkt.encode_cache = None
        self.push(pkt)

    def push(self, pkt: Any) -> None:
        """Queue *pkt* for the client, now. The bounds are the caller's (``Link.send``)."""
        if self.closed:
            return
        if pkt.packet_type == packet.MESSAGE:
            self.queued_bytes += _size(pkt)
        self.queue.put_nowait(pkt)

    async def poll(self) -> list[Any]:
        """Wait for packets to send to the client."""
        try:
            async with asyncio.timeout(self._silence_timeout()):
                first = await self.queue.get()
        except (TimeoutError, asyncio.CancelledError):
            raise exceptions.QueueEmpty() from None
        self.queue.task_done()
        if first is None:
            return []
        packets = [first]
        while not self.queue.empty():
            pkt = self.queue.get_nowait()
            self.queue.task_done()
            if pkt is None:
                self.queue.put_nowait(None)
                break
            packets.append(pkt)
        for pkt in packets:
            if pkt.packet_type == packet.MESSAGE:
                self.queued_bytes -= _size(pkt)
        if not self.upgraded and packets[-1].packet_type == packet.CLOSE:
            # A polling client is handed the server's CLOSE with this response: the session
            # ends now (its next request is unknown), not when the abort deadline finds it.
            await self.close(wait=False, abort=True, reason=self.server.reason.SERVER_DISCONNECT)
        return packets

    def discard_queued(self) -> None:
        """Free what is queued now: a slow consumer's backlog, which it would never read."""
        while not self.queue.empty():
            self.queue.get_nowait()
            self.queue.task_done()
        self.queued_bytes = 0

    async def receive(self, pkt: Any) -> None:
        """One packet from the client."""
        kind = pkt.packet_type
        if kind == packet.MESSAGE:
            # The gateway's handler, a coroutine, run inline: one client's packets in order,
            # without python-engineio's per-call inspect check, closure and logging.
            await self.server.handlers["message"](self.sid, pkt.data)
        elif kind == packet.PONG:
            self.server.session_events.pong(self)
        elif kind == packet.UPGRADE:
            await self.send(packet.Packet(packet.NOOP))
        elif kind == packet.NOOP:
            pass
        elif kind == packet.CLOSE:
            if not self.upgraded:
                self.push(packet.Packet(packet.NOOP))  # answers the pending poll, as Engine.IO does
            await self.close(wait=False, abort=True, reason=self.server.reason.CLIENT_DISCONNECT)
        else:
            await self.server.session_events.protocol_error(
                self, f"unexpected packet type {packet.packet_names[kind]}"
            )

    def schedule_ping(self) -> None:
        self.server.session_events.schedule_ping(self)

    async def check_ping_timeout(self) -> bool:
        # The ping scheduler times pings out; python-engineio's per-send check must not.
        return not self.closed

    async def _websocket_handler(self, ws: Any) -> Any:
        """Engine.IO over a WebSocket: the upgrade handshake, a writer, the reader loop."""
        max_size = self.server.max_http_buffer_size

        async def receive() -> Any:
            async with asyncio.timeout(self._silence_timeout()):
                data = await ws.wait()
            if data and len(data) > max_size:
                raise ValueError("packet is too large")
            return data

        if self.connected:
            # An upgrade from polling: PING "probe" → PONG "probe", then UPGRADE.
            self.upgrading = True
            probe = await _read_packet(receive)
            if probe is None or probe.packet_type != packet.PING or probe.data != "probe":
                self.upgrading = False
                return None
            await ws.send(packet.Packet(packet.PONG, data="probe").encode())
            await self.send(packet.Packet(packet.NOOP))  # ends the pending poll
            upgrade = await _read_packet(receive)
            self.upgrading = False
            if upgrade is None or upgrade.packet_type != packet.UPGRADE:
                self.upgraded = False
                return None
            self.upgraded = True
        else:
            self.connected = True
            self.upgraded = True

        async def writer() -> None:
            while True:
                try:
                    packets = await self.poll()
                except exceptions.QueueEmpty:
                    break
                if not packets:
                    break  # closed
                try:
                    for pkt in packets:
                        if pkt.packet_type != packet.NOOP:  # NOOPs end polls; none over WS
                            await ws.send(pkt.encode())
                except Exception:
                    break
                if packets[-1].packet_type == packet.CLOSE:
                    break  # the server ended the session: end the WebSocket now
            await ws.close()

        writer_task = asyncio.ensure_future(writer())
        while not self.closed:
            try:
                data = await receive()
            except asyncio.CancelledError:
                break
            except Exception:  # timeout, oversize, or the peer went away
                break
            if data is None:
                break  # closed by the client
            try:
                pkt = packet.Packet(encoded_packet=data)
            except Exception:
                # Awaited: the goodbye is queued before the writer is told to stop.
                await self.server.session_events.protocol_error(
                    self, "undecodable Engine.IO packet"
                )
                break
            if pkt.packet_type not in CLIENT_PACKETS:
                await self.server.session_events.protocol_error(
                    self, f"unexpected packet type {packet.packet_names[pkt.packet_type]}"
                )
                break
            await self.receive(pkt)
        await self.queue.put(None)  # lets the writer finish
        with contextlib.suppress(Exception):
            await writer_task
        await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)
        return None


async def _read_packet(receive: Callable[[], Any]) -> Any:
    try:
        data = await receive()
        return None if data is None else packet.Packet(encoded_packet=data)
    except Exception:  # timeout, peer gone, undecodable: the upgrade fails, the session stays
        return None


def _size(pkt: Any) -> int:
    data = pkt.data
    return len(data) if isinstance(data, str | bytes) else 0


def install() -> None:
    """Make python-engineio build :class:`EngineSocket` sockets (process-wide: one gateway)."""
    engineio.async_socket.AsyncSocket = EngineSocket


async def end(socket: EngineSocket) -> None:
    """End *socket*'s session now, without waiting for its queue to drain.

    ``AsyncServer.disconnect`` waits for the queue to drain, which never happens for a client
    that does not read, nor for a polling client whose next GET does not come; and a closed
    polling session stays in ``AsyncServer.sockets`` until its next request, which may never
    come either. Here the session is closed, its writer or pending poll woken after what is
    already queued, and it is forgotten at once.
    """
    await socket.close(wait=False, abort=True, reason=socket.server.reason.SERVER_DISCONNECT)
    socket.queue.put_nowait(None)
    server = socket.server
    if server.sockets.get(socket.sid) is socket:
        del server.sockets[socket.sid]


class MessagePacket(packet.Packet):  # type: ignore[misc]
    """An Engine.IO MESSAGE whose wire form is computed once, however many sockets send it."""

    def __init__(self, text: str) -> None:
        super().__init__(packet.MESSAGE, text)
        self.encode_cache = "4" + text

    def encode(self, b64: bool = False) -> Any:
        return self.encode_cache


CLOSE_PACKET = packet.Packet(packet.CLOSE)
PING_PACKET = packet.Packet(packet.PING)
