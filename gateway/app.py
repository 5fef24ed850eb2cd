"""The composition root: settings in, one ASGI application out."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import socketio

from .http.routes import create_http_app
from .hub import Hub
from .protocol.events import Outbound
from .protocol.timestamps import iso_timestamp
from .server.tls_noise import TlsNoise
from .settings import Settings
from .store.base import PresenceStore
from .store.memory import MemoryStore
from .tls import CertInfo, TlsReloader
from .transport.delivery import SocketIODelivery
from .transport.socketio_server import SocketTransport

log = logging.getLogger("wshub.app")

CERTIFICATE_REFRESH_MESSAGE = (
    "Server SSL certificates have been updated. You may need to reconnect."
)


class Gateway:
    """Everything one worker process runs, wired together."""

    def __init__(
        self,
        settings: Settings,
        store: PresenceStore | None = None,
        *,
        tls: TlsReloader | None = None,
    ) -> None:
        self.settings = settings
        self.tls = tls
        self.tls_noise: TlsNoise | None = None
        self.started = time.monotonic()
        self.transport = SocketTransport(settings, time.monotonic)
        self.sio = self.transport.sio
        self.hub = Hub(settings, store or MemoryStore(), SocketIODelivery(self.sio))
        self.transport.bind(self.hub)
        self.http = create_http_app(self, started=self.started)
        self._jobs: list[asyncio.Task[Any]] = []
        self.http.before_serving(self.start)
        self.http.after_serving(self.stop)
        self.asgi = socketio.ASGIApp(self.sio, other_asgi_app=self.http, socketio_path="socket.io")

    async def start(self) -> None:
        self._jobs = [
            asyncio.create_task(job(), name=f"wshub:{job.__qualname__}")
            for job in self.hub.background_jobs()
        ]
        if self.tls is not None:
            self.tls.add_listener(self._certificate_reloaded)
            await self.tls.start()

    async def stop(self) -> None:
        if self.tls is not None:
            await self.tls.stop()
        for job in self._jobs:
            job.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)
        await self.hub.store.close()

    def reload_tls(self, trigger: str) -> None:
        """Reload the certificate material now (SIGHUP); a no-op without TLS."""
        if self.tls is not None:
            task = asyncio.get_running_loop().create_task(self.tls.reload(trigger))
            self._jobs.append(task)

    async def _certificate_reloaded(self, info: CertInfo) -> None:
        # Local only: every worker reloads on its own and tells its own clients, once.
        await self.hub.delivery.broadcast(
            Outbound.CERTIFICATE_REFRESH,
            {"message": CERTIFICATE_REFRESH_MESSAGE, "timestamp": iso_timestamp()},
            local_only=True,
        )


def create_app(settings: Settings | None = None) -> Any:
    """ASGI application factory (``gateway.app:create_app()`` for an ASGI server)."""
    return Gateway(settings or Settings.from_environment()).asgi
