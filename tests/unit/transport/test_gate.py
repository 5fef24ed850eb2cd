"""The ASGI gate before python-engineio, driven with ASGI messages: request checks with the
reference numeric codes, admission by address, polling bodies, overlapping and abandoned polls,
and failures of the application behind it."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Any

import orjson
import pytest

from gateway.transport.admission import Admission, AdmissionPolicy, Ticket
from gateway.transport.gate import (
    MAX_PACKETS_PER_PAYLOAD,
    SCOPE_ADDRESS,
    SCOPE_TICKET,
    Gate,
    payload_problem,
)


class Sessions:
    """gate.SessionControl, recording."""

    def __init__(self, known: set[str] | None = None) -> None:
        self.known = known if known is not None else {"s1"}
        self.seen_from: list[tuple[str, Any]] = []
        self.ended: list[tuple[str, str]] = []
        self.at_once: list[bool] = []
        self.on_websocket: set[str] = set()

    async def seen(self, eio_sid: str, peer: Any) -> bool:
        self.seen_from.append((eio_sid, peer))
        return eio_sid in self.known

    def end_session(self, eio_sid: str, problem: str, *, at_once: bool = False) -> None:
        self.ended.append((eio_sid, problem))
        self.at_once.append(at_once)

    def upgraded(self, eio_sid: str) -> bool:
        return eio_sid in self.on_websocket


class App:
    """The application behind the gate: records what reaches it, answers 200 (or waits)."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []
        self.bodies: list[bytes] = []
        self.take_ticket = False
        self.hold: asyncio.Event | None = None
        self.fail: Exception | None = None
        self.fail_after_start = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scopes.append(dict(scope))
        if self.take_ticket:
            scope.pop(SCOPE_TICKET)
        if scope.get("method") == "POST":
            message = await receive()
            self.bodies.append(message["body"])
        if self.fail is not None and not self.fail_after_start:
            raise self.fail
        if self.hold is not None:
            await self.hold.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if self.fail is not None:
            raise self.fail
        await send({"type": "http.response.body", "body": b"ok"})


def gate(
    app: App | None = None,
    sessions: Sessions | None = None,
    *,
    trusted: tuple[str, ...] = (),
    accepting: bool = True,
    body_timeout: float = 1.0,
    **policy: Any,
) -> tuple[Gate, App, Sessions, Admission]:
    app = app or App()
    sessions = sessions or Sessions()
    limits = dict(max_connections=10, max_per_address=2, connect_rate=100, connect_burst=100)
    limits.update(policy)
    admission = Admission(AdmissionPolicy(**limits), clock=lambda: 0.0)
    the_gate = Gate(
        app,
        admission,
        sessions,
        trusted_proxies=[ipaddress.ip_network(n) for n in trusted],
        max_bytes=100,
        accepting=lambda: accepting,
        body_timeout=body_timeout,
    )
    return the_gate, app, sessions, admission


def scope(
    query: str,
    *,
    method: str = "GET",
    kind: str = "http",
    headers: dict[str, str] | None = None,
    client: tuple[str, int] = ("192.0.2.1", 5000),
    denial: bool = True,
) -> dict[str, Any]:
    made: dict[str, Any] = {
        "type": kind,
        "path": "/socket.io/",
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": client,
    }
    if kind == "http":
        made["method"] = method
    elif denial:
        made["extensions"] = {"websocket.http.response": {}}
    return made


class Exchange:
    """One request through the gate: what it sent back."""

    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.messages = messages

    @property
    def status(self) -> int:
        return next(m["status"] for m in self.messages if m["type"].endswith("response.start"))

    @property
    def headers(self) -> dict[bytes, bytes]:
        start = next(m for m in self.messages if m["type"].endswith("response.start"))
        return dict(start["headers"])

    def json(self) -> Any:
        return orjson.loads(b"".join(m.get("body", b"") for m in self.messages[1:]))


async def call(
    the_gate: Gate,
    the_scope: dict[str, Any],
    body: list[bytes] | None = None,
    *,
    then: str = "disconnect",
) -> Exchange:
    """*body* in chunks; ``then`` the client is gone (``disconnect``, after a complete body) or
    ``hang``s or is ``cut`` (after an incomplete one: more body was announced)."""
    chunks = list(body if body is not None else [b""])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if chunks:
            chunk = chunks.pop(0)
            more = bool(chunks) or then != "disconnect"
            return {"type": "http.request", "body": chunk, "more_body": more}
        if then == "hang":
            await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await the_gate(the_scope, receive, send)
    return Exchange(sent)


