"""What a middleware sees of one client event."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from pydantic import BaseModel

from ..auth.tokens import Identity
from ..protocol.errors import Reply


@dataclass(slots=True)
class EventContext:
    sid: str
    event: str
    args: tuple[Any, ...]
    size: int
    """Bytes of the Socket.IO packet as it arrived."""
    route: Route | None
    message: BaseModel | None = None
    identity: Identity | None = None
    """Who an authenticated connection is (None when authentication is off)."""


Next = Callable[[EventContext], Awaitable[Reply | None]]


class Middleware(Protocol):
    async def __call__(self, ctx: EventContext, call_next: Next) -> Reply | None: ...


class Handler(Protocol):
    async def __call__(self, ctx: EventContext, message: Any) -> Reply | None: ...


class RateClass(Enum):
    NORMAL = "normal"
    CHEAP = "cheap"
    """Pings: their own, looser bucket."""
    EXEMPT = "exempt"
    """Heartbeat acknowledgements: refusing them would get a client disconnected for being slow."""


@dataclass(frozen=True, slots=True)
class Route:
    event: str
    model: type[BaseModel]
    handler: Handler
    rate_class: RateClass = RateClass.NORMAL
    role: str | None = None
    """With authentication on, the role claim an event needs (None: any connection)."""
