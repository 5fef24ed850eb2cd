"""Request and response bodies of the server API: one pydantic model each, and the error.

The same models validate what a backend sends, build what the gateway answers, make the
OpenAPI document (:mod:`gateway.api.openapi`) and serve the ``ws-hub api`` client. Field names
are camelCase on the wire, as in the Socket.IO contract.

Requests are strict (``"1"`` is not ``1``). The event methods (notify, direct, broadcast) take
the event's own fields and forward the unknown ones to the receivers, as the contract does with
a client's custom fields; the other requests refuse unknown fields, so a misspelt one is an
error rather than silently ignored. Limits that come from settings (username length, number of
targets) are checked through the validation context, a :class:`~gateway.protocol.inbound.Limits`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal, Self, TypedDict

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from ..protocol.inbound import Limits, check_username

MAX_BATCH = 100
"""Calls in one batch request."""

Method = Literal["notify", "direct", "broadcast", "disconnect", "presence", "stats"]


class ApiCode(StrEnum):
    """The ``code`` of every error the API answers."""

    UNAUTHORIZED = "UNAUTHORIZED"
    INVALID_FORMAT = "INVALID_FORMAT"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
    IDEMPOTENCY_IN_PROGRESS = "IDEMPOTENCY_IN_PROGRESS"
    IDEMPOTENCY_MISMATCH = "IDEMPOTENCY_MISMATCH"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    RATE_LIMIT = "RATE_LIMIT"
    TARGET_NOT_FOUND = "TARGET_NOT_FOUND"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"


def _limits(info: ValidationInfo) -> Limits:
    return info.context if isinstance(info.context, Limits) else Limits()


def _username(value: str, info: ValidationInfo) -> str:
    return check_username(value, _limits(info))


Username = Annotated[
    str,
    Field(
        min_length=1,
        description="A username: 1 to max_username_length characters, no control characters",
    ),
    AfterValidator(_username),
]


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, alias_generator=to_camel)


class _Event(BaseModel):
    """The fields of an event; unknown ones travel on to the receivers."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True, alias_generator=to_camel)


class _Response(BaseModel):
    # Built by the gateway by field name, read by the client by alias.
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


# -- requests -------------------------------------------------------------------------------


class NotifyParams(_Event):
    """A ``system:notification`` to the named users, or to the followers of one user.

    Exactly one of ``to`` and ``followersOf``. Other fields beyond ``type`` and ``content`` are
    forwarded with the notification, as a client's custom fields are.
    """

    to: list[Username] | None = Field(
        default=None,
        min_length=1,
        description="Usernames (at most max_targets); the ones not connected are skipped",
    )
    followers_of: Username | None = Field(
        default=None, description="Every connected user whose `following` holds this username"
    )
    type: str = Field(min_length=1)
    content: dict[str, Any] = Field(
        description="Any JSON object of at most max_notification_bytes encoded"
    )

    @field_validator("to")
    @classmethod
    def _targets(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            return None
        limits = _limits(info)
        if len(value) > limits.max_targets:
            raise ValueError(f"must list at most {limits.max_targets} usernames (max_targets)")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _one_audience(self) -> Self:
        if (self.to is None) == (self.followers_of is None):
            raise ValueError("give exactly one of `to` and `followersOf`")
        return self


class DirectParams(_Event):
    """A ``system:direct`` to every connection of one user: the fields of the contract's event
    (``target``, ``type``, and any others, such as ``message``), all forwarded."""

    target: Username
    type: str = Field(min_length=1)


class BroadcastParams(_Event):
    """A ``system:general`` to every connected client; every field is forwarded."""

    type: str = Field(min_length=1)


class DisconnectParams(_Request):
    """End every connection of a user, with ``system:disconnect`` reason
    ``backend_disconnect`` first."""

    username: Username
    message: str = Field(
        default="Your session was ended by the server",
        min_length=1,
        max_length=1_000,
        description="Shown to the client as system:disconnect `message`",
    )
    reconnect: bool = Field(
        default=False,
        description="Whether the official clients should reconnect by themselves afterwards",
    )


class PresenceParams(_Request):
    """Whether a user is connected, and with how many connections."""

    username: Username


class StatsParams(_Request):
    """The hub's connection counts (no parameters)."""


class BatchCall(_Request):
    method: Method
    params: dict[str, Any] = Field(
        default_factory=dict, description="The request body of that method"
    )


class BatchParams(_Request):
    """Several calls in one request, run in order. A call that fails does not stop the others;
    a batch costs one rate-limit token per call."""

    calls: list[BatchCall] = Field(min_length=1, max_length=MAX_BATCH)


# -- responses ------------------------------------------------------------------------------


class ApiError(_Response):
    code: ApiCode
    message: str
    retry_after_ms: int | None = Field(
        default=None, description="With RATE_LIMIT and IDEMPOTENCY_IN_PROGRESS: when to try again"
    )


class NotifyResult(_Response):
    recipients: int = Field(
        description="Users reached: with `to`, the named users that are connected; with "
        "`followersOf`, the connections that follow (one per user unless a user is "
        "connected several times)"
    )
    connections: int = Field(description="Connections the notification was sent to")
    delivered: int = Field(description="Handed to a live connection")
    held: int = Field(description="Kept for a session that is away and may resume")
    failed: int = Field(description="Could not be handed on (their node did not answer)")
    not_connected: list[str] = Field(description="Names in `to` with no connection")
    timestamp: str = Field(description="The notification's timestamp")


class DirectResult(_Response):
    connections: int
    delivered: int
    held: int
    failed: int
    timestamp: str


class BroadcastResult(_Response):
    connections: int = Field(
        description="Connections in the hub when it was sent (a broadcast is not counted "
        "per receiver)"
    )
    timestamp: str


class DisconnectResult(_Response):
    connections: int = Field(description="Connections the user had")
    ended: int = Field(description="Told and closed (or ended, for a session that was away)")
    failed: int = Field(description="Their node could not be told")


class PresenceResult(_Response):
    username: str
    online: bool = Field(description="At least one connection that is not away")
    connections: int = Field(description="Every connection, away ones included")
    away: int = Field(description="Sessions whose transport is gone but that may resume")


class StatsResult(_Response):
    active_connections: int
    total_connections: int = Field(description="Connections accepted since the hub started")


Result = (
    NotifyResult | DirectResult | BroadcastResult | DisconnectResult | PresenceResult | StatsResult
)


class BatchOk(_Response):
    ok: Literal[True]
    result: Result


class BatchFailed(_Response):
    ok: Literal[False]
    error: ApiError


class BatchResult(_Response):
    results: list[BatchOk | BatchFailed] = Field(description="One per call, in order")


PARAMS: dict[str, type[BaseModel]] = {
    "notify": NotifyParams,
    "direct": DirectParams,
    "broadcast": BroadcastParams,
    "disconnect": DisconnectParams,
    "presence": PresenceParams,
    "stats": StatsParams,
    "batch": BatchParams,
}
"""Every method and the model of its body."""


class ServerSender(TypedDict):
    """``sender`` of every event the API sends: no connection id, a name no client may take."""

    id: None
    username: str
    profile: dict[str, Any]
    system: bool


# -- failures -------------------------------------------------------------------------------


class ApiFailure(Exception):
    """A refused or failed call: *status* with an :class:`ApiError` body."""

    def __init__(
        self,
        status: int,
        code: ApiCode,
        message: str,
        *,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = ApiError(
            code=code,
            message=message,
            retry_after_ms=None if retry_after is None else max(1, round(retry_after * 1000)),
        )
        self.headers = dict(headers or {})