OPEN = "EIO=4&transport=polling"
POLL = "EIO=4&transport=polling&sid=s1"


# -- requests python-engineio would otherwise judge -----------------------------------------


@pytest.mark.parametrize(
    ("query", "method", "kind", "code", "message"),
    [
        ("EIO=4", "GET", "http", 0, "Transport unknown"),
        ("EIO=4&transport=abc", "GET", "http", 0, "Transport unknown"),
        ("transport=polling", "GET", "http", 5, "Unsupported protocol version"),
        ("EIO=3&transport=polling", "GET", "http", 5, "Unsupported protocol version"),
        ("EIO=abc&transport=polling", "GET", "http", 5, "Unsupported protocol version"),
        ("EIO=4&transport=polling", "POST", "http", 2, "Bad handshake method"),
        ("EIO=4&transport=polling", "PUT", "http", 2, "Bad handshake method"),
        ("EIO=4&transport=websocket", "GET", "http", 3, "Bad request"),
        ("EIO=4&transport=polling", None, "websocket", 3, "Bad request"),
        ("EIO=4&transport=polling&j=0", "GET", "http", 3, "Bad request: JSONP is not supported"),
        ("EIO=4&transport=polling&sid=nope", "GET", "http", 1, "Session ID unknown"),
        ("EIO=4&transport=polling&sid=nope", "POST", "http", 1, "Session ID unknown"),
        ("EIO=4&transport=websocket&sid=nope", None, "websocket", 1, "Session ID unknown"),
    ],
)
async def test_engineio_errors_have_the_reference_codes(query, method, kind, code, message) -> None:
    the_gate, app, _, admission = gate()
    answer = await call(the_gate, scope(query, method=method or "GET", kind=kind))
    assert (answer.status, answer.json()) == (400, {"code": code, "message": message})
    assert answer.headers[b"content-type"] == b"application/json"
    assert app.scopes == [] and admission.open == 0


async def test_a_websocket_refusal_without_the_denial_extension_is_a_close() -> None:
    the_gate, _, _, _ = gate()
    answer = await call(the_gate, scope("EIO=4", kind="websocket", denial=False))
    assert answer.messages == [{"type": "websocket.close", "code": 1008}]


async def test_a_cors_preflight_goes_through_without_admission() -> None:
    the_gate, app, _, admission = gate(max_per_address=1)
    for _ in range(3):
        assert (await call(the_gate, scope(OPEN, method="OPTIONS"))).status == 200
    assert len(app.scopes) == 3 and admission.open == 0


# -- admission -------------------------------------------------------------------------------


async def test_an_admitted_handshake_carries_its_ticket_and_address() -> None:
    the_gate, app, _, admission = gate()
    app.take_ticket = True  # as SocketIOLayer._on_connect does
    assert (await call(the_gate, scope(OPEN))).status == 200
    [seen] = app.scopes
    assert seen[SCOPE_ADDRESS] == "192.0.2.1"
    assert isinstance(seen[SCOPE_TICKET], Ticket) and not seen[SCOPE_TICKET].released
    assert admission.held_by("192.0.2.1") == 1


async def test_a_ticket_nobody_took_is_returned() -> None:
    the_gate, app, _, admission = gate()
    assert (await call(the_gate, scope(OPEN))).status == 200  # the app refused the session
    assert app.scopes[0][SCOPE_TICKET].released and admission.open == 0
    app.fail = RuntimeError("boom")
    assert (await call(the_gate, scope(OPEN))).status == 500
    assert admission.open == 0


async def test_refusals_by_address_and_in_total() -> None:
    the_gate, app, _, admission = gate(max_connections=3, max_per_address=2)
    app.take_ticket = True
    for _ in range(2):
        await call(the_gate, scope(OPEN))
    capped = await call(the_gate, scope(OPEN))
    assert (capped.status, capped.json()) == (
        429,
        {"code": "RATE_LIMIT", "message": "too many connections from your address (max 2)"},
    )
    ws = await call(the_gate, scope("EIO=4&transport=websocket", kind="websocket"))
    assert ws.messages[0] == {
        "type": "websocket.http.response.start",
        "status": 429,
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"80")],
    }
    assert ws.json()["code"] == "RATE_LIMIT"
    await call(the_gate, scope(OPEN, client=("192.0.2.2", 1)))
    full = await call(the_gate, scope(OPEN, client=("192.0.2.3", 1)))
    assert (full.status, full.json()) == (
        503,
        {"code": "UNAVAILABLE", "message": "server full (3 connections)"},
    )
    assert admission.open == 3


