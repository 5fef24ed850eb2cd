"""Handler services against the memory store and a recording delivery port: no network."""

import pytest

from gateway.protocol.close import CloseReason
from gateway.protocol.errors import ErrorCode, GatewayError
from gateway.protocol.inbound import Direct, General, Notification, SetData
from gateway.services.messaging import MessagingService
from gateway.services.notifications import NotificationService
from gateway.services.presence import ClientListing, PresenceService
from gateway.store.memory import MemoryStore
from tests.unit.fakes import RecordingDelivery

T0 = "2026-01-01T00:00:00.000Z"


def presence_service(store: MemoryStore, delivery: RecordingDelivery) -> PresenceService:
    listing = ClientListing(store, page_size=2, max_page_size=3, ttl=0, clock=lambda: 0.0)
    return PresenceService(store, delivery, max_metadata_bytes=10_000, listing=listing)


@pytest.fixture
async def world() -> tuple[MemoryStore, RecordingDelivery]:
    store = MemoryStore()
    for sid in ("s1", "s2", "s3"):
        await store.connect(sid, T0)
    return store, RecordingDelivery()


async def test_set_data_merges_and_announces_follows(world) -> None:
    store, delivery = world
    presence = presence_service(store, delivery)
    await presence.set_data("s2", SetData(username="bob"))
    reply = await presence.set_data("s1", SetData(username="alice", following=["bob"]))
    assert reply.payload["updatedFields"] == ["username", "following"]
    assert delivery.to("s2", "system:followed")[0]["username"] == "alice"
    await presence.set_data("s1", SetData.model_validate({"status": "busy"}))
    me = await store.get("s1")
    assert me is not None and dict(me.metadata) == {"following": ["bob"], "status": "busy"}


async def test_duplicate_username_changes_nothing(world) -> None:
    store, delivery = world
    presence = presence_service(store, delivery)
    await presence.set_data("s1", SetData(username="alice"))
    with pytest.raises(GatewayError) as caught:
        await presence.set_data("s2", SetData(username="alice", profile={"a": 1}))
    assert caught.value.code is ErrorCode.DUPLICATE_USERNAME
    assert delivery.probed == ["s1"] and delivery.closed == []  # alive: never displaced
    assert caught.value.reply is not None and caught.value.reply.payload["success"] is False
    s2 = await store.get("s2")
    assert s2 is not None and s2.username is None and s2.profile == {}


async def test_a_dead_holder_is_probed_and_displaced(world) -> None:
    store, delivery = world
    presence = presence_service(store, delivery)
    await presence.set_data("s1", SetData(username="alice"))
    delivery.dead.add("s1")  # its connection went silent (a phone that left its network)
    reply = await presence.set_data("s2", SetData(username="alice"))
    assert reply.payload["success"] is True
    assert delivery.probed == ["s1"]
    assert delivery.closed == [("s1", CloseReason.SESSION_REPLACED)]
    assert [a.sid for a in await store.connections_of("alice")] == ["s2"]


async def test_forced_username_refuses_another(world) -> None:
    store, delivery = world
    presence = presence_service(store, delivery)
    with pytest.raises(GatewayError) as caught:
        await presence.set_data("s1", SetData(username="mallory"), forced_username="alice")
    assert caught.value.code is ErrorCode.FORBIDDEN
    await presence.set_data("s1", SetData(username="alice"), forced_username="alice")


async def test_direct_message_stamps_server_fields(world) -> None:
    store, delivery = world
    await store.save("s1", "alice", {})
    await store.save("s2", "bob", {})
    messaging = MessagingService(store, delivery)
    message = Direct.model_validate({"target": "bob", "type": "t", "sender": "x", "timestamp": 1})
    await messaging.direct("s1", message)
    (got,) = delivery.to("s2", "system:direct")
    assert got["sender"] == {"id": "s1", "username": "alice", "profile": {}}
    assert got["timestamp"] != 1


async def test_general_without_username_is_refused(world) -> None:
    store, delivery = world
    with pytest.raises(GatewayError) as caught:
        await MessagingService(store, delivery).general("s1", General(type="x"))
    assert caught.value.code is ErrorCode.NO_USERNAME
    assert delivery.broadcasts == []


async def test_notification_to_followers(world) -> None:
    store, delivery = world
    await store.save("s1", "alice", {})
    await store.save("s2", "bob", {"following": ["alice"]})
    await store.save("s3", "carol", {"following": ["dave"]})
    service = NotificationService(store, delivery, max_content_bytes=1000)
    reply = await service.notify("s1", Notification(type="post", content={"id": 1}))
    assert reply.payload["recipientCount"] == 1
    (got,) = delivery.to("s2", "system:notification")
    assert "targets" not in got and got["content"] == {"id": 1}
