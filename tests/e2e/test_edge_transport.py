"""Engine.IO abuse against a live gateway: polling bodies over the limit, chunked or invalid,
invalid WebSocket packets, fractional ping intervals with the official client, and a client that
stops reading while another broadcasts megabytes."""

from __future__ import annotations

import asyncio
import gc
import json
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.ops import sample, scrape
from tests.support.process import GatewayProcess, rss_kib
from tests.support.raw import (
    Closed,
    RawPolling,
    RawWebSocket,
    SioSocket,
    eventually,
    http_request,
)

INTEROP = Path(__file__).parents[1] / "interop"
SMALL = dict(max_frame_bytes=4096, max_message_bytes=4096, max_notification_bytes=1024)
UNKNOWN_SESSION = {"code": 1, "message": "Session ID unknown"}


@pytest.fixture
async def polling(server_factory) -> AsyncIterator[RawPolling]:
    """A polling client, CONNECTed to a gateway with a 4 KiB packet ceiling."""
    server = server_factory(**SMALL, close_timeout=0.3)
    async with RawPolling(server.url) as client:
        await client.handshake()
        await client.connect()
        yield client


async def assert_ended(client: RawPolling) -> None:
    """The session of *client* ended with the HTTP error it was just given (that error is its
    goodbye): no poll is left to fetch a notice, its sid is unknown from then on."""

    async def gone() -> bool:
        response = await client.get(timeout=1)
        assert response.status != 200, response.packets  # no goodbye is left waiting
        return response.status == 400 and response.json() == UNKNOWN_SESSION

    await eventually(gone, timeout=2)


async def test_a_post_over_the_limit_is_413_at_once_and_ends_the_session(polling) -> None:
    assert (await polling.post("4" + "x" * 4095)).status == 200  # exactly the limit: read
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await polling.post("4" + "x" * 5000)
    assert loop.time() - started < 2.0  # python-engineio answered nothing at all
    assert (response.status, response.json()) == (
        413,
        {"code": "INVALID_FORMAT", "message": "body over the limit (4096 bytes)"},
    )
    await assert_ended(polling)


async def test_a_chunked_post_is_411_and_ends_the_session(polling) -> None:
    # The whole chunked request in one write (an HTTP client writing chunk after chunk may
    # find the connection closed under it once the 411 is sent).
    body = b'b\r\n42["client-\r\n6\r\nping"]\r\n0\r\n\r\n'
    response = await http_request(
        polling.base.removesuffix("/socket.io/"),
        f"/socket.io/?EIO=4&transport=polling&sid={polling.sid}",
        method="POST",
        body=body,
        headers={"Transfer-Encoding": "chunked"},
    )
    assert (response.status, response.json()) == (
        411,
        {"code": "INVALID_FORMAT", "message": "a polling POST must carry a Content-Length"},
    )
    await assert_ended(polling)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("abc", "invalid Engine.IO packet 'abc'"),
        ("", "invalid Engine.IO packet ''"),
        ('42["client-ping"]\x1e', "invalid Engine.IO packet ''"),  # a trailing separator
        ("2", "invalid Engine.IO packet '2'"),  # a client PING: the wrong direction in v4
        ("b!!!", "invalid base64 in a binary packet"),
        (b"4\xff\xfe", "body is not UTF-8"),
        ("\x1e".join(["6"] * 513), "more than 512 packets in one payload"),
    ],
)
async def test_an_invalid_payload_is_400_and_ends_the_session(polling, body, problem) -> None:
    response = await polling.post(body)
    assert (response.status, response.json()) == (
        400,
        {"code": "INVALID_FORMAT", "message": problem},
    )
    await assert_ended(polling)


async def test_invalid_packets_end_the_session_with_one_log_line_and_no_traceback(
    clients,
) -> None:
    gateway = GatewayProcess(env={"WSHUB_LOG_LEVEL": "INFO"}, capture_stderr=True).start()
    try:
        async with RawPolling(gateway.url) as polling:
            await polling.handshake()
            await polling.connect()
            response = await polling.post("abc")
            assert response.status == 400
        sock = await SioSocket.open(gateway.url)
        await sock.connect()
        await sock.ws.send("abc")
        closed = await sock.ws.ended()
        assert closed.how == "close"
        bystander = await clients.connect(gateway.url)
        assert "timestamp" in await bystander.call("client-ping")  # the process serves on
    finally:
        await clients.close_all()
        gateway.stop()
    log = gateway.stderr_text()
    assert "Traceback" not in log and " ERROR " not in log, log
    assert [line.split(" [", 1)[1] for line in log.splitlines() if "abc" in line] == [
        "-] protocol error from 127.0.0.1: invalid Engine.IO packet 'abc'"
    ]
    problems = [line.split("] ", 1)[1] for line in log.splitlines() if "protocol error" in line]
    assert problems == [
        "protocol error from 127.0.0.1: invalid Engine.IO packet 'abc'",
        "protocol error from 127.0.0.1: undecodable Engine.IO packet",
    ]


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        ("abc", "undecodable Engine.IO packet"),
        ("", "undecodable Engine.IO packet"),
        ("2", "unexpected packet type PING"),
        ("0", "unexpected packet type OPEN"),
    ],
)
async def test_an_invalid_websocket_packet_ends_the_session(server, caplog, frame, problem) -> None:
    caplog.set_level("INFO", logger="wshub.sessions")
    sock = await SioSocket.open(server.url)
    await sock.connect()
    await sock.ws.send(frame)
    with pytest.raises(Closed) as closed:
        while True:
            await sock.next()
    assert (closed.value.how, closed.value.code) == ("close", 1000)
    assert [r.getMessage() for r in caplog.records if "protocol error" in r.getMessage()] == [
        f"protocol error from 127.0.0.1: {problem}"
    ]
    await sock.close()