async def test_a_connect_rate_refusal_says_when_to_retry() -> None:
    the_gate, _, _, _ = gate(connect_rate=0.25, connect_burst=1, max_per_address=10)
    await call(the_gate, scope(OPEN))
    slow = await call(the_gate, scope(OPEN))
    assert slow.status == 429
    assert slow.json() == {
        "code": "RATE_LIMIT",
        "message": "connecting too fast; retry in 4.0 s",
        "retryAfterMs": 4000,
    }
    assert slow.headers[b"retry-after"] == b"4"


async def test_a_draining_gateway_refuses_new_sessions_but_serves_old_ones() -> None:
    the_gate, _, _, _ = gate(accepting=False)
    refused = await call(the_gate, scope(OPEN))
    assert (refused.status, refused.json()) == (
        503,
        {"code": "UNAVAILABLE", "message": "the server is shutting down"},
    )
    assert (await call(the_gate, scope(POLL))).status == 200


@pytest.mark.parametrize(
    ("peer", "forwarded", "address"),
    [
        ("10.0.0.5", "203.0.113.7", "203.0.113.7"),  # from our proxy: the client it names
        ("10.0.0.5", "198.51.100.1, 203.0.113.7", "203.0.113.7"),  # the right-most untrusted
        ("10.0.0.5", "203.0.113.7, 10.0.0.9", "203.0.113.7"),  # past another of our proxies
        ("10.0.0.5", "10.0.0.8, 10.0.0.9", "10.0.0.8"),  # all ours: the first
        ("10.0.0.5", "not-an-address", "10.0.0.5"),  # unreadable: the proxy itself
        ("10.0.0.5", "203.0.113.7, junk", "10.0.0.5"),
        ("192.0.2.9", "203.0.113.7", "192.0.2.9"),  # not a proxy: the header is ignored
        ("10.0.0.5", None, "10.0.0.5"),
    ],
)
async def test_forwarded_for_is_read_only_from_trusted_proxies(peer, forwarded, address) -> None:
    the_gate, app, _, admission = gate(trusted=("10.0.0.0/8",))
    app.take_ticket = True
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    await call(the_gate, scope(OPEN, headers=headers, client=(peer, 1)))
    assert app.scopes[0][SCOPE_ADDRESS] == address
    assert admission.held_by(address) == 1


async def test_a_request_of_a_session_reports_its_peer() -> None:
    the_gate, _, sessions, _ = gate()
    await call(the_gate, scope(POLL, client=("192.0.2.1", 6001)))
    assert sessions.seen_from == [("s1", ("192.0.2.1", 6001))]


# -- polling bodies ---------------------------------------------------------------------------


def post(body: bytes, *, length: int | None = -1) -> dict[str, Any]:
    headers = {}
    if length is not None:
        headers["Content-Length"] = str(len(body) if length == -1 else length)
    return scope(POLL, method="POST", headers=headers)


async def test_a_valid_body_reaches_python_engineio_whole() -> None:
    the_gate, app, sessions, _ = gate()
    body = b'42["a"]\x1e3\x1e1'
    answer = await call(the_gate, post(body), [body[:4], body[4:]])
    assert answer.status == 200 and app.bodies == [body] and sessions.ended == []


@pytest.mark.parametrize(
    ("body", "length", "status", "problem"),
    [
        (b"4x", None, 411, "a polling POST must carry a Content-Length"),
        (b"4x", "abc", 411, "a polling POST must carry a Content-Length"),
        (b"4" * 101, -1, 413, "body over the limit (100 bytes)"),
        (b"abc", -1, 400, "invalid Engine.IO packet 'abc'"),
        (b"4a\x1e", -1, 400, "invalid Engine.IO packet ''"),
        (b"\xff", -1, 400, "body is not UTF-8"),
    ],
)
async def test_a_bad_body_is_answered_and_ends_the_session(body, length, status, problem) -> None:
    the_gate, app, sessions, _ = gate()
    the_scope = post(body, length=None if length is None else -1)
    if isinstance(length, str):
        the_scope["headers"] = [(b"content-length", length.encode())]
    answer = await call(the_gate, the_scope, [body])
    expected = {"code": "INVALID_FORMAT", "message": problem}
    assert (answer.status, answer.json()) == (status, expected)
    assert sessions.ended == [("s1", problem)] and app.scopes == []
    assert sessions.at_once == [True]  # the HTTP error is the goodbye: the session ends now


