"""``/`` for people; ``/health``, ``/ready`` and ``/metrics`` for orchestrators and Prometheus.

With ``ops_bind`` set, the three operational routes and the console answer only on that
internal port.
"""

from __future__ import annotations

import html
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from quart import Quart, Response, abort, request

from ..protocol.timestamps import iso_timestamp
from ..store.base import StoreUnavailable

if TYPE_CHECKING:
    from ..app import Gateway

OPS_ROUTES = frozenset({"/health", "/ready", "/metrics"})
CONSOLE_PREFIX = "/console"


def create_http_app(gateway: Gateway, *, started: float) -> Quart:
    app = Quart("gateway")
    hub = gateway.hub
    settings = hub.settings

    @app.before_request
    async def ops_only_on_ops_port() -> None:
        if gateway.ops_port is None:
            return
        if request.path not in OPS_ROUTES and not request.path.startswith(CONSOLE_PREFIX):
            return
        server = request.scope.get("server") or (None, None)
        if server[1] != gateway.ops_port:
            abort(404)

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
            '<p><a href="/console">Console</a>: live figures, clients, TLS, and a try-it panel.</p>'
        )
        return Response(body, content_type="text/html; charset=utf-8")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: the process serves. Deliberately no dependency checks here."""
        body: dict[str, Any] = {
            "status": "draining" if gateway.draining else "ok",
            "uptime": round(time.monotonic() - started, 3),
            "activeConnections": gateway.sessions.table.active,
        }
        if gateway.tls is not None:
            info = gateway.tls.info
            body["tls"] = {
                "serial": info.serial_hex,
                "notAfter": iso_timestamp(info.not_after),
                "secondsLeft": round(info.seconds_left(datetime.now(UTC))),
                "subject": info.subject,
                "reloads": {"ok": gateway.tls.reloads_ok, "rejected": gateway.tls.reloads_rejected},
            }
        return body

    @app.get("/ready")
    async def ready() -> tuple[dict[str, Any], int]:
        """Readiness: 503 with the reasons while this worker should get no new clients."""
        reasons: list[str] = []
        if gateway.draining:
            reasons.append("draining")
        try:
            await hub.store.ping()
        except StoreUnavailable as exc:
            reasons.append(f"presence store unreachable: {exc}")
        if gateway.tls is not None and not gateway.tls.running:
            reasons.append("TLS certificate watcher not running")
        reasons.extend(gateway.readiness_problems())
        if reasons:
            return {"ready": False, "reasons": reasons}, 503
        return {"ready": True, "reasons": []}, 200

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(gateway.metrics.render(), content_type=gateway.metrics.content_type)

    return app
