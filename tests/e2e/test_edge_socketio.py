"""Socket.IO packets the stock clients never send, and the connection lifecycle over the wire,
from a raw client (``tests/support/raw.py``): reserved event names, CONNECT and DISCONNECT out
of turn, slow and failing stores, unknown namespaces, deep payloads, binary attachments, and a
fuzzer over event names and payloads."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tests.support.server as support_server
from gateway.app import Gateway
from gateway.protocol.errors import ErrorCode
from gateway.protocol.events import Inbound, Outbound
from gateway.settings import Settings
from gateway.store.base import StoreUnavailable
from gateway.store.memory import MemoryStore
from tests.support import strategies
from tests.support.client import Client
from tests.support.ops import scrape
from tests.support.raw import (
    Closed,
    RawPolling,
    RawWebSocket,
    Refused,
    SioSocket,
    eventually,
    on_server,
    server_reaches,
)
from tests.support.server import LiveServer

HIGH_RATES = dict(
    rate_limit=100_000,
    rate_limit_burst=100_000,
    rate_limit_clients=100_000,
    rate_limit_clients_burst=100_000,
    flood_disconnect_after=100_000,
)
SEVEN = {code.value for code in ErrorCode}
UNKNOWN_SESSION = {"code": 1, "message": "Session ID unknown"}


@pytest.fixture
async def sockets() -> AsyncIterator[list[SioSocket]]:
    opened: list[SioSocket] = []
    yield opened
    for sock in opened:
        await sock.close()


async def raw(url: str, sockets: list[SioSocket], **kwargs: Any) -> SioSocket:
    sock = await SioSocket.open(url, **kwargs)
    sockets.append(sock)
    return sock


def errors(sock: SioSocket) -> list[dict[str, Any]]:
    return [args[0] for args in sock.events("system:error")]


# -- reserved and foreign event names ------------------------------------------------------


async def test_reserved_names_are_unknown_events_of_the_sender_only(
    server_factory, clients, sockets, caplog
) -> None:
    caplog.set_level(logging.INFO)
    server = server_factory(**HIGH_RATES)
    victim = await clients.connect(server.url, "victim")
    sender = await raw(server.url, sockets)
    await sender.connect()
    await sender.emit("system:setData", {"username": "mallory"})
    await sender.expect("system:dataSet")

    for _ in range(300):
        await sender.emit("*", victim.sid)
    await sender.emit("connect", {"sid": victim.sid, "username": "victim"})
    await sender.emit("disconnect", "io server disconnect\nINFO forged line")
    await sender.emit("x\nINFO wshub.sessions forged")
    await sender.emit(42)
    await sender.emit(None)
    got = [await sender.expect("system:error") for _ in range(305)]
    assert await sender.drain(0.2) == []  # nothing else came back

    assert got[:300] == [{"code": "INVALID_FORMAT", "message": "Unknown event '*'"}] * 300
    assert got[300:] == [
        {"code": "INVALID_FORMAT", "message": "Unknown event 'connect'"},
        {"code": "INVALID_FORMAT", "message": "Unknown event 'disconnect'"},
        {"code": "INVALID_FORMAT", "message": "Unknown event 'x\\nINFO wshub.sessions forged'"},
        {"code": "INVALID_FORMAT", "message": "An event name must be a string"},
        {"code": "INVALID_FORMAT", "message": "An event name must be a string"},
    ]
    assert len(sender.packets) == 3 + 305  # CONNECT, welcome, dataSet, the errors
    # The victim saw none of it.
    await victim.expect_none("system:error", within=0.1)
    await victim.expect_none("system:disconnect", within=0.0)
    assert [name for name, _ in victim.log] == ["system:welcome", "system:dataSet"]
    listing = await victim.call("system:clients")
    assert sorted(c["username"] for c in listing["clients"]) == ["mallory", "victim"]
    assert "timestamp" in await sender.call("client-ping")

    messages = [r.getMessage() for r in caplog.records]
    assert not any("\n" in m for m in messages), [m for m in messages if "\n" in m]
    assert "rejected 'x\\nINFO wshub.sessions forged': INVALID_FORMAT" in "\n".join(messages)
    assert not any(m.startswith("INFO") or "disconnected" in m for m in messages)

    metrics = await scrape(server.url)
    labels = set(re.findall(r'^wshub_events_received_total\{event="([^"]*)"', metrics, re.M))
    assert labels == {"system:setData", "system:clients", "client-ping", "unknown"}
    assert 'wshub_events_received_total{event="unknown",outcome="INVALID_FORMAT"} 305.0' in metrics


# -- the lifecycle over the wire -----------------------------------------------------------


async def test_a_second_connect_ends_the_session_and_the_engineio_session_is_gone(
    server, sockets
) -> None:
    sock = await raw(server.url, sockets)
    await sock.connect()
    eio_sid = sock.open_packet["sid"]
    await sock.send("0")
    with pytest.raises(Closed) as closed:
        while True:
            await sock.next()
    assert closed.value.how == "close" and closed.value.code == 1000
    [notice] = [args[0] for args in sock.events("system:disconnect")]
    assert notice == {
        "reason": "protocol_error",
        "message": "Protocol error: CONNECT on a connected session",
        "reconnect": "fix the client; it sent what Socket.IO does not allow",
        "timestamp": notice["timestamp"],
    }
    assert sock.packets[-2:] == [sock.packets[-2], "1"]  # the notice, then DISCONNECT
    assert sock.engineio == ["1"]

    # No way back into that Engine.IO session: CONNECT again, poll, or upgrade.
    async with RawPolling(server.url) as polling:
        polling.sid = eio_sid
        for response in (await polling.send("0"), await polling.get()):
            assert (response.status, response.json()) == (400, UNKNOWN_SESSION)
    with pytest.raises(Refused) as refused:
        await RawWebSocket.connect(server.url, query=f"EIO=4&transport=websocket&sid={eio_sid}")
    assert (refused.value.response.status, refused.value.response.json()) == (
        400,
        UNKNOWN_SESSION,
    )


async def test_a_polling_session_is_gone_once_its_close_is_delivered(server) -> None:
    async with RawPolling(server.url) as polling:  # close_timeout: the default 5 s
        await polling.handshake()
        await polling.connect()
        assert (await polling.send("0")).status == 200  # CONNECT again: a protocol error
        closing = await polling.get()
        assert closing.status == 200 and closing.packets[-2:] == ["41", "1"]
        assert closing.packets[0].startswith('42["system:disconnect",{"reason":"protocol_error"')
        again = await polling.send("0")
        assert again.status == 400, again
        assert again.json() == UNKNOWN_SESSION


async def test_disconnect_then_connect_again_on_the_same_engineio_session(
    server, clients, sockets
) -> None:
    watcher = await clients.connect(server.url, "watcher")
    sock = await raw(server.url, sockets)
    first = await sock.connect()
    await sock.emit("system:setData", {"username": "alice"})
    await sock.expect("system:dataSet")
    await sock.send("1")
    assert await sock.drain(0.3) == []  # nothing answers a DISCONNECT
    second = await sock.connect()  # same Engine.IO session
    assert second != first
    await sock.emit("system:setData", {"username": "alice"})  # the name was released
    assert (await sock.expect("system:dataSet"))["success"] is True
    listing = await watcher.call("system:clients")
    assert sorted((c["id"], c["username"]) for c in listing["clients"]) == sorted(
        [(watcher.sid, "watcher"), (second, "alice")]
    )


@pytest.fixture
def store_server(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[..., tuple[LiveServer, ControlledStore]]]:
    """A LiveServer whose gateway has a :class:`ControlledStore`."""
    started: list[LiveServer] = []

    def start(**overrides: Any) -> tuple[LiveServer, ControlledStore]:
        store = ControlledStore()
        monkeypatch.setattr(support_server, "build_gateway", lambda s, c: Gateway(s, store=store))
        overrides.setdefault("drain_window", 0.2)
        server = LiveServer(Settings.load(**overrides)).start()
        started.append(server)
        store.loop = server._loop
        return server, store

    yield start
    for server in started:
        server.stop()


class ControlledStore(MemoryStore):
    """A memory store whose ``connect`` can be held or fail, and whose ``disconnect`` can fail."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.held: asyncio.Event | None = None
        self.connect_fails: Exception | None = None
        self.disconnect_fails: Exception | None = None
        self.connects = 0

    def hold(self) -> None:
        self.held = asyncio.Event()

    def release(self) -> None:
        assert self.loop is not None and self.held is not None
        self.loop.call_soon_threadsafe(self.held.set)

    async def connect(self, sid: str, connect_time: str, *, pid_hash: str = "") -> None:
        self.connects += 1
        if self.connect_fails is not None:
            raise self.connect_fails
        if self.held is not None:
            await self.held.wait()
        await super().connect(sid, connect_time, pid_hash=pid_hash)

    async def disconnect(self, sid: str):  # type: ignore[no-untyped-def]
        if self.disconnect_fails is not None:
            raise self.disconnect_fails
        return await super().disconnect(sid)


