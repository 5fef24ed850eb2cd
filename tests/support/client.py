"""A real ``socketio.AsyncClient`` that records every event it receives, in order."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from typing import Any

import socketio

DEFAULT_TIMEOUT = 3.0


class Client:
    def __init__(self, url: str, *, transports: list[str] | None = None, **client_kwargs: Any):
        self.url = url
        self.transports = transports or ["websocket"]
        self.sio = socketio.AsyncClient(reconnection=False, **client_kwargs)
        self.events: dict[str, asyncio.Queue[Any]] = defaultdict(asyncio.Queue)
        self.log: list[tuple[str, Any]] = []
        self.disconnected = asyncio.Event()
        self.sio.on("*", self._record)
        self.sio.on("disconnect", self._on_disconnect)

    async def _record(self, event: str, *args: Any) -> None:
        payload = args[0] if len(args) == 1 else list(args)
        self.log.append((event, payload))
        self.events[event].put_nowait(payload)

    async def _on_disconnect(self, *args: Any) -> None:
        self.disconnected.set()

    @property
    def sid(self) -> str:
        sid = self.sio.get_sid()
        assert sid is not None
        return str(sid)

    async def connect(
        self, *, auth: Any = None, headers: dict[str, str] | None = None, welcome: bool = True
    ) -> Client:
        await self.sio.connect(
            self.url,
            transports=self.transports,
            auth=auth,
            headers=headers or {},
            wait_timeout=DEFAULT_TIMEOUT,
        )
        if welcome:
            await self.expect("system:welcome")
        return self

    async def emit(self, event: str, *data: Any) -> None:
        await self.sio.emit(event, data[0] if len(data) == 1 else data if data else None)

    async def emit_raw(self, event: str, *args: Any) -> None:
        await self.sio.emit(event, tuple(args) if len(args) != 1 else args[0])

    async def call(self, event: str, data: Any = None, timeout: float = DEFAULT_TIMEOUT) -> Any:
        return await self.sio.call(event, data, timeout=timeout)

    async def expect(self, event: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
        try:
            return await asyncio.wait_for(self.events[event].get(), timeout)
        except TimeoutError:
            seen = [name for name, _ in self.log]
            raise AssertionError(f"no {event!r} within {timeout}s; received {seen}") from None

    async def expect_none(self, event: str, within: float = 0.3) -> None:
        await asyncio.sleep(within)
        assert self.events[event].empty(), f"unexpected {event}: {self.events[event].get_nowait()}"

    async def login(self, username: str, **fields: Any) -> Client:
        await self.emit("system:setData", {"username": username, **fields})
        reply = await self.expect("system:dataSet")
        assert reply["success"] is True, reply
        return self

    async def close(self) -> None:
        """Leave politely: the server sees a Socket.IO DISCONNECT, not a lost transport.

        python-socketio's ``disconnect()`` queues its DISCONNECT and closes the WebSocket at
        once, so the packet is often never written, and the server (rightly) keeps the
        session for recovery. Here the DISCONNECT is written first.
        """
        if self.sio.connected:
            await self.sio.eio.send("1")  # Socket.IO DISCONNECT of the main namespace
            # Taken by python-engineio's writer, and written (bounded: the transport may be
            # gone already, and its writer with it).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.sio.eio.queue.join(), 1)
            await asyncio.sleep(0.01)
            await self.sio.disconnect()
        # A refused connect leaves python-engineio's HTTP session open: close it too.
        http = self.sio.eio.http
        if http is not None and not http.closed:
            await http.close()

    async def drop(self) -> None:
        """Go away without a word, as a client whose network vanished would (the transport
        closes; the server may keep the session for recovery)."""
        if self.sio.connected:
            await self.sio.eio.disconnect(abort=True)


class Clients:
    """The clients of one test: each is closed at the end (``close_all``), whatever happened."""

    def __init__(self) -> None:
        self.made: list[Client] = []

    def new(self, url: str, **client_kwargs: Any) -> Client:
        """A client that is not connected yet (to connect it with ``auth`` or ``headers``)."""
        client = Client(url, **client_kwargs)
        self.made.append(client)
        return client

    async def connect(self, url: str, username: str | None = None, **client_kwargs: Any) -> Client:
        """A connected client that has had its welcome, logged in when a username is given."""
        client = await self.new(url, **client_kwargs).connect()
        if username is not None:
            await client.login(username)
        return client

    async def close_all(self) -> None:
        """Close every client made so far (closing a closed client does nothing)."""
        for client in self.made:
            await client.close()
