"""Emitting without a task per recipient.

python-socketio's ``AsyncManager.emit`` wraps the send to every recipient in its own task and
waits for all of them; with 500 receivers a broadcast creates 500 tasks, and task creation and
switching is the largest share of a Python Socket.IO server's time
(shared/research/perf-baselines.md). Sending to an Engine.IO socket only appends to its queue, so
we call it directly, in order, and encode the Engine.IO packet once for all recipients too.
"""

from __future__ import annotations

from typing import Any

import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet


class PreEncodedPacket(eio_packet.Packet):  # type: ignore[misc]
    """An Engine.IO MESSAGE whose wire form is computed once, however many sockets send it."""

    def __init__(self, data: str | bytes) -> None:
        super().__init__(eio_packet.MESSAGE, data)
        self._text = None if isinstance(data, bytes) else f"{eio_packet.MESSAGE}{data}"

    def encode(self, b64: bool = False) -> Any:
        if self._text is not None:
            return self._text
        return super().encode(b64)


class DirectEmitManager(socketio.AsyncManager):  # type: ignore[misc]
    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str,
        room: Any = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: Any = None,
        **kwargs: Any,
    ) -> None:
        if callback is not None:  # each recipient needs its own ack id: the stock path
            await super().emit(
                event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, to=to
            )
            return
        room = to or room
        if namespace not in self.rooms:
            return
        args = list(data) if isinstance(data, tuple) else [] if data is None else [data]
        encoded = self.server.packet_class(
            sio_packet.EVENT, namespace=namespace, data=[event, *args]
        ).encode()
        packets = [
            PreEncodedPacket(p) for p in (encoded if isinstance(encoded, list) else [encoded])
        ]
        skip = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        send = self.server.eio.send_packet
        for sid, eio_sid in self.get_participants(namespace, room):
            if sid not in skip:
                for pkt in packets:
                    await send(eio_sid, pkt)
