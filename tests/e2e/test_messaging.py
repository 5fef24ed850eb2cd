"""system:general and system:direct, their confirmations and failures."""

import re

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def test_general_reaches_everyone_including_the_sender(connect) -> None:
    alice = await connect("alice")
    await alice.emit("system:setData", {"profile": {"displayName": "Alice"}})
    await alice.expect("system:dataSet")
    bob = await connect("bob")
    anonymous = await connect()
    message = {"type": "announcement", "message": "Hello everyone!", "importance": "high"}
    await alice.emit("system:general", message)
    for receiver in (alice, bob, anonymous):
        got = await receiver.expect("system:general")
        assert got == {
            **message,
            "sender": {"id": alice.sid, "username": "alice", "profile": {"displayName": "Alice"}},
            "timestamp": got["timestamp"],
            "broadcast": True,
        }
        assert ISO.match(got["timestamp"])
    sent = await alice.expect("system:generalSent")
    assert sent == {"success": True, "originalMessage": message, "timestamp": sent["timestamp"]}


async def test_general_cannot_forge_server_fields(connect) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    await alice.emit(
        "system:general",
        {
            "type": "x",
            "sender": {"id": "evil", "username": "bob"},
            "timestamp": "1999-01-01T00:00:00.000Z",
            "broadcast": False,
        },
    )
    got = await bob.expect("system:general")
    assert got["sender"]["username"] == "alice" and got["sender"]["id"] == alice.sid
    assert got["broadcast"] is True and got["timestamp"] != "1999-01-01T00:00:00.000Z"


async def test_general_requires_a_username(connect) -> None:
    anonymous = await connect()
    await anonymous.emit("system:general", {"type": "x"})
    assert (await anonymous.expect("system:error"))["code"] == "NO_USERNAME"
    await anonymous.expect_none("system:general")


async def test_general_requires_a_type(connect) -> None:
    alice = await connect("alice")
    await alice.emit("system:general", {"message": "no type"})
    error = await alice.expect("system:error")
    assert error["code"] == "INVALID_FORMAT" and "type" in error["message"]


async def test_direct_reaches_only_the_target(connect) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    carol = await connect("carol")
    await alice.emit(
        "system:direct",
        {"target": "bob", "type": "chatMessage", "message": "Hi", "sender": "forged"},
    )
    got = await bob.expect("system:direct")
    assert got == {
        "target": "bob",
        "type": "chatMessage",
        "message": "Hi",
        "sender": {"id": alice.sid, "username": "alice", "profile": {}},
        "timestamp": got["timestamp"],
    }
    sent = await alice.expect("system:directSent")
    assert sent == {
        "success": True,
        "target": "bob",
        "timestamp": sent["timestamp"],
        "delivery": "delivered",
    }
    await carol.expect_none("system:direct")


async def test_direct_to_an_unknown_user_fails_with_both_replies(connect) -> None:
    alice = await connect("alice")
    await alice.emit("system:direct", {"target": "ghost", "type": "chat"})
    sent = await alice.expect("system:directSent")
    assert sent == {
        "success": False,
        "target": "ghost",
        "reason": "User not found",
        "timestamp": sent["timestamp"],
    }
    assert (await alice.expect("system:error"))["code"] == "TARGET_NOT_FOUND"


async def test_direct_ack_returns_the_confirmation(connect) -> None:
    alice = await connect("alice")
    await connect("bob")
    ack = await alice.call("system:direct", {"target": "bob", "type": "chat"})
    assert ack["success"] is True and ack["target"] == "bob"
    ack = await alice.call("system:direct", {"target": "nobody", "type": "chat"})
    assert ack["success"] is False and ack["reason"] == "User not found"


async def test_direct_requires_a_username(connect) -> None:
    await connect("bob")
    anonymous = await connect()
    await anonymous.emit("system:direct", {"target": "bob", "type": "chat"})
    assert (await anonymous.expect("system:error"))["code"] == "NO_USERNAME"


async def test_direct_messages_keep_their_order(server_factory, clients) -> None:
    server = server_factory(rate_limit_burst=200)
    alice = await clients.connect(server.url, "alice")
    bob = await clients.connect(server.url, "bob")
    for seq in range(150):
        await alice.emit("system:direct", {"target": "bob", "type": "chat", "seq": seq})
    received = [(await bob.expect("system:direct"))["seq"] for _ in range(150)]
    assert received == list(range(150))
