"""The delivery port, implemented on python-socketio's server and client manager."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import socketio

from ..protocol.close import RECONNECT_ADVICE, CloseReason
from ..protocol.events import Outbound
from ..protocol.timestamps import iso_timestamp

NAMESPACE = "/"


class SocketIODelivery:
    def __init__(self, sio: socketio.AsyncServer) -> None:
        self._sio = sio

    async def send(self, sid: str, event: str, payload: Mapping[str, Any]) -> None:
        await self._sio.emit(event, payload, to=sid, namespace=NAMESPACE)

    async def send_many(
        self, sids: Collection[str], event: str, payload: Mapping[str, Any]
    ) -> None:
        if sids:
            await self._sio.emit(event, payload, to=list(sids), namespace=NAMESPACE)

    async def broadcast(
        self, event: str, payload: Mapping[str, Any], *, local_only: bool = False
    ) -> None:
        if local_only:
            sids = [sid for sid, _ in self._sio.manager.get_participants(NAMESPACE, None)]
            await self.send_many(sids, event, payload)
        else:
            await self._sio.emit(event, payload, namespace=NAMESPACE)

    async def close(self, sid: str, reason: CloseReason, message: str) -> None:
        await self.send(sid, Outbound.DISCONNECT_NOTICE, disconnect_notice(reason, message))
        await self._sio.disconnect(sid, namespace=NAMESPACE)


def disconnect_notice(reason: CloseReason, message: str) -> dict[str, Any]:
    return {
        "reason": reason.value,
        "message": message,
        "reconnect": RECONNECT_ADVICE[reason],
        "timestamp": iso_timestamp(),
    }
