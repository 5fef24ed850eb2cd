"""The ASGI gate in front of python-engineio: what every Engine.IO request passes first.

* **The peer as it is.** python-engineio's ASGI driver writes ``REMOTE_ADDR = '127.0.0.1'`` into
  every environ; the real peer is the scope's ``client``. The gate reads it there, then
  ``X-Forwarded-For`` only when the peer is a trusted proxy, and puts the result in the scope.
* **Admission at the handshake.** A request that opens a session (no ``sid``) is counted against
  the caps before python-engineio creates anything; a refusal is an HTTP error with a JSON body
  ``{code, message[, retryAfterMs]}`` (a WebSocket handshake gets it as a denial response). The
  admitted request carries its :class:`~gateway.transport.admission.Ticket` in the scope; the
  connection created for it takes the ticket, and a ticket nobody took is returned here.
* **Polling bodies checked before python-engineio reads them.** python-engineio answers nothing
  to a POST over the size limit (its disconnect waits for a GET that never comes), reads a
  chunked body as empty and answers 200, and logs a traceback for an undecodable payload while
  keeping the session. Here a body must announce its length (411 otherwise), stay within
  ``max_bytes`` (413), arrive within ``body_timeout`` (408) and decode as an Engine.IO payload
  of client packets (400); any of these ends the session too.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qs

import orjson
from engineio import payload as eio_payload

from ..observability.logs import printable
from ..protocol.errors import INTERNAL_ERROR, UNAVAILABLE, ErrorCode
from .admission import Admission, IPNetwork, Refusal, client_address
from .peers import Peer, peer_of

log = logging.getLogger("wshub.gate")

SCOPE_TICKET = "wshub.ticket"
SCOPE_ADDRESS = "wshub.address"
MAX_PACKETS_PER_PAYLOAD = 512
# Engine.IO packet types a client may POST: CLOSE, PONG, MESSAGE (and base64 binary messages).
_POSTABLE = frozenset("134b")
_BODY_TIMEOUT = 10.0

ASGIApp = Callable[[dict[str, Any], Any, Any], Any]


class SessionControl(Protocol):
    async def seen(self, eio_sid: str, peer: Peer | None) -> bool:
        """A request of session *eio_sid* arrived from *peer* (polling moves between them);
        False when there is no such session, or no more."""

    def end_session(self, eio_sid: str, problem: str, *, at_once: bool = False) -> None:
        """End session *eio_sid*: its client broke the protocol. *at_once*: without waiting for
        the client to fetch a goodbye (the HTTP error it gets is the goodbye)."""

    def upgraded(self, eio_sid: str) -> bool:
        """Whether session *eio_sid* already runs over a WebSocket."""


class Gate:
    def __init__(
        self,
        engineio_app: ASGIApp,
        admission: Admission,
        sessions: SessionControl,
        *,
        trusted_proxies: Sequence[IPNetwork],
        max_bytes: int,
        accepting: Callable[[], bool],
        body_timeout: float = _BODY_TIMEOUT,
    ) -> None:
        self._app = engineio_app
        self._admission = admission
        self._sessions = sessions
        self._trusted = trusted_proxies
        self._max_bytes = max_bytes
        self._accepting = accepting
        self._body_timeout = body_timeout
        self._polling: set[str] = set()
        # python-engineio stops decoding a payload at 16 packets (a ValueError it logs with a
        # traceback); a client flushing its buffer after a reconnect sends more. The body is
        # bounded in bytes, so the packet count is bounded here, with a clear answer.
        eio_payload.Payload.max_decode_packets = MAX_PACKETS_PER_PAYLOAD

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        problem = _request_problem(scope, query)
        if problem is not None:
            await _refuse(scope, send, problem)
            return
        eio_sid = query.get("sid", [None])[0]
        if eio_sid is None:
            if scope.get("method") == "OPTIONS":  # a CORS preflight: python-engineio answers
                await self._forward(scope, receive, send)
            else:
                await self._open(scope, receive, send, peer_of(scope))
            return
        if not await self._sessions.seen(eio_sid, peer_of(scope)):
            await _refuse(scope, send, _ENGINEIO_ERRORS[1])
            return
        if scope["type"] == "http" and scope.get("method") == "POST":
            receive = await self._checked_body(scope, receive, send, eio_sid)
            if receive is not None:
                await self._forward(scope, receive, _answer_ok(send))
        elif scope["type"] == "http" and scope.get("method") == "GET":
            await self._poll(scope, receive, send, eio_sid)
        elif scope["type"] == "websocket" and self._sessions.upgraded(eio_sid):
            # A second WebSocket for a session that has one: accepted and closed at once, as
            # the reference server does (python-engineio refuses it with a bare 403).
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000})
        else:
            await self._forward(scope, receive, send)

    async def _poll(self, scope: dict[str, Any], receive: Any, send: Any, eio_sid: str) -> None:
        """A long-polling GET: one at a time per session, and the session ends when the client
        abandons one (as the reference server does); python-engineio would let two wait."""
        if eio_sid in self._polling:
            self._sessions.end_session(eio_sid, "overlapping polling requests")
            await _refuse(scope, send, _ENGINEIO_ERRORS[3])
            return
        self._polling.add(eio_sid)
        first = await receive()
        answered = False

        async def replay() -> Any:
            return first

        async def sent(message: dict[str, Any]) -> None:
            nonlocal answered
            if message["type"] == "http.response.body" and not message.get("more_body"):
                answered = True
            await send(message)

        async def watch() -> None:
            message = await receive()
            if message["type"] == "http.disconnect" and not answered:
                self._sessions.end_session(eio_sid, "polling request abandoned", at_once=True)

        watcher = asyncio.ensure_future(watch())
        try:
            await self._forward(scope, replay, sent)
        finally:
            self._polling.discard(eio_sid)
            watcher.cancel()

    async def _forward(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """To python-engineio; whatever it raises is one log line, never a traceback."""
        started = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self._app(scope, receive, tracked)
        except Exception as exc:
            log.warning("Engine.IO request failed: %s: %s", type(exc).__name__, printable(exc))
            if not started:
                await _refuse(scope, send, Refusal(500, INTERNAL_ERROR, "request failed"))

    async def _open(
        self, scope: dict[str, Any], receive: Any, send: Any, peer: Peer | None
    ) -> None:
        address = client_address(
            peer[0] if peer else "unknown", _header(scope, b"x-forwarded-for"), self._trusted
        )
        if not self._accepting():
            await _refuse(scope, send, Refusal(503, UNAVAILABLE, "the server is shutting down"))
            return
        admitted = self._admission.admit(address)
        if isinstance(admitted, Refusal):
            log.info("refused a session from %s: %s", address, admitted.message)
            await _refuse(scope, send, admitted)
            return
        scope[SCOPE_ADDRESS] = address
        scope[SCOPE_TICKET] = admitted
        try:
            await self._forward(scope, receive, send)
        finally:
            ticket = scope.pop(SCOPE_TICKET, None)
            if ticket is not None:  # python-engineio refused the request before a session
                ticket.release()

    async def _checked_body(
        self, scope: dict[str, Any], receive: Any, send: Any, eio_sid: str
    ) -> Any:
        """*receive* replaying the whole, valid body; None when the request was answered."""
        length = _header(scope, b"content-length")
        if length is None or not length.isdigit():
            return await self._reject_body(
                scope, send, eio_sid, 411, "a polling POST must carry a Content-Length"
            )
        if int(length) > self._max_bytes:
            return await self._reject_body(
                scope, send, eio_sid, 413, f"body over the limit ({self._max_bytes} bytes)"
            )
        try:
            async with asyncio.timeout(self._body_timeout):
                body = await _read_body(receive, int(length))
        except TimeoutError:
            return await self._reject_body(scope, send, eio_sid, 408, "body not sent in time")
        except _Disconnected:
            return None
        problem = payload_problem(body)
        if problem is not None:
            return await self._reject_body(scope, send, eio_sid, 400, problem)

        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # type: ignore[no-any-return]

        return replay

    async def _reject_body(
        self, scope: dict[str, Any], send: Any, eio_sid: str, status: int, problem: str
    ) -> None:
        self._sessions.end_session(eio_sid, problem, at_once=True)
        await _refuse(scope, send, Refusal(status, ErrorCode.INVALID_FORMAT, problem))
        return None


class _Disconnected(Exception):
    pass


def _answer_ok(send: Any) -> Any:
    """*send*, answering an accepted POST ``ok`` as Engine.IO servers do (python-engineio: OK)."""

    async def answer(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body") == b"OK":
            message = {**message, "body": b"ok"}
        await send(message)

    return answer


async def _read_body(receive: Any, length: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > length:
            raise _Disconnected()  # more than announced: not HTTP we can serve
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def payload_problem(body: bytes) -> str | None:
    """What is wrong with a polling body, or None: an Engine.IO v4 payload of client packets."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "body is not UTF-8"
    packets = text.split("\x1e")
    if len(packets) > MAX_PACKETS_PER_PAYLOAD:
        return f"more than {MAX_PACKETS_PER_PAYLOAD} packets in one payload"
    for encoded in packets:
        if not encoded or encoded[0] not in _POSTABLE:
            return f"invalid Engine.IO packet {printable(encoded[:16])}"
        if encoded[0] == "b":
            try:
                base64.b64decode(encoded[1:], validate=True)
            except binascii.Error:
                return "invalid base64 in a binary packet"
    return None


