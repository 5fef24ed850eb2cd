"""python-socketio, wrapped: connection events and a catch-all into the :class:`~gateway.hub.Hub`.

python-socketio is untyped and its packet handling is the one place where a hostile client can
reach code we do not own; this module is the seam. It overrides private hooks of
``socketio.AsyncServer`` and ``engineio.AsyncServer`` (pinned to 5.x / 4.x in
``pyproject.toml``; ``tests/e2e`` covers each):

* ``_handle_eio_message``: records the packet's size for the size limit and turns a malformed
  Socket.IO packet into ``system:error`` instead of an exception in the reader loop;
* ``_handle_connect``: welcomes the client *after* its CONNECT packet is out (a welcome sent
  from the connect handler would overtake it), and closes the Engine.IO session of a refused
  connection instead of leaving it open;
* ``engineio.AsyncServer.send_packet``: bounds each client's outbound queue. python-engineio
  queues without limit and its writer blocks on a client that does not read, so one stalled
  reader would otherwise grow the server's memory for as long as others broadcast.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import engineio
import socketio

from ..auth.tokens import AuthError, Identity
from ..hub import Hub, Refused
from ..observability.logs import connection_id
from ..observability.metrics import Metrics
from ..protocol import codec
from ..protocol.close import CloseReason
from ..protocol.errors import ErrorCode
from ..protocol.events import Outbound
from ..settings import Settings
from . import engine_socket
from .admission import Admission, AdmissionPolicy, client_address
from .delivery import NAMESPACE, SocketIODelivery
from .manager import DirectEmitManager

log = logging.getLogger("wshub.transport")

# Socket.IO packet types 5 (BINARY_EVENT) and 6 (BINARY_ACK), as the first character.
_BINARY_PACKET_TYPES = ("5", "6")
_packet_size: contextvars.ContextVar[int] = contextvars.ContextVar("packet_size", default=0)
# Time a refused client gets to read its CONNECT_ERROR before its session is closed.
_REFUSED_GRACE_SECONDS = 1.0


class OrjsonCodec:
    """The ``json`` module interface python-socketio and python-engineio expect."""

    @staticmethod
    def dumps(value: Any, **_: Any) -> str:
        return codec.dumps(value)

    @staticmethod
    def loads(text: str | bytes, **_: Any) -> Any:
        return codec.loads(text)


class JsonPacket(socketio.packet.Packet):  # type: ignore[misc]
    """Socket.IO packets that are JSON only.

    python-socketio walks every outbound payload recursively looking for ``bytes`` (to send
    binary attachments); the wire contract is JSON, inbound binary packets are refused before
    they are parsed (see ``_handle_eio_message``), so no payload the gateway sends can hold
    bytes, and the walk is skipped.
    """

    json = OrjsonCodec

    @classmethod
    def data_is_binary(cls, data: Any) -> bool:
        return False


@dataclass(slots=True)
class Connection:
    """What the transport knows of a live connection of this process."""

    sid: str
    address: str
    identity: Identity | None


class BoundedEngineIOServer(engineio.AsyncServer):  # type: ignore[misc]
    """Engine.IO server whose per-client outbound queue has a ceiling."""

    max_queue = 1_000
    on_slow_consumer: Callable[[str], None] | None = None
    """Called with the Engine.IO session id of a client about to be dropped."""

    async def _trigger_event(self, event: str, *args: Any, **kwargs: Any) -> Any:
        # The hot path, once per client message: python-socketio's handler, a coroutine, run
        # inline, without python-engineio's per-call inspect check and closure. Errors are
        # handled as python-engineio does (logged, never raised into the reader loop).
        if event != "message" or kwargs.get("run_async"):
            return await super()._trigger_event(event, *args, **kwargs)
        try:
            return await self.handlers["message"](*args)
        except asyncio.CancelledError:
            return None
        except Exception:
            self.logger.exception("message async handler error")
            return None

    async def send_packet(self, sid: str, pkt: Any) -> None:
        socket = self.sockets.get(sid)
        if socket is None or socket.closed or socket.closing:
            return
        if socket.queue.qsize() >= self.max_queue:
            await self._drop_slow_consumer(socket)
            return
        await socket.send(pkt)

    async def _drop_slow_consumer(self, socket: Any) -> None:
        log.warning(
            "closing %s: slow consumer (%d packets queued)", socket.sid, socket.queue.qsize()
        )
        if self.on_slow_consumer is not None:
            self.on_slow_consumer(socket.sid)
        # abort: a CLOSE packet would only join the queue the client is not reading.
        await socket.close(wait=False, abort=True, reason=CloseReason.SLOW_CONSUMER.value)
        while not socket.queue.empty():  # free the backlog now, not when the peer goes
            socket.queue.get_nowait()
            socket.queue.task_done()
        socket.queue.put_nowait(None)  # lets the writer task finish once it is unblocked


class GatewaySocketServer(socketio.AsyncServer):  # type: ignore[misc]
    """AsyncServer with the hooks described in the module docstring."""

    after_connect: Callable[[str], Any] | None = None

    def _engineio_server_class(self) -> type[engineio.AsyncServer]:
        return BoundedEngineIOServer

    async def _handle_eio_message(self, eio_sid: str, data: str | bytes) -> None:
        _packet_size.set(len(data))
        if isinstance(data, bytes) or data[:1] in _BINARY_PACKET_TYPES:
            await self._refuse_packet(eio_sid, "Binary attachments are not supported; send JSON")
            return
        try:
            await super()._handle_eio_message(eio_sid, data)
        except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
            # A packet python-socketio could not parse: bad JSON, an empty event array, a
            # binary packet announcing attachments that never come. Answer it; never let it
            # kill the reader loop.
            log.info("malformed packet from %s: %s", eio_sid, exc)
            await self._refuse_packet(eio_sid, "Malformed Socket.IO packet")

    async def _refuse_packet(self, eio_sid: str, message: str) -> None:
        sid = self.manager.sid_from_eio_sid(eio_sid, NAMESPACE)
        if sid is not None:
            payload = {"code": ErrorCode.INVALID_FORMAT.value, "message": message}
            await self.emit(Outbound.ERROR, payload, to=sid)

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        namespace = namespace or NAMESPACE
        await super()._handle_connect(eio_sid, namespace, data)
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is not None and self.manager.is_connected(sid, namespace):
            if self.after_connect is not None:
                await self.after_connect(sid)
        else:
            asyncio.get_running_loop().call_later(
                _REFUSED_GRACE_SECONDS, self._close_refused, eio_sid
            )

    def _close_refused(self, eio_sid: str) -> None:
        if self.manager.sid_from_eio_sid(eio_sid, NAMESPACE) is None:
            socket = self.eio.sockets.get(eio_sid)
            if socket is not None:
                self.start_background_task(socket.close, wait=False, abort=True)


class SocketTransport:
    """Binds a :class:`GatewaySocketServer` to a :class:`Hub`."""

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float],
        metrics: Metrics,
        *,
        client_manager: socketio.AsyncManager | None = None,
    ) -> None:
        origins = settings.cors_origins
        self.sio = GatewaySocketServer(
            async_mode="asgi",
            async_handlers=False,  # one client's events run in order, without a task each
            serializer=JsonPacket,
            json=OrjsonCodec,
            cors_allowed_origins="*" if "*" in origins else origins,
            max_http_buffer_size=settings.max_frame_bytes,
            ping_interval=settings.engineio_ping_interval,
            ping_timeout=settings.engineio_ping_timeout,
            logger=False,
            engineio_logger=False,
            client_manager=client_manager or DirectEmitManager(),
        )
        engine_socket.install()
        self.sio.eio.max_queue = settings.max_outbound_queue
        self.sio.eio.on_slow_consumer = self._slow_consumer
        self.metrics = metrics
        self.connections: dict[str, Connection] = {}
        self.admission = Admission(
            AdmissionPolicy(
                max_connections=settings.max_connections,
                max_per_address=settings.max_connections_per_ip,
                connect_rate=settings.connect_rate_per_ip,
                connect_burst=settings.connect_burst_per_ip,
            ),
            clock,
        )
        self._trusted_proxies = settings.trusted_proxies
        self._log_bodies = settings.log_bodies
        self._hub: Hub | None = None
        self.delivery = SocketIODelivery(self.sio, metrics)
        self._close_reasons = self.delivery.close_reasons
        self._accepting: Callable[[], bool] = lambda: True

    def bind(self, hub: Hub, *, accepting: Callable[[], bool] = lambda: True) -> None:
        """Route events to *hub*; *accepting* says whether new connections are welcome."""
        self._hub = hub
        self._accepting = accepting
        self.sio.on("connect", self._on_connect, namespace=NAMESPACE)
        self.sio.on("disconnect", self._on_disconnect, namespace=NAMESPACE)
        self.sio.on("*", self._on_event, namespace=NAMESPACE)
        self.sio.after_connect = hub.connected

    def start_manager(self) -> None:
        """Start the client manager now rather than on the first connection (python-socketio's
        default), so that the Redis listener exists before the backplane is first probed."""
        if not self.sio.manager_initialized:
            self.sio.manager_initialized = True
            self.sio.manager.initialize()

    @property
    def hub(self) -> Hub:
        assert self._hub is not None, "bind() a hub first"
        return self._hub

    def transport_of(self, sid: str) -> str:
        try:
            return str(self.sio.transport(sid, namespace=NAMESPACE))
        except KeyError:
            return "closed"

    async def _on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        scope = environ.get("asgi.scope", {})
        peer = str(environ.get("REMOTE_ADDR") or (scope.get("client") or ("unknown",))[0])
        address = client_address(peer, environ.get("HTTP_X_FORWARDED_FOR"), self._trusted_proxies)
        connection_id.set(sid)
        if not self._accepting():
            self._refuse(address, "shutting_down", "the server is shutting down")
        refusal = self.admission.admit(address)
        if refusal is not None:
            self._refuse(address, "limits", refusal, ErrorCode.RATE_LIMIT)
        try:
            identity = self.hub.authenticate(auth, _headers(environ))
            await self.hub.admit(sid, identity)
        except AuthError as exc:
            self.admission.release(address)
            self._refuse(address, "auth", f"authentication failed: {exc}", ErrorCode.FORBIDDEN)
        except Refused as exc:
            self.admission.release(address)
            self._refuse(address, "duplicate_user", str(exc), ErrorCode.DUPLICATE_USERNAME)
        self.connections[sid] = Connection(sid, address, identity)
        self.metrics.connections_opened.inc()
        self.metrics.connections_active.inc()
        log.info("connected from %s via %s", address, self.transport_of(sid))
        return True

    def _refuse(
        self, address: str, kind: str, message: str, code: ErrorCode | None = None
    ) -> NoReturn:
        self.metrics.connections_refused.labels(kind).inc()
        log.info("refused connection from %s: %s", address, message)
        data = {"code": code.value} if code is not None else {}
        raise socketio.exceptions.ConnectionRefusedError(message, data)

    async def _on_disconnect(self, sid: str, reason: Any = None) -> None:
        connection_id.set(sid)
        connection = self.connections.pop(sid, None)
        ours = self._close_reasons.pop(sid, None)
        label = ours.value if ours is not None else str(reason or "unknown").replace(" ", "_")
        if connection is not None:
            self.admission.release(connection.address)
            self.metrics.connections_active.dec()
            self.metrics.connections_closed.labels(label).inc()
        log.info("disconnected: %s", label)
        await self.hub.disconnected(sid)

    async def _on_event(self, event: Any, sid: str, *args: Any) -> Any:
        connection_id.set(sid)
        if self._log_bodies:
            log.debug("event %s: %r", event, args)
        connection = self.connections.get(sid)
        identity = connection.identity if connection is not None else None
        return await self.hub.handle(sid, str(event), args, _packet_size.get(), identity)

    def _slow_consumer(self, eio_sid: str) -> None:
        sid = self.sio.manager.sid_from_eio_sid(eio_sid, NAMESPACE)
        if sid is not None:
            self._close_reasons[sid] = CloseReason.SLOW_CONSUMER


def _headers(environ: dict[str, Any]) -> dict[str, str]:
    return {
        key[5:].replace("_", "-").lower(): str(value)
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }
