"""python-socketio, wrapped: connection events and a catch-all into the :class:`~gateway.hub.Hub`.

python-socketio is untyped and its packet handling is the one place where a hostile client can
reach code we do not own; this module is the seam. It overrides two private hooks of
``socketio.AsyncServer`` (pinned to python-socketio 5.x in ``pyproject.toml``):

* ``_handle_eio_message``: records the packet's size for the size limit and turns a malformed
  Socket.IO packet into ``system:error`` instead of an exception in the reader loop;
* ``_handle_connect``: runs the post-connect hook (welcome) *after* the CONNECT packet is out,
  so the welcome never reaches a client before its namespace is connected.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import socketio

from ..hub import Hub
from ..protocol import codec
from ..protocol.errors import ErrorCode
from ..protocol.events import Outbound
from .delivery import NAMESPACE

log = logging.getLogger("wshub.transport")

_packet_size: contextvars.ContextVar[int] = contextvars.ContextVar("packet_size", default=0)


class OrjsonCodec:
    """The ``json`` module interface python-socketio and python-engineio expect."""

    @staticmethod
    def dumps(value: Any, **_: Any) -> str:
        return codec.dumps(value)

    @staticmethod
    def loads(text: str | bytes, **_: Any) -> Any:
        return codec.loads(text)


@dataclass(slots=True)
class Connection:
    """What the transport knows of a live connection of this process."""

    sid: str
    address: str
    identity: dict[str, Any] = field(default_factory=dict)


class GatewaySocketServer(socketio.AsyncServer):  # type: ignore[misc]
    """AsyncServer with the two hooks described in the module docstring."""

    after_connect: Callable[[str], Any] | None = None

    async def _handle_eio_message(self, eio_sid: str, data: str | bytes) -> None:
        _packet_size.set(len(data))
        try:
            await super()._handle_eio_message(eio_sid, data)
        except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
            # A packet python-socketio could not parse: bad JSON, an empty event array, a
            # non-string event name. Answer it; never let it kill the reader loop.
            sid = self.manager.sid_from_eio_sid(eio_sid, NAMESPACE)
            log.info("malformed packet from %s: %s", sid or eio_sid, exc)
            if sid is not None:
                await self.emit(
                    Outbound.ERROR,
                    {
                        "code": ErrorCode.INVALID_FORMAT.value,
                        "message": "Malformed Socket.IO packet",
                    },
                    to=sid,
                )

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        await super()._handle_connect(eio_sid, namespace, data)
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace or NAMESPACE)
        if (
            sid is not None
            and self.after_connect is not None
            and self.manager.is_connected(sid, namespace or NAMESPACE)
        ):
            await self.after_connect(sid)


class SocketTransport:
    """Binds a :class:`GatewaySocketServer` to a :class:`Hub`."""

    def __init__(self, sio: GatewaySocketServer) -> None:
        self.sio = sio
        self.connections: dict[str, Connection] = {}
        self._hub: Hub | None = None

    def bind(self, hub: Hub) -> None:
        self._hub = hub
        self.sio.on("connect", self._on_connect, namespace=NAMESPACE)
        self.sio.on("disconnect", self._on_disconnect, namespace=NAMESPACE)
        self.sio.on("*", self._on_event, namespace=NAMESPACE)
        self.sio.after_connect = self._after_connect

    @property
    def hub(self) -> Hub:
        assert self._hub is not None, "bind() a hub first"
        return self._hub

    async def _on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        address = (
            environ.get("REMOTE_ADDR") or environ.get("asgi.scope", {}).get("client", ("?",))[0]
        )
        self.connections[sid] = Connection(sid=sid, address=str(address))
        return True

    async def _after_connect(self, sid: str) -> None:
        await self.hub.connected(sid)

    async def _on_disconnect(self, sid: str, reason: Any = None) -> None:
        self.connections.pop(sid, None)
        await self.hub.disconnected(sid)

    async def _on_event(self, event: Any, sid: str, *args: Any) -> Any:
        connection = self.connections.get(sid)
        identity = connection.identity if connection is not None else {}
        return await self.hub.handle(sid, str(event), args, _packet_size.get(), identity)
