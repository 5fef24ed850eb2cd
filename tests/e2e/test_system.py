"""client-ping, system:getConfig, system:stats, malformed input and both transports."""

import asyncio
import re

import aiohttp

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def test_client_ping_answers_pong(connect) -> None:
    client = await connect()
    await client.emit("client-ping", {})
    pong = await client.expect("client-pong")
    assert set(pong) == {"timestamp"} and ISO.match(pong["timestamp"])
    assert (await client.call("client-ping")).keys() == {"timestamp"}


async def test_get_config(server_factory, clients) -> None:
    server = server_factory(
        heartbeat_interval=20,
        heartbeat_timeout=4,
        max_message_bytes=5000,
        max_notification_bytes=1000,
    )
    client = await clients.connect(server.url)
    await client.emit("system:getConfig")
    config = await client.expect("system:config")
    assert config["heartbeat"] == {"interval": 20000, "timeout": 4000}
    assert config["security"] == {"maxMessageSize": 5000}
    assert config["notifications"] == {"maxContentSize": 1000}
    assert config["appInfo"]["name"] == "WS-Hub"


async def test_stats_are_periodic_and_coalesced(server_factory, clients) -> None:
    server = server_factory(stats_interval=0.3)
    first = await clients.connect(server.url)
    others = [await clients.connect(server.url) for _ in range(5)]
    stats = await first.expect("system:stats", timeout=2)
    assert set(stats) == {"activeConnections", "totalConnections", "timestamp"}
    # Six connects within one interval give one update, not six.
    while stats["activeConnections"] < 6:
        stats = await first.expect("system:stats", timeout=2)
    assert stats["activeConnections"] == 6 and stats["totalConnections"] == 6
    seen = [e for e, _ in first.log if e == "system:stats"]
    assert len(seen) <= 2
    # Nothing changes: no further stats.
    await first.expect_none("system:stats", within=0.7)
    await others[0].close()
    stats = await first.expect("system:stats", timeout=2)
    assert stats["activeConnections"] == 5 and stats["totalConnections"] == 6


async def test_unknown_event_is_answered(connect) -> None:
    client = await connect()
    await client.emit("system:doesNotExist", {})
    error = await client.expect("system:error")
    assert error == {"code": "INVALID_FORMAT", "message": "Unknown event 'system:doesNotExist'"}


async def test_non_object_payloads_are_refused_and_the_connection_stays(connect) -> None:
    client = await connect("alice")
    for payload in ["text", 12, [1, 2], True]:
        await client.emit("system:direct", payload)
        error = await client.expect("system:error")
        assert error["code"] == "INVALID_FORMAT" and "JSON object" in error["message"]
    ack = await client.call("system:direct", "text")
    assert ack["code"] == "INVALID_FORMAT"
    await client.emit("client-ping")
    await client.expect("client-pong")


async def test_extra_arguments_are_refused(connect) -> None:
    client = await connect("alice")
    await client.emit_raw("system:general", {"type": "x"}, {"type": "y"})
    assert (await client.expect("system:error"))["code"] == "INVALID_FORMAT"


async def test_malformed_socketio_packet_is_answered(server) -> None:
    """A raw WebSocket client sends a broken Socket.IO packet; the gateway answers it."""
    url = server.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        assert (await ws.receive_str()).startswith("0{")  # Engine.IO open
        await ws.send_str("40")  # Socket.IO connect
        assert (await ws.receive_str()).startswith("40{")
        assert '"system:welcome"' in await ws.receive_str()
        await ws.send_str('42["system:general", {broken')
        reply = await asyncio.wait_for(ws.receive_str(), 3)
        assert reply.startswith('42["system:error"') and "INVALID_FORMAT" in reply
        await ws.send_str('42["client-ping"]')
        assert '"client-pong"' in await asyncio.wait_for(ws.receive_str(), 3)


async def test_binary_attachments_are_refused(connect) -> None:
    client = await connect("alice")
    await client.emit("system:general", {"type": "x", "blob": b"\x00\x01"})
    error = await client.expect("system:error")
    assert error["code"] == "INVALID_FORMAT" and "Binary" in error["message"]
    await client.expect_none("system:general")
    assert "timestamp" in await client.call("client-ping")


async def test_polling_transport_with_upgrade(connect) -> None:
    alice = await connect(transports=["polling", "websocket"])
    bob = await connect(transports=["polling"])
    await alice.login("alice")
    await bob.login("bob")
    await alice.emit("system:direct", {"target": "bob", "type": "chat", "n": 1})
    assert (await bob.expect("system:direct"))["n"] == 1
    await bob.emit("system:direct", {"target": "alice", "type": "chat", "n": 2})
    assert (await alice.expect("system:direct"))["n"] == 2


async def test_http_index_and_health(server, connect) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(server.url + "/") as response:
            assert response.status == 200
            text = await response.text()
            assert "WS-Hub" in text and "/socket.io/" in text
        await connect()
        async with session.get(server.url + "/health") as response:
            health = await response.json()
        assert health["status"] == "ok" and health["activeConnections"] == 1
        assert health["uptime"] >= 0
