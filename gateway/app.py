"""The composition root: settings in, one ASGI application out."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import socketio

from .http.client_bundle import ClientBundle
from .http.console import register_console
from .http.routes import create_http_app
from .hub import Hub
from .observability.metrics import Metrics, TlsReloadCollector
from .protocol.close import CloseReason
from .protocol.events import Outbound
from .protocol.timestamps import iso_timestamp
from .settings import Settings
from .store.base import PresenceStore
from .store.memory import MemoryStore
from .store.redis import RedisStore
from .tls import CertInfo, TlsReloader
from .transport.backplane import GatewayRedisManager
from .transport.socketio_server import SocketTransport

log = logging.getLogger("wshub.app")

CERTIFICATE_REFRESH_MESSAGE = (
    "Server SSL certificates have been updated. You may need to reconnect."
)
DRAIN_MESSAGE = "The server is shutting down; reconnect to another instance"
# Disconnect batches of a drain are this far apart at least.
_DRAIN_TICK_SECONDS = 0.1


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
        self.metrics = Metrics()
        self.started = time.monotonic()
        self.draining = False
        self.ops_port: int | None = None
        self.backplane: GatewayRedisManager | None = None
        if store is None and settings.backend == "redis":
            node_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
            store = RedisStore(
                settings.redis_url,
                node_id=node_id,
                prefix=settings.redis_prefix,
                lease_seconds=settings.redis_lease_seconds,
            )
            self.backplane = GatewayRedisManager(
                settings.redis_url,
                channel=f"{settings.redis_prefix}socketio",
                probe_timeout=settings.backplane_probe_timeout,
            )
        self.transport = SocketTransport(
            settings, time.monotonic, self.metrics, client_manager=self.backplane
        )
        self.sio = self.transport.sio
        self.hub = Hub(
            settings,
            store or MemoryStore(),
            self.transport.delivery,
            metrics=self.metrics,
        )
        self.transport.bind(self.hub, accepting=lambda: not self.draining)
        self.http = create_http_app(self, started=self.started)
        register_console(self.http, self)
        self._jobs: list[asyncio.Task[Any]] = []
        self._reloads: set[asyncio.Task[Any]] = set()
        self.http.before_serving(self.start)
        self.http.after_serving(self.stop)
        self.asgi = ClientBundle(
            socketio.ASGIApp(self.sio, other_asgi_app=self.http, socketio_path="socket.io")
        )

    async def start(self) -> None:
        store = self.hub.store
        if isinstance(store, RedisStore):
            await store.start()  # StoreUnavailable here refuses the start: Redis is required
        self.transport.start_manager()
        jobs = list(self.hub.background_jobs())
        if self.backplane is not None:
            jobs.append(self._probe_backplane)
        self._jobs = [
            asyncio.create_task(_supervised(job), name=f"wshub:{job.__qualname__}") for job in jobs
        ]
        if self.tls is not None:
            self.tls.add_listener(self._certificate_reloaded)
            self.metrics.add_collector(TlsReloadCollector(self.tls))
            self._record_certificate(self.tls.info)
            await self.tls.start()

    async def stop(self) -> None:
        if self.tls is not None:
            await self.tls.stop()
        pending = [*self._jobs, *self._reloads]
        for job in pending:
            job.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self.hub.store.close()

    async def drain(self) -> None:
        """Disconnect every client, in batches spread over ``drain_window`` seconds.

        Each client is told first (``system:disconnect`` reason ``server_shutdown``) so that
        it reconnects, to another instance; spreading the closes spreads the reconnects.
        """
        self.draining = True
        sids = list(self.transport.connections)
        if not sids:
            return
        window = self.settings.drain_window
        batches = max(1, min(len(sids), math.floor(window / _DRAIN_TICK_SECONDS)))
        size = math.ceil(len(sids) / batches)
        pause = window / batches
        log.info("draining %d connections in %d batches over %.1f s", len(sids), batches, window)
        for start in range(0, len(sids), size):
            batch = sids[start : start + size]
            await asyncio.gather(
                *(
                    self.hub.delivery.close(sid, CloseReason.SHUTDOWN, DRAIN_MESSAGE)
                    for sid in batch
                )
            )
            if start + size < len(sids):
                await asyncio.sleep(pause)

    def readiness_problems(self) -> list[str]:
        """Why this worker should get no new clients, beyond draining and the store's ping."""
        problems = []
        if self.backplane is not None and not self.backplane.healthy:
            problems.append("Redis backplane not delivering (self-probe failed)")
        store = self.hub.store
        if isinstance(store, RedisStore) and not store.healthy:
            problems.append("presence entries not yet restored in Redis")
        return problems

    async def _probe_backplane(self) -> None:
        assert self.backplane is not None
        while True:
            healthy = await self.backplane.probe()
            self.metrics.backplane_healthy.set(1 if healthy else 0)
            await asyncio.sleep(self.settings.backplane_probe_interval)

    def reload_tls(self, trigger: str) -> None:
        """Reload the certificate material now (SIGHUP); a no-op without TLS."""
        if self.tls is not None:
            task = asyncio.get_running_loop().create_task(self.tls.reload(trigger))
            # Held until done (the loop keeps only weak references), then forgotten.
            self._reloads.add(task)
            task.add_done_callback(self._reloads.discard)

    async def _certificate_reloaded(self, info: CertInfo) -> None:
        self._record_certificate(info)
        # Local only: every worker reloads on its own and tells its own clients, once.
        await self.hub.delivery.broadcast(
            Outbound.CERTIFICATE_REFRESH,
            {"message": CERTIFICATE_REFRESH_MESSAGE, "timestamp": iso_timestamp()},
            local_only=True,
        )

    def _record_certificate(self, info: CertInfo) -> None:
        self.metrics.tls_not_after.set(info.not_after.timestamp())
        self.metrics.tls_serial.clear()
        self.metrics.tls_serial.labels(serial=info.serial_hex).set(1)


async def _supervised(job: Callable[[], Awaitable[None]]) -> None:
    """Run a process-wide loop forever: a failure is logged and the loop restarts, so one bad
    moment (a Redis blip during a heartbeat round) cannot silently stop heartbeats for good."""
    while True:
        try:
            await job()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background job %s failed; restarting in 1 s", job.__qualname__)
            await asyncio.sleep(1.0)


def create_app(settings: Settings | None = None) -> Any:
    """ASGI application factory (``gateway.app:create_app()`` for an ASGI server)."""
    return Gateway(settings or Settings.from_environment()).asgi
