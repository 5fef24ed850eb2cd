"""The server API against a live gateway, with real Socket.IO clients receiving what it sends."""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import subprocess
import sys

import pytest

from gateway.api import routes
from tests.support.api import KEY, OTHER_KEY, SENDER, api
from tests.support.ops import get, sample, scrape
from tests.support.process import GatewayProcess, free_port
from tests.support.server import LiveServer

TIMESTAMP = object()
"""Stands for "a timestamp" in an expected payload."""


def shaped(payload: dict[str, object], expected: dict[str, object]) -> bool:
    """*payload* equals *expected*, where TIMESTAMP matches any contract timestamp."""
    if set(payload) != set(expected):
        return False
    for name, value in expected.items():
        if value is TIMESTAMP:
            got = payload[name]
            if not (isinstance(got, str) and got.endswith("Z") and len(got) == 24):
                return False
        elif payload[name] != value:
            return False
    return True


@pytest.fixture
def hub(server_factory) -> LiveServer:
    return server_factory(api_keys=f"{KEY},{OTHER_KEY}")


async def test_notify_named_users(hub, clients) -> None:
    alice = await clients.connect(hub.url, "alice")
    bob = await clients.connect(hub.url, "bob")
    carol = await clients.connect(hub.url, "carol")
    answer = await api(
        hub.url,
        "notify",
        {"to": ["alice", "bob", "ghost"], "type": "order", "content": {"id": 42}},
    )
    assert answer.status == 200
    assert shaped(
        answer.body,
        {
            "recipients": 2,
            "connections": 2,
            "delivered": 2,
            "held": 0,
            "failed": 0,
            "notConnected": ["ghost"],
            "timestamp": TIMESTAMP,
        },
    )
    for receiver in (alice, bob):
        got = await receiver.expect("system:notification")
        assert got == {
            "type": "order",
            "content": {"id": 42},
            "sender": SENDER,
            "timestamp": answer.body["timestamp"],
        }
    await carol.expect_none("system:notification")


async def test_notify_followers(hub, clients) -> None:
    fan = await clients.new(hub.url).connect()
    await fan.login("fan", following=["alice"])
    other = await clients.connect(hub.url, "other")
    # alice need not be connected: the backend speaks for her
    answer = await api(
        hub.url, "notify", {"followersOf": "alice", "type": "post", "content": {"id": 7}}
    )
    assert answer.status == 200
    assert (answer.body["recipients"], answer.body["delivered"]) == (1, 1)
    assert (await fan.expect("system:notification"))["content"] == {"id": 7}
    await other.expect_none("system:notification")


async def test_direct(hub, clients) -> None:
    bob = await clients.connect(hub.url, "bob")
    answer = await api(
        hub.url, "direct", {"target": "bob", "type": "chatMessage", "message": "Your order"}
    )
    assert answer.status == 200
    assert shaped(
        answer.body,
        {"connections": 1, "delivered": 1, "held": 0, "failed": 0, "timestamp": TIMESTAMP},
    )
    assert await bob.expect("system:direct") == {
        "target": "bob",
        "type": "chatMessage",
        "message": "Your order",
        "sender": SENDER,
        "timestamp": answer.body["timestamp"],
    }
    missing = await api(hub.url, "direct", {"target": "ghost", "type": "chatMessage"})
    assert (missing.status, missing.body) == (
        404,
        {"code": "TARGET_NOT_FOUND", "message": "User 'ghost' is not connected"},
    )


async def test_broadcast(hub, clients) -> None:
    everyone = [await clients.connect(hub.url, name) for name in ("a", "b")]
    everyone.append(await clients.connect(hub.url))  # no username: still gets broadcasts
    answer = await api(hub.url, "broadcast", {"type": "maintenance", "message": "at 22:00"})
    assert answer.status == 200
    assert shaped(answer.body, {"connections": 3, "timestamp": TIMESTAMP})
    for client in everyone:
        assert await client.expect("system:general") == {
            "type": "maintenance",
            "message": "at 22:00",
            "sender": SENDER,
            "timestamp": answer.body["timestamp"],
            "broadcast": True,
        }
        await client.expect_none("system:general", within=0.1)


