"""Size and rate limits, flooding, and connection admission, against a live gateway."""

import asyncio
import statistics

import pytest
import socketio

from tests.support.process import GatewayProcess


async def test_oversized_event_is_refused_and_the_connection_stays(server_factory, clients) -> None:
    server = server_factory(max_message_bytes=1000, max_notification_bytes=500)
    alice = await clients.connect(server.url, "alice")
    bob = await clients.connect(server.url, "bob")
    await alice.emit("system:direct", {"target": "bob", "type": "t", "text": "x" * 2000})
    error = await alice.expect("system:error")
    assert error["code"] == "PAYLOAD_TOO_LARGE"
    assert "max_message_bytes" in error["message"] and "1000" in error["message"]
    await bob.expect_none("system:direct")
    await alice.emit("system:direct", {"target": "bob", "type": "t", "text": "small"})
    assert (await bob.expect("system:direct"))["text"] == "small"


async def test_packet_over_the_engineio_ceiling_closes_the_connection(
    server_factory, clients
) -> None:
    server = server_factory(
        max_frame_bytes=4096, max_message_bytes=2048, max_notification_bytes=1024
    )
    client = await clients.connect(server.url)
    await client.emit("system:general", {"type": "t", "blob": "x" * 10_000})
    await asyncio.wait_for(client.disconnected.wait(), 5)


async def test_rate_limit_answers_with_the_time_to_wait(server_factory, clients) -> None:
    server = server_factory(rate_limit=5, rate_limit_burst=3, flood_disconnect_after=50)
    client = await clients.connect(server.url, "alice")  # one token
    for _ in range(4):
        await client.emit("system:getConfig")
    for _ in range(2):
        await client.expect("system:config")
    error = await client.expect("system:error")
    assert error["code"] == "RATE_LIMIT" and error["retryAfterMs"] > 0
    assert "retry in" in error["message"]
    await asyncio.sleep(error["retryAfterMs"] / 1000 + 0.05)
    await client.emit("system:getConfig")
    await client.expect("system:config")


async def test_heartbeat_acks_are_never_rate_limited(server_factory, clients) -> None:
    server = server_factory(
        rate_limit=1,
        rate_limit_burst=1,
        rate_limit_cheap=1,
        rate_limit_cheap_burst=1,
        heartbeat_interval=0.2,
        heartbeat_timeout=0.1,
    )
    client = await clients.connect(server.url)
    beat = await client.expect("system:heartbeat", timeout=2)
    for _ in range(5):
        assert await client.call("system:heartbeat-ack", {"id": beat["id"]}) == {"success": True}


async def test_flooding_disconnects_while_a_polite_client_keeps_its_latency(clients) -> None:
    # A separate server process: the flooder's client loop must not share the server's GIL.
    gateway = GatewayProcess(
        env={
            "WSHUB_RATE_LIMIT": "50",
            "WSHUB_RATE_LIMIT_BURST": "50",
            "WSHUB_FLOOD_DISCONNECT_AFTER": "200",
        }
    ).start()
    flooder = await clients.connect(gateway.url, "flooder")
    polite = await clients.connect(gateway.url, "polite")
    loop = asyncio.get_running_loop()

    async def ping_latencies(count: int) -> list[float]:
        latencies = []
        for _ in range(count):
            started = loop.time()
            await polite.call("client-ping")
            latencies.append((loop.time() - started) * 1000)
            await asyncio.sleep(0.02)
        return latencies

    async def flood() -> None:
        while flooder.sio.connected:
            await flooder.emit("system:general", {"type": "spam", "blob": "x" * 200})
            await asyncio.sleep(0)

    try:
        quiet = await ping_latencies(30)
        flooding = asyncio.create_task(flood())
        during = await ping_latencies(30)
        notice = await flooder.expect("system:disconnect", timeout=10)
        flooding.cancel()
        assert notice["reason"] == "rate_limit_abuse"
        assert "later" in notice["reconnect"]
        await asyncio.wait_for(flooder.disconnected.wait(), 5)
        assert any(e == "system:error" and p["code"] == "RATE_LIMIT" for e, p in flooder.log)
        assert polite.sio.connected
        print(
            f"\npolite client ping: quiet p50 {statistics.median(quiet):.2f} ms "
            f"max {max(quiet):.2f} ms; during the flood p50 {statistics.median(during):.2f} ms "
            f"max {max(during):.2f} ms"
        )
    finally:
        await clients.close_all()
        gateway.stop()


async def test_connections_per_address_are_capped(server_factory, clients) -> None:
    server = server_factory(max_connections_per_ip=2)
    first = await clients.connect(server.url)
    await clients.connect(server.url)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await clients.connect(server.url)
    await first.close()
    await asyncio.sleep(0.1)
    await clients.connect(server.url)


async def test_connect_rate_per_address(server_factory, clients) -> None:
    server = server_factory(connect_rate_per_ip=0.5, connect_burst_per_ip=2)
    await clients.connect(server.url)
    await clients.connect(server.url)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await clients.connect(server.url)


async def test_forwarded_for_counts_from_trusted_proxies_only(server_factory, clients) -> None:
    server = server_factory(max_connections_per_ip=1, trusted_proxies=["127.0.0.0/8"])
    a, b, c = clients.new(server.url), clients.new(server.url), clients.new(server.url)
    await a.connect(headers={"X-Forwarded-For": "203.0.113.1"})
    await b.connect(headers={"X-Forwarded-For": "203.0.113.2"})
    with pytest.raises(socketio.exceptions.ConnectionError):
        await c.connect(headers={"X-Forwarded-For": "203.0.113.1"})