def leftovers(server: LiveServer, store: ControlledStore) -> Callable[[], dict[str, int]]:
    """What a gateway still holds for connections; every figure is 0 with none left."""

    def read() -> dict[str, int]:
        gateway = server.gateway
        assert gateway is not None
        table = gateway.sessions.table
        return {
            "admission": gateway.admission.open,
            "engineio sockets": len(gateway.transport.eio.sockets),
            "by eio": len(table.by_eio),
            "by sid": len(table.by_sid),
            "not closed": sum(n for state, n in table.by_state.items() if state.value != "closed"),
            "pings": len(gateway.transport.pings),
            "heartbeats": len(gateway.hub.heartbeat.book),
            "store": len(store._by_sid),
        }

    return read


NOTHING_LEFT = dict.fromkeys(
    ["admission", "engineio sockets", "by eio", "by sid", "not closed", "pings", "heartbeats"], 0
) | {"store": 0}


@pytest.mark.parametrize("how", ["close packet", "abandoned poll"])
async def test_a_client_that_leaves_while_its_connect_waits_on_the_store_leaves_no_ghost(
    store_server, how
) -> None:
    # An abandoned poll is a protocol error: the session is CLOSING, given close_timeout to
    # fetch its CLOSE before it is cut; a CLOSE packet from the client ends it at once.
    server, store = store_server(close_timeout=0.3)
    store.hold()
    async with RawPolling(server.url) as polling:
        await polling.handshake()
        connecting = asyncio.create_task(polling.send("0"))
        await eventually(lambda: store.connects == 1)
        if how == "close packet":
            assert (await polling.post("1")).status == 200
        else:
            poll = asyncio.create_task(polling.get())
            await asyncio.sleep(0.1)
            poll.cancel()
        await eventually(
            lambda: on_server(server, lambda: server.gateway.admission.open == 0),
            what="the slot returned while the store still holds the CONNECT",
        )
        store.release()
        assert (await connecting).status == 200
    # The store's late answer was undone at once: no entry, no session, nothing held.
    await server_reaches(server, leftovers(server, store), NOTHING_LEFT)
    assert store.connects == 1


