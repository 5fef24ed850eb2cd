"""python-engineio's socket, without two tasks per message.

``engineio.AsyncSocket`` reads each WebSocket message through ``asyncio.ensure_future`` plus
``asyncio.wait_for`` (a task, and on Python 3.11 a second one inside ``wait_for``), and its writer
polls its queue through ``wait_for`` too. Task creation and switching is where a Python
Socket.IO server spends most of its time (shared/research/perf-baselines.md), so this subclass
reads and polls under ``asyncio.timeout``, which arms one timer and creates no task. Behaviour is
otherwise that of python-engineio 4.x: the same upgrade handshake, size check, timeouts and close.

python-engineio builds its sockets from the module attribute ``engineio.async_socket.AsyncSocket``;
:func:`install` points it at this class. The gateway is the only Engine.IO server in its process.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import engineio.async_socket
from engineio import exceptions, packet


class FastSocket(engineio.async_socket.AsyncSocket):  # type: ignore[misc]
    connected: bool
    upgrading: bool
    upgraded: bool

    def _silence_timeout(self) -> float:
        return float(self.server.ping_interval + self.server.ping_timeout)

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
        return packets

    async def _websocket_handler(self, ws: Any) -> Any:
        """Engine.IO handler for the WebSocket transport (upgrade, writer, reader loop)."""
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
            try:
                probe = packet.Packet(encoded_packet=await receive())
            except (OSError, TimeoutError):
                self.upgrading = False
                return None
            if probe.packet_type != packet.PING or probe.data != "probe":
                self.upgrading = False
                return None
            await ws.send(packet.Packet(packet.PONG, data="probe").encode())
            await self.queue.put(packet.Packet(packet.NOOP))  # ends the pending poll
            try:
                upgrade = packet.Packet(encoded_packet=await receive())
            except (OSError, TimeoutError):
                self.upgrading = False
                return None
            if upgrade.packet_type != packet.UPGRADE:
                self.upgraded = False
                self.upgrading = False
                return None
            self.upgraded = True
            self.upgrading = False
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
                        await ws.send(pkt.encode())
                except Exception:
                    break
            await ws.close()

        writer_task = asyncio.ensure_future(writer())
        while True:
            try:
                data = await receive()
            except asyncio.CancelledError:
                break
            except Exception:  # timeout, oversize, or the peer went away
                break
            if data is None:
                break  # closed by the client
            try:
                await self.receive(packet.Packet(encoded_packet=data))
            except exceptions.UnknownPacketError:
                pass
            except exceptions.SocketIsClosedError:
                break
            except Exception:
                self.server.logger.exception("Unknown receive error")
        await self.queue.put(None)  # lets the writer finish
        with contextlib.suppress(Exception):
            await writer_task
        await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)
        return None


def install() -> None:
    engineio.async_socket.AsyncSocket = FastSocket
