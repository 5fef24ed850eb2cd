"""``/`` and ``/health``."""

from __future__ import annotations

import html
import time
from typing import Any

from quart import Quart, Response

from ..hub import Hub


def create_http_app(hub: Hub, *, started: float) -> Quart:
    app = Quart("gateway")
    settings = hub.settings

    @app.get("/")
    async def index() -> Response:
        name = html.escape(settings.app_name)
        body = (
            "<!doctype html><meta charset=utf-8>"
            f"<title>{name}</title>"
            f"<h1>{name} {html.escape(settings.app_version)}</h1>"
            f"<p>Real-time gateway, {html.escape(settings.environment)} mode, "
            f"{html.escape(settings.backend)} presence store.</p>"
            "<p>Socket.IO endpoint: <code>/socket.io/</code> "
            '(<code>io(location.origin, {path: "/socket.io"})</code>).</p>'
        )
        return Response(body, content_type="text/html; charset=utf-8")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        counts = await hub.store.counts()
        return {
            "status": "ok",
            "uptime": round(time.monotonic() - started, 3),
            "activeConnections": counts.active,
        }

    return app
