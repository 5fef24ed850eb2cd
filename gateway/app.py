"""The composition root: settings in, one ASGI application out."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from .api.routes import register_api
from .http.asgi import Dispatch
from .http.client_bundle import ClientBundle
from .http.console import register_console
from .http.routes import create_http_app
from .hub import Hub, claim_policy
from .observability.loop_lag import LoopLagMonitor
from .observability.metrics import Metrics, TlsReloadCollector
from .protocol.events import Outbound
from .protocol.timestamps import iso_timestamp
from .sessions import Sessions
from .settings import Settings
from .store.base import PresenceStore
from .store.memory import MemoryStore
from .store.redis import RedisStore
from .tls import CertInfo, TlsReloader
from .transport.admission import Admission, AdmissionPolicy
from .transport.backplane import Backplane
from .transport.gate import Gate
from .transport.peers import Peers
from .transport.router import Router
from .transport.socketio_layer import SocketIOLayer

log = logging.getLogger("wshub.app")

CERTIFICATE_REFRESH_MESSAGE = (
    "Server SSL certificates have been updated. You may need to reconnect."
)
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
        if store is None and settings.backend == "redis":
            node_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
            store = RedisStore(
                settings.redis_url,
                node_id=node_id,
                prefix=settings.redis_prefix,
                lease_seconds=settings.redis_lease_seconds,
                claim=claim_policy(settings),
                route_cache_seconds=settings.route_cache_seconds,
            )
        store = store or MemoryStore()
        clock = time.monotonic
        self.peers = Peers()
        self.router = Router(
            self.metrics, node_id=store.node_id, probe_timeout=settings.holder_probe_timeout
        )
        self.hub = Hub(settings, store, self.router, metrics=self.metrics)
        self.sessions = Sessions(settings, self.hub, self.metrics, clock=clock)
        self.backplane: Backplane | None = None
        if isinstance(store, RedisStore):
            self.backplane = Backplane(
                store.target,
                self.router,
                node_id=store.node_id,
                prefix=settings.redis_prefix,
                probe_timeout=settings.backplane_probe_timeout,
                registry=self.metrics.registry,
                on_routes=store.forget_routes,
            )
            store.on_routes_changed(self.backplane.announce_routes)
            self.router.attach(self.sessions, self.backplane, unreachable=store.unreachable)
        else:
            self.router.attach(self.sessions)
        self.sessions.recovery.remote = self.router
        store.on_evicted(self.sessions.evicted)
        self.transport = SocketIOLayer(settings, self.sessions, self.peers, clock)
        self.admission = Admission(
            AdmissionPolicy(
                max_connections=settings.max_connections,
                max_per_address=settings.max_connections_per_ip,
                connect_rate=settings.connect_rate_per_ip,
                connect_burst=settings.connect_burst_per_ip,
            ),
            clock,
        )
        gate = Gate(
            self.transport.eio.handle_request,
            self.admission,
            self.transport,
            trusted_proxies=settings.trusted_proxies,
            max_bytes=settings.max_frame_bytes,
            accepting=lambda: not self.draining,
        )
        self.http = create_http_app(self, started=self.started)
        register_console(self.http, self)
        register_api(self.http, self)
        self._jobs: list[asyncio.Task[Any]] = []
        self._reloads: set[asyncio.Task[Any]] = set()
        self.http.before_serving(self.start)
        self.http.after_serving(self.stop)
        self.asgi = ClientBundle(Dispatch(gate, self.http))

    async def start(self) -> None:
        store = self.hub.store
        if isinstance(store, RedisStore):
            await store.start()  # StoreUnavailable here refuses the start: Redis is required
        jobs = [
            *self.hub.background_jobs(),
            self.sessions.run,
            self.transport.pings.run,
            LoopLagMonitor(self.metrics.loop_lag).run,
        ]
        if self.backplane is not None:
            await self.backplane.start()
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
        # The store first: closing removes this node's connections, and the backplane tells
        # the other nodes' route caches.
        await self.hub.store.close()
        if self.backplane is not None:
            await self.backplane.stop()

    async def drain(self) -> None:
        """Disconnect every client, in batches spread over ``drain_window`` seconds.

        Each client is told first (``system:disconnect`` reason ``server_shutdown``) so that
        it reconnects, to another instance; spreading the closes spreads the reconnects.
        """
        self.draining = True
        await self.sessions.drain(self.settings.drain_window, _DRAIN_TICK_SECONDS)

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
