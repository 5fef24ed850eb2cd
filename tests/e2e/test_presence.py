"""system:setData, system:clients, system:followed, username uniqueness and release."""

import re

from tests.support.client import Client

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def test_welcome_is_the_first_event(connect) -> None:
    client: Client = await connect()
    event, payload = client.log[0]
    assert event == "system:welcome"
    assert set(payload) == {"message", "timestamp"}
    assert ISO.match(payload["timestamp"])


async def test_set_data_reply_lists_updated_fields(connect) -> None:
    alice = await connect()
    await alice.emit("system:setData", {"username": "alice", "profile": {"displayName": "Alice"}})
    reply = await alice.expect("system:dataSet")
    assert reply["success"] is True
    assert reply["updatedFields"] == ["username", "profile"]
    assert ISO.match(reply["timestamp"])
    assert set(reply) == {"success", "updatedFields", "timestamp"}


async def test_set_data_merges_partial_updates(connect) -> None:
    alice = await connect()
    await alice.login(
        "alice", profile={"displayName": "Alice"}, status="online", settings={"theme": "dark"}
    )
    await alice.emit("system:setData", {"following": ["bob"]})
    assert (await alice.expect("system:dataSet"))["updatedFields"] == ["following"]
    await alice.emit("system:setData", {"status": "away"})
    await alice.expect("system:dataSet")
    listing = await alice.call("system:clients")
    (me,) = listing["clients"]
    assert me["username"] == "alice"
    assert me["following"] == ["bob"]
    assert me["profile"] == {"displayName": "Alice"}


async def test_clients_lists_everyone_with_the_contract_shape(connect) -> None:
    alice = await connect("alice")
    anonymous = await connect()
    await alice.emit("system:clients")
    listing = await alice.expect("system:clients")
    assert listing["count"] == 2 and ISO.match(listing["timestamp"])
    by_id = {entry["id"]: entry for entry in listing["clients"]}
    assert by_id[anonymous.sid] == {
        "id": anonymous.sid,
        "username": None,
        "connectTime": by_id[anonymous.sid]["connectTime"],
        "following": [],
        "profile": {},
    }
    assert ISO.match(by_id[anonymous.sid]["connectTime"])
    assert by_id[alice.sid]["username"] == "alice"


async def test_duplicate_username_is_refused_with_both_replies(connect) -> None:
    await connect("alice")
    impostor = await connect()
    await impostor.emit("system:setData", {"username": "alice", "profile": {"x": 1}})
    failure = await impostor.expect("system:dataSet")
    assert failure["success"] is False
    assert failure["error"] == "Username already taken"
    assert ISO.match(failure["timestamp"])
    error = await impostor.expect("system:error")
    assert error["code"] == "DUPLICATE_USERNAME"
    # Nothing changed: the impostor still has no username and no profile.
    listing = await impostor.call("system:clients")
    mine = next(c for c in listing["clients"] if c["id"] == impostor.sid)
    assert mine["username"] is None and mine["profile"] == {}


async def test_setting_your_own_name_again_is_fine(connect) -> None:
    alice = await connect("alice")
    await alice.login("alice")


async def test_username_is_released_on_disconnect(connect) -> None:
    alice = await connect("alice")
    await alice.close()
    newcomer = await connect()
    await newcomer.login("alice")


async def test_renaming_releases_the_old_name(connect) -> None:
    alice = await connect("alice")
    await alice.login("alicia")
    other = await connect()
    await other.login("alice")


async def test_followed_is_sent_to_newly_followed_connected_users(connect) -> None:
    bob = await connect("bob")
    carol = await connect("carol")
    alice = await connect("alice")
    await alice.emit("system:setData", {"following": ["bob", "nobody"]})
    await alice.expect("system:dataSet")
    followed = await bob.expect("system:followed")
    assert followed["username"] == "alice" and ISO.match(followed["timestamp"])
    assert set(followed) == {"username", "timestamp"}
    await alice.emit("system:setData", {"following": ["bob", "carol"]})
    await alice.expect("system:dataSet")
    assert (await carol.expect("system:followed"))["username"] == "alice"
    # bob was already followed: no second announcement
    await bob.expect_none("system:followed")


async def test_set_data_ack_carries_the_reply(connect) -> None:
    alice = await connect()
    ack = await alice.call("system:setData", {"username": "alice"})
    assert ack["success"] is True and ack["updatedFields"] == ["username"]
    await connect("bob")
    failure = await alice.call("system:setData", {"username": "bob"})
    assert failure["success"] is False and failure["error"] == "Username already taken"


async def test_invalid_username_is_refused_naming_the_field(connect) -> None:
    alice = await connect()
    for bad in ["", "a\nb", "x" * 65, 42]:
        await alice.emit("system:setData", {"username": bad})
        error = await alice.expect("system:error")
        assert error["code"] == "INVALID_FORMAT"
        assert "username" in error["message"]


async def test_too_many_followed_users_is_refused(server_factory, clients) -> None:
    server = server_factory(max_following=2)
    client = await clients.connect(server.url)
    await client.emit("system:setData", {"following": ["a", "b", "c"]})
    error = await client.expect("system:error")
    assert error["code"] == "INVALID_FORMAT" and "following" in error["message"]


async def test_metadata_over_the_limit_is_refused(server_factory, clients) -> None:
    server = server_factory(max_metadata_bytes=1024)
    client = await clients.connect(server.url)
    await client.emit("system:setData", {"username": "big", "profile": {"bio": "x" * 2000}})
    failure = await client.expect("system:dataSet")
    assert failure["success"] is False
    error = await client.expect("system:error")
    assert error["code"] == "PAYLOAD_TOO_LARGE" and "max_metadata_bytes" in error["message"]
    await client.login("small")  # still usable