@pytest.mark.parametrize(
    ("reconnect", "advice"),
    [(False, "do not reconnect: the app ended this session (see message)"), (True, "reconnect")],
)
async def test_disconnect(hub, clients, reconnect: bool, advice: str) -> None:
    alice = await clients.connect(hub.url, "alice")
    bob = await clients.connect(hub.url, "bob")
    answer = await api(
        hub.url,
        "disconnect",
        {"username": "alice", "message": "Account suspended", "reconnect": reconnect},
    )
    assert (answer.status, answer.body) == (200, {"connections": 1, "ended": 1, "failed": 0})
    notice = await alice.expect("system:disconnect")
    assert shaped(
        notice,
        {
            "reason": "backend_disconnect",
            "message": "Account suspended",
            "reconnect": advice,
            "timestamp": TIMESTAMP,
        },
    )
    await asyncio.wait_for(alice.disconnected.wait(), 5)
    assert not bob.disconnected.is_set()
    gone = await api(hub.url, "presence", {"username": "alice"})
    assert gone.body == {"username": "alice", "online": False, "connections": 0, "away": 0}
    nobody = await api(hub.url, "disconnect", {"username": "alice"})
    assert nobody.body == {"connections": 0, "ended": 0, "failed": 0}


async def test_presence_and_stats(hub, clients) -> None:
    await clients.connect(hub.url, "alice")
    await clients.connect(hub.url)
    present = await api(hub.url, "presence", {"username": "alice"})
    assert (present.status, present.body) == (
        200,
        {"username": "alice", "online": True, "connections": 1, "away": 0},
    )
    stats = await api(hub.url, "stats")  # no body at all: stats takes none
    assert (stats.status, stats.body) == (200, {"activeConnections": 2, "totalConnections": 2})


async def test_batch(hub, clients) -> None:
    bob = await clients.connect(hub.url, "bob")
    answer = await api(
        hub.url,
        "batch",
        {
            "calls": [
                {"method": "direct", "params": {"target": "bob", "type": "t", "n": 1}},
                {"method": "direct", "params": {"target": "ghost", "type": "t"}},
                {"method": "presence", "params": {"username": "bob"}},
                {"method": "notify", "params": {"to": ["bob"], "type": "t"}},
                {"method": "stats"},
            ]
        },
    )
    assert answer.status == 200
    first, second, third, fourth, fifth = answer.body["results"]
    assert first["ok"] is True and first["result"]["delivered"] == 1
    assert second == {
        "ok": False,
        "error": {"code": "TARGET_NOT_FOUND", "message": "User 'ghost' is not connected"},
    }
    assert third == {
        "ok": True,
        "result": {"username": "bob", "online": True, "connections": 1, "away": 0},
    }
    assert fourth == {
        "ok": False,
        "error": {"code": "INVALID_FORMAT", "message": "notify: content: Field required"},
    }
    assert fifth == {"ok": True, "result": {"activeConnections": 1, "totalConnections": 1}}
    assert (await bob.expect("system:direct"))["n"] == 1
    await bob.expect_none("system:direct")


async def test_a_client_cannot_take_the_sender_name(hub, clients) -> None:
    client = await clients.connect(hub.url)
    for name in ("WS-Hub", "ws-hub"):
        await client.emit("system:setData", {"username": name})
        assert (await client.expect("system:dataSet"))["error"] == "Username already taken"
        assert (await client.expect("system:error"))["code"] == "DUPLICATE_USERNAME"


# -- refusals ---------------------------------------------------------------------------------


async def test_without_a_key_or_with_a_wrong_one(hub) -> None:
    for key in (None, "not-a-configured-key-at-all"):
        answer = await api(hub.url, "stats", {}, key=key)
        assert (answer.status, answer.body) == (
            401,
            {
                "code": "UNAUTHORIZED",
                "message": "An API key is required: Authorization: Bearer <key>",
            },
        )
        assert answer.headers["www-authenticate"] == 'Bearer realm="ws-hub api"'
    assert (await api(hub.url, "stats", {}, key=OTHER_KEY)).status == 200


