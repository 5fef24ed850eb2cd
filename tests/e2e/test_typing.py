"""Typing indicators, with their automatic stop."""

import asyncio


async def test_typing_start_and_stop_reach_the_target(connect) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    await alice.emit("system:typingStart", {"target": "bob"})
    update = await bob.expect("system:typingUpdate")
    assert update == {
        "sender": {"id": alice.sid, "username": "alice", "profile": {}},
        "isTyping": True,
        "timestamp": update["timestamp"],
    }
    await alice.emit("system:typingStop", {"target": "bob"})
    assert (await bob.expect("system:typingUpdate"))["isTyping"] is False


async def test_typing_stops_by_itself_after_the_timeout(server_factory, clients) -> None:
    server = server_factory(typing_timeout=0.3)
    alice = await clients.connect(server.url, "alice")
    bob = await clients.connect(server.url, "bob")
    await alice.emit("system:typingStart", {"target": "bob"})
    assert (await bob.expect("system:typingUpdate"))["isTyping"] is True
    loop = asyncio.get_running_loop()
    started = loop.time()
    stop = await bob.expect("system:typingUpdate", timeout=2)
    assert stop["isTyping"] is False and stop["sender"]["username"] == "alice"
    assert 0.2 <= loop.time() - started < 1.5


async def test_repeated_starts_refresh_the_timeout(server_factory, clients) -> None:
    server = server_factory(typing_timeout=0.5)
    alice = await clients.connect(server.url, "alice")
    bob = await clients.connect(server.url, "bob")
    await alice.emit("system:typingStart", {"target": "bob"})
    await bob.expect("system:typingUpdate")
    for _ in range(3):
        await asyncio.sleep(0.25)
        await alice.emit("system:typingStart", {"target": "bob"})
    # 0.75 s after the first start, still typing: refreshes sent no new update or stop
    await bob.expect_none("system:typingUpdate", within=0.1)
    assert (await bob.expect("system:typingUpdate", timeout=2))["isTyping"] is False


async def test_typing_stops_when_the_sender_disconnects(connect) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    await alice.emit("system:typingStart", {"target": "bob"})
    await bob.expect("system:typingUpdate")
    await alice.close()
    stop = await bob.expect("system:typingUpdate")
    assert stop["isTyping"] is False and stop["sender"]["username"] == "alice"


async def test_typing_to_an_unknown_user_is_refused(connect) -> None:
    alice = await connect("alice")
    await alice.emit("system:typingStart", {"target": "ghost"})
    assert (await alice.expect("system:error"))["code"] == "TARGET_NOT_FOUND"


async def test_typing_requires_a_target(connect) -> None:
    alice = await connect("alice")
    await alice.emit("system:typingStart", {})
    error = await alice.expect("system:error")
    assert error["code"] == "INVALID_FORMAT" and "target" in error["message"]
