"""The hub end to end without a network: events in, replies and errors out through a fake port."""

from __future__ import annotations

import pytest

from gateway.hub import UNAVAILABLE, Hub
from gateway.protocol.close import CloseReason
from gateway.settings import Settings
from gateway.store.base import StoreUnavailable
from gateway.store.memory import MemoryStore
from tests.unit.fakes import RecordingDelivery


class FlakyStore(MemoryStore):
    async def sid_of(self, username: str) -> str | None:
        raise StoreUnavailable("redis is down")


async def hub_with(
    store: MemoryStore | None = None, **settings: object
) -> tuple[Hub, RecordingDelivery]:
    delivery = RecordingDelivery()
    hub = Hub(Settings.load(**settings), store or MemoryStore(), delivery)
    for sid in ("s1", "s2"):
        await hub.admit(sid, None)
        await hub.connected(sid)
    return hub, delivery


async def test_a_reply_is_sent_and_acknowledged() -> None:
    hub, delivery = await hub_with()
    ack = await hub.handle("s1", "system:setData", ({"username": "alice"},), 30, None)
    assert ack["success"] is True
    assert delivery.to("s1", "system:dataSet") == [ack]
    assert delivery.to("s1", "system:welcome")


async def test_an_error_is_sent_and_acknowledged() -> None:
    hub, delivery = await hub_with()
    ack = await hub.handle("s1", "system:nope", (), 10, None)
    assert ack == {"code": "INVALID_FORMAT", "message": "Unknown event 'system:nope'"}
    assert delivery.to("s1", "system:error") == [ack]


async def test_failure_replies_come_before_the_error() -> None:
    hub, delivery = await hub_with()
    await hub.handle("s1", "system:setData", ({"username": "alice"},), 30, None)
    ack = await hub.handle("s1", "system:direct", ({"target": "ghost", "type": "t"},), 40, None)
    assert ack["success"] is False and ack["reason"] == "User not found"
    events = [event for sid, event, _ in delivery.sent if sid == "s1"]
    assert events[-2:] == ["system:directSent", "system:error"]


async def test_flooding_ends_in_a_close() -> None:
    hub, delivery = await hub_with(rate_limit=1, rate_limit_burst=1, flood_disconnect_after=2)
    for _ in range(4):
        await hub.handle("s1", "system:clients", (), 20, None)
    assert delivery.closed == [("s1", CloseReason.RATE_LIMIT)]


async def test_a_store_outage_is_reported_not_raised() -> None:
    hub, delivery = await hub_with(FlakyStore())
    await hub.handle("s1", "system:setData", ({"username": "alice"},), 30, None)
    ack = await hub.handle("s1", "system:direct", ({"target": "bob", "type": "t"},), 40, None)
    assert ack["code"] == UNAVAILABLE
    assert delivery.to("s1", "system:error")[-1]["code"] == UNAVAILABLE


@pytest.mark.parametrize("event", ["system:typingStart", "system:heartbeat-ack"])
async def test_events_without_a_reply_acknowledge_success(event: str) -> None:
    hub, _ = await hub_with()
    await hub.handle("s1", "system:setData", ({"username": "alice"},), 30, None)
    await hub.handle("s2", "system:setData", ({"username": "bob"},), 30, None)
    hub.heartbeat.book.open_round("r1")
    payload = {"target": "bob"} if event == "system:typingStart" else {"id": "r1"}
    assert await hub.handle("s1", event, (payload,), 30, None) == {"success": True}
