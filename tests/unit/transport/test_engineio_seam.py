"""Guards for every private hook the gateway has into python-engineio and Hypercorn.

``gateway/transport/engineio_seam.py`` replaces or relies on upstream code that is not public
API, and ``gateway/server/websocket.py`` rebinds a module global of Hypercorn's. Each piece of
upstream code is fingerprinted here (SHA-256 of its source): when an upgrade changes it, the
test fails and names the gateway hook to re-check. Where it is cheap, the hook's effect is
checked too, by driving python-engineio in-process through ASGI.

After re-checking a hook against the new upstream code, update its fingerprint below.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import inspect
from collections.abc import Callable
from typing import Any

import engineio
import engineio.async_drivers.asgi as engineio_asgi
import engineio.async_socket
import engineio.base_server
import engineio.payload
import hypercorn.asyncio.tcp_server as tcp_server
import hypercorn.protocol.ws_stream as ws_stream
import orjson
import pytest
from engineio import packet

from gateway import sessions
from gateway.server import websocket
from gateway.transport import engineio_seam
from gateway.transport.engineio_seam import EngineServer, EngineSocket

UPSTREAM_SOCKET = EngineSocket.__mro__[1]  # python-engineio's AsyncSocket, as it was imported
SEAM = "gateway/transport/engineio_seam.py"

# name: (the upstream object, its fingerprint, what to re-check when it changes)
FINGERPRINTS: dict[str, tuple[Callable[[], Any], str, str]] = {
    "AsyncSocket.send": (
        lambda: UPSTREAM_SOCKET.send,
        "0437276ccba7ab091471e29f4bc6a0f178da7b16a590c707d6c69a97609e6d14",
        f"EngineSocket.send/push in {SEAM} (queueing, the ping-timeout check per send)",
    ),
    "AsyncSocket.poll": (
        lambda: UPSTREAM_SOCKET.poll,
        "826f58a9f3606db208e5d1266f075ad655b6eeda47b0a5616748624899ca5954",
        f"EngineSocket.poll in {SEAM} (the None sentinel, task_done, QueueEmpty)",
    ),
    "AsyncSocket.receive": (
        lambda: UPSTREAM_SOCKET.receive,
        "a91ae36ec2fb5340713ec03be88b1ece9887d2f3116ff09f24dda3a6d965db28",
        f"EngineSocket.receive in {SEAM} (packet types handled, the message handler call)",
    ),
    "AsyncSocket.schedule_ping": (
        lambda: UPSTREAM_SOCKET.schedule_ping,
        "fe316639159cd70d34cdb911a055fc1a0056ff15615b8460a1ab6593c95e9372",
        f"EngineSocket.schedule_ping in {SEAM} (gateway.transport.pings replaces it)",
    ),
    "AsyncSocket.check_ping_timeout": (
        lambda: UPSTREAM_SOCKET.check_ping_timeout,
        "77616d5ca7809257d5d1866f271e7cc3e114663cfe2772cafda63a7393c880d0",
        f"EngineSocket.check_ping_timeout in {SEAM} (must stay a no-op check)",
    ),
    "AsyncSocket._websocket_handler": (
        lambda: UPSTREAM_SOCKET._websocket_handler,
        "27f120df4d717a24478b7b0f7389ce19eea8a881dd07e2c81fb1cf2493e006a5",
        f"EngineSocket._websocket_handler in {SEAM} (upgrade probe, writer, reader loop)",
    ),
    "AsyncSocket.close": (
        lambda: UPSTREAM_SOCKET.close,
        "faa2e93902543244d2a1b772cdf4074d1615532e98fa6ca896739ca54ad64e76",
        f"engineio_seam.end and EngineSocket.receive (CLOSE) in {SEAM}: the disconnect "
        "event, the CLOSE packet, queue.join",
    ),
    "AsyncSocket.handle_get_request": (
        lambda: UPSTREAM_SOCKET.handle_get_request,
        "05eaae9f0a60d9be3f4c0227a639930b2f8f31445fc23ed81c2184e74bdff64d",
        f"EngineSocket.poll in {SEAM} and Gate._poll in gateway/transport/gate.py",
    ),
    "AsyncSocket.handle_post_request": (
        lambda: UPSTREAM_SOCKET.handle_post_request,
        "82dca119a261a95904b8714cc255ab79aaaef0acd4a0ef98d8ef7a116c370ef2",
        "Gate._checked_body in gateway/transport/gate.py (Content-Length, size, payload)",
    ),
    "AsyncServer._handle_connect": (
        lambda: engineio.AsyncServer._handle_connect,
        "5bd7edc1d1ae115ae973b4a39b435d3b243a3c9b1e3218f21bbeb7ef6aa37e93",
        f"install() and EngineSocket.send in {SEAM}: sockets built from "
        "engineio.async_socket.AsyncSocket, registered before 'connect', OPEN sent via send()",
    ),
    "AsyncServer.handle_request": (
        lambda: engineio.AsyncServer.handle_request,
        "1a8c878e35166cfe868d2cef40cdeb33af620541363a705c4dd2eea76c0f27af",
        "Gate in gateway/transport/gate.py (which checks python-engineio then skips) and "
        f"engineio_seam.end in {SEAM} (sockets deleted once closed)",
    ),
    "asgi.translate_request": (
        lambda: engineio_asgi.translate_request,
        "39e74733f1fe46aa20e9ba2b651834a108bced1acee44c5a76927173dd7b09ff",
        "Gate (the body replay, REMOTE_ADDR) and SocketIOLayer._on_connect "
        "(environ['asgi.scope'], HTTP_AUTHORIZATION)",
    ),
    "asgi.WebSocket": (
        lambda: engineio_asgi.WebSocket,
        "ce9c81653992cd625165532bb32b038bf998b31d4838a830cfc4526bb724699e",
        f"EngineSocket._websocket_handler in {SEAM} (ws.wait/send/close semantics)",
    ),
    "Payload.decode": (
        lambda: engineio.payload.Payload.decode,
        "9c7975664d815d3d25856740f4b22cbfd872ce132c3aa0f423d8d8cb13eb0717",
        "Gate.__init__ (max_decode_packets) and payload_problem in gateway/transport/gate.py",
    ),
    "BaseServer.reason": (
        lambda: engineio.base_server.BaseServer.reason,
        "bbbc90e18d26c2df5a84c6d672a11524bd7745ec5c38a459452e45fbb9797c3e",
        "_ENGINEIO_ENDS in gateway/sessions.py (reason strings to close labels and events)",
    ),
    "hypercorn ws_stream.Handshake": (
        lambda: ws_stream.Handshake,
        "701a154c29b5ab4ced15e262dfcfcb7ee191333265a52d7c721f1cdec11865bb",
        "install() in gateway/server/websocket.py (rebinds ws_stream.PerMessageDeflate, "
        "which Handshake.accept instantiates)",
    ),
    "hypercorn asyncio.tcp_server.TCPServer": (
        lambda: tcp_server.TCPServer,
        "3bfa72b319509f2b02a757c59348721eb890e6db97fe21ccd7fd08541f2f4ee5",
        "serve() in gateway/server/runner.py (builds TCPServer per connection, awaits it, and "
        "drops its private protocol and _task_group attributes to cut their reference cycle)",
    ),
}


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()


@pytest.mark.parametrize("name", list(FINGERPRINTS))
def test_upstream_code_the_gateway_hooks_into_is_unchanged(name: str) -> None:
    get, expected, hook = FINGERPRINTS[name]
    versions = ", ".join(
        f"{dist} {importlib.metadata.version(dist)}" for dist in ("python-engineio", "hypercorn")
    )
    assert fingerprint(get()) == expected, f"{name} changed upstream ({versions}): re-check {hook}"


def test_the_fingerprints_are_of_the_upstream_classes() -> None:
    assert (UPSTREAM_SOCKET.__module__, UPSTREAM_SOCKET.__qualname__) == (
        "engineio.async_socket",
        "AsyncSocket",
    )
    # Every method EngineSocket overrides is fingerprinted above.
    overridden = {
        name
        for name, value in vars(EngineSocket).items()
        if callable(value) and hasattr(UPSTREAM_SOCKET, name)
    }
    assert {f"AsyncSocket.{name}" for name in overridden} <= set(FINGERPRINTS)


# -- behaviour ------------------------------------------------------------------------------


class Events:
    """engineio_seam.SessionEvents, recording."""

    def __init__(self) -> None:
        self.pongs: list[str] = []
        self.scheduled: list[str] = []
        self.problems: list[tuple[str, str]] = []

    def pong(self, socket: EngineSocket) -> None:
        self.pongs.append(socket.sid)

    def schedule_ping(self, socket: EngineSocket) -> None:
        self.scheduled.append(socket.sid)

    def protocol_error(self, socket: EngineSocket, problem: str) -> None:
        self.problems.append((socket.sid, problem))


def polling_scope(query: str, method: str = "GET", headers: list[Any] | None = None) -> Any:
    return {
        "type": "http",
        "method": method,
        "path": "/socket.io/",
        "query_string": query.encode(),
        "headers": headers or [],
        "client": ("10.1.2.3", 4567),
    }


async def request(eio: EngineServer, scope: dict[str, Any], body: bytes = b"") -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await eio.handle_request(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


@pytest.fixture
def server() -> tuple[EngineServer, Events, dict[str, Any]]:
    events = Events()
    eio = EngineServer(events, ping_interval=2.5, ping_timeout=0.2)
    seen: dict[str, Any] = {}

    async def connect(sid: str, environ: dict[str, Any]) -> bool:
        seen["socket"] = eio.socket(sid)
        seen["environ"] = environ
        return True

    messages: list[Any] = []

    async def message(sid: str, data: Any) -> None:
        messages.append((sid, data))

    eio.on("connect", connect)
    eio.on("message", message)
    seen["messages"] = messages
    return eio, events, seen


def test_install_rebinds_the_socket_class_python_engineio_builds() -> None:
    EngineServer(Events(), ping_interval=1)
    assert engineio.async_socket.AsyncSocket is EngineSocket
    assert EngineServer(Events(), ping_interval=1).start_service_task is False  # no sweep task


async def test_a_handshake_builds_an_engine_socket_known_before_connect_fires(server) -> None:
    eio, events, seen = server
    status, body = await request(
        eio, polling_scope("EIO=4&transport=polling", headers=[(b"authorization", b"Bearer t")])
    )
    assert status == 200
    opened = orjson.loads(body[1:])
    socket = seen["socket"]
    assert isinstance(socket, EngineSocket) and socket.sid == opened["sid"]
    assert eio.sockets[opened["sid"]] is socket
    # What the gateway reads from python-engineio's environ.
    environ = seen["environ"]
    assert environ["asgi.scope"]["client"] == ("10.1.2.3", 4567)
    assert environ["HTTP_AUTHORIZATION"] == "Bearer t"
    assert environ["REMOTE_ADDR"] == "127.0.0.1"  # why the gate reads the scope instead
    # Its first ping is scheduled through the gateway's scheduler, not a task of its own.
    assert events.scheduled == [opened["sid"]]


async def test_the_open_packet_goes_through_send_with_the_exact_interval(
    server, monkeypatch
) -> None:
    eio, _, _ = server
    through_send: list[Any] = []
    original = EngineSocket.send

    async def spy(self: EngineSocket, pkt: Any) -> None:
        through_send.append(pkt.packet_type)
        await original(self, pkt)

    monkeypatch.setattr(EngineSocket, "send", spy)
    _, body = await request(eio, polling_scope("EIO=4&transport=polling"))
    opened = orjson.loads(body[1:])
    assert through_send == [packet.OPEN]
    # 2500, where python-engineio writes int(2.5 + grace) * 1000 = 2000.
    assert (opened["pingInterval"], opened["pingTimeout"]) == (2500, 200)
    assert set(opened) == {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}


async def test_messages_and_pongs_reach_the_gateway_and_bytes_are_counted(server) -> None:
    eio, events, seen = server
    _, body = await request(eio, polling_scope("EIO=4&transport=polling"))
    sid = orjson.loads(body[1:])["sid"]
    query = f"EIO=4&transport=polling&sid={sid}"
    body = b"4hello\x1e3\x1e6"
    headers = [(b"content-length", str(len(body)).encode())]  # without it, read as empty
    status, answer = await request(eio, polling_scope(query, "POST", headers), body)
    assert (status, answer) == (200, b"OK")
    assert seen["messages"] == [(sid, "hello")] and events.pongs == [sid]

    socket = eio.socket(sid)
    assert socket is not None
    socket.push(engineio_seam.MessagePacket("abc"))
    socket.push(engineio_seam.PING_PACKET)
    assert socket.queued_bytes == 3  # MESSAGE payloads only
    status, answer = await request(eio, polling_scope(query))
    assert (status, answer) == (200, b"4abc\x1e2")
    assert socket.queued_bytes == 0


async def test_end_forgets_a_session_without_waiting_for_its_queue(server) -> None:
    eio, _, _ = server
    disconnects: list[tuple[str, str]] = []

    async def disconnect(sid: str, reason: str) -> None:
        disconnects.append((sid, reason))

    eio.on("disconnect", disconnect)
    _, body = await request(eio, polling_scope("EIO=4&transport=polling"))
    sid = orjson.loads(body[1:])["sid"]
    socket = eio.socket(sid)
    assert socket is not None
    socket.push(engineio_seam.MessagePacket("never read"))
    await asyncio.wait_for(engineio_seam.end(socket), 1)  # no GET will come; no wait
    assert socket.closed and sid not in eio.sockets
    assert disconnects == [(sid, "server disconnect")]


def test_the_reason_strings_are_the_ones_sessions_maps() -> None:
    reasons = {
        value
        for name, value in vars(engineio.base_server.BaseServer.reason).items()
        if name.isupper()
    }
    assert reasons == set(sessions._ENGINEIO_ENDS)


def test_the_packet_count_limit_of_a_payload_is_a_class_attribute() -> None:
    assert engineio.payload.Payload.max_decode_packets >= 16  # the Gate raises it
    from gateway.transport.gate import MAX_PACKETS_PER_PAYLOAD, Gate

    Gate(None, None, None, trusted_proxies=[], max_bytes=1, accepting=lambda: True)  # type: ignore[arg-type]
    assert engineio.payload.Payload.max_decode_packets == MAX_PACKETS_PER_PAYLOAD
    decoded = engineio.payload.Payload(encoded_payload="\x1e".join(["6"] * 100))
    assert len(decoded.packets) == 100


async def test_the_asgi_websocket_wrapper_raises_on_a_disconnect() -> None:
    # _websocket_handler treats any exception from ws.wait() as the end of the transport.
    events = iter([{"type": "websocket.receive", "text": "4x"}, {"type": "websocket.disconnect"}])

    async def receive() -> dict[str, Any]:
        return next(events)

    ws = engineio_asgi.WebSocket(None, None)
    ws.asgi_receive = receive
    assert await ws.wait() == "4x"
    with pytest.raises(OSError):
        await ws.wait()


@pytest.mark.parametrize("allowed", [False, True])
def test_hypercorn_builds_its_deflate_extension_from_the_rebound_name(allowed: bool) -> None:
    assert "PerMessageDeflate" in ws_stream.Handshake.accept.__code__.co_names  # looked up late
    try:
        websocket.install(allow_deflate=allowed, max_size=1024)
        assert vars(ws_stream)["PerMessageDeflate"] is websocket.BoundedDeflate
        handshake = ws_stream.Handshake(
            [
                (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
                (b"sec-websocket-version", b"13"),
                (b"sec-websocket-extensions", b"permessage-deflate"),
                (b"connection", b"Upgrade"),
                (b"upgrade", b"websocket"),
            ],
            "1.1",
        )
        status, headers, _ = handshake.accept(None, [])
        assert status == 101
        offered = dict(headers).get(b"sec-websocket-extensions")
        assert (offered is not None) is allowed
    finally:
        websocket.BoundedDeflate.allowed = False
