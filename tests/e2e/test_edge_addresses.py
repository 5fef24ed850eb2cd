"""Admission by client address, with clients on different loopback addresses (127.0.0.2, .3 ...)
and through a trusted proxy: caps, connect rates, pending sessions, X-Forwarded-For."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.lifecycle import State
from tests.support.client import Client
from tests.support.raw import (
    RawPolling,
    Refused,
    SioSocket,
    eventually,
    http_request,
    on_server,
)

pytestmark = pytest.mark.usefixtures("caplog")

HANDSHAKE = "/socket.io/?EIO=4&transport=polling"
CAP_REFUSAL = {"code": "RATE_LIMIT", "message": "too many connections from your address (max 3)"}


@pytest.fixture
async def sockets() -> AsyncIterator[list[SioSocket]]:
    """Raw sockets a test opens; closed after it."""
    opened: list[SioSocket] = []
    yield opened
    for sock in opened:
        await sock.close()


async def refusal(url: str, source: str, *, websocket: bool, headers=None) -> Refused:
    with pytest.raises(Refused) as refused:
        if websocket:
            await SioSocket.open(url, source=source, headers=headers)
        else:
            async with RawPolling(url, source=source, headers=headers) as polling:
                await polling.handshake()
    return refused.value


def lines(caplog: pytest.LogCaptureFixture, pattern: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if re.search(pattern, r.getMessage())]


async def test_the_per_address_cap_counts_each_address_apart(
    server_factory, sockets, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="wshub")
    server = server_factory(max_connections_per_ip=3)
    for _ in range(3):
        sockets.append(await SioSocket.open(server.url, source="127.0.0.2"))
        await sockets[-1].connect()

    for websocket in (True, False):  # a WebSocket handshake gets it as a denial response
        refused = (await refusal(server.url, "127.0.0.2", websocket=websocket)).response
        assert refused.status == 429
        assert refused.headers["content-type"] == "application/json"
        assert refused.json() == CAP_REFUSAL

    other = await SioSocket.open(server.url, source="127.0.0.3")
    sockets.append(other)
    await other.connect()
    assert "timestamp" in await other.call("client-ping")
    counts = await on_server(
        server,
        lambda: (server.gateway.admission.held_by("127.0.0.2"), server.gateway.admission.open),
    )
    assert counts == (3, 4)
    assert (
        lines(caplog, "^refused a session")
        == ["refused a session from 127.0.0.2: too many connections from your address (max 3)"] * 2
    )

    # A slot comes back when its connection goes; the address may then connect again.
    await sockets.pop(0).close()
    await eventually(
        lambda: on_server(server, lambda: server.gateway.admission.held_by("127.0.0.2") == 2)
    )
    again = await SioSocket.open(server.url, source="127.0.0.2")
    sockets.append(again)
    await again.connect()


async def test_the_connect_rate_is_per_address(server_factory) -> None:
    server = server_factory(connect_rate_per_ip=0.5, connect_burst_per_ip=2)
    for _ in range(2):
        async with RawPolling(server.url, source="127.0.0.2") as polling:
            await polling.handshake()
    refused = (await refusal(server.url, "127.0.0.2", websocket=False)).response
    assert refused.status == 429
    body = refused.json()
    assert set(body) == {"code", "message", "retryAfterMs"} and body["code"] == "RATE_LIMIT"
    assert re.fullmatch(r"connecting too fast; retry in [12]\.\d s", body["message"]), body
    assert 1000 < body["retryAfterMs"] <= 2000  # one token at 0.5/s, less what has elapsed
    assert refused.headers["retry-after"] == "2"
    ws_refused = (await refusal(server.url, "127.0.0.2", websocket=True)).response
    assert ws_refused.status == 429 and ws_refused.json()["code"] == "RATE_LIMIT"
    async with RawPolling(server.url, source="127.0.0.3") as polling:
        assert (await polling.handshake())["sid"]


async def test_forwarded_for_is_believed_only_from_a_trusted_proxy(
    server_factory, sockets, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="wshub")
    server = server_factory(trusted_proxies=["127.0.0.2/32"], max_connections_per_ip=1)

    async def connected(source: str, forwarded: str | None) -> SioSocket:
        headers = {"X-Forwarded-For": forwarded} if forwarded else None
        sock = await SioSocket.open(server.url, source=source, headers=headers)
        sockets.append(sock)
        await sock.connect()
        return sock

    # Through the proxy (.2): the client is the forwarded address, not the proxy.
    await connected("127.0.0.2", "203.0.113.7")
    refused = await refusal(
        server.url, "127.0.0.2", websocket=True, headers={"X-Forwarded-For": "203.0.113.7"}
    )
    assert refused.response.json()["message"] == "too many connections from your address (max 1)"
    await connected("127.0.0.2", "203.0.113.8")
    await connected("127.0.0.2", "198.51.100.1, 127.0.0.2")  # the proxy's own hop is skipped
    await connected("127.0.0.2", None)  # the proxy itself, once

    # Not a proxy (.3): a forged header changes nothing, the client is .3.
    await connected("127.0.0.3", "203.0.113.9")
    refused = await refusal(
        server.url, "127.0.0.3", websocket=False, headers={"X-Forwarded-For": "203.0.113.10"}
    )
    assert refused.response.status == 429

    held = await on_server(server, lambda: dict(server.gateway.admission._open))
    assert held == {
        "203.0.113.7": 1,
        "203.0.113.8": 1,
        "198.51.100.1": 1,
        "127.0.0.2": 1,
        "127.0.0.3": 1,
    }
    assert sorted(lines(caplog, "^connected from")) == sorted(
        f"connected from {address} via websocket"
        for address in ("203.0.113.7", "203.0.113.8", "198.51.100.1", "127.0.0.2", "127.0.0.3")
    )
    assert lines(caplog, "^refused a session") == [
        "refused a session from 203.0.113.7: too many connections from your address (max 1)",
        "refused a session from 127.0.0.3: too many connections from your address (max 1)",
    ]


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_the_stock_client_is_logged_with_its_real_address(server, caplog, transport) -> None:
    caplog.set_level(logging.INFO, logger="wshub")
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.5", 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        client = Client(server.url, transports=[transport], http_session=session)
        await client.connect()
        await client.login("from-five")
        await client.close()
    assert lines(caplog, "^connected from") == [f"connected from 127.0.0.5 via {transport}"]


async def test_a_session_without_connect_holds_its_slot_until_the_connect_timeout(
    server_factory, sockets
) -> None:
    server = server_factory(max_connections_per_ip=2, connect_timeout=0.6)
    loop = asyncio.get_running_loop()
    opened = loop.time()
    pending = [await SioSocket.open(server.url, source="127.0.0.2") for _ in range(2)]
    sockets.extend(pending)
    refused = await refusal(server.url, "127.0.0.2", websocket=True)
    assert refused.response.json()["message"] == "too many connections from your address (max 2)"

    for sock in pending:
        with pytest.raises(Exception) as ended:
            while True:
                await sock.next(timeout=3)
        assert type(ended.value).__name__ == "Closed"
        assert sock.packets == [] and sock.engineio == ["1"]  # an Engine.IO CLOSE, nothing else
    waited = loop.time() - opened
    assert 0.55 <= waited < 3.0, waited
    await eventually(
        lambda: on_server(server, lambda: server.gateway.admission.held_by("127.0.0.2") == 0)
    )
    late = await SioSocket.open(server.url, source="127.0.0.2")
    sockets.append(late)
    await late.connect()


async def test_a_flood_of_pending_sessions_is_bounded_by_the_caps(server_factory) -> None:
    # 1 500 handshakes that never CONNECT, from three addresses, 10 at a time from each. (That
    # a pending session goes at the connect timeout is the test above; here they are pending
    # for as long as the flood lasts, however long a loaded machine takes.)
    server = server_factory(
        max_connections=100,
        max_connections_per_ip=40,
        connect_rate_per_ip=10_000,
        connect_burst_per_ip=10_000,
        connect_timeout=60,
    )
    statuses: Counter[tuple[str, int]] = Counter()
    bodies: Counter[tuple[int, str]] = Counter()
    admitted: list[tuple[str, str]] = []
    peak = 0

    async def flood(source: str, count: int) -> None:
        for _ in range(count):
            answer = await http_request(server.url, HANDSHAKE, source=source)
            statuses[source, answer.status] += 1
            if answer.status == 200:
                assert answer.text.startswith('0{"sid":')
                admitted.append((source, json.loads(answer.text[1:])["sid"]))
            else:
                bodies[answer.status, answer.json()["message"]] += 1

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, await on_server(server, lambda: server.gateway.admission.open))
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    # First one address alone: its own cap.
    await asyncio.gather(*(flood("127.0.0.2", 50) for _ in range(10)))
    assert statuses == {("127.0.0.2", 200): 40, ("127.0.0.2", 429): 460}
    assert bodies == {(429, "too many connections from your address (max 40)"): 460}
    # Then two more at once: the total cap.
    await asyncio.gather(*(flood(f"127.0.0.{n}", 50) for n in (3, 4) for _ in range(10)))
    watcher.cancel()

    by_address = {s: statuses[s, 200] for s in ("127.0.0.2", "127.0.0.3", "127.0.0.4")}
    assert sum(statuses.values()) == 1500
    assert sum(by_address.values()) == 100 and max(by_address.values()) == 40, statuses
    assert set(bodies) <= {
        (429, "too many connections from your address (max 40)"),
        (503, "server full (100 connections)"),
    }
    assert bodies[503, "server full (100 connections)"] > 0
    assert peak <= 100
    table = await on_server(server, lambda: dict(server.gateway.sessions.table.by_state))
    assert table[State.PENDING] == 100

    # Each pending session that ends gives its slot back, and the gateway serves as before.
    for source, sid in admitted:
        closed = await http_request(
            server.url,
            f"{HANDSHAKE}&sid={sid}",
            method="POST",
            body=b"1",
            headers={"Content-Length": "1"},
            source=source,
        )
        assert closed.status == 200
    await eventually(lambda: on_server(server, lambda: server.gateway.admission.open == 0))
    assert await on_server(server, lambda: len(server.gateway.transport.eio.sockets)) == 0
    async with RawPolling(server.url, source="127.0.0.2") as polling:
        await polling.handshake()
        assert len(await polling.connect()) == 20
