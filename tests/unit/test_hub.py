"""The hub end to end without a network: events in, replies and errors out through a fake port."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from gateway.hub import UNAVAILABLE, Hub
from gateway.protocol.close import CloseReason
from gateway.settings import Settings
from gateway.store.base import Address, StoreUnavailable
from gateway.store.memory import MemoryStore
from tests.unit.fakes import FakeCaller, RecordingDelivery


class FlakyStore(MemoryStore):
    async def connections_of(self, username: str) -> Sequence[Address]:
        raise StoreUnavailable("redis is down")


CALLERS = {"s1": FakeCaller(), "s2": FakeCaller()}


async def hub_with(
    store: MemoryStore | None = None, **settings: object
) -> tuple[Hub, RecordingDelivery]:
    delivery = RecordingDelivery()
    store = store or MemoryStore()
    hub = Hub(Settings.load(**settings), store, delivery)
    for sid in CALLERS:
        CALLERS[sid] = FakeCaller()
        await store.connect(sid, "2026-01-01T00:00:00.000Z")
    return hub, delivery


async def handle(hub: Hub, sid: str, event: Any, *args: Any, ack: bool = False) -> Any:
    return await hub.handle(sid, CALLERS[sid], event, args, 30, wants_ack=ack)


async def test_a_reply_is_sent_and_acknowledged() -> None:
    hub, delivery = await hub_with()
    ack = await handle(hub, "s1", "system:setData", {"username": "alice"})
    assert ack["success"] is True
    assert delivery.to("s1", "system:dataSet") == [ack]


async def test_an_error_is_sent_and_acknowledged() -> None:
    hub, delivery = await hub_with()
    ack = await handle(hub, "s1", "system:nope")
    assert ack == {"code": "INVALID_FORMAT", "message": "Unknown event 'system:nope'"}
    assert delivery.to("s1", "system:error") == [ack]


@pytest.mark.parametrize("name", ["*", "connect", "disconnect", "system:setData\n", 42, None])
async def test_reserved_and_foreign_names_are_unknown_events(name: Any) -> None:
    hub, delivery = await hub_with()
    ack = await handle(hub, "s1", name, "s2")
    assert ack["code"] == "INVALID_FORMAT"
    expected = "An event name must be a string" if not isinstance(name, str) else "Unknown event"
    assert ack["message"].startswith(expected)
    # ... answered in the sender's own context, and nothing else happened to anyone.
    assert [sid for sid, _, _ in delivery.sent] == ["s1"] and delivery.closed == []


async def test_a_malformed_packet_is_charged_and_answered() -> None:
    hub, delivery = await hub_with(rate_limit=1, rate_limit_burst=1, flood_disconnect_after=2)
    caller = CALLERS["s1"]
    first = await hub.handle_malformed("s1", caller, "Malformed Socket.IO packet: x", 5)
    assert first == {"code": "INVALID_FORMAT", "message": "Malformed Socket.IO packet: x"}
    second = await hub.handle_malformed("s1", caller, "Malformed Socket.IO packet: x", 5)
    assert second["code"] == "RATE_LIMIT"  # the same bucket as the events
    for _ in range(2):
        await hub.handle_malformed("s1", caller, "Malformed Socket.IO packet: x", 5)
    assert delivery.closed == [("s1", CloseReason.RATE_LIMIT)]


async def test_failure_replies_come_before_the_error() -> None:
    hub, delivery = await hub_with()
    await handle(hub, "s1", "system:setData", {"username": "alice"})
    ack = await handle(hub, "s1", "system:direct", {"target": "ghost", "type": "t"})
    assert ack["success"] is False and ack["reason"] == "User not found"
    events = [event for sid, event, _ in delivery.sent if sid == "s1"]
    assert events[-2:] == ["system:directSent", "system:error"]


async def test_flooding_ends_in_a_close() -> None:
    hub, delivery = await hub_with(rate_limit=1, rate_limit_burst=1, flood_disconnect_after=2)
    for _ in range(4):
        await handle(hub, "s1", "system:getConfig")
    assert delivery.closed == [("s1", CloseReason.RATE_LIMIT)]


async def test_a_store_outage_is_reported_not_raised() -> None:
    hub, delivery = await hub_with(FlakyStore())
    await handle(hub, "s1", "system:setData", {"username": "alice"})
    ack = await handle(hub, "s1", "system:direct", {"target": "bob", "type": "t"})
    assert ack["code"] == UNAVAILABLE
    assert delivery.to("s1", "system:error")[-1]["code"] == UNAVAILABLE


async def test_a_client_page_answers_once() -> None:
    hub, delivery = await hub_with(clients_page_size=1)
    await handle(hub, "s1", "system:setData", {"username": "alice"})
    page = await handle(hub, "s1", "system:clients", ack=True)
    assert (len(page["clients"]), page["count"]) == (1, 2) and page["nextCursor"]
    assert delivery.to("s1", "system:clients") == []  # the ack carried it, not an event too
    rest = await handle(hub, "s1", "system:clients", {"cursor": page["nextCursor"]})
    assert [c["id"] for c in page["clients"] + rest["clients"]] == ["s1", "s2"]
    assert rest["nextCursor"] is None
    assert delivery.to("s1", "system:clients") == [rest]  # asked without an ack: the event
    bad = await handle(hub, "s1", "system:clients", {"cursor": "not-ours"})
    assert bad == {"code": "INVALID_FORMAT", "message": "system:clients: cursor: not one of ours"}


@pytest.mark.parametrize("event", ["system:typingStart", "system:heartbeat-ack"])
async def test_events_without_a_reply_acknowledge_success(event: str) -> None:
    hub, _ = await hub_with()
    await handle(hub, "s1", "system:setData", {"username": "alice"})
    await handle(hub, "s2", "system:setData", {"username": "bob"})
    hub.heartbeat.connected("s1")
    hub.heartbeat.book.open_round("r1")
    payload = {"target": "bob"} if event == "system:typingStart" else {"id": "r1"}
    assert await handle(hub, "s1", event, payload) == {"success": True}
