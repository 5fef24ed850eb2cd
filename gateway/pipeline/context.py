"""What a middleware sees of one client event."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel

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
    identity: dict[str, Any] = field(default_factory=dict)
    """Claims of an authenticated connection (empty when auth is off)."""


Next = Callable[[EventContext], Awaitable[Reply | None]]


class Middleware(Protocol):
    async def __call__(self, ctx: EventContext, call_next: Next) -> Reply | None: ...


class Handler(Protocol):
    async def __call__(self, ctx: EventContext, message: Any) -> Reply | None: ...


@dataclass(frozen=True, slots=True)
class Route:
    event: str
    model: type[BaseModel]
    handler: Handler
    cheap: bool = False
    """Cheap events (pings, heartbeat acks) have their own, looser rate class."""
