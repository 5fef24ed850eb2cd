"""The OpenAPI 3.1 document of the API, assembled from the pydantic models.

Every schema comes from :mod:`gateway.api.models` (``model_json_schema`` via
:func:`pydantic.json_schema.models_json_schema`), so the document cannot drift from what the
gateway validates and answers. Limits that depend on settings are stated, with this gateway's
values, in the document's description.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from ..settings import Settings
from .models import (
    MAX_BATCH,
    ApiError,
    BatchParams,
    BatchResult,
    BroadcastParams,
    BroadcastResult,
    DirectParams,
    DirectResult,
    DisconnectParams,
    DisconnectResult,
    NotifyParams,
    NotifyResult,
    PresenceParams,
    PresenceResult,
    StatsParams,
    StatsResult,
)

PREFIX = "/api/v1"
DOCUMENT_PATH = PREFIX + "/openapi.json"
IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_IDEMPOTENCY_KEY = 255


@dataclass(frozen=True, slots=True)
class Operation:
    name: str
    params: type[BaseModel]
    result: type[BaseModel]
    summary: str
    body_required: bool = True
    not_found: bool = False
    """Whether it answers 404 TARGET_NOT_FOUND."""


OPERATIONS = (
    Operation(
        "notify",
        NotifyParams,
        NotifyResult,
        "system:notification to users, or to the followers of a user",
    ),
    Operation(
        "direct",
        DirectParams,
        DirectResult,
        "system:direct to every connection of one user",
        not_found=True,
    ),
    Operation("broadcast", BroadcastParams, BroadcastResult, "system:general to everyone"),
    Operation(
        "disconnect",
        DisconnectParams,
        DisconnectResult,
        "End every connection of a user (system:disconnect reason backend_disconnect)",
    ),
    Operation("presence", PresenceParams, PresenceResult, "Whether a user is connected"),
    Operation("stats", StatsParams, StatsResult, "The hub's connection counts", False),
    Operation("batch", BatchParams, BatchResult, f"Up to {MAX_BATCH} calls in one request"),
)

_FAILURES = {
    "400": "The body is not JSON, or the Idempotency-Key header is malformed (INVALID_FORMAT)",
    "401": "No API key, or not a configured one (UNAUTHORIZED)",
    "408": "The body did not arrive in time (REQUEST_TIMEOUT)",
    "409": "A call with this Idempotency-Key is still running (IDEMPOTENCY_IN_PROGRESS)",
    "413": "The body, or an event in it, is over its size limit (PAYLOAD_TOO_LARGE)",
    "422": "The body fails validation (INVALID_FORMAT, naming the field), or the "
    "Idempotency-Key was used for another request (IDEMPOTENCY_MISMATCH)",
    "429": "Over this key's rate limit (RATE_LIMIT with retryAfterMs)",
    "500": "A bug, logged (INTERNAL_ERROR)",
    "503": "Redis is unreachable; nothing was delivered, retry (UNAVAILABLE)",
}
_RETRY_AFTER = {
    "description": "Seconds to wait before retrying",
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}


def document(settings: Settings) -> dict[str, Any]:
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ApiError, "serialization")]
    for op in OPERATIONS:
        models += [(op.params, "validation"), (op.result, "serialization")]
    refs, definitions = models_json_schema(models, ref_template="#/components/schemas/{model}")
    paths: dict[str, Any] = {
        DOCUMENT_PATH: {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The OpenAPI document",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        }
    }
    error = {"application/json": {"schema": refs[(ApiError, "serialization")]}}
    for op in OPERATIONS:
        responses: dict[str, Any] = {
            "200": {
                "description": "What happened",
                "headers": {
                    REPLAYED_HEADER: {
                        "description": "Present when this is the stored answer of an earlier "
                        "call with the same Idempotency-Key",
                        "schema": {"type": "string", "enum": ["true"]},
                    }
                },
                "content": {"application/json": {"schema": refs[(op.result, "serialization")]}},
            }
        }
        failures = dict(_FAILURES)
        if op.not_found:
            failures["404"] = "The user is not connected (TARGET_NOT_FOUND)"
        for status in sorted(failures):
            response: dict[str, Any] = {"description": failures[status], "content": error}
            if status == "401":
                response["headers"] = {
                    "WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}
                }
            elif status in ("409", "429", "503"):
                response["headers"] = {"Retry-After": _RETRY_AFTER}
            responses[status] = response
        paths[f"{PREFIX}/{op.name}"] = {
            "post": {
                "operationId": op.name,
                "summary": op.summary,
                "description": inspect.cleandoc(op.params.__doc__ or ""),
                "parameters": [
                    {
                        "name": IDEMPOTENCY_HEADER,
                        "in": "header",
                        "required": False,
                        "description": "Makes a retry within api_idempotency_window safe: "
                        "the first answer comes back and nothing is delivered twice",
                        "schema": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": MAX_IDEMPOTENCY_KEY,
                            "pattern": "^[!-~]+$",
                        },
                    }
                ],
                "requestBody": {
                    "required": op.body_required,
                    "content": {"application/json": {"schema": refs[(op.params, "validation")]}},
                },
                "responses": responses,
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"{settings.app_name} server API",
            "version": settings.app_version,
            "description": _description(settings),
        },
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "One of the keys in WSHUB_API_KEYS",
                }
            },
        },
        "security": [{"apiKey": []}],
    }


def _description(settings: Settings) -> str:
    return (
        "Publish to users, see presence and disconnect users from a backend. "
        "Events the API sends carry "
        f'`sender: {{"id": null, "username": "{settings.api_sender_name}", '
        '"profile": {}, "system": true}`. '
        "Limits of this gateway: "
        f"body {settings.api_max_body_bytes} bytes (api_max_body_bytes); "
        f"an event {settings.max_message_bytes} bytes (max_message_bytes); "
        f"notification content {settings.max_notification_bytes} bytes "
        "(max_notification_bytes); "
        f"{settings.max_targets} names in `to` (max_targets); "
        f"usernames of at most {settings.max_username_length} characters; "
        f"{settings.api_rate_limit:g} calls per second per key, {settings.api_rate_limit_burst} "
        "at once (a batch costs one per call); "
        f"Idempotency-Key remembered {settings.api_idempotency_window:g} s."
    )
