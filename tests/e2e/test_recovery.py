"""Sessions that survive mobile networks: connection state recovery with the official JS client,
dead holders, and several connections per user.

The JS client (tests/interop/driver.mjs) is the one that implements recovery; its transport is
killed under it ("drop": no close frame) or frozen by a TCP proxy that stops forwarding without
closing (tests/support/proxy.py), as a phone's network does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.client import Clients
from tests.support.jsclient import JsClients
from tests.support.proxy import FreezingProxy

# The JS client comes back after 0.8 s: long enough to send messages into the gap.
SLOW_BACK = {"reconnectionDelay": 800, "reconnectionDelayMax": 800}


@pytest.fixture
async def js() -> AsyncIterator[JsClients]:
    clients = await JsClients().start()
    yield clients
    await clients.stop()


def payloads(events: list[list[Any]]) -> list[Any]:
    return [args[0] for args in events]


async def dm_until_held(sender: Any, target: str, n: int) -> dict[str, Any]:
    """Send DMs numbered from *n* until the gateway reports one held (it has seen the drop)."""
    for attempt in range(50):
        reply = await sender.call(
            "system:direct", {"target": target, "type": "chat", "n": n + attempt}
        )
        assert reply["success"] is True, reply
        if reply["delivery"] == "held":
            return {"last": n + attempt, "reply": reply}
        await asyncio.sleep(0.02)
    raise AssertionError("the gateway never noticed the dropped transport")


async def test_a_dropped_transport_resumes_with_every_missed_event_once_in_order(
    server_factory, js: JsClients, clients: Clients
) -> None:
    server = server_factory()
    first = await js.open("phone", server.url, **SLOW_BACK)
    assert first["recovered"] is False
    await js.emit("phone", "system:setData", {"username": "phone"}, ack=True)
    friend = await clients.connect(server.url, "friend")
    await friend.call("system:direct", {"target": "phone", "type": "chat", "n": 0})
    [(got, offset)] = await js.events("phone", "system:direct")
    assert got["n"] == 0 and isinstance(offset, str)  # the JS client gets offsets

    await js.command("drop", name="phone")
    held = await dm_until_held(friend, "phone", 1)
    last = held["last"]
    for n in range(last + 1, last + 3):  # more in the gap, all held
        reply = await friend.call("system:direct", {"target": "phone", "type": "chat", "n": n})
        assert reply == {
            "success": True,
            "target": "phone",
            "timestamp": reply["timestamp"],
            "delivery": "held",
        }
    again = await js.connected("phone", 1)
    assert again == {"id": first["id"], "recovered": True}
    direct = payloads(await js.events("phone", "system:direct", last + 3))
    await asyncio.sleep(0.2)  # nothing more may come: no duplicate
    direct = payloads(await js.events("phone", "system:direct", last + 3))
    assert [d["n"] for d in direct] == list(range(last + 3))  # once each, in order
    # the session kept its name: it is reachable as before
    reply = await friend.call("system:direct", {"target": "phone", "type": "chat", "n": 99})
    assert reply["delivery"] == "delivered"
    listing = await friend.call("system:clients")
    assert sorted(c["username"] for c in listing["clients"]) == ["friend", "phone"]


async def test_a_half_open_transport_is_cut_and_its_session_resumed(
    server_factory, js: JsClients, clients: Clients
) -> None:
    # The gateway's own ping timeout is far away: it still holds the silent connection.
    server = server_factory(engineio_ping_interval=20, engineio_ping_timeout=20)
    proxy = FreezingProxy(server.port).start()
    try:
        first = await js.open("phone", proxy.url)
        await js.emit("phone", "system:setData", {"username": "phone"}, ack=True)
        friend = await clients.connect(server.url, "friend")
        await friend.call("system:direct", {"target": "phone", "type": "chat", "n": 0})
        await js.events("phone", "system:direct")
        proxy.freeze()  # the phone's network is gone; neither end is told
        # The gateway still thinks the phone is there: these go into the dead connection.
        for n in (1, 2):
            reply = await friend.call("system:direct", {"target": "phone", "type": "chat", "n": n})
            assert reply["delivery"] == "delivered"
        await js.command("cut", name="phone")  # the phone notices the new network, reconnects
        again = await js.connected("phone", 1)
        assert again == {"id": first["id"], "recovered": True}
        direct = payloads(await js.events("phone", "system:direct", 3))
        assert [d["n"] for d in direct] == [0, 1, 2]
        await asyncio.sleep(0.2)
        assert len(await js.events("phone", "system:direct", 3)) == 3
        reply = await friend.call("system:direct", {"target": "phone", "type": "chat", "n": 3})
        assert reply["delivery"] == "delivered"
        assert payloads(await js.events("phone", "system:direct", 4))[3]["n"] == 3
    finally:
        proxy.stop()


async def test_after_the_window_the_client_gets_a_fresh_session(
    server_factory, js: JsClients, clients: Clients
) -> None:
    server = server_factory(recovery_window=0.3)
    first = await js.open("phone", server.url, **SLOW_BACK)
    await js.emit("phone", "system:setData", {"username": "phone"}, ack=True)
    friend = await clients.connect(server.url, "friend")
    await js.command("drop", name="phone")
    await dm_until_held(friend, "phone", 0)
    again = await js.connected("phone", 1)
    assert again["recovered"] is False and again["id"] != first["id"]
    # The name was released with the expired session: the normal setData path works.
    reply = await js.emit("phone", "system:setData", {"username": "phone"}, ack=True)
    assert reply["success"] is True


async def test_a_full_buffer_ends_the_waiting_session(
    server_factory, js: JsClients, clients: Clients
) -> None:
    server = server_factory(recovery_buffer=3)
    await js.open("phone", server.url, **SLOW_BACK)
    await js.emit("phone", "system:setData", {"username": "phone"}, ack=True)
    friend = await clients.connect(server.url, "friend")
    await js.command("drop", name="phone")
    held = await dm_until_held(friend, "phone", 0)
    replies = [
        await friend.call("system:direct", {"target": "phone", "type": "chat", "n": n})
        for n in range(held["last"] + 1, held["last"] + 6)
    ]
    # Held until the buffer is full; then the session ends and the user is not connected.
    assert replies[-1] == {
        "success": False,
        "target": "phone",
        "reason": "User not found",
        "timestamp": replies[-1]["timestamp"],
    }
    again = await js.connected("phone", 1)
    assert again["recovered"] is False


async def test_a_client_that_cannot_recover_gets_its_name_back_fast(
    server_factory, clients: Clients
) -> None:
    # A Swift or Java app: no recovery; its old connection hangs half-open behind the proxy.
    server = server_factory(engineio_ping_interval=20, engineio_ping_timeout=20)
    proxy = FreezingProxy(server.port).start()
    try:
        await clients.connect(proxy.url, "swift")
        proxy.freeze()
        loop = asyncio.get_running_loop()
        started = loop.time()
        back = await clients.connect(server.url)  # the app, on its new network
        await back.login("swift")  # the silent holder is probed, found dead and displaced
        took = loop.time() - started
        assert took < 3, took
        print(f"\ndead holder displaced, name granted after {took:.2f} s")
    finally:
        proxy.stop()


async def test_a_live_holder_is_never_displaced_by_a_stranger(
    server_factory, clients: Clients
) -> None:
    server = server_factory()
    holder = await clients.connect(server.url, "alice")
    stranger = await clients.connect(server.url)
    await stranger.emit("system:setData", {"username": "alice"})
    assert (await stranger.expect("system:dataSet"))["error"] == "Username already taken"
    assert (await stranger.expect("system:error"))["code"] == "DUPLICATE_USERNAME"
    assert "timestamp" in await holder.call("client-ping")


async def test_a_session_resumes_on_another_node(js: JsClients, clients: Clients) -> None:
    from tests.e2e.test_cluster import cluster_env, redis_up
    from tests.support.process import GatewayProcess

    if not redis_up():
        pytest.skip("no Redis on 127.0.0.1:6379")
    env = cluster_env()
    nodes = [GatewayProcess(env=env).start() for _ in range(2)]
    proxy = FreezingProxy(nodes[0].port).start()  # the load balancer: node 0 first
    try:
        first = await js.open("phone", proxy.url, **SLOW_BACK)
        await js.emit("phone", "system:setData", {"username": "phone"}, ack=True)
        friend = await clients.connect(nodes[1].url, "friend")
        await friend.call("system:direct", {"target": "phone", "type": "chat", "n": 0})
        await js.events("phone", "system:direct")
        proxy.target = ("127.0.0.1", nodes[1].port)  # the phone comes back through node 1
        await js.command("drop", name="phone")
        held = await dm_until_held(friend, "phone", 1)
        again = await js.connected("phone", 1)
        assert again == {"id": first["id"], "recovered": True}
        total = held["last"] + 1
        direct = payloads(await js.events("phone", "system:direct", total))
        assert [d["n"] for d in direct] == list(range(total))
        # The session lives on node 1 now: DMs go there, nothing is duplicated.
        reply = await friend.call("system:direct", {"target": "phone", "type": "chat", "n": 50})
        assert reply["delivery"] == "delivered"
        direct = payloads(await js.events("phone", "system:direct", total + 1))
        await asyncio.sleep(0.2)
        assert [d["n"] for d in payloads(await js.events("phone", "system:direct", total + 1))] == [
            *range(total),
            50,
        ]
        listing = await friend.call("system:clients")
        assert sorted(c["username"] for c in listing["clients"]) == ["friend", "phone"]
    finally:
        proxy.stop()
        await clients.close_all()
        await js.stop()
        for node in nodes:
            node.stop()


async def test_a_session_whose_node_died_starts_afresh(js: JsClients, clients: Clients) -> None:
    import signal

    from tests.e2e.test_cluster import cluster_env, redis_up
    from tests.support.process import GatewayProcess

    if not redis_up():
        pytest.skip("no Redis on 127.0.0.1:6379")
    env = cluster_env()
    nodes = [GatewayProcess(env=env).start() for _ in range(2)]
    proxy = FreezingProxy(nodes[0].port).start()
    try:
        first = await js.open("phone", proxy.url, **SLOW_BACK)
        await js.emit("phone", "system:setData", {"username": "phone"}, ack=True)
        proxy.target = ("127.0.0.1", nodes[1].port)
        nodes[0].signal(signal.SIGKILL)  # the node holding the session dies with it
        again = await js.connected("phone", 1, timeout=10)
        assert again["recovered"] is False and again["id"] != first["id"]
        # The dead node's entry holds the name until the lease runs out or a probe says it
        # is gone: the claim probes it (no answer) and is granted.
        reply = await js.emit("phone", "system:setData", {"username": "phone"}, ack=True)
        assert reply["success"] is True
    finally:
        proxy.stop()
        await clients.close_all()
        await js.stop()
        for node in nodes:
            node.stop()


# -- several connections per user (authentication on) -----------------------------------------

SECRET = "test-secret-that-is-long-enough-for-hs256"


def token(sub: str) -> str:
    import time

    import jwt

    return jwt.encode({"sub": sub, "exp": time.time() + 60}, SECRET, algorithm="HS256")


async def test_multi_keeps_a_user_online_on_every_device(server_factory, clients: Clients) -> None:
    server = server_factory(auth_jwt_secret=SECRET)  # user_connections = multi by default
    phone = await clients.new(server.url).connect(auth={"token": token("alice")})
    laptop = await clients.new(server.url).connect(auth={"token": token("alice")})
    bob = await clients.new(server.url).connect(auth={"token": token("bob")})
    reply = await bob.call("system:direct", {"target": "alice", "type": "chat", "n": 1})
    assert reply["success"] is True and reply["delivery"] == "delivered"
    for device in (phone, laptop):
        assert (await device.expect("system:direct"))["n"] == 1
    await bob.call("system:typingStart", {"target": "alice"})
    for device in (phone, laptop):
        assert (await device.expect("system:typingUpdate"))["isTyping"] is True
    listing = await bob.call("system:clients")
    assert sorted(c["username"] for c in listing["clients"]) == ["alice", "alice", "bob"]
    await phone.close()
    await asyncio.sleep(0.1)
    reply = await bob.call("system:direct", {"target": "alice", "type": "chat", "n": 2})
    assert reply["success"] is True
    assert (await laptop.expect("system:direct"))["n"] == 2
    await laptop.close()
    await asyncio.sleep(0.1)
    reply = await bob.call("system:direct", {"target": "alice", "type": "chat", "n": 3})
    assert reply["success"] is False and reply["reason"] == "User not found"


async def test_replace_ends_the_older_connection(server_factory, clients: Clients) -> None:
    server = server_factory(auth_jwt_secret=SECRET, user_connections="replace")
    old = await clients.new(server.url).connect(auth={"token": token("alice")})
    new = await clients.new(server.url).connect(auth={"token": token("alice")})
    notice = await old.expect("system:disconnect")
    assert notice["reason"] == "session_replaced"
    assert notice["reconnect"] == "do not reconnect: another connection took over"
    await asyncio.wait_for(old.disconnected.wait(), 3)
    bob = await clients.new(server.url).connect(auth={"token": token("bob")})
    await bob.call("system:direct", {"target": "alice", "type": "chat", "n": 1})
    assert (await new.expect("system:direct"))["n"] == 1


# -- who gets offsets ---------------------------------------------------------------------------


async def test_offsets_go_only_to_clients_that_take_them(
    server_factory, js: JsClients, clients: Clients
) -> None:
    server = server_factory()
    await js.open("web", server.url)
    await js.emit("web", "system:setData", {"username": "web"}, ack=True)
    python = await clients.connect(server.url, "python")  # python-socketio: no offsets
    forced = clients.new(server.url + "?wshub_offsets=1")
    await forced.connect()
    await forced.login("forced")
    sender = await clients.connect(server.url, "sender")
    await sender.call("system:general", {"type": "news", "n": 1})
    [web_args] = await js.events("web", "system:general")
    assert len(web_args) == 2 and isinstance(web_args[1], str)  # payload, offset
    assert (await python.expect("system:general"))["n"] == 1  # one argument: the payload
    got = await forced.expect("system:general")
    assert isinstance(got, list) and got[0]["n"] == 1 and got[1] == web_args[1]


async def test_recovery_can_be_switched_off(server_factory, js: JsClients) -> None:
    server = server_factory(recovery_window=0)
    first = await js.open("web", server.url, **SLOW_BACK)
    await js.emit("web", "system:setData", {"username": "web"}, ack=True)
    sender = await Clients().connect(server.url, "sender")
    try:
        await sender.call("system:direct", {"target": "web", "type": "chat"})
        [args] = await js.events("web", "system:direct")
        assert len(args) == 1  # no offset
        await js.command("drop", name="web")
        again = await js.connected("web", 1)
        # No pid in the CONNECT reply: the JS client leaves `recovered` undefined.
        assert "recovered" not in again and again["id"] != first["id"]
    finally:
        await sender.close()
