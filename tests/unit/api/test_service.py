"""The API's operations on the memory store and a recording delivery port: no network."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.api.models import (
    ApiCode,
    ApiFailure,
    BatchFailed,
    BatchOk,
    DirectResult,
    NotifyResult,
    PresenceResult,
    StatsResult,
)
from gateway.api.service import ApiService, Call
from gateway.protocol.close import CloseReason
from gateway.protocol.errors import ErrorCode, GatewayError
from gateway.protocol.inbound import Limits, SetData
from gateway.services.ports import Outcome
from gateway.services.presence import ClientListing, PresenceService
from gateway.store.base import Address, StoreUnavailable
from gateway.store.memory import MemoryStore
from tests.unit.fakes import RecordingDelivery

T0 = "2026-01-01T00:00:00.000Z"
SENDER = {"id": None, "username": "Shop", "profile": {}, "system": True}


@dataclass
class Delivery(RecordingDelivery):
    """Also records close arguments, and answers with a chosen outcome."""

    outcome: Outcome | None = None
    unreachable: set[str] = field(default_factory=set)
    closes: list[tuple[str, CloseReason, str, bool | None]] = field(default_factory=list)

    async def send(self, to: Sequence[Address], event: str, payload: Mapping[str, Any]) -> Outcome:
        done = await super().send(to, event, payload)
        return self.outcome or done

    async def close(
        self,
        to: str | Address,
        reason: CloseReason,
        message: str,
        *,
        reconnect: bool | None = None,
    ) -> bool:
        sid = to.sid if isinstance(to, Address) else to
        self.closes.append((sid, reason, message, reconnect))
        return sid not in self.unreachable


class AwayStore(MemoryStore):
    """alice has a live connection and one that is away (on another node)."""

    async def connections_of(self, username: str) -> Sequence[Address]:
        if username == "alice":
            return [Address("s1", "local"), Address("s9", "node-b", away=True)]
        return await super().connections_of(username)


class DownStore(MemoryStore):
    async def connections_of(self, username: str) -> Sequence[Address]:
        raise StoreUnavailable("redis is down")


async def world(store: MemoryStore | None = None) -> tuple[MemoryStore, Delivery, ApiService]:
    """s1 alice, s2 bob (follows alice), s3 carol."""
    store = store or MemoryStore()
    for sid, name, metadata in (
        ("s1", "alice", {}),
        ("s2", "bob", {"following": ["alice"]}),
        ("s3", "carol", {}),
    ):
        await store.connect(sid, T0)
        await store.save(sid, name, metadata)
    delivery = Delivery()
    service = ApiService(
        store,
        delivery,
        limits=Limits(max_username_length=10, max_targets=3),
        max_message_bytes=300,
        max_notification_bytes=100,
        max_depth=4,
        sender_name="Shop",
    )
    return store, delivery, service


async def call(service: ApiService, method: str, body: Any) -> Any:
    return await service.run(service.prepare(method, body))


async def test_notify_named_users_with_the_server_as_sender() -> None:
    _, delivery, service = await world()
    result = await call(
        service,
        "notify",
        {
            "to": ["alice", "ghost", "alice"],
            "type": "order",
            "content": {"id": 42},
            "priority": "high",
            "sender": "forged",
            "timestamp": "forged",
        },
    )
    assert isinstance(result, NotifyResult)
    assert result.model_dump(by_alias=True) == {
        "recipients": 1,
        "connections": 1,
        "delivered": 1,
        "held": 0,
        "failed": 0,
        "notConnected": ["ghost"],
        "timestamp": result.timestamp,
    }
    assert delivery.to("s1", "system:notification") == [
        {
            "type": "order",
            "content": {"id": 42},
            "priority": "high",
            "sender": SENDER,
            "timestamp": result.timestamp,
        }
    ]
    assert delivery.to("s2", "system:notification") == []
    assert delivery.to("s3", "system:notification") == []


async def test_notify_followers() -> None:
    _, delivery, service = await world()
    result = await call(
        service, "notify", {"followersOf": "alice", "type": "post", "content": {"id": 7}}
    )
    assert (result.recipients, result.connections, result.delivered) == (1, 1, 1)
    assert result.not_connected == []
    [sent] = delivery.to("s2", "system:notification")
    assert sent["content"] == {"id": 7} and sent["sender"] == SENDER
    assert "followersOf" not in sent and "to" not in sent


async def test_the_outcome_is_reported() -> None:
    _, delivery, service = await world()
    delivery.outcome = Outcome(delivered=1, held=2, failed=3)
    result = await call(service, "direct", {"target": "bob", "type": "chat"})
    assert isinstance(result, DirectResult)
    assert (result.connections, result.delivered, result.held, result.failed) == (1, 1, 2, 3)


async def test_direct_carries_the_contract_fields() -> None:
    _, delivery, service = await world()
    result = await call(
        service, "direct", {"target": "bob", "type": "chat", "message": "Hi", "sender": "x"}
    )
    assert delivery.to("s2", "system:direct") == [
        {
            "target": "bob",
            "type": "chat",
            "message": "Hi",
            "sender": SENDER,
            "timestamp": result.timestamp,
        }
    ]


async def test_direct_to_a_user_not_connected() -> None:
    _, delivery, service = await world()
    with pytest.raises(ApiFailure) as caught:
        await call(service, "direct", {"target": "ghost", "type": "chat"})
    assert caught.value.status == 404
    assert caught.value.error.code is ApiCode.TARGET_NOT_FOUND
    assert caught.value.error.message == "User 'ghost' is not connected"
    assert delivery.sent == []


async def test_broadcast() -> None:
    _, delivery, service = await world()
    result = await call(service, "broadcast", {"type": "news", "broadcast": False, "n": 1})
    assert result.connections == 3
    assert delivery.broadcasts == [
        (
            "system:general",
            {
                "type": "news",
                "broadcast": True,
                "n": 1,
                "sender": SENDER,
                "timestamp": result.timestamp,
            },
            False,
        )
    ]


@pytest.mark.parametrize("reconnect", [False, True])
async def test_disconnect_closes_every_connection(reconnect: bool) -> None:
    _, delivery, service = await world(AwayStore())
    delivery.unreachable = {"s9"}
    result = await call(
        service, "disconnect", {"username": "alice", "message": "Banned", "reconnect": reconnect}
    )
    assert result.model_dump(by_alias=True) == {"connections": 2, "ended": 1, "failed": 1}
    assert delivery.closes == [
        ("s1", CloseReason.BACKEND, "Banned", reconnect),
        ("s9", CloseReason.BACKEND, "Banned", reconnect),
    ]


async def test_disconnect_defaults() -> None:
    _, delivery, service = await world()
    await call(service, "disconnect", {"username": "bob"})
    assert delivery.closes == [
        ("s2", CloseReason.BACKEND, "Your session was ended by the server", False)
    ]


async def test_presence_counts_away_sessions() -> None:
    _, _, service = await world(AwayStore())
    alice = await call(service, "presence", {"username": "alice"})
    assert alice == PresenceResult(username="alice", online=True, connections=2, away=1)
    ghost = await call(service, "presence", {"username": "ghost"})
    assert ghost == PresenceResult(username="ghost", online=False, connections=0, away=0)


async def test_stats() -> None:
    store, _, service = await world()
    await store.disconnect("s3")
    assert await call(service, "stats", {}) == StatsResult(
        active_connections=2, total_connections=3
    )


async def test_a_batch_runs_every_call_in_order() -> None:
    _, delivery, service = await world()
    result = await call(
        service,
        "batch",
        {
            "calls": [
                {"method": "direct", "params": {"target": "ghost", "type": "chat"}},
                {"method": "notify", "params": {"to": ["bob"], "type": "t", "content": {}}},
                {"method": "presence", "params": {"username": ""}},
                {"method": "stats"},
            ]
        },
    )
    first, second, third, fourth = result.results
    assert first == BatchFailed(
        ok=False,
        error={"code": ApiCode.TARGET_NOT_FOUND, "message": "User 'ghost' is not connected"},
    )
    assert isinstance(second, BatchOk) and isinstance(second.result, NotifyResult)
    assert second.result.delivered == 1
    assert isinstance(third, BatchFailed) and third.error.code is ApiCode.INVALID_FORMAT
    assert third.error.message.startswith("presence: username:")
    assert fourth == BatchOk(ok=True, result=StatsResult(active_connections=3, total_connections=3))
    assert len(delivery.to("s2", "system:notification")) == 1


async def test_redis_down_is_unavailable_and_per_call_in_a_batch() -> None:
    *_, service = await world(DownStore())
    with pytest.raises(ApiFailure) as caught:
        await call(service, "presence", {"username": "alice"})
    assert (caught.value.status, caught.value.error.code) == (503, ApiCode.UNAVAILABLE)
    batch = await call(
        service, "batch", {"calls": [{"method": "presence", "params": {"username": "a"}}]}
    )
    assert [r.error.code for r in batch.results if isinstance(r, BatchFailed)] == [
        ApiCode.UNAVAILABLE
    ]


@pytest.mark.parametrize(
    ("method", "body", "status", "message"),
    [
        ("notify", [], 422, "notify: the body must be a JSON object"),
        (
            "notify",
            {"type": "t", "content": {}},
            422,
            "notify: payload: give exactly one of `to` and `followersOf`",
        ),
        (
            "notify",
            {"to": ["a", "b", "c", "d"], "type": "t", "content": {}},
            422,
            "notify: to: must list at most 3 usernames (max_targets)",
        ),
        (
            "notify",
            {"to": ["a\nb"], "type": "t", "content": {}},
            422,
            "notify: to.0: must not contain control characters",
        ),
        ("notify", {"to": ["a"], "type": "t", "content": "x"}, 422, "notify: content: "),
        (
            "notify",
            {"to": ["a"], "type": "t", "content": {"x": "y" * 100}},
            413,
            "Notification content takes 108 bytes; the limit (max_notification_bytes) is 100",
        ),
        ("direct", {"target": "toolongusername", "type": "t"}, 422, "direct: target: "),
        (
            "direct",
            {"target": "a", "type": "t", "x": "y" * 300},
            413,
            "direct takes 332 bytes; the limit (max_message_bytes) is 300",
        ),
        (
            "broadcast",
            {"type": "t", "x": [[[[["deep"]]]]]},
            422,
            "broadcast: the body nests deeper than 4 levels (max_payload_depth)",
        ),
        ("disconnect", {"username": "a", "reconect": True}, 422, "disconnect: reconect: "),
        ("presence", {"username": 5}, 422, "presence: username: Input should be a valid string"),
        ("stats", {"x": 1}, 422, "stats: x: Extra inputs are not permitted"),
        ("batch", {"calls": []}, 422, "batch: calls: "),
        ("batch", {"calls": [{"method": "batch"}]}, 422, "batch: calls.0.method: "),
    ],
)
def test_bad_bodies_are_refused_naming_the_field(
    method: str, body: Any, status: int, message: str
) -> None:
    service = ApiService(
        MemoryStore(),
        RecordingDelivery(),
        limits=Limits(max_username_length=10, max_targets=3),
        max_message_bytes=300,
        max_notification_bytes=100,
        max_depth=4,
        sender_name="Shop",
    )
    with pytest.raises(ApiFailure) as caught:
        service.prepare(method, body)
    failure = caught.value
    assert failure.status == status
    code = ApiCode.PAYLOAD_TOO_LARGE if status == 413 else ApiCode.INVALID_FORMAT
    assert failure.error.code is code
    assert failure.error.message.startswith(message), failure.error.message


async def test_a_batch_costs_one_per_call() -> None:
    _, _, service = await world()
    calls = [{"method": "stats"}] * 3
    assert service.prepare("batch", {"calls": calls}).cost == 3
    assert service.prepare("stats", {}).cost == 1
    assert isinstance(service.prepare("stats", {}), Call)


async def test_the_sender_name_is_reserved_for_clients() -> None:
    store = MemoryStore()
    await store.connect("s1", T0)
    listing = ClientListing(store, page_size=2, max_page_size=3, ttl=0, clock=lambda: 0.0)
    presence = PresenceService(store, RecordingDelivery(), max_metadata_bytes=1000, listing=listing)
    presence.reserve_username("WS-Hub")
    for name in ("WS-Hub", "ws-hub"):
        with pytest.raises(GatewayError) as caught:
            await presence.set_data("s1", SetData(username=name))
        assert caught.value.code is ErrorCode.DUPLICATE_USERNAME
        assert caught.value.reply is not None
        assert caught.value.reply.payload["error"] == "Username already taken"
    await presence.set_data("s1", SetData(username="WS-Hubert"))
