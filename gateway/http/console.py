"""``/console``: a live view of one gateway for operators and app developers.

One static page (``console_static/``: HTML, one script, one stylesheet, no build step and no
CDN) polls ``/console/api/state`` every second. The endpoint returns cumulative figures; the
page computes the rates and keeps the last minutes of history itself, so the server holds no
time series. The page's try-it panel talks Socket.IO with the bundle this gateway serves
(``/socket.io/socket.io.min.js``), exactly as an app would.

Protection: with authentication on, the API answers only to ``Authorization: Bearer <JWT>``
whose roles include ``auth_admin_role`` (401 without a valid token, 403 without the role). The
page and its assets are public and carry no data: the page asks for a token and shows nothing
else until the API accepts it. With authentication off the console is open, like the rest of a
development gateway, and its header says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from quart import Quart, Response, request

from ..auth.tokens import AuthError, Identity, bearer_token
from ..observability.metrics import MULTIPROC_ENV, Metrics
from ..protocol.timestamps import iso_timestamp
from ..store.base import Presence, StoreUnavailable
from ..tls import CertInfo, TlsReloader

if TYPE_CHECKING:
    from ..app import Gateway

STATIC_DIR = "console_static"
# What the page may load and reach: itself only (the Socket.IO bundle and endpoint included).
_PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# A search returns at most this many clients; the page says how many matched in all.
DEFAULT_CLIENT_LIMIT = 200
MAX_CLIENT_LIMIT = 1_000
# Successful reloads remembered with the number of clients told (the reloader keeps 50 outcomes).
_TOLD_HISTORY = 50


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    content_type: str
    etag: str


@dataclass(frozen=True, slots=True)
class Told:
    """A successful reload and how many of this worker's clients were sent the refresh."""

    time: str
    serial_hex: str
    clients: int


class ReloadAudience:
    """Counts the clients told of each certificate reload.

    Registered as a reload listener; the gateway's own listener broadcasts
    ``system:certificateRefresh`` to this worker's connections, so their number at that moment
    is the number told.
    """

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self.told: deque[Told] = deque(maxlen=_TOLD_HISTORY)

    async def __call__(self, info: CertInfo) -> None:
        count = self._gateway.sessions.table.active
        self.told.append(Told(iso_timestamp(), info.serial_hex, count))


def register_console(app: Quart, gateway: Gateway) -> None:
    """Add ``/console``, its assets and ``/console/api/state`` to *app*."""
    assets = _load_assets()
    audience = ReloadAudience(gateway)
    if gateway.tls is not None:
        gateway.tls.add_listener(audience)

    @app.get("/console")
    async def console_page() -> Response:
        response = _asset_response(assets["console.html"])
        response.headers["Content-Security-Policy"] = _PAGE_CSP
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @app.get("/console/")
    async def console_slash() -> Response:
        return Response("", status=308, headers={"Location": "/console"})

    @app.get("/console/static/<name>")
    async def console_asset(name: str) -> Response:
        asset = assets.get(name)
        if asset is None or name.endswith(".html"):
            return Response("not found", status=404, content_type="text/plain")
        return _asset_response(asset)

    @app.get("/console/api/state")
    async def console_state() -> Response:
        viewer = _authorize(gateway)
        if isinstance(viewer, Response):
            return viewer
        query = request.args.get("q", "").strip()
        limit = _int_arg("limit", DEFAULT_CLIENT_LIMIT, 1, MAX_CLIENT_LIMIT)
        body = await collect_state(gateway, audience, query=query, limit=limit)
        body["viewer"] = (
            None if viewer is None else {"username": viewer.username, "roles": sorted(viewer.roles)}
        )
        return _json(body, 200)


def _authorize(gateway: Gateway) -> Identity | Response | None:
    """The admin's identity, None when authentication is off, or the refusal to send."""
    verifier = gateway.hub.verifier
    if verifier is None:
        return None
    token = bearer_token(None, {"authorization": request.headers.get("Authorization", "")})
    if token is None:
        return _refuse(401, "an admin token is required (Authorization: Bearer <JWT>)")
    try:
        identity = verifier.verify(token)
    except AuthError as exc:
        return _refuse(401, str(exc))
    role = gateway.settings.auth_admin_role
    if role not in identity.roles:
        return _refuse(403, f"the token's roles do not include {role!r}")
    return identity


