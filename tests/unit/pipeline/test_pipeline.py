"""Middlewares in isolation, with a clock passed in."""

from typing import Any

import pytest
from pydantic import BaseModel

from gateway.pipeline.chain import build_chain
from gateway.pipeline.context import EventContext, RateClass, Route
from gateway.pipeline.ratelimit import RateLimit, RatePolicy
from gateway.pipeline.size import SizeLimit
from gateway.pipeline.validation import ValidateSchema
from gateway.protocol.close import CloseReason
from gateway.protocol.errors import ErrorCode, GatewayError, Reply
from gateway.protocol.inbound import Direct, Limits
from tests.unit.fakes import FakeCaller


async def _echo(ctx: EventContext, message: Any) -> Reply:
    assert isinstance(message, BaseModel)
    return Reply("ok", message.model_dump())


ROUTE = Route("system:direct", Direct, _echo)
PING = Route("client-ping", Direct, _echo, rate_class=RateClass.EXEMPT)
OK = {"target": "b", "type": "t"}


CALLER = FakeCaller()


def ctx(args: tuple[Any, ...] = (OK,), size: int = 10, route: Route | None = ROUTE) -> EventContext:
    return EventContext("s1", CALLER, "system:direct", args, size, route)


async def test_chain_runs_in_order_and_validates() -> None:
    chain = build_chain([SizeLimit(100), ValidateSchema(Limits())])
    reply = await chain(ctx())
    assert reply is not None and reply.payload == OK
    with pytest.raises(GatewayError) as caught:
        await chain(ctx(size=101))
    assert caught.value.code is ErrorCode.PAYLOAD_TOO_LARGE
    assert "max_message_bytes" in caught.value.message


async def test_validation_names_the_field() -> None:
    chain = build_chain([ValidateSchema(Limits())])
    with pytest.raises(GatewayError, match="target") as caught:
        await chain(ctx(args=({"type": "t"},)))
    assert caught.value.code is ErrorCode.INVALID_FORMAT
    with pytest.raises(GatewayError, match="Unknown event"):
        await chain(ctx(route=None))


def policy(**overrides: float) -> RatePolicy:
    values: dict[str, Any] = dict(
        rate=1, burst=2, cheap_rate=1, cheap_burst=1, listing_rate=1, listing_burst=1, flood_after=2
    )
    values.update(overrides)
    return RatePolicy(**values)


async def test_rate_limit_then_flood_close() -> None:
    now = [0.0]
    CALLER.buckets = None
    limit = RateLimit(policy(), clock=lambda: now[0])
    chain = build_chain([limit, ValidateSchema(Limits())])
    await chain(ctx())
    await chain(ctx())
    with pytest.raises(GatewayError) as first:
        await chain(ctx())
    assert first.value.code is ErrorCode.RATE_LIMIT and first.value.close is None
    assert first.value.payload()["retryAfterMs"] == 1000
    with pytest.raises(GatewayError):
        await chain(ctx())
    with pytest.raises(GatewayError) as flood:
        await chain(ctx())
    assert flood.value.close is CloseReason.RATE_LIMIT
    now[0] = 10.0  # backing off refills both buckets
    assert await chain(ctx()) is not None


async def test_exempt_events_are_never_limited() -> None:
    limit = RateLimit(policy(burst=1, flood_after=1), clock=lambda: 0.0)
    chain = build_chain([limit, ValidateSchema(Limits())])
    for _ in range(20):
        await chain(ctx(route=PING))


async def test_buckets_live_on_the_caller_and_classes_are_apart() -> None:
    caller = FakeCaller()
    limit = RateLimit(policy(burst=1, listing_burst=1), clock=lambda: 0.0)
    chain = build_chain([limit, ValidateSchema(Limits())])
    listing = Route("system:clients", Direct, _echo, rate_class=RateClass.LISTING)
    await chain(EventContext("s1", caller, "system:direct", (OK,), 10, ROUTE))
    assert caller.buckets is not None
    # the listing bucket is its own: the ordinary one being empty does not refuse it ...
    await chain(EventContext("s1", caller, "system:clients", (OK,), 10, listing))
    # ... and once it is empty too, a listing is refused while another caller's is not
    with pytest.raises(GatewayError):
        await chain(EventContext("s1", caller, "system:clients", (OK,), 10, listing))
    await chain(EventContext("s2", FakeCaller(), "system:clients", (OK,), 10, listing))
