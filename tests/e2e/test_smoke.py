import re

from tests.support.client import Client

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def test_welcome_and_ping(connect) -> None:
    alice: Client = await connect()
    await alice.emit("client-ping")
    pong = await alice.expect("client-pong")
    assert set(pong) == {"timestamp"} and ISO.match(pong["timestamp"])


async def test_direct_message(connect) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    await alice.emit("system:direct", {"target": "bob", "type": "chat", "message": "hi"})
    got = await bob.expect("system:direct")
    assert got["message"] == "hi"
    assert got["sender"] == {"id": alice.sid, "username": "alice", "profile": {}}
    sent = await alice.expect("system:directSent")
    assert sent["success"] is True and sent["target"] == "bob"
