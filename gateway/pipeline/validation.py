"""Schema validation: the raw Socket.IO arguments become the route's pydantic model."""

from __future__ import annotations

from pydantic import ValidationError

from ..observability.logs import printable
from ..protocol.errors import ErrorCode, GatewayError, Reply
from ..protocol.inbound import Limits
from .context import EventContext, Next


class ValidateSchema:
    def __init__(self, limits: Limits) -> None:
        self._limits = limits

    async def __call__(self, ctx: EventContext, call_next: Next) -> Reply | None:
        route = ctx.route
        if ctx.problem is not None:
            raise GatewayError(ErrorCode.INVALID_FORMAT, ctx.problem)
        if route is None:
            raise GatewayError(ErrorCode.INVALID_FORMAT, f"Unknown event {printable(ctx.event)}")
        if len(ctx.args) > 1:
            raise GatewayError(
                ErrorCode.INVALID_FORMAT,
                f"{ctx.event} takes one payload object, not {len(ctx.args)}",
            )
        raw = ctx.args[0] if ctx.args else None
        if raw is None and getattr(route.model, "payload_optional", False):
            raw = {}
        if not isinstance(raw, dict):
            raise GatewayError(
                ErrorCode.INVALID_FORMAT,
                f"{ctx.event} payload must be a JSON object, got {_json_type(raw)}",
            )
        try:
            ctx.message = route.model.model_validate(raw, context=self._limits)
        except ValidationError as exc:
            raise GatewayError(ErrorCode.INVALID_FORMAT, describe(ctx.event, exc)) from None
        return await call_next(ctx)


def describe(event: str, exc: ValidationError) -> str:
    """One sentence naming the offending field, e.g. ``system:direct: target: Field required``."""
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in err["loc"]) or "payload"
    return f"{event}: {where}: {err['msg'].removeprefix('Value error, ')}"


def _json_type(value: object) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "an array"
        case _:
            return type(value).__name__
