"""Authorisation: role-restricted events, and tokens that expired while the connection lived."""

from __future__ import annotations

from collections.abc import Callable

from ..protocol.close import CloseReason
from ..protocol.errors import ErrorCode, GatewayError, Reply
from .context import EventContext, Next


class Permissions:
    def __init__(self, wall_clock: Callable[[], float]) -> None:
        self._now = wall_clock

    async def __call__(self, ctx: EventContext, call_next: Next) -> Reply | None:
        identity = ctx.identity
        if identity is None:  # authentication is off
            return await call_next(ctx)
        if identity.expires_at <= self._now():
            raise GatewayError(
                ErrorCode.FORBIDDEN,
                "Your token has expired; reconnect with a fresh token",
                close=CloseReason.TOKEN_EXPIRED,
            )
        role = ctx.route.role if ctx.route is not None else None
        if role is not None and role not in identity.roles:
            raise GatewayError(ErrorCode.FORBIDDEN, f"{ctx.event} needs the {role!r} role")
        return await call_next(ctx)
