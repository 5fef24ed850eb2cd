"""A TCP relay in front of one Redis that can make subscriptions deaf, in a thread of its own.

:meth:`DeafeningProxy.deafen` stops relaying what Redis sends on every connection that has
subscribed (``SUBSCRIBE`` / ``SSUBSCRIBE``), now and later, while everything else flows: the
subscriber's socket stays open and silent, as behind a half-open TCP connection or a
firewall that dropped its state. Nothing is discarded: :meth:`DeafeningProxy.hear` lets the
held bytes through again. Its own event loop in a thread, so that a test blocking on an HTTP
call does not stall the Redis traffic of the gateways it talks to.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

_T = TypeVar("_T")

_SUBSCRIBING = (b"\r\nSUBSCRIBE\r\n", b"\r\nSSUBSCRIBE\r\n")


@dataclass(eq=False)
class _Link:
    subscriber: bool = False
    flowing: asyncio.Event = field(default_factory=asyncio.Event)


class DeafeningProxy:
    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._links: set[_Link] = set()
        self._deaf = False
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> DeafeningProxy:
        self._thread.start()
        self._server = self._run(self._listen())
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        self._run(close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def deafen(self) -> None:
        self._run(self._set_deaf(True))

    def hear(self) -> None:
        self._run(self._set_deaf(False))

    # -- internals (on the proxy's loop)

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(5)

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._relay, "127.0.0.1", 0)

    async def _set_deaf(self, deaf: bool) -> None:
        self._deaf = deaf
        for link in self._links:
            self._apply(link)

    def _apply(self, link: _Link) -> None:
        if self._deaf and link.subscriber:
            link.flowing.clear()
        else:
            link.flowing.set()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        except OSError:  # Redis is down: so is the relayed connection
            writer.close()
            return
        link = _Link()
        link.flowing.set()
        self._links.add(link)

        async def upstream() -> None:
            while data := await reader.read(65536):
                if not link.subscriber and any(marker in data for marker in _SUBSCRIBING):
                    link.subscriber = True
                    self._apply(link)
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                await link.flowing.wait()
                writer.write(data)
                await writer.drain()

        pumps = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        try:
            # Either side closing (or failing) ends the link, as a real connection would.
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for pump in done:
                pump.exception()  # a reset connection just ends the link
        finally:
            for pump in pumps:
                pump.cancel()
            self._links.discard(link)
            writer.close()
            up_writer.close()
