"""The server heartbeat cycle, with short intervals."""

import asyncio

FAST = {
    "heartbeat_interval": 0.3,
    "heartbeat_timeout": 0.1,
    "heartbeat_warn_after": 2,
    "heartbeat_max_missed": 3,
}


async def test_acknowledged_heartbeats_bring_no_warning(server_factory, clients) -> None:
    server = server_factory(**FAST)
    client = await clients.connect(server.url)
    for _ in range(4):
        beat = await client.expect("system:heartbeat", timeout=2)
        assert set(beat) == {"id"} and beat["id"]
        ack = await client.call("system:heartbeat-ack", {"id": beat["id"]})
        assert ack == {"success": True}
    assert client.sio.connected
    await client.expect_none("system:heartbeat-warning", within=0.1)


async def test_missed_heartbeats_warn_then_disconnect(server_factory, clients) -> None:
    server = server_factory(**FAST)
    client = await clients.connect(server.url)
    warning = await client.expect("system:heartbeat-warning", timeout=3)
    assert warning["message"] == "Connection unstable - missed 2 heartbeats"
    assert warning["missedHeartbeats"] == 2
    assert warning["timestamp"].endswith("Z")
    notice = await client.expect("system:disconnect", timeout=3)
    assert notice["reason"] == "heartbeat_timeout" and notice["reconnect"] == "reconnect"
    await asyncio.wait_for(client.disconnected.wait(), 3)


async def test_an_ack_resets_the_missed_count(server_factory, clients) -> None:
    server = server_factory(**FAST)
    client = await clients.connect(server.url)
    await client.expect("system:heartbeat-warning", timeout=3)
    beat = await client.expect("system:heartbeat", timeout=2)
    while not client.events["system:heartbeat"].empty():
        beat = client.events["system:heartbeat"].get_nowait()
    await client.emit(
        "system:heartbeat-ack", {"id": beat["id"], "timestamp": "2026-01-01T00:00:00.000Z"}
    )
    # Answer from now on: the connection must survive well past max_missed rounds.
    deadline = asyncio.get_running_loop().time() + 1.5
    while asyncio.get_running_loop().time() < deadline:
        beat = await client.expect("system:heartbeat", timeout=2)
        await client.emit("system:heartbeat-ack", {"id": beat["id"]})
    assert client.sio.connected


async def test_an_unknown_heartbeat_id_is_an_error(server_factory, clients) -> None:
    server = server_factory(**FAST)
    client = await clients.connect(server.url)
    await client.emit("system:heartbeat-ack", {"id": "made-up"})
    error = await client.expect("system:error")
    assert error["code"] == "INVALID_FORMAT" and "heartbeat" in error["message"]
