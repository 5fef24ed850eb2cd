"""One worker: the gateway under Hypercorn's protocol servers, on uvloop where available.

We run Hypercorn's ``TCPServer`` ourselves rather than ``worker_serve`` for the shutdown: on
SIGTERM the public listeners stop accepting first, the gateway drains its clients in batches
(``Gateway.drain``), and only then do the remaining connections get ``graceful_timeout`` to
finish. Hypercorn's own shutdown would wait on open WebSockets instead (Hypercorn issue 308).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable
from functools import partial

from hypercorn.asyncio.lifespan import Lifespan
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.utils import repr_socket_addr, wrap_app

from ..app import Gateway
from ..observability.gc_pauses import watch_collections
from ..observability.logs import configure as configure_logging
from ..observability.metrics import Metrics
from ..pacing import Pace, Turnstile
from ..settings import Settings
from ..tls import TlsReloader
from . import websocket
from .config import GatewayConfig
from .listeners import Listeners, create_listeners
from .tls_noise import TlsNoise

# Young objects allocated before a gen0 collection; gen0 collections per gen1 collection.
GC_THRESHOLDS = (50_000, 10)
# New connections per pause; a pause lasts until the loop caught up, or 0.1 s at most.
ARRIVALS = Pace(size=32, settle=0.002, patience=0.1)

log = logging.getLogger("wshub.server")


def build_gateway(settings: Settings, config: GatewayConfig) -> Gateway:
    """The gateway for one worker, with a TLS reloader when the config names a certificate.

    Raises :class:`~gateway.tls.InvalidMaterial` when the certificate material is unusable.
    """
    files = config.tls_files()
    if files is not None:
        config.tls = TlsReloader(
            config,
            files,
            step_ms=settings.tls_watch_step_ms,
            debounce_ms=settings.tls_watch_debounce_ms,
            settle_seconds=settings.tls_settle_seconds,
            recheck_interval=settings.tls_recheck_interval,
            expiry_warn_days=settings.tls_expiry_warn_days,
        )
        config.tls.load_initial()
    return Gateway(settings, tls=config.tls)


async def serve(
    gateway: Gateway,
    config: GatewayConfig,
    listeners: Listeners,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    tune_gc: bool = True,
) -> None:
    """Serve until *shutdown_trigger* returns (default: SIGINT or SIGTERM), then drain.

    With the default trigger, SIGHUP reloads the TLS material in place. (Hypercorn's own
    SIGHUP restarts its workers, which would drop every connection.)
    """
    loop = asyncio.get_running_loop()
    noise = TlsNoise(gateway.metrics)
    loop.set_exception_handler(noise.exception_handler)
    if shutdown_trigger is None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, gateway.reload_tls, "SIGHUP")
        shutdown_trigger = stop.wait
    settings = gateway.settings
    config.websocket_max_message_size = settings.max_frame_bytes
    websocket.install(allow_deflate=settings.websocket_deflate, max_size=settings.max_frame_bytes)
    gateway.ops_port = listeners.ops_port
    app = wrap_app(gateway.asgi, config.wsgi_max_body_size, "asgi")

    state: dict[str, object] = {}
    lifespan = Lifespan(app, config, loop, state)
    lifespan_task = loop.create_task(lifespan.handle_lifespan())
    await lifespan.wait_for_startup()
    if lifespan_task.done() and (error := lifespan_task.exception()) is not None:
        raise error

    context = WorkerContext(None)
    connections: set[asyncio.Task[None]] = set()
    # New connections start first come first served, as fast as the loop digests them
    # (gateway.pacing: in a reconnect storm handshakes finish in arrival order instead of
    # all late together, past the clients' timeout).
    arrivals = Turnstile(ARRIVALS)
    ssl_context = config.create_ssl_context() if listeners.public.secure_sockets else None
    if ssl_context is not None:
        count_client_hellos(ssl_context, gateway.metrics)

    async def on_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tls: bool, public: bool
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        task.add_done_callback(connections.discard)
        if tls:
            gateway.metrics.tls_handshakes_completed.inc()
        if public:  # the operations port answers health checks in a storm too
            await arrivals.through()
        peer = writer.get_extra_info("peername")
        server = TCPServer(app, loop, config, context, state, reader, writer)
        try:
            with gateway.peers.serving((str(peer[0]), int(peer[1])), writer.transport):
                await server
        finally:
            # Hypercorn's TCPServer and its protocol refer to each other (the protocol keeps
            # the bound TCPServer.protocol_send): a cycle, holding the connection's streams,
            # buffers and tasks, that only the cyclic collector frees, and the tuned collector
            # (tune_garbage_collector) runs a full collection rarely. Cut, it is freed now.
            vars(server).pop("protocol", None)
            vars(server).pop("_task_group", None)

    async def listen(sock: socket.socket, tls: bool, public: bool = True) -> asyncio.Server:
        server = await asyncio.start_server(
            partial(on_connection, tls=tls, public=public),
            sock=sock,
            backlog=config.backlog,
            ssl=ssl_context if tls else None,
            ssl_handshake_timeout=config.ssl_handshake_timeout if tls else None,
        )
        name = repr_socket_addr(server.sockets[0].family, server.sockets[0].getsockname())
        log.info("serving on %s://%s", "https" if tls else "http", name)
        return server

    if tune_gc:  # process-wide: off when a test embeds the server in its own process
        tune_garbage_collector(gateway.metrics)
    public = [await listen(s, True) for s in listeners.public.secure_sockets]
    public += [await listen(s, False) for s in listeners.public.insecure_sockets]
    ops = [await listen(s, False, public=False) for s in listeners.ops]
    try:
        await shutdown_trigger()
    finally:
        for server in public:
            server.close()  # stop accepting first: load balancers see it at once
        await gateway.drain()
        await context.terminated.set()  # idle keep-alive connections close now
        for server in ops:
            server.close()
        if connections:
            await asyncio.wait(connections, timeout=config.graceful_timeout)
        for task in connections:
            task.cancel()
        await lifespan.wait_for_shutdown()
        lifespan_task.cancel()
        await asyncio.gather(lifespan_task, return_exceptions=True)


def count_client_hellos(context: ssl.SSLContext, metrics: Metrics) -> None:
    """Count every ClientHello the listeners see.

    The event loop completes TLS handshakes before Hypercorn sees the connection and drops a
    failed one without a word (it logs them only in debug mode); ClientHellos minus completed
    handshakes is the number that failed (or are in flight).
    """
    inner = context.sni_callback
    hellos = metrics.tls_handshakes_started

    def counted(obj: ssl.SSLObject, name: str, ctx: ssl.SSLContext) -> int | None:
        hellos.inc()
        return inner(obj, name, ctx) if inner is not None else None

    context.sni_callback = counted


def tune_garbage_collector(metrics: Metrics) -> None:
    """Move the start-up heap out of the collector's way, collect young objects less often
    than CPython's default, and time every collection (``wshub_gc_pause_seconds``).

    With a few hundred clients, full collections took 77-90 ms each and were the broadcast tail;
    freezing the heap and a gen0 threshold of 50 000 cut fan-out p99 4x and connect CPU by 38%.
    In a reconnect storm of 10 000 (everything allocated survives) gen1 collections then take
    up to 0.4 s; lower thresholds trade them for full collections of up to 0.9 s and more GC
    time in all (docs/performance.md), so the thresholds stay.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS, gc.get_threshold()[2])
    watch_collections(metrics.gc_pauses)


def run_worker(
    config: GatewayConfig, settings: Settings, listeners: Listeners | None = None
) -> None:
    """Blocking entry point of one worker process."""
    configure_logging(settings.log_level, settings.log_format)  # each worker logs on its own
    gateway = build_gateway(settings, config)
    if listeners is None:
        listeners = create_listeners(config, settings.ops_bind)
    _event_loop_runner()(serve(gateway, config, listeners))


def _event_loop_runner() -> Callable[[Awaitable[None]], None]:
    try:
        import uvloop
    except ImportError:  # Windows: no uvloop, the stdlib loop serves
        return lambda main: asyncio.run(main)  # type: ignore[arg-type]
    return lambda main: uvloop.run(main)  # type: ignore[arg-type]
