"""system:notification to targets and to followers."""


async def test_notification_to_targets(connect) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    carol = await connect("carol")
    dave = await connect("dave")
    await alice.emit(
        "system:notification",
        {
            "type": "friendRequest",
            "content": {"message": "Be my friend"},
            "targets": ["bob", "carol", "nobody"],
            "priority": "high",
        },
    )
    for receiver in (bob, carol):
        got = await receiver.expect("system:notification")
        assert got == {
            "type": "friendRequest",
            "content": {"message": "Be my friend"},
            "priority": "high",
            "sender": {"id": alice.sid, "username": "alice", "profile": {}},
            "timestamp": got["timestamp"],
        }
    sent = await alice.expect("system:notificationSent")
    assert sent == {"success": True, "recipientCount": 2, "held": 0, "timestamp": sent["timestamp"]}
    await dave.expect_none("system:notification")


async def test_notification_without_targets_goes_to_connected_followers(connect) -> None:
    alice = await connect("alice")
    fan1 = await connect()
    await fan1.login("fan1", following=["alice"])
    fan2 = await connect()
    await fan2.login("fan2", following=["alice", "bob"])
    stranger = await connect("stranger")
    await alice.emit("system:notification", {"type": "post", "content": {"id": 7}})
    for fan in (fan1, fan2):
        assert (await fan.expect("system:notification"))["content"] == {"id": 7}
    assert (await alice.expect("system:notificationSent"))["recipientCount"] == 2
    await stranger.expect_none("system:notification")


async def test_followers_that_left_or_unfollowed_are_not_notified(connect) -> None:
    alice = await connect("alice")
    fan = await connect()
    await fan.login("fan", following=["alice"])
    leaver = await connect()
    await leaver.login("leaver", following=["alice"])
    await leaver.close()
    await fan.emit("system:setData", {"following": []})
    await fan.expect("system:dataSet")
    ack = await alice.call("system:notification", {"type": "post", "content": {}})
    assert ack["recipientCount"] == 0


async def test_notification_content_must_be_an_object(connect) -> None:
    alice = await connect("alice")
    await alice.emit("system:notification", {"type": "post", "content": "text"})
    error = await alice.expect("system:error")
    assert error["code"] == "INVALID_FORMAT" and "content" in error["message"]


async def test_notification_content_over_the_limit(server_factory, clients) -> None:
    server = server_factory(max_notification_bytes=100)
    alice = await clients.connect(server.url, "alice")
    await alice.emit("system:notification", {"type": "t", "content": {"x": "y" * 200}})
    error = await alice.expect("system:error")
    assert error["code"] == "PAYLOAD_TOO_LARGE" and "max_notification_bytes" in error["message"]


async def test_too_many_targets(server_factory, clients) -> None:
    server = server_factory(max_targets=2)
    alice = await clients.connect(server.url, "alice")
    await alice.emit(
        "system:notification", {"type": "t", "content": {}, "targets": ["a", "b", "c"]}
    )
    error = await alice.expect("system:error")
    assert error["code"] == "INVALID_FORMAT" and "targets" in error["message"]
