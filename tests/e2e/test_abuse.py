"""Hostile clients: arbitrary payloads, a stalled reader, a compression bomb, foreign origins."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.protocol.errors import ErrorCode
from gateway.protocol.events import Inbound
from tests.support import strategies
from tests.support.client import Client
from tests.support.process import GatewayProcess, rss_kib

SEVEN = {code.value for code in ErrorCode}
REPLY_KEYS = {"success", "clients", "timestamp", "heartbeat"}

json_values = strategies.json_values(text=40, width=5, leaves=20)
# Payloads shaped like the real ones, so the fuzzer gets past the first type check too.
shaped = st.fixed_dictionaries(
    {},
    optional={
        "username": json_values | st.text(max_size=80),
        "target": json_values | st.sampled_from(["fuzzer", "other"]),
        "type": json_values | st.text(min_size=1, max_size=10),
        "content": json_values,
        "targets": json_values | st.lists(st.text(max_size=10), max_size=4),
        "following": json_values | st.lists(st.text(max_size=10), max_size=4),
        "profile": json_values,
        "id": json_values,
    },
)


@pytest.fixture(scope="module")
def fuzz_target() -> Iterator[tuple[asyncio.AbstractEventLoop, Client, Client]]:
    from gateway.settings import Settings
    from tests.support.server import LiveServer

    server = LiveServer(
        Settings.load(rate_limit=100_000, rate_limit_burst=100_000, max_connections_per_ip=1000)
    ).start()
    loop = asyncio.new_event_loop()
    fuzzer, other = Client(server.url), Client(server.url)
    loop.run_until_complete(fuzzer.connect())
    loop.run_until_complete(other.connect())
    loop.run_until_complete(other.login("other"))
    yield loop, fuzzer, other
    loop.run_until_complete(fuzzer.close())
    loop.run_until_complete(other.close())
    loop.close()
    server.stop()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(event=st.sampled_from([e.value for e in Inbound]), payload=json_values | shaped)
def test_arbitrary_payloads_get_a_reply_or_a_known_error(fuzz_target, event, payload) -> None:
    loop, fuzzer, other = fuzz_target
    ack: Any = loop.run_until_complete(fuzzer.call(event, payload))
    assert isinstance(ack, dict), ack
    if "code" in ack:
        assert ack["code"] in SEVEN, ack
        assert isinstance(ack["message"], str) and ack["message"]
    else:
        assert REPLY_KEYS & set(ack), ack
    # ...and the server keeps serving, the fuzzer and everyone else.
    assert "timestamp" in loop.run_until_complete(other.call("client-ping"))


def _raw_stalled_reader(port: int, username: str) -> socket.socket:
    """A WebSocket Socket.IO client that logs in and then never reads again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    time.sleep(0.2)
    sock.recv(65536)  # 101 Switching Protocols and the Engine.IO open packet

    def frame(text: str) -> bytes:
        data = text.encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        assert len(data) < 126
        return bytes([0x81, 0x80 | len(data)]) + mask + masked

    sock.sendall(frame("40"))
    sock.sendall(frame(f'42["system:setData",{{"username":"{username}"}}]'))
    return sock


async def test_a_stalled_reader_is_dropped_and_memory_stays_bounded(clients) -> None:
    gateway = GatewayProcess(
        env={
            "WSHUB_MAX_OUTBOUND_QUEUE": "200",
            "WSHUB_RATE_LIMIT": "100000",
            "WSHUB_RATE_LIMIT_BURST": "100000",
        }
    ).start()
    try:
        sender = await clients.connect(gateway.url, "sender")
        stalled = await asyncio.to_thread(_raw_stalled_reader, gateway.port, "stalled")
        before = rss_kib(gateway.proc.pid)  # type: ignore[union-attr]
        blob = "x" * 8000
        sent = 0
        for _ in range(3000):  # 24 MB of broadcasts, closed loop so the sender keeps up
            ack = await sender.call("system:general", {"type": "bulk", "blob": blob})
            assert ack["success"] is True
            sent += 1
            sender.events["system:general"].get_nowait()
        listing = await sender.call("system:clients")
        after = rss_kib(gateway.proc.pid)  # type: ignore[union-attr]
        names = [c["username"] for c in listing["clients"]]
        assert "stalled" not in names, "the stalled reader should have been dropped"
        growth_mb = (after - before) / 1024
        print(
            f"\nslow consumer: server RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB "
            f"({growth_mb:+.1f} MiB) while broadcasting {sent * len(blob) / 1e6:.0f} MB"
        )
        assert growth_mb < 12, f"server memory grew by {growth_mb:.1f} MiB"
        stalled.close()
    finally:
        await clients.close_all()
        gateway.stop()


async def test_deflate_is_declined_by_default(server) -> None:
    url = server.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    async with aiohttp.ClientSession() as session, session.ws_connect(url, compress=15) as ws:
        assert ws.compress == 0
        assert (await ws.receive_str()).startswith("0{")


async def test_compression_bomb_closes_only_the_bomber(server_factory, clients) -> None:
    server = server_factory(websocket_deflate=True, max_frame_bytes=65_536)
    url = server.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    bystander = await clients.connect(server.url)
    async with aiohttp.ClientSession() as session, session.ws_connect(url, compress=15) as ws:
        assert ws.compress == 15  # negotiated: deflate is on here
        await ws.receive_str()
        await ws.send_str("40")
        await ws.receive_str()
        await ws.send_str('42["client-ping"]' + " " * 5_000_000)  # ~5 KB on the wire
        message = await asyncio.wait_for(ws.receive(), 5)
        while message.type == aiohttp.WSMsgType.TEXT:
            message = await asyncio.wait_for(ws.receive(), 5)
        # Hypercorn ends a connection whose frame fails to parse without a close frame.
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code in (1006, 1009)
    assert "timestamp" in await bystander.call("client-ping")


async def test_foreign_origins_are_refused_when_origins_are_configured(server_factory) -> None:
    server = server_factory(cors_origins=["https://app.example"])
    url = server.url + "/socket.io/?EIO=4&transport=polling"
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={"Origin": "https://evil.example"}) as response:
            assert response.status == 400
        async with session.get(url, headers={"Origin": "https://app.example"}) as response:
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
