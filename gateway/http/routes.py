"""``/`` and ``/health``."""

from __future__ import annotations

import html
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from quart import Quart, Response

from ..protocol.timestamps import iso_timestamp

if TYPE_CHECKING:
    from ..app import Gateway


def create_http_app(gateway: Gateway, *, started: float) -> Quart:
    app = Quart("gateway")
    hub = gateway.hub
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
        body: dict[str, Any] = {
            "status": "ok",
            "uptime": round(time.monotonic() - started, 3),
            "activeConnections": counts.active,
        }
        if gateway.tls is not None:
            info = gateway.tls.info
            now = datetime.now(UTC)
            body["tls"] = {
                "serial": info.serial_hex,
                "notAfter": iso_timestamp(info.not_after),
                "secondsLeft": round(info.seconds_left(now)),
                "subject": info.subject,
                "reloads": {"ok": gateway.tls.reloads_ok, "rejected": gateway.tls.reloads_rejected},
            }
        return body

    return app