async def test_an_unavailable_store_refuses_the_connect_and_frees_its_slot(
    store_server, sockets
) -> None:
    server, store = store_server()
    store.connect_fails = StoreUnavailable("redis is down")
    sock = await raw(server.url, sockets)
    await sock.send("0")
    assert await sock.next() == (
        '4{"message":"the service is briefly unavailable","data":{"code":"UNAVAILABLE"}}'
    )
    with pytest.raises(Closed):
        await sock.next()
    assert sock.engineio == ["1"]
    await server_reaches(server, leftovers(server, store), NOTHING_LEFT)
    metrics = await scrape(server.url)
    assert 'wshub_connections_refused_total{reason="store"} 1.0' in metrics
    assert "wshub_store_errors_total 1.0" in metrics


@pytest.mark.parametrize("failure", [StoreUnavailable("redis is down"), RuntimeError("bug")])
async def test_a_store_failing_at_disconnect_still_frees_everything_else(
    store_server, sockets, caplog, failure
) -> None:
    caplog.set_level(logging.WARNING, logger="wshub.sessions")
    # No recovery: the session ends (and its store entry is removed) when its transport goes.
    server, store = store_server(heartbeat_interval=60, recovery_window=0)
    sock = await raw(server.url, sockets)
    await sock.connect()
    await sock.emit("system:typingStart", {"target": "nobody"})
    await sock.emit("system:setData", {"username": "leaver"})
    await sock.expect("system:dataSet")
    store.disconnect_fails = failure
    await sock.close()
    expected = NOTHING_LEFT | {"store": 1}  # only the store's own entry stays (it failed)
    await server_reaches(server, leftovers(server, store), expected)
    [line] = [r for r in caplog.records if "store" in r.getMessage()]
    if isinstance(failure, StoreUnavailable):
        assert line.getMessage() == (
            "could not remove the connection from the store: redis is down"
        )
        assert line.exc_info is None
    else:
        assert line.getMessage() == "removing the connection from the store failed"
    assert "wshub_store_errors_total 1.0" in await scrape(server.url)
    assert 'wshub_connections_closed_total{reason="transport_close"} 1.0' in await scrape(
        server.url
    )


# -- Socket.IO packets out of the contract ------------------------------------------------


@pytest.mark.parametrize("packet", ["0/random", "0/random,", '0/random,{"token":"x"}'])
async def test_an_unknown_namespace_is_refused_exactly_and_the_session_stays(
    server, sockets, packet
) -> None:
    sock = await raw(server.url, sockets)
    await sock.send(packet)
    assert await sock.next() == '4/random,{"message":"Invalid namespace"}'
    await sock.connect()  # the main namespace is still open to it
    assert "timestamp" in await sock.call("client-ping")


