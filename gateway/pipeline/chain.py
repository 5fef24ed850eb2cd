"""Composing middlewares into one callable, once, at start-up (not per event)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from ..protocol.errors import Reply
from .context import EventContext, Middleware, Next


async def dispatch(ctx: EventContext) -> Reply | None:
    """The innermost step: the route's handler with the validated message."""
    assert ctx.route is not None and ctx.message is not None, "validation runs before dispatch"
    return await ctx.route.handler(ctx, ctx.message)


def build_chain(middlewares: Sequence[Middleware], endpoint: Next = dispatch) -> Next:
    handler = endpoint
    for middleware in reversed(middlewares):
        handler = partial(middleware, call_next=handler)
    return handler
