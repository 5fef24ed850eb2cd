"""What a middleware sees of one client event."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from ..auth.tokens import Identity
from ..protocol.errors import Reply

if TYPE_CHECKING:
    from .ratelimit import Buckets


class Caller(Protocol):
    """The connection an event comes from, as the pipeline needs it."""

    identity: Identity | None
    """Who an authenticated connection is (None when authentication is off)."""
    buckets: Buckets | None
    """The rate limiter's state for this connection (made on its first limited event)."""


@dataclass(slots=True)
class EventContext:
    sid: str
    caller: Caller
    event: str
    """The event's name as the client sent it (for messages; never a metric label)."""
    args: tuple[Any, ...]
    size: int
    """Bytes of the Socket.IO packet as it arrived."""
    route: Route | None
    message: BaseModel | None = None
    problem: str | None = None
    """Set for a packet that could not be read as an event: it is refused with this."""

    @property
    def identity(self) -> Identity | None:
        return self.caller.identity


Next = Callable[[EventContext], Awaitable[Reply | None]]


class Middleware(Protocol):
    async def __call__(self, ctx: EventContext, call_next: Next) -> Reply | None: ...


class Handler(Protocol):
    async def __call__(self, ctx: EventContext, message: Any) -> Reply | None: ...


class RateClass(Enum):
    NORMAL = "normal"
    CHEAP = "cheap"
    """Pings: their own, looser bucket."""
    LISTING = "listing"
    """``system:clients``: its answer costs what it returns, so it has its own, tighter bucket."""
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
    single_reply: bool = False
    """Answer through the ack alone when one is asked for (large answers go out once)."""
