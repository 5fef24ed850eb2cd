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
from . import websocket
from .config import GatewayConfig

log = logging.getLogger("wshub.server")


async def serve(
    gateway: Gateway,
    config: GatewayConfig,
    *,
    sockets: Sockets | None = None,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """Serve *gateway* until *shutdown_trigger* returns (default: SIGINT or SIGTERM)."""
    if shutdown_trigger is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        shutdown_trigger = stop.wait
    settings = gateway.settings
    config.websocket_max_message_size = settings.max_frame_bytes
    websocket.install(allow_deflate=settings.websocket_deflate, max_size=settings.max_frame_bytes)
    app = wrap_app(gateway.asgi, config.wsgi_max_body_size, "asgi")
    await worker_serve(app, config, sockets=sockets, shutdown_trigger=shutdown_trigger)


def run_worker(config: GatewayConfig, settings: Settings, sockets: Sockets | None = None) -> None:
    """Blocking entry point of one worker process."""
    runner = _event_loop_runner()
    runner(serve(Gateway(settings), config, sockets=sockets))


def _event_loop_runner() -> Callable[[Awaitable[None]], None]:
    try:
        import uvloop
    except ImportError:  # Windows: no uvloop, the stdlib loop serves
        return lambda main: asyncio.run(main)  # type: ignore[arg-type]
    return lambda main: uvloop.run(main)  # type: ignore[arg-type]