async def test_bodies_over_the_limit(server_factory) -> None:
    server = server_factory(api_keys=KEY, api_max_body_bytes=2048)
    big = json.dumps({"to": ["a"], "type": "t", "content": {"x": "y" * 3000}}).encode()
    declared = await api(server.url, "notify", data=big)
    assert (declared.status, declared.body["code"]) == (413, "PAYLOAD_TOO_LARGE")
    assert declared.body["message"] == (
        "The body is over the limit (api_max_body_bytes) of 2048 bytes"
    )

    port = int(server.url.rsplit(":", 1)[1])
    head, body, sent = await asyncio.to_thread(chunked_upload, port, b"y" * 1000, 100)
    assert head.startswith(b"HTTP/1.1 413")
    assert sent < 100  # refused once past the bound, not at the end of the body
    assert json.loads(body)["code"] == "PAYLOAD_TOO_LARGE"
    event = await api(
        server.url, "notify", {"to": ["a"], "type": "t", "content": {"x": "y" * 1500}}
    )
    assert event.status == 200  # under the body limit, under max_notification_bytes (8192)


def chunked_upload(port: int, chunk: bytes, count: int) -> tuple[bytes, bytes, int]:
    """POST /api/v1/notify with a chunked body of up to *count* chunks (no Content-Length),
    stopping when the server has answered: the answer's head and body, and the chunks sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /api/v1/notify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            + f"Authorization: Bearer {KEY}\r\n\r\n".encode()
        )
        sock.settimeout(0.05)
        received = b""
        sent = 0
        for _ in range(count):
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += 1
                received += sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:  # the server closed its side after answering
                break
            if b"\r\n\r\n" in received:
                break
        sock.settimeout(5)
        head, body = read_answer(sock, received)
    return head, body, sent


def read_answer(sock: socket.socket, received: bytes = b"") -> tuple[bytes, bytes]:
    """The head and body of an HTTP answer read from *sock* (*received*: what came already)."""
    while b"\r\n\r\n" not in received:
        more = sock.recv(65536)
        assert more, f"the connection closed before an answer: {received!r}"
        received += more
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        more = sock.recv(65536)
        assert more, "the connection closed in the middle of the answer"
        body += more
    return head, body


async def test_event_limits_of_the_contract(server_factory) -> None:
    server = server_factory(api_keys=KEY, max_notification_bytes=100)
    answer = await api(
        server.url, "notify", {"to": ["a"], "type": "t", "content": {"x": "y" * 200}}
    )
    assert (answer.status, answer.body["code"]) == (413, "PAYLOAD_TOO_LARGE")
    assert "max_notification_bytes" in answer.body["message"]


async def test_bad_json_and_bad_bodies(hub) -> None:
    broken = await api(hub.url, "notify", data=b'{"to": ["a"],')
    assert broken.status == 400 and broken.body["code"] == "INVALID_FORMAT"
    assert broken.body["message"].startswith("The body is not valid JSON")
    array = await api(hub.url, "notify", data=b"[1, 2]")
    assert (array.status, array.body) == (
        422,
        {"code": "INVALID_FORMAT", "message": "notify: the body must be a JSON object"},
    )
    field = await api(hub.url, "direct", {"target": "bob", "type": 5})
    assert (field.status, field.body) == (
        422,
        {"code": "INVALID_FORMAT", "message": "direct: type: Input should be a valid string"},
    )


async def test_unknown_methods_and_verbs(hub) -> None:
    for path in ("nope", "notify/extra", ""):
        answer = await api(hub.url, path, {})
        assert (answer.status, answer.body["code"]) == (404, "NOT_FOUND"), path
    wrong = await api(hub.url, "notify", verb="GET")
    assert (wrong.status, wrong.body) == (
        405,
        {"code": "METHOD_NOT_ALLOWED", "message": "GET is not allowed here; use POST"},
    )
    assert wrong.headers["allow"] == "POST"
    document = await api(hub.url, "openapi.json", {}, verb="POST")
    assert (document.status, document.headers["allow"]) == (405, "GET")


async def test_rate_limit_per_key(server_factory) -> None:
    server = server_factory(
        api_keys=f"{KEY},{OTHER_KEY}", api_rate_limit=0.1, api_rate_limit_burst=2
    )
    assert [(await api(server.url, "stats")).status for _ in range(2)] == [200, 200]
    refused = await api(server.url, "stats")
    assert (refused.status, refused.body["code"]) == (429, "RATE_LIMIT")
    wait_ms = refused.body["retryAfterMs"]
    assert 5_000 <= wait_ms <= 10_000  # a token every 10 s, less what has passed since
    assert refused.headers["retry-after"] == str(math.ceil(wait_ms / 1000))
    assert (await api(server.url, "stats", key=OTHER_KEY)).status == 200  # its own bucket
    batch = await api(server.url, "batch", {"calls": [{"method": "stats"}] * 3}, key=OTHER_KEY)
    assert (batch.status, batch.body["code"]) == (422, "INVALID_FORMAT")
    assert "api_rate_limit_burst" in batch.body["message"]


async def test_a_body_that_never_arrives(hub, monkeypatch) -> None:
    monkeypatch.setattr(routes, "BODY_TIMEOUT", 0.3)
    port = int(hub.url.rsplit(":", 1)[1])

    def trickle() -> tuple[bytes, bytes]:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(
                b"POST /api/v1/stats HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {KEY}\r\nContent-Length: 100\r\n\r\n{{".encode()
            )
            return read_answer(sock)

    head, body = await asyncio.to_thread(trickle)
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(body) == {
        "code": "REQUEST_TIMEOUT",
        "message": "The body did not arrive within 0.3 s",
    }


# -- idempotency ------------------------------------------------------------------------------


async def test_a_retry_with_the_same_key_delivers_once(hub, clients) -> None:
    bob = await clients.connect(hub.url, "bob")
    body = {"to": ["bob"], "type": "order", "content": {"id": 1}}
    first = await api(hub.url, "notify", body, headers={"Idempotency-Key": "order-1"})
    retry = await api(
        hub.url,
        "notify",
        # the same request, its keys in another order
        {"content": {"id": 1}, "type": "order", "to": ["bob"]},
        headers={"Idempotency-Key": "order-1"},
    )
    assert first.status == retry.status == 200
    assert retry.body == first.body and retry.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert (await bob.expect("system:notification"))["content"] == {"id": 1}
    await bob.expect_none("system:notification")
    changed = await api(
        hub.url,
        "notify",
        {**body, "content": {"id": 2}},
        headers={"Idempotency-Key": "order-1"},
    )
    assert (changed.status, changed.body) == (
        422,
        {
            "code": "IDEMPOTENCY_MISMATCH",
            "message": "This Idempotency-Key was used for a different request",
        },
    )
    # each API key has its own idempotency keys
    other = await api(
        hub.url, "notify", body, key=OTHER_KEY, headers={"Idempotency-Key": "order-1"}
    )
    assert other.status == 200 and "idempotent-replayed" not in other.headers
    await bob.expect("system:notification")


async def test_a_call_that_delivered_nothing_can_be_retried(hub, clients) -> None:
    body = {"target": "late", "type": "chat", "text": "hello"}
    headers = {"Idempotency-Key": "msg-7"}
    first = await api(hub.url, "direct", body, headers=headers)
    assert first.status == 404
    late = await clients.connect(hub.url, "late")
    retry = await api(hub.url, "direct", body, headers=headers)
    assert retry.status == 200 and retry.body["delivered"] == 1
    assert (await late.expect("system:direct"))["text"] == "hello"


async def test_a_malformed_idempotency_key(hub) -> None:
    answer = await api(hub.url, "stats", headers={"Idempotency-Key": "x" * 256})
    assert (answer.status, answer.body["code"]) == (400, "INVALID_FORMAT")
    assert answer.body["message"].startswith("Idempotency-Key: ")


# -- configuration ----------------------------------------------------------------------------


async def test_off_without_keys(server) -> None:
    for method in ("notify", "openapi.json"):
        status, _ = await asyncio.to_thread(get, f"{server.url}/api/v1/{method}")
        assert status == 404


async def test_the_document_needs_no_key(hub) -> None:
    status, text = await asyncio.to_thread(get, f"{hub.url}/api/v1/openapi.json")
    document = json.loads(text)
    assert status == 200 and document["openapi"] == "3.1.0"
    assert sorted(document["paths"]) == [
        f"/api/v1/{name}"
        for name in sorted(
            [
                "batch",
                "broadcast",
                "direct",
                "disconnect",
                "notify",
                "openapi.json",
                "presence",
                "stats",
            ]
        )
    ]
    assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"


async def test_calls_are_counted(hub) -> None:
    await api(hub.url, "stats")
    await api(hub.url, "stats", key=None)
    await api(hub.url, "direct", {"target": "ghost", "type": "t"})
    text = await scrape(hub.url)
    assert sample(text, 'wshub_api_requests_total{method="stats",outcome="ok"}') == 1
    assert sample(text, 'wshub_api_requests_total{method="stats",outcome="UNAUTHORIZED"}') == 1
    assert sample(text, 'wshub_api_requests_total{method="direct",outcome="TARGET_NOT_FOUND"}') == 1


@pytest.mark.parametrize("public", [False, True])
async def test_with_an_ops_bind(public: bool) -> None:
    ops_port = free_port()
    env = {"WSHUB_OPS_BIND": f"127.0.0.1:{ops_port}", "WSHUB_API_KEYS": KEY}
    if public:
        env["WSHUB_API_PUBLIC"] = "true"
    gateway = GatewayProcess(env=env)
    gateway.start(health_port=ops_port)
    try:
        on_public = await api(gateway.url, "stats")
        on_ops = await api(f"http://127.0.0.1:{ops_port}", "stats")
        assert on_ops.status == 200
        assert on_public.status == (200 if public else 404)
    finally:
        gateway.stop()


# -- the ws-hub api client ----------------------------------------------------------------------


def ws_hub_api(url: str, *args: str, key: str | None = KEY) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "WSHUB_API_KEY"}
    if key is not None:
        env["WSHUB_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "gateway", "api", "--url", url, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )


async def test_the_command_line_client(hub, clients) -> None:
    alice = await clients.connect(hub.url, "alice")
    done = await asyncio.to_thread(
        ws_hub_api,
        hub.url,
        "notify",
        "--to",
        "alice",
        "--type",
        "order",
        "--content",
        '{"id": 42}',
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["delivered"] == 1 and printed["notConnected"] == []
    assert (await alice.expect("system:notification"))["content"] == {"id": 42}
    presence = await asyncio.to_thread(ws_hub_api, hub.url, "presence", "--user", "alice")
    assert json.loads(presence.stdout) == {
        "username": "alice",
        "online": True,
        "connections": 1,
        "away": 0,
    }
    missing = await asyncio.to_thread(ws_hub_api, hub.url, "direct", "--to", "ghost", "--type", "t")
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr == "ws-hub api: 404 TARGET_NOT_FOUND: User 'ghost' is not connected\n"
    wrong = await asyncio.to_thread(ws_hub_api, hub.url, "stats", key="wrong-key-0123456789")
    assert wrong.returncode == 1 and wrong.stderr.startswith("ws-hub api: 401 UNAUTHORIZED: ")
    keyless = await asyncio.to_thread(ws_hub_api, hub.url, "stats", key=None)
    assert (keyless.returncode, keyless.stderr) == (
        2,
        "ws-hub: no API key: set WSHUB_API_KEY or pass --key-file\n",
    )
    invalid = await asyncio.to_thread(ws_hub_api, hub.url, "notify", "--to", "", "--type", "t")
    assert invalid.returncode == 2
    assert invalid.stderr.startswith("ws-hub: notify: to.0: ") and invalid.stderr.count("\n") == 1


async def test_the_command_line_client_where_there_is_no_api(server) -> None:
    done = await asyncio.to_thread(ws_hub_api, server.url, "stats")
    assert done.returncode == 1
    assert done.stderr == (
        "ws-hub api: 404 NOT_FOUND: no server API there (is WSHUB_API_KEYS set? with "
        "WSHUB_OPS_BIND, use the ops port)\n"
    )