async def test_an_invalid_websocket_packet_is_told_like_a_polling_one(server) -> None:
    sock = await SioSocket.open(server.url)
    await sock.connect()
    await sock.ws.send("abc")
    with pytest.raises(Closed):
        while True:
            await sock.next()
    assert [args[0]["reason"] for args in sock.events("system:disconnect")] == ["protocol_error"]
    assert sock.packets[-1] == "1" and sock.engineio == ["1"]


async def test_an_accepted_post_is_answered_ok(polling) -> None:
    response = await polling.post('42["client-ping"]')
    assert (response.status, response.body) == (200, b"ok")


async def test_an_upgraded_websocket_carries_no_leftover_noop(server) -> None:
    async with RawPolling(server.url) as polling:
        await polling.handshake()
        await polling.connect()  # its GETs are answered: no poll waits now
        ws = await RawWebSocket.connect(
            server.url, query=f"EIO=4&transport=websocket&sid={polling.sid}"
        )
        try:
            await ws.send("2probe")
            assert await ws.recv() == "3probe"
            assert (await polling.get()).packets == ["6"]  # a poll after the probe: NOOP
            await ws.send("5")
            await ws.send('421["client-ping"]')
            assert (await ws.recv()).startswith('42["client-pong",{"timestamp":')
            assert (await ws.recv()).startswith('431[{"timestamp":')
        finally:
            await ws.close()


