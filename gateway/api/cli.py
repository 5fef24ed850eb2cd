"""``ws-hub api <method>``: the server API from a shell or a script.

The key comes from ``WSHUB_API_KEY`` or ``--key-file``, never from the command line (where
``ps`` would show it); the gateway from ``--url`` or ``WSHUB_API_URL``. The body is built and
checked with the same models as the gateway's before it is sent, and the answer is read with
them: it is printed as JSON on stdout (exit 0); a refusal is printed as ``STATUS CODE: message``
on stderr (exit 1). Only the standard library talks HTTP.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..protocol.inbound import Limits
from .models import PARAMS, ApiCode, ApiError
from .openapi import IDEMPOTENCY_HEADER, OPERATIONS, PREFIX

URL_ENV = "WSHUB_API_URL"
KEY_ENV = "WSHUB_API_KEY"
DEFAULT_URL = "http://127.0.0.1:8080"
# The gateway checks its own limits; here only the shape is checked, so none of them apply.
_NO_LIMITS = Limits(max_username_length=1 << 30, max_following=1 << 30, max_targets=1 << 30)
_RESULTS: dict[str, type[BaseModel]] = {op.name: op.result for op in OPERATIONS}


def add_api_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    api = commands.add_parser(
        "api",
        help="call the server API (/api/v1) of a gateway",
        description=f"Calls a gateway's server API. The key is read from ${KEY_ENV} or --key-file.",
    )
    api.add_argument(
        "--url", default=os.environ.get(URL_ENV, DEFAULT_URL), help=f"gateway (${URL_ENV})"
    )
    api.add_argument("--key-file", type=Path, help=f"a file holding the API key (or ${KEY_ENV})")
    api.add_argument("--idempotency-key", help="makes a retry of this call safe")
    api.add_argument("--cacert", type=Path, help="CA bundle to verify an https gateway with")
    api.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    methods = api.add_subparsers(dest="api_method", required=True)

    notify = methods.add_parser("notify", help="system:notification to users or followers")
    audience = notify.add_mutually_exclusive_group(required=True)
    audience.add_argument("--to", action="append", metavar="USER", help="repeatable")
    audience.add_argument("--followers-of", metavar="USER")
    notify.add_argument("--type", required=True)
    notify.add_argument("--content", type=_object, default={}, help="a JSON object")
    notify.set_defaults(body=_notify)

    direct = methods.add_parser("direct", help="system:direct to one user")
    direct.add_argument("--to", required=True, metavar="USER")
    direct.add_argument("--type", required=True)
    direct.add_argument("--message", help="the `message` field")
    direct.add_argument("--fields", type=_object, default={}, help="other fields, a JSON object")
    direct.set_defaults(body=_direct)

    broadcast = methods.add_parser("broadcast", help="system:general to everyone")
    broadcast.add_argument("--type", required=True)
    broadcast.add_argument("--message", help="the `message` field")
    broadcast.add_argument("--fields", type=_object, default={}, help="other fields, JSON")
    broadcast.set_defaults(body=_broadcast)

    disconnect = methods.add_parser("disconnect", help="end every connection of a user")
    disconnect.add_argument("--user", required=True)
    disconnect.add_argument("--message", help="shown to the client")
    disconnect.add_argument(
        "--reconnect", action="store_true", help="let the client reconnect by itself"
    )
    disconnect.set_defaults(body=_disconnect)

    presence = methods.add_parser("presence", help="whether a user is connected")
    presence.add_argument("--user", required=True)
    presence.set_defaults(body=lambda args: {"username": args.user})

    stats = methods.add_parser("stats", help="the hub's connection counts")
    stats.set_defaults(body=lambda args: {})

    batch = methods.add_parser("batch", help='several calls: a JSON file {"calls": [...]}')
    batch.add_argument("file", help="the file, or - for stdin")
    batch.set_defaults(body=_batch)
    api.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..pipeline.validation import describe  # here: it loads the pipeline, and JWT with it

    method: str = args.api_method
    body: dict[str, Any] = args.body(args)
    try:
        PARAMS[method].model_validate(body, context=_NO_LIMITS)
    except ValidationError as exc:
        raise ValueError(describe(method, exc)) from None
    headers = {
        "Authorization": f"Bearer {_key(args.key_file)}",
        "Content-Type": "application/json",
    }
    if args.idempotency_key:
        headers[IDEMPOTENCY_HEADER] = args.idempotency_key
    request = urllib.request.Request(
        f"{args.url.rstrip('/')}{PREFIX}/{method}",
        data=json.dumps(body).encode(),
        headers=headers,
        method="POST",
    )
    context = ssl.create_default_context(cafile=args.cacert) if args.cacert else None
    try:
        with urllib.request.urlopen(request, timeout=args.timeout, context=context) as response:
            answer = _RESULTS[method].model_validate_json(response.read())
    except urllib.error.HTTPError as refused:
        error = _error(refused)
        print(f"ws-hub api: {refused.code} {error.code}: {error.message}", file=sys.stderr)
        return 1
    except ValidationError as exc:
        raise ValueError(f"the gateway's answer is not a {method} result: {exc}") from None
    print(answer.model_dump_json(by_alias=True, exclude_none=True, indent=2))
    return 0


def _error(refused: urllib.error.HTTPError) -> ApiError:
    body = refused.read()
    try:
        return ApiError.model_validate_json(body)
    except ValidationError:
        pass
    # Not the API answering: a gateway without it (Quart's 404), or something in between.
    if refused.code == 404:
        return ApiError(
            code=ApiCode.NOT_FOUND,
            message="no server API there (is WSHUB_API_KEYS set? with WSHUB_OPS_BIND, use "
            "the ops port)",
        )
    return ApiError(
        code=ApiCode.INTERNAL_ERROR,
        message=f"not an API answer: {body[:200].decode(errors='replace')!r}",
    )


def _key(key_file: Path | None) -> str:
    key = key_file.read_text().strip() if key_file is not None else os.environ.get(KEY_ENV, "")
    if not key:
        raise ValueError(f"no API key: set {KEY_ENV} or pass --key-file")
    return key


def _object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _notify(args: argparse.Namespace) -> dict[str, Any]:
    audience = {"to": args.to} if args.to else {"followersOf": args.followers_of}
    return {**audience, "type": args.type, "content": args.content}


def _direct(args: argparse.Namespace) -> dict[str, Any]:
    body = {**args.fields, "target": args.to, "type": args.type}
    if args.message is not None:
        body["message"] = args.message
    return body


def _broadcast(args: argparse.Namespace) -> dict[str, Any]:
    body = {**args.fields, "type": args.type}
    if args.message is not None:
        body["message"] = args.message
    return body


def _disconnect(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"username": args.user, "reconnect": args.reconnect}
    if args.message is not None:
        body["message"] = args.message
    return body


def _batch(args: argparse.Namespace) -> dict[str, Any]:
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{args.file}: not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError(f'{args.file}: must be a JSON object {{"calls": [...]}}')
    return body