async def test_a_body_exactly_at_the_limit_is_read() -> None:
    the_gate, app, _, _ = gate()
    body = b"4" + b"x" * 99
    assert (await call(the_gate, post(body), [body])).status == 200
    assert app.bodies == [body]


async def test_a_body_that_does_not_come_in_time_is_408() -> None:
    the_gate, app, sessions, _ = gate(body_timeout=0.05)
    answer = await call(the_gate, post(b"4hello", length=6), [b"4he", b"l"], then="hang")
    assert answer.status == 408 and answer.json()["message"] == "body not sent in time"
    assert sessions.ended == [("s1", "body not sent in time")] and app.scopes == []


async def test_a_client_gone_before_its_body_is_not_answered() -> None:
    the_gate, app, sessions, _ = gate()
    answer = await call(the_gate, post(b"4hello", length=6), [b"4he"], then="cut")
    assert answer.messages == [] and sessions.ended == [] and app.scopes == []


def test_payload_problem() -> None:
    assert payload_problem(b"4hello\x1eb" + b"AQIDBA==") is None
    assert payload_problem(b"1") is None and payload_problem(b"3") is None
    assert payload_problem("\x1e".join(["3"] * MAX_PACKETS_PER_PAYLOAD).encode()) is None
    too_many = "\x1e".join(["3"] * (MAX_PACKETS_PER_PAYLOAD + 1)).encode()
    assert payload_problem(too_many) == "more than 512 packets in one payload"
    for kind in "025689":
        assert payload_problem(kind.encode()) == f"invalid Engine.IO packet {kind!r}"
    assert payload_problem(b"\n" + b"x" * 40) == "invalid Engine.IO packet '\\nxxxxxxxxxxxxxxx'"


# -- polls ------------------------------------------------------------------------------------


async def test_a_second_poll_while_one_waits_ends_the_session() -> None:
    the_gate, app, sessions, _ = gate()
    app.hold = asyncio.Event()
    first = asyncio.create_task(call(the_gate, scope(POLL), then="hang"))
    await asyncio.sleep(0.01)
    second = await call(the_gate, scope(POLL))
    assert (second.status, second.json()) == (400, {"code": 3, "message": "Bad request"})
    assert sessions.ended == [("s1", "overlapping polling requests")]
    app.hold.set()
    assert (await first).status == 200
    # One at a time is fine again once the first is answered.
    app.hold = None
    assert (await call(the_gate, scope(POLL))).status == 200


async def test_an_abandoned_poll_ends_the_session_and_an_answered_one_does_not() -> None:
    the_gate, app, sessions, _ = gate()
    app.hold = asyncio.Event()
    waiting = asyncio.create_task(call(the_gate, scope(POLL)))  # the client goes at once
    await asyncio.sleep(0.01)
    assert sessions.ended == [("s1", "polling request abandoned")] and sessions.at_once == [True]
    app.hold.set()
    await waiting
    app.hold = None
    sessions.ended.clear()
    assert (await call(the_gate, scope(POLL))).status == 200  # disconnect after the answer
    assert sessions.ended == []


# -- the application behind ------------------------------------------------------------------


async def test_an_exception_behind_the_gate_is_one_log_line_and_a_500(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="wshub.gate")
    the_gate, app, _, _ = gate()
    app.fail = ValueError("bad\nthing")
    answer = await call(the_gate, scope(POLL))
    assert (answer.status, answer.json()) == (
        500,
        {"code": "INTERNAL_ERROR", "message": "request failed"},
    )
    [record] = caplog.records
    assert record.getMessage() == "Engine.IO request failed: ValueError: 'bad\\nthing'"
    assert record.exc_info is None


async def test_an_exception_after_the_answer_began_adds_no_second_answer(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="wshub.gate")
    the_gate, app, _, _ = gate()
    app.fail, app.fail_after_start = RuntimeError("late"), True
    answer = await call(the_gate, scope(POLL))
    assert [m["type"] for m in answer.messages] == ["http.response.start"]
    assert len(caplog.records) == 1


async def test_a_second_websocket_for_an_upgraded_session_is_accepted_and_closed() -> None:
    the_gate, app, sessions, _ = gate()
    sessions.on_websocket.add("s1")
    answer = await call(the_gate, scope("EIO=4&transport=websocket&sid=s1", kind="websocket"))
    assert answer.messages == [
        {"type": "websocket.accept"},
        {"type": "websocket.close", "code": 1000},
    ]
    assert app.scopes == []  # python-engineio never saw it (it would answer a bare 403)
