"""One worker: the gateway app under Hypercorn's asyncio worker, on uvloop where available."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Sockets
from hypercorn.utils import wrap_app

from ..app import Gateway
from ..settings import Settings
from ..tls import TlsReloader
from . import websocket
from .config import GatewayConfig
from .tls_noise import TlsNoise

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
    *,
    sockets: Sockets | None = None,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """Serve *gateway* until *shutdown_trigger* returns (default: SIGINT or SIGTERM).

    With the default trigger, SIGHUP reloads the TLS material in place. (Hypercorn's own
    SIGHUP restarts its workers, which would drop every connection.)
    """
    loop = asyncio.get_running_loop()
    noise = TlsNoise()
    gateway.tls_noise = noise
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
    app = wrap_app(gateway.asgi, config.wsgi_max_body_size, "asgi")
    await worker_serve(app, config, sockets=sockets, shutdown_trigger=shutdown_trigger)


def run_worker(config: GatewayConfig, settings: Settings, sockets: Sockets | None = None) -> None:
    """Blocking entry point of one worker process."""
    gateway = build_gateway(settings, config)
    runner = _event_loop_runner()
    runner(serve(gateway, config, sockets=sockets))


def _event_loop_runner() -> Callable[[Awaitable[None]], None]:
    try:
        import uvloop
    except ImportError:  # Windows: no uvloop, the stdlib loop serves
        return lambda main: asyncio.run(main)  # type: ignore[arg-type]
    return lambda main: uvloop.run(main)  # type: ignore[arg-type]
