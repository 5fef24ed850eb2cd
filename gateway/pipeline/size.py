"""Size limit: an event whose packet is larger than ``max_message_bytes`` is refused unread."""

from __future__ import annotations

from ..protocol.errors import ErrorCode, GatewayError, Reply
from .context import EventContext, Next


class SizeLimit:
    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes

    async def __call__(self, ctx: EventContext, call_next: Next) -> Reply | None:
        if ctx.size > self._max_bytes:
            raise GatewayError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"{ctx.event} takes {ctx.size} bytes; the limit (max_message_bytes) is "
                f"{self._max_bytes}",
            )
        return await call_next(ctx)