# -- pings ---------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
async def test_fractional_ping_intervals_are_advertised_exactly_and_the_js_client_stays(
    server_factory,
) -> None:
    if not (INTEROP / "node_modules" / "socket.io-client").is_dir():
        pytest.fail("run `npm ci` in tests/interop (the README's test command does it)")
    short = server_factory(engineio_ping_interval=0.3, engineio_ping_timeout=0.2)
    long = server_factory(engineio_ping_interval=2.5, engineio_ping_timeout=0.2)
    for server, interval in ((short, 300), (long, 2500)):
        sock = await SioSocket.open(server.url)
        assert (sock.open_packet["pingInterval"], sock.open_packet["pingTimeout"]) == (
            interval,
            200,
        )
        await sock.close()
        async with RawPolling(server.url) as polling:
            assert (await polling.handshake())["pingInterval"] == interval

    targets = [short.url, "websocket", short.url, "polling", long.url, "websocket"]
    node = await asyncio.create_subprocess_exec(
        "node",
        str(INTEROP / "edge_pings.mjs"),
        "5600",
        *targets,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(node.communicate(), 15)
    assert node.returncode == 0, stderr.decode()
    results: list[dict[str, Any]] = json.loads(stdout)
    for result, minimum in zip(results, (8, 8, 1), strict=True):
        assert result["error"] is None and result["disconnect"] is None, result
        assert result["connected"] and result["stillConnected"], result
        assert result["pings"] >= minimum, result
    assert [(r["pingInterval"], r["pingTimeout"], r["transport"]) for r in results] == [
        (300, 200, "websocket"),
        (300, 200, "polling"),
        (2500, 200, "websocket"),
    ]


async def test_a_client_that_never_pongs_is_closed_after_interval_plus_timeout(
    server_factory,
) -> None:
    server = server_factory(engineio_ping_interval=0.3, engineio_ping_timeout=0.2)
    sock = await SioSocket.open(server.url)
    await sock.connect()
    sock.pong = False
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(Closed):
        while True:
            await sock.next(timeout=3)
    took = loop.time() - started
    assert sock.pings == 1
    assert 0.45 <= took < 3.0, took
    assert sock.packets[2:] == []  # no notice: the client is taken for gone
    await sock.close()


# -- a client that stops reading -----------------------------------------------------------


async def test_a_stalled_reader_is_cut_and_memory_stays_bounded() -> None:
    gateway = GatewayProcess(
        env={"WSHUB_RATE_LIMIT": "100000", "WSHUB_RATE_LIMIT_BURST": "100000"}
    ).start()
    sender = stalled = None
    try:
        assert gateway.proc is not None
        sender = await SioSocket.open(gateway.url)
        await sender.connect()
        await sender.emit("system:setData", {"username": "sender"})
        await sender.expect("system:dataSet")
        stalled = await SioSocket.open(gateway.url, rcvbuf=4096, source="127.0.0.2")
        await stalled.connect()
        await stalled.emit("system:setData", {"username": "stalled"})
        await stalled.expect("system:dataSet")
        stalled.ws.stall()

        async def slow_consumers() -> float:
            found = re.search(
                r'^wshub_connections_closed_total\{reason="slow_consumer"\} (\S+)$',
                await scrape(gateway.url),
                re.M,
            )
            return float(found[1]) if found else 0.0

        before = rss_kib(gateway.proc.pid)
        loop = asyncio.get_running_loop()
        started = loop.time()
        blob = "x" * 60_000  # under max_message_bytes; 1 MiB of queue is ~17 of them
        dropped_after = None
        dropped_at = 0
        for batch in range(1, 21):  # up to 20 x 15 broadcasts of 60 kB: 18 MB
            if dropped_at and batch > max(dropped_at + 4, 8):
                break  # 4 MB more after the drop, 7 MB at least
            for n in range(15):
                await sender.emit("system:general", {"type": "bulk", "blob": blob}, ack=n)
            for n in range(15):
                assert (await sender.expect_ack(n, timeout=5))[0]["success"] is True
            sender._unread.clear()  # its own copies of the broadcasts, read and dropped
            sender.packets.clear()
            if dropped_after is None and batch % 2 == 0 and await slow_consumers() == 1.0:
                dropped_after, dropped_at = loop.time() - started, batch
        after = rss_kib(gateway.proc.pid)
        assert dropped_after is not None, "the stalled reader was never dropped"
        assert dropped_after < 5.0, dropped_after

        # Its TCP connection is gone: reading again, it finds the end after what the kernel
        # had buffered, without a close frame (the connection was aborted).
        stalled.ws.resume()
        resumed = loop.time()
        closed = await stalled.ws.ended(timeout=3)
        assert closed.how in ("reset", "eof"), closed
        assert loop.time() - resumed < 2.0
        assert "stalled" not in [p for p in stalled.packets if "system:disconnect" in str(p)]
        listing = await sender.call("system:clients", ack=99)
        assert [c["username"] for c in listing["clients"]] == ["sender"]
        metrics = await scrape(gateway.url)
        assert sample(metrics, "wshub_connections_active") == 1.0
        growth_mb = (after - before) / 1024
        print(
            f"\nstalled reader: dropped within {dropped_after:.2f} s, ended by {closed.how} "
            f"after {stalled.ws.received} bytes, RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB"
        )
        assert growth_mb < 12, f"server memory grew by {growth_mb:.1f} MiB"
    finally:
        for sock in (sender, stalled):
            if sock is not None:
                await sock.close()
        gateway.stop()


async def test_a_dropped_slow_consumer_gets_a_reset_not_its_backlog(server_factory) -> None:
    server = server_factory(rate_limit=100_000, rate_limit_burst=100_000)
    sender = await SioSocket.open(server.url)
    stalled = await SioSocket.open(server.url, rcvbuf=4096, source="127.0.0.2")
    try:
        for sock, name in ((sender, "sender"), (stalled, "stalled")):
            await sock.connect()
            await sock.emit("system:setData", {"username": name})
            await sock.expect("system:dataSet")
        stalled.ws.stall()
        blob = "x" * 60_000
        for _ in range(12):  # 7 MB: more than the kernel buffers and the 1 MiB queue hold
            for n in range(10):
                await sender.emit("system:general", {"type": "bulk", "blob": blob}, ack=n)
            for n in range(10):
                await sender.expect_ack(n, timeout=5)
            sender._unread.clear()
        listing = await sender.call("system:clients", ack=99)
        assert [c["username"] for c in listing["clients"]] == ["sender"]
        received_before = stalled.ws.received
        stalled.ws.resume()
        closed = await stalled.ws.ended(timeout=3)
        assert closed.how == "reset", (closed.how, stalled.ws.received - received_before)
        assert stalled.ws.received - received_before < 512 * 1024
    finally:
        await sender.close()
        await stalled.close()


# -- memory (issue 11) ---------------------------------------------------------------------


def _ours(obj: object) -> str | None:
    """The name of *obj*'s kind when it belongs to the server side (the test's own asyncio
    client objects are not counted), else None."""
    if isinstance(obj, type):
        return f"class {obj.__qualname__}" if obj.__module__.startswith("engineio") else None
    module = type(obj).__module__
    if module.startswith(("hypercorn", "engineio", "gateway", "wsproto", "h11")):
        return f"{module}.{type(obj).__qualname__}"
    return None


async def test_a_closed_connection_leaves_no_cyclic_garbage(server) -> None:
    gc.collect()
    gc.disable()
    try:
        for _ in range(5):
            sock = await SioSocket.open(server.url)
            await sock.connect()
            await sock.close()
        async with RawPolling(server.url) as polling:
            await polling.handshake()
            await polling.connect()
            assert (await polling.post("1")).status == 200

        async def gone() -> bool:
            assert server.gateway is not None
            table = server.gateway.sessions.table
            return not table.by_eio and not server.gateway.peers._transports

        await eventually(gone)
        await asyncio.sleep(0.2)  # the server's connection tasks finish
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        leftovers = Counter(name for obj in gc.garbage if (name := _ours(obj)) is not None)
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
        gc.enable()
    assert leftovers == {}, leftovers.most_common(8)