# Engine.IO's own errors, with the reference server's numeric codes (engine.io ``Server.errors``),
# which the official clients' developers know from Node.
_ENGINEIO_ERRORS = {
    code: Refusal(400, code, message)
    for code, message in {
        0: "Transport unknown",
        1: "Session ID unknown",
        2: "Bad handshake method",
        3: "Bad request",
        5: "Unsupported protocol version",
    }.items()
}


def _request_problem(scope: dict[str, Any], query: dict[str, list[str]]) -> Refusal | None:
    transport = query.get("transport", [None])[0]
    if transport not in ("polling", "websocket"):
        return _ENGINEIO_ERRORS[0]
    if "j" in query:
        return Refusal(400, 3, "Bad request: JSONP is not supported")
    if (transport == "websocket") != (scope["type"] == "websocket"):
        return _ENGINEIO_ERRORS[3]
    if "sid" not in query:
        if query.get("EIO") != ["4"]:
            return _ENGINEIO_ERRORS[5]
        if scope["type"] == "http" and scope.get("method") not in ("GET", "OPTIONS"):
            return _ENGINEIO_ERRORS[2]
    return None


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    values = [v for k, v in scope.get("headers", ()) if k.lower() == name]
    return b",".join(values).decode("latin-1") if values else None


async def _refuse(scope: dict[str, Any], send: Any, refusal: Refusal) -> None:
    body = orjson.dumps(refusal.body())
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if refusal.retry_after is not None:
        headers.append((b"retry-after", b"%d" % max(1, round(refusal.retry_after))))
    if scope["type"] == "websocket":
        if "websocket.http.response" in scope.get("extensions", {}):
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": refusal.status,
                    "headers": headers,
                }
            )
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
