"""A real gateway on an ephemeral loopback port, in a thread with its own event loop.

The server gets its own loop so that blocking test clients (``ssl`` handshakes) and the test's
own loop never stall it, and so that what the test measures crosses a real socket.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypercorn.config import Sockets

from gateway.app import Gateway
from gateway.server.config import GatewayConfig, load_config
from gateway.server.listeners import Listeners
from gateway.server.runner import build_gateway, serve
from gateway.settings import Settings


def bound_socket(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


@dataclass
class LiveServer:
    settings: Settings
    config_overrides: dict[str, Any] = field(default_factory=dict)
    tls: bool = False
    """Set from the config: True when it names a certificate."""
    gateway: Gateway | None = None
    port: int = 0
    _thread: threading.Thread | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> LiveServer:
        """Start serving; TLS when the config overrides name a certfile and keyfile."""
        sock = bound_socket()
        self.port = sock.getsockname()[1]
        config: GatewayConfig = load_config(None, self.config_overrides)
        self.tls = config.ssl_enabled
        sockets = Sockets([sock], [], []) if self.tls else Sockets([], [sock], [])
        self._thread = threading.Thread(
            target=self._run, args=(config, sockets), name=f"gateway:{self.port}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("gateway did not start")
        if self._error is not None:
            raise self._error
        return self

    def _run(self, config: GatewayConfig, sockets: Sockets) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self.gateway = build_gateway(self.settings, config)
            started = asyncio.Event()
            self.gateway.http.before_serving(_set(started))
            task = asyncio.create_task(
                serve(
                    self.gateway,
                    config,
                    Listeners(sockets),
                    shutdown_trigger=self._stop.wait,
                    tune_gc=False,
                )
            )
            waiter = asyncio.create_task(started.wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            self._ready.set()
            await task

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced to the test thread by start()
            self._error = exc
            self._ready.set()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run *fn* (a coroutine function) on the server's loop and wait for its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(fn(), self._loop).result(10)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(15)
            assert not self._thread.is_alive(), "gateway did not stop"


def _set(event: asyncio.Event) -> Callable[[], Any]:
    async def hook() -> None:
        event.set()

    return hook
