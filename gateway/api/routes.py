"""``/api/v1/<method>`` on the gateway's Quart app, and ``/api/v1/openapi.json``.

Off (not registered: 404 as for any unknown path) unless ``api_keys`` is set. With ``ops_bind``
set it answers on the ops port only, unless ``api_public`` is true.

A call goes through, in order, each check refusing with a JSON :class:`ApiError` before
anything more is spent on it: the method exists (404 ``NOT_FOUND``) and is POSTed
(405 ``METHOD_NOT_ALLOWED``); the key (401 ``UNAUTHORIZED``); the key's rate (429
``RATE_LIMIT``); the Idempotency-Key header's form (400); the body's size, read with a hard
bound whatever Content-Length says (413 ``PAYLOAD_TOO_LARGE``) and within a time limit (408);
JSON (400 ``INVALID_FORMAT``); validation (422 ``INVALID_FORMAT`` naming the field); a batch's
extra cost (429); the Idempotency-Key's record (replay, 409, 422); and then the call.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import orjson
from prometheus_client import Counter
from pydantic import BaseModel
from quart import Quart, Response, abort, request
from werkzeug.exceptions import RequestEntityTooLarge

from ..observability.logs import printable
from ..protocol.inbound import Limits
from ..store.base import StoreUnavailable
from ..store.redis import RedisStore
from ..store.redis_topology import connect
from .auth import ApiKey, KeyRing
from .idempotency import (
    Idempotency,
    InProgress,
    MemoryIdempotency,
    Mismatch,
    Owned,
    RedisIdempotency,
    Replay,
    Stored,
)
from .limits import KeyLimiter
from .models import PARAMS, ApiCode, ApiFailure
from .openapi import (
    DOCUMENT_PATH,
    IDEMPOTENCY_HEADER,
    MAX_IDEMPOTENCY_KEY,
    PREFIX,
    REPLAYED_HEADER,
    document,
)
from .service import ApiService, Call

if TYPE_CHECKING:
    from ..app import Gateway

log = logging.getLogger("wshub.api")

BODY_TIMEOUT = 10.0
"""Seconds a body may take to arrive: a client that trickles it holds nothing for longer."""
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_REDIS_TIMEOUT = 5.0
_REDIS_POOL = 8


def register_api(app: Quart, gateway: Gateway) -> None:
    """Add the API to *app* when ``api_keys`` is set."""
    settings = gateway.settings
    if not settings.api_keys:
        return
    hub = gateway.hub
    remembered: Idempotency
    if isinstance(hub.store, RedisStore):
        client = connect(
            hub.store.target,
            timeout=_REDIS_TIMEOUT,
            pool_size=_REDIS_POOL,
            decode_responses=False,
        )
        remembered = RedisIdempotency(
            client, prefix=settings.redis_prefix, window=settings.api_idempotency_window
        )
    else:
        remembered = MemoryIdempotency(settings.api_idempotency_window, clock=time.monotonic)
    service = ApiService(
        hub.store,
        hub.delivery,
        limits=Limits(
            max_username_length=settings.max_username_length,
            max_following=settings.max_following,
            max_targets=settings.max_targets,
        ),
        max_message_bytes=settings.max_message_bytes,
        max_notification_bytes=settings.max_notification_bytes,
        max_depth=settings.max_payload_depth,
        sender_name=settings.api_sender_name,
    )
    hub.presence.reserve_username(settings.api_sender_name)
    endpoint = ApiEndpoint(
        gateway,
        KeyRing(key.get_secret_value() for key in settings.api_keys),
        KeyLimiter(settings.api_rate_limit, settings.api_rate_limit_burst, time.monotonic),
        remembered,
        service,
        orjson.dumps(document(settings)),
        Counter(
            "wshub_api_requests",
            "Server API calls, by method and outcome (ok or error code)",
            ["method", "outcome"],
            registry=gateway.metrics.registry,
        ),
    )
    app.add_url_rule(f"{PREFIX}/<path:name>", "api", endpoint.answer, methods=_METHODS)
    # /api/v1 and /api/v1/ themselves: a JSON NOT_FOUND pointing at the document
    app.add_url_rule(
        f"{PREFIX}/",
        "api_root",
        endpoint.answer,
        methods=_METHODS,
        defaults={"name": ""},
        strict_slashes=False,
    )
    app.after_serving(remembered.close)


class ApiEndpoint:
    def __init__(
        self,
        gateway: Gateway,
        keys: KeyRing,
        limiter: KeyLimiter,
        remembered: Idempotency,
        service: ApiService,
        document: bytes,
        requests: Counter,
    ) -> None:
        self._gateway = gateway
        self._keys = keys
        self._limiter = limiter
        self._remembered = remembered
        self._service = service
        self._document = document
        self._requests = requests
        self._max_body = gateway.settings.api_max_body_bytes
        self._public = gateway.settings.api_public

    async def answer(self, name: str) -> Response:
        if not self._served_here():
            abort(404)  # as the ops routes: nothing here says that there is an API
        label = name if name in PARAMS or name == "openapi.json" else "unknown"
        try:
            response = await self._handle(name)
            outcome = "ok"
        except ApiFailure as failure:
            log.info("api %s refused: %s %s", label, failure.error.code, failure.error.message)
            response = _failure(failure)
            outcome = failure.error.code
        except Exception:
            log.exception("api %s failed", label)
            response = _failure(
                ApiFailure(500, ApiCode.INTERNAL_ERROR, f"{label} failed on the server")
            )
            outcome = ApiCode.INTERNAL_ERROR
        self._requests.labels(label, outcome).inc()
        return response

    def _served_here(self) -> bool:
        ops_port = self._gateway.ops_port
        if ops_port is None or self._public:
            return True
        server = request.scope.get("server") or (None, None)
        return bool(server[1] == ops_port)

    async def _handle(self, name: str) -> Response:
        if f"{PREFIX}/{name}" == DOCUMENT_PATH:
            if request.method not in ("GET", "HEAD"):
                raise _not_allowed("GET")
            return Response(self._document, content_type="application/json")
        if name not in PARAMS:
            raise ApiFailure(
                404,
                ApiCode.NOT_FOUND,
                f"No API method {printable(name)}; the methods are in {DOCUMENT_PATH}",
            )
        if request.method != "POST":
            raise _not_allowed("POST")
        key = self._keys.identify(request.headers.get("Authorization"))
        if key is None:
            raise ApiFailure(
                401,
                ApiCode.UNAUTHORIZED,
                "An API key is required: Authorization: Bearer <key>",
                headers={"WWW-Authenticate": 'Bearer realm="ws-hub api"'},
            )
        self._charge(key, 1)
        idempotency_key = _idempotency_key(request.headers.get(IDEMPOTENCY_HEADER))
        body = _parse(await _read_body(self._max_body))
        call = self._service.prepare(name, body)
        if call.cost > 1:
            if call.cost > self._limiter.burst:
                raise ApiFailure(
                    422,
                    ApiCode.INVALID_FORMAT,
                    f"batch: {call.cost} calls; at most {self._limiter.burst} fit in one "
                    "request (api_rate_limit_burst)",
                )
            self._charge(key, call.cost - 1)
        if idempotency_key is None:
            return _ok(await self._service.run(call))
        return await self._once(key, idempotency_key, name, body, call)

    def _charge(self, key: ApiKey, cost: int) -> None:
        wait = self._limiter.take(key.id, cost)
        if wait is not None:
            failure = ApiFailure(
                429,
                ApiCode.RATE_LIMIT,
                f"Over the rate limit of this API key (api_rate_limit); retry in {wait:.2f} s",
                retry_after=wait,
            )
            # Whole seconds, from the same figure as retryAfterMs, so the two agree.
            assert failure.error.retry_after_ms is not None
            failure.headers["Retry-After"] = str(math.ceil(failure.error.retry_after_ms / 1000))
            raise failure

    async def _once(
        self, key: ApiKey, idempotency_key: str, name: str, body: object, call: Call
    ) -> Response:
        """Run *call* unless its Idempotency-Key says it ran; remember its answer if it did."""
        scope = f"{key.id}:{hashlib.sha256(idempotency_key.encode()).hexdigest()}"
        canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        digest = hashlib.sha256(name.encode() + b"\0" + canonical).hexdigest()
        begun = await self._begin(scope, digest)
        match begun:
            case Replay(stored):
                return _stored(stored, replayed=True)
            case Mismatch():
                raise ApiFailure(
                    422,
                    ApiCode.IDEMPOTENCY_MISMATCH,
                    f"This {IDEMPOTENCY_HEADER} was used for a different request",
                )
            case InProgress():
                raise ApiFailure(
                    409,
                    ApiCode.IDEMPOTENCY_IN_PROGRESS,
                    f"A request with this {IDEMPOTENCY_HEADER} is still running",
                    retry_after=1.0,
                    headers={"Retry-After": "1"},
                )
        assert isinstance(begun, Owned)
        # A call that fails otherwise (a bug, or cancelled) may have delivered: its claim stays
        # until it expires, so that a retry meanwhile is not a second delivery.
        try:
            result = await self._service.run(call)
        except ApiFailure:
            # Refused, or nothing delivered (TARGET_NOT_FOUND, UNAVAILABLE): a retry may do it.
            # A claim that cannot be released expires by itself.
            try:
                await self._remembered.release(scope, begun)
            except StoreUnavailable:
                log.warning("api %s: could not release its Idempotency-Key claim", name)
            raise
        stored = Stored(200, _encode(result))
        try:
            await self._remembered.finish(scope, begun, stored)
        except StoreUnavailable:
            # Delivered, but not remembered: until its claim expires a retry gets 409, after
            # that it would deliver again. Said in the log, since the caller cannot tell.
            log.warning("api %s delivered, but its Idempotency-Key could not be recorded", name)
        return _stored(stored, replayed=False)

    async def _begin(self, scope: str, digest: str) -> Owned | Replay | Mismatch | InProgress:
        try:
            return await self._remembered.begin(scope, digest)
        except StoreUnavailable:
            raise ApiFailure(
                503,
                ApiCode.UNAVAILABLE,
                "Not delivered: the service is briefly unavailable; retry",
                headers={"Retry-After": "1"},
            ) from None


def _not_allowed(allowed: str) -> ApiFailure:
    return ApiFailure(
        405,
        ApiCode.METHOD_NOT_ALLOWED,
        f"{request.method} is not allowed here; use {allowed}",
        headers={"Allow": allowed},
    )


def _idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not 1 <= len(value) <= MAX_IDEMPOTENCY_KEY or not all("!" <= ch <= "~" for ch in value):
        raise ApiFailure(
            400,
            ApiCode.INVALID_FORMAT,
            f"{IDEMPOTENCY_HEADER}: 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters, "
            "no spaces",
        )
    return value


async def _read_body(limit: int) -> bytes:
    """The body, refused as soon as it is known to be over *limit* bytes: by its declared
    length, or while it arrives (a chunked body has none, and a declared one is not trusted)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(limit)
    received = bytearray()
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            async for chunk in request.body:
                received += chunk
                if len(received) > limit:
                    raise _too_large(limit)
    except TimeoutError:
        raise ApiFailure(
            408, ApiCode.REQUEST_TIMEOUT, f"The body did not arrive within {BODY_TIMEOUT:g} s"
        ) from None
    except RequestEntityTooLarge:  # Quart's own bound (MAX_CONTENT_LENGTH), if lower
        raise _too_large(limit) from None
    return bytes(received)


def _too_large(limit: int) -> ApiFailure:
    return ApiFailure(
        413,
        ApiCode.PAYLOAD_TOO_LARGE,
        f"The body is over the limit (api_max_body_bytes) of {limit} bytes",
    )


def _parse(raw: bytes) -> object:
    if not raw.strip():
        return {}  # no body: the methods without required fields (stats) take none
    try:
        parsed: object = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiFailure(
            400, ApiCode.INVALID_FORMAT, f"The body is not valid JSON: {exc}"
        ) from None
    return parsed


def _encode(result: BaseModel) -> bytes:
    return orjson.dumps(result.model_dump(mode="json", by_alias=True, exclude_none=True))


def _ok(result: BaseModel) -> Response:
    return _json(_encode(result), 200)


def _stored(stored: Stored, *, replayed: bool) -> Response:
    response = _json(stored.body, stored.status)
    if replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return response


def _failure(failure: ApiFailure) -> Response:
    return _json(_encode(failure.error), failure.status, failure.headers)


def _json(body: bytes, status: int, headers: Mapping[str, str] | None = None) -> Response:
    response = Response(body, status=status, content_type="application/json")
    response.headers["Cache-Control"] = "no-store"  # answers about live state, and key-bound
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response
