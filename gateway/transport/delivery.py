"""The delivery port, implemented on python-socketio's server and client manager."""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping
from typing import Any

import socketio

from ..observability.metrics import Metrics
from ..protocol.close import RECONNECT_ADVICE, CloseReason
from ..protocol.events import Outbound
from ..protocol.timestamps import iso_timestamp

NAMESPACE = "/"


class SocketIODelivery:
    def __init__(self, sio: socketio.AsyncServer, metrics: Metrics) -> None:
        self._sio = sio
        # One labelled child per event name, looked up once: labels() is a lock and a dict walk.
        self._delivered = functools.lru_cache(maxsize=64)(metrics.delivered.labels)
        self.close_reasons: dict[str, CloseReason] = {}
        """Why the server is closing a connection, until its disconnect handler reads it."""

    async def send(self, sid: str, event: str, payload: Mapping[str, Any]) -> None:
        # A client of this process is served directly, never through the backplane: faster,
        # and replies and errors still reach their client while Redis is down.
        local = self._is_local(sid)
        await self._sio.emit(event, payload, to=sid, namespace=NAMESPACE, ignore_queue=local)
        self._delivered(event).inc()

    async def send_many(
        self, sids: Collection[str], event: str, payload: Mapping[str, Any]
    ) -> None:
        local: list[str] = []
        remote: list[str] = []
        for sid in sids:
            (local if self._is_local(sid) else remote).append(sid)
        if local:
            await self._sio.emit(event, payload, to=local, namespace=NAMESPACE, ignore_queue=True)
        if remote:
            await self._sio.emit(event, payload, to=remote, namespace=NAMESPACE)
        self._delivered(event).inc(len(sids))

    def _local_count(self) -> int:
        """Clients of this process (the manager's room of everyone), without copying it."""
        return len(self._sio.manager.rooms.get(NAMESPACE, {}).get(None, ()))

    def _is_local(self, sid: str) -> bool:
        return bool(self._sio.manager.is_connected(sid, NAMESPACE))

    async def broadcast(
        self, event: str, payload: Mapping[str, Any], *, local_only: bool = False
    ) -> None:
        # ignore_queue: this process's clients only, nothing through the backplane. Other
        # processes count their own deliveries of a full broadcast.
        await self._sio.emit(event, payload, namespace=NAMESPACE, ignore_queue=local_only)
        self._delivered(event).inc(self._local_count())

    async def close(self, sid: str, reason: CloseReason, message: str) -> None:
        self.close_reasons[sid] = reason
        await self.send(sid, Outbound.DISCONNECT_NOTICE, disconnect_notice(reason, message))
        await self._sio.disconnect(sid, namespace=NAMESPACE)


def disconnect_notice(reason: CloseReason, message: str) -> dict[str, Any]:
    return {
        "reason": reason.value,
        "message": message,
        "reconnect": RECONNECT_ADVICE[reason],
        "timestamp": iso_timestamp(),
    }
