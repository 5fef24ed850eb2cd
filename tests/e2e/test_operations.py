"""Operations: readiness, metrics, logs and graceful drain, against real gateway processes."""

from __future__ import annotations

import asyncio
import json
import signal

import aiohttp
import pytest
import socketio

from tests.support.ops import get, sample, scrape
from tests.support.process import GatewayProcess, free_port


async def test_metrics_move_with_real_traffic(server, connect) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    await alice.call("system:direct", {"target": "bob", "type": "chat"})
    await alice.call("system:direct", {"target": "ghost", "type": "chat"})
    await alice.call("system:bogus", {})
    await bob.expect("system:direct")
    await asyncio.sleep(0.15)  # at least one sample of the loop's lag (every 0.1 s)
    async with (
        aiohttp.ClientSession() as session,
        session.get(server.url + "/metrics") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    assert sample(text, "wshub_connections_active") == 2
    assert sample(text, "wshub_connections_opened_total") == 2
    assert sample(text, 'wshub_events_received_total{event="system:direct",outcome="ok"}') == 1
    direct_failed = 'wshub_events_received_total{event="system:direct",outcome="TARGET_NOT_FOUND"}'
    assert sample(text, direct_failed) == 1
    assert (
        sample(text, 'wshub_events_received_total{event="unknown",outcome="INVALID_FORMAT"}') == 1
    )
    assert sample(text, 'wshub_errors_total{code="TARGET_NOT_FOUND"}') == 1
    assert sample(text, 'wshub_messages_delivered_total{event="system:direct"}') == 1
    assert sample(text, 'wshub_event_duration_seconds_count{event="system:direct"}') == 2
    assert sample(text, "wshub_event_loop_lag_seconds_count") >= 1  # sampled from the start


async def test_closes_are_counted_by_reason(server_factory, clients) -> None:
    server = server_factory(
        heartbeat_interval=0.2,
        heartbeat_timeout=0.1,
        heartbeat_warn_after=1,
        heartbeat_max_missed=2,
    )
    silent = await clients.connect(server.url)
    await asyncio.wait_for(silent.disconnected.wait(), 5)
    text = await scrape(server.url)
    assert sample(text, 'wshub_connections_closed_total{reason="heartbeat_timeout"}') == 1
    assert sample(text, "wshub_heartbeat_warnings_total") == 1
    assert sample(text, "wshub_heartbeat_timeouts_total") == 1
    assert sample(text, "wshub_connections_active") == 0


async def test_drain_spreads_disconnects_and_exits_zero(clients) -> None:
    ops_port = free_port()
    gateway = GatewayProcess(
        env={"WSHUB_DRAIN_WINDOW": "1.5", "WSHUB_OPS_BIND": f"127.0.0.1:{ops_port}"}
    )
    gateway.start(health_port=ops_port)
    ops = f"http://127.0.0.1:{ops_port}"
    loop = asyncio.get_running_loop()
    try:
        connected = [await clients.connect(gateway.url) for _ in range(10)]
        assert (await asyncio.to_thread(get, ops + "/ready"))[0] == 200
        gateway.signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        status, body = await asyncio.to_thread(get, ops + "/ready")
        assert status == 503 and "draining" in json.loads(body)["reasons"]
        with pytest.raises(socketio.exceptions.ConnectionError):  # no new clients
            await clients.connect(gateway.url)
        times = []
        for client in connected:
            notice = await client.expect("system:disconnect", timeout=5)
            assert notice["reason"] == "server_shutdown"
            assert "another instance" in notice["reconnect"]
            await asyncio.wait_for(client.disconnected.wait(), 5)
            times.append(loop.time())
        assert max(times) - min(times) > 0.7, "disconnects were not spread over the window"
        assert await asyncio.to_thread(gateway.wait, 10) == 0
    finally:
        await clients.close_all()
        gateway.stop()


async def test_ops_routes_only_on_the_ops_bind() -> None:
    ops_port = free_port()
    gateway = GatewayProcess(env={"WSHUB_OPS_BIND": f"127.0.0.1:{ops_port}"})
    gateway.start(health_port=ops_port)
    try:
        for path in ("/health", "/ready", "/metrics", "/console"):
            assert (await asyncio.to_thread(get, gateway.url + path))[0] == 404
            assert (await asyncio.to_thread(get, f"http://127.0.0.1:{ops_port}{path}"))[0] == 200
        assert (await asyncio.to_thread(get, gateway.url + "/"))[0] == 200
    finally:
        gateway.stop()


async def test_json_logs_carry_the_connection_id_and_no_bodies(clients) -> None:
    gateway = GatewayProcess(
        env={"WSHUB_LOG_FORMAT": "json", "WSHUB_LOG_LEVEL": "INFO"}, capture_stderr=True
    ).start()
    try:
        alice = await clients.connect(gateway.url, "alice")
        await clients.connect(gateway.url, "bob")
        secret = "the-launch-code-is-0000"
        await alice.call("system:direct", {"target": "bob", "type": "chat", "text": secret})
        await alice.call("system:direct", {"target": "nobody", "type": "chat", "text": secret})
        sid = alice.sid
    finally:
        await clients.close_all()  # before the stop: the log is to show alice disconnecting
        gateway.stop()
    lines = [
        json.loads(line) for line in gateway.stderr_text().splitlines() if line.startswith("{")
    ]
    mine = [entry for entry in lines if entry["sid"] == sid]
    messages = [entry["message"] for entry in mine]
    assert any(m.startswith("connected from 127.0.0.1") for m in messages)
    assert "username claimed: 'alice'" in messages  # quoted: client strings are escaped
    assert any("rejected system:direct: TARGET_NOT_FOUND" in m for m in messages)
    assert any(m.startswith("disconnected") for m in messages)
    assert all(set(entry) >= {"time", "level", "logger", "sid", "message"} for entry in lines)
    assert not any(secret in json.dumps(entry) for entry in lines)
