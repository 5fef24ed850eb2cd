"""The composition root: settings in, one ASGI application out."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import socketio

from .http.routes import create_http_app
from .hub import Hub
from .settings import Settings
from .store.base import PresenceStore
from .store.memory import MemoryStore
from .transport.delivery import SocketIODelivery
from .transport.socketio_server import SocketTransport

log = logging.getLogger("wshub.app")


class Gateway:
    """Everything one worker process runs, wired together."""

    def __init__(self, settings: Settings, store: PresenceStore | None = None) -> None:
        self.settings = settings
        self.started = time.monotonic()
        self.transport = SocketTransport(settings, time.monotonic)
        self.sio = self.transport.sio
        self.hub = Hub(settings, store or MemoryStore(), SocketIODelivery(self.sio))
        self.transport.bind(self.hub)
        self.http = create_http_app(self.hub, started=self.started)
        self._jobs: list[asyncio.Task[Any]] = []
        self.http.before_serving(self.start)
        self.http.after_serving(self.stop)
        self.asgi = socketio.ASGIApp(self.sio, other_asgi_app=self.http, socketio_path="socket.io")

    async def start(self) -> None:
        self._jobs = [
            asyncio.create_task(job(), name=f"wshub:{job.__qualname__}")
            for job in self.hub.background_jobs()
        ]

    async def stop(self) -> None:
        for job in self._jobs:
            job.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)
        await self.hub.store.close()


def create_app(settings: Settings | None = None) -> Any:
    """ASGI application factory (``gateway.app:create_app()`` for an ASGI server)."""
    return Gateway(settings or Settings.from_environment()).asgi