def _refuse(status: int, message: str) -> Response:
    response = _json({"error": message, "authRequired": True}, status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="ws-hub console"'
    return response


def _json(body: dict[str, Any], status: int) -> Response:
    response = Response(json.dumps(body), status=status, content_type="application/json")
    # Live data behind a token: never from a cache, never kept by one.
    response.headers["Cache-Control"] = "no-store"
    return response


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    try:
        value = int(request.args.get(name, default))
    except ValueError:
        return default
    return max(low, min(high, value))


# -- state ----------------------------------------------------------------------------------


async def collect_state(
    gateway: Gateway, audience: ReloadAudience, *, query: str = "", limit: int = 200
) -> dict[str, Any]:
    """Everything the page shows, as cumulative figures at one moment."""
    settings = gateway.settings
    families = _families(gateway.metrics)
    state: dict[str, Any] = {
        "server": {
            "app": settings.app_name,
            "version": settings.app_version,
            "environment": settings.environment,
            "backend": settings.backend,
            "auth": settings.auth_enabled,
            "uptime": round(time.monotonic() - gateway.started, 3),
            "draining": gateway.draining,
        },
        # Wall-clock seconds: rates are deltas over this, the same base for every worker.
        "time": time.time(),
        "connections": {"local": gateway.sessions.table.active},
        "events": _nested(families, "wshub_events_received", "event", "outcome"),
        "errors": _flat(families, "wshub_errors", "code"),
        "rateLimited": _total(families, "wshub_rate_limited_events"),
        "delivered": _flat(families, "wshub_messages_delivered", "event"),
    }
    try:
        counts = await gateway.hub.store.counts()
        state["connections"].update(active=counts.active, total=counts.total)
        state["clients"] = await _clients(gateway, query, limit)
    except StoreUnavailable as exc:
        state["storeError"] = f"presence store unavailable: {exc}"
    tls = gateway.tls
    state["tls"] = None if tls is None else _tls(tls, audience, settings.tls_expiry_warn_days)
    return state


async def _clients(gateway: Gateway, query: str, limit: int) -> dict[str, Any]:
    everyone = await gateway.hub.store.clients()
    needle = query.casefold()
    matched = [p for p in everyone if _matches(p, needle)] if needle else list(everyone)
    # Named clients by name, then anonymous ones by age: stable from one poll to the next.
    matched.sort(key=lambda p: (p.username is None, (p.username or "").casefold(), p.connect_time))
    return {
        "total": len(everyone),
        "matched": len(matched),
        "list": [
            {
                "id": p.sid,
                "username": p.username,
                "connectTime": p.connect_time,
                "following": len(p.following),
                # Another worker's or node's client (Redis store): its transport is not known here.
                "transport": gateway.sessions.transport_of(p.sid) or "remote",
            }
            for p in matched[:limit]
        ],
    }


def _matches(presence: Presence, needle: str) -> bool:
    return needle in (presence.username or "").casefold() or presence.sid.casefold().startswith(
        needle
    )


def _tls(
    reloader: TlsReloader, audience: ReloadAudience, expiry_warn_days: float
) -> dict[str, Any]:
    told = list(audience.told)
    reloads = []
    for outcome in reloader.history:
        entry: dict[str, Any] = dict(outcome.as_dict())
        entry["clientsTold"] = None
        if outcome.outcome == "ok" and outcome.trigger != "initial":
            # The listener runs right after the reloader records the outcome: pair each
            # successful reload with the first later notification not yet paired.
            match = next((t for t in told if t.time >= outcome.time), None)
            if match is not None:
                told.remove(match)
                entry["clientsTold"] = match.clients
        reloads.append(entry)
    return {
        "certificate": reloader.info.as_dict(datetime.now(UTC)),
        "expiryWarnDays": expiry_warn_days,
        "watching": reloader.running,
        "reloads": reloads,
        "reloadsOk": reloader.reloads_ok,
        "reloadsRejected": reloader.reloads_rejected,
        "lastError": reloader.last_error,
    }


# -- prometheus samples -----------------------------------------------------------------------


def _families(metrics: Metrics) -> dict[str, Metric]:
    """The current metric families, instance-wide when workers share a multiprocess dir."""
    directory = os.environ.get(MULTIPROC_ENV)
    collected: Iterable[Metric]
    if directory:
        collected = MultiProcessCollector(None, path=directory).collect()  # type: ignore[no-untyped-call]
    else:
        collected = metrics.registry.collect()
    return {family.name: family for family in collected}


def _samples(families: dict[str, Metric], name: str) -> Iterable[tuple[dict[str, str], float]]:
    family = families.get(name)
    if family is None:
        return ()
    # Counters expose ``_total`` and ``_created``; only the totals are figures.
    return ((s.labels, s.value) for s in family.samples if s.name == f"{name}_total")


def _total(families: dict[str, Metric], name: str) -> float:
    return sum(value for _, value in _samples(families, name))


def _flat(families: dict[str, Metric], name: str, label: str) -> dict[str, float]:
    result: dict[str, float] = {}
    for labels, value in _samples(families, name):
        result[labels[label]] = result.get(labels[label], 0.0) + value
    return result


def _nested(
    families: dict[str, Metric], name: str, outer: str, inner: str
) -> dict[str, dict[str, float]]:
    result: dict[str, dict[str, float]] = {}
    for labels, value in _samples(families, name):
        bucket = result.setdefault(labels[outer], {})
        bucket[labels[inner]] = bucket.get(labels[inner], 0.0) + value
    return result


# -- static assets ----------------------------------------------------------------------------


def _load_assets() -> dict[str, _Asset]:
    folder = resources.files("gateway.http").joinpath(STATIC_DIR)
    assets = {}
    for entry in folder.iterdir():
        suffix = os.path.splitext(entry.name)[1]
        if suffix in _STATIC_TYPES:
            body = entry.read_bytes()
            etag = hashlib.sha256(body).hexdigest()[:16]
            assets[entry.name] = _Asset(body, _STATIC_TYPES[suffix], etag)
    return assets


def _asset_response(asset: _Asset) -> Response:
    headers = {
        # Revalidated every time (cheap: 304), so an upgrade never runs a stale script.
        "Cache-Control": "no-cache",
        "ETag": f'"{asset.etag}"',
        "X-Content-Type-Options": "nosniff",
    }
    if request.if_none_match.contains_weak(asset.etag):
        return Response(b"", status=304, headers=headers)
    return Response(asset.body, content_type=asset.content_type, headers=headers)