@pytest.mark.parametrize("depth", [33, 300, 5000])
async def test_a_payload_nested_too_deep_is_invalid_format_and_the_connection_stays(
    server, sockets, depth
) -> None:
    sock = await raw(server.url, sockets)
    await sock.connect()
    nested = "[" * depth + "]" * depth
    await sock.send(f'21["system:setData",{nested}]')
    error = await sock.expect("system:error")
    assert error["code"] == "INVALID_FORMAT"
    assert error["message"] in (
        "Malformed Socket.IO packet: payload nests deeper than 32 levels",
        "Malformed Socket.IO packet: payload is not valid JSON",  # orjson's own depth limit
    )
    if depth < 1000:
        assert error["message"].endswith("deeper than 32 levels")
    assert "timestamp" in await sock.call("client-ping", ack=2)
    assert len(errors(sock)) == 1


async def test_a_binary_event_is_refused_once_and_its_attachments_swallowed(
    server, sockets
) -> None:
    sock = await raw(server.url, sockets)
    await sock.connect()
    await sock.send(
        '52-["system:setData",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]'
    )
    await sock.send(b"\x01\x02\x03")
    await sock.send(b"\x04\x05\x06")
    assert await sock.expect("system:error") == {
        "code": "INVALID_FORMAT",
        "message": "Binary attachments are not supported; send JSON",
    }
    assert "timestamp" in await sock.call("client-ping")
    assert len(errors(sock)) == 1
    # A binary message that belongs to no packet is refused on its own.
    await sock.send(b"\x07")
    assert (await sock.expect("system:error"))["message"] == (
        "Binary attachments are not supported; send JSON"
    )


# -- the fuzzer ----------------------------------------------------------------------------

json_values = strategies.json_values(text=30, width=4, leaves=15)
RESERVED = ["*", "connect", "disconnect", "connect_error", "disconnecting", "newListener"]
names = (
    st.sampled_from(RESERVED + [e.value for e in Inbound] + [e.value for e in Outbound])
    | st.text(max_size=30)
    | json_values
)
shaped = st.fixed_dictionaries(
    {},
    optional={
        "username": st.text(max_size=70) | json_values,
        "target": st.sampled_from(["bystander", "fuzzer", "ghost"]) | json_values,
        "targets": st.lists(st.sampled_from(["bystander", "ghost"]), max_size=3) | json_values,
        "type": st.text(min_size=1, max_size=8) | json_values,
        "content": json_values,
        "following": st.lists(st.text(max_size=8), max_size=3) | json_values,
        "profile": json_values,
        "id": json_values,
        "limit": st.integers(-5, 600) | json_values,
        "cursor": json_values,
    },
)
REPLY_KEYS = {"success", "clients", "timestamp", "heartbeat"}
SERVER_EVENTS = {e.value for e in Outbound}


@pytest.fixture(scope="module")
def fuzz_target() -> Iterator[tuple[asyncio.AbstractEventLoop, SioSocket, Client]]:
    server = LiveServer(Settings.load(**HIGH_RATES, drain_window=0.2)).start()
    loop = asyncio.new_event_loop()
    fuzzer = loop.run_until_complete(SioSocket.open(server.url))
    loop.run_until_complete(fuzzer.connect())
    bystander = Client(server.url)
    loop.run_until_complete(bystander.connect())
    loop.run_until_complete(bystander.login("bystander"))
    yield loop, fuzzer, bystander
    loop.run_until_complete(fuzzer.close())
    loop.run_until_complete(bystander.close())
    loop.close()
    server.stop()


_ack_ids = iter(range(1, 1 << 40))


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(name=names, args=st.lists(json_values | shaped, max_size=3))
def test_any_name_and_payload_gets_a_reply_or_a_known_error(fuzz_target, name, args) -> None:
    loop, fuzzer, bystander = fuzz_target
    ack_id = next(_ack_ids)

    async def exchange() -> tuple[list[Any], list[str | bytes]]:
        await fuzzer.emit(name, *args, ack=ack_id)
        answer = await fuzzer.expect_ack(ack_id)
        others, fuzzer._unread[:] = list(fuzzer._unread), []
        return answer, others

    answer, others = loop.run_until_complete(exchange())
    assert len(answer) == 1, answer
    ack = answer[0]
    assert isinstance(ack, dict), ack
    if "code" in ack:
        assert ack["code"] in SEVEN, ack
        assert isinstance(ack["message"], str) and ack["message"]
    else:
        assert REPLY_KEYS & set(ack), ack
    for packet in others:  # the same answers as events, and what others sent it
        assert isinstance(packet, str) and packet.startswith('2["'), packet
        event = packet[3 : packet.index('"', 3)]
        assert event in SERVER_EVENTS and event != "system:disconnect", packet
        if event == "system:error":
            code = re.search(r'"code":"([A-Z_]+)"', packet)
            assert code is not None and code[1] in SEVEN, packet
    # ...and the bystander keeps being served, without a word of the fuzzer's mistakes.
    assert "timestamp" in loop.run_until_complete(bystander.call("client-ping"))
    assert bystander.events["system:error"].empty()
    assert bystander.events["system:disconnect"].empty()
