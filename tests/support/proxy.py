"""A TCP relay in front of a gateway, to play the network of a phone.

``freeze()`` stops forwarding on every connection open now, in both directions, without closing
anything: both ends keep a connection that will never carry another byte (a phone that left its
Wi-Fi, a lift, a tunnel). Connections opened afterwards are relayed normally (the phone's new
network). ``target`` may be changed at any time: new connections go to the new backend (the
load balancer sent the phone to another node).

The relay runs on its own thread and event loop, so a test's clients (even blocking ones) never
stall it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field


@dataclass
class _Link:
    frozen: asyncio.Event = field(default_factory=asyncio.Event)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)


class FreezingProxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._links: list[_Link] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FreezingProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(5)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def freeze(self) -> None:
        """Every connection open now stops carrying bytes, both ways, and stays open."""

        def freeze_all() -> None:
            for link in self._links:
                link.frozen.set()

        self._loop.call_soon_threadsafe(freeze_all)

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for link in self._links:
                for writer in link.writers:
                    writer.close()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._relay, "127.0.0.1", 0)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        link = _Link()
        self._links.append(link)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        link.writers += [writer, up_writer]
        await asyncio.gather(
            self._pipe(reader, up_writer, link), self._pipe(up_reader, writer, link)
        )

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: _Link) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await src.read(65536):
                if link.frozen.is_set():
                    await asyncio.Event().wait()  # hold everything, forever: a dead network
                dst.write(data)
                await dst.drain()
        dst.close()
