"""A raw Engine.IO v4 / Socket.IO v5 client, for what the stock clients never send.

Two transports, each usable from any local address of 127.0.0.0/8 (``source``):

* :class:`RawWebSocket`: RFC 6455 over a plain socket (its own framing, so it can send any
  frame, set ``SO_RCVBUF``, stop reading, and tell an orderly end from a reset), with the
  Engine.IO handshake and Socket.IO helpers on top;
* :class:`RawPolling`: long-polling over ``aiohttp`` (any body, chunked or not, any headers).

A refused handshake raises :class:`Refused` with the HTTP answer; the end of a WebSocket
raises :class:`Closed` saying how it ended (close frame, EOF or RST).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

DEFAULT_TIMEOUT = 3.0
SEPARATOR = "\x1e"


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def packets(self) -> list[str]:
        """A polling body as its Engine.IO packets."""
        return self.text.split(SEPARATOR) if self.body else []


class Refused(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(f"handshake refused: {response.status} {response.body!r}")
        self.response = response


class Closed(Exception):
    """The WebSocket ended: ``how`` is ``close`` (a close frame, with ``code``), ``eof`` or
    ``reset``."""

    def __init__(self, how: str, code: int | None = None, reason: str = "") -> None:
        super().__init__(f"websocket ended: {how} {code or ''} {reason}".strip())
        self.how = how
        self.code = code
        self.reason = reason


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None, url
    return parts.hostname, parts.port


async def open_stream(
    url: str, *, source: str | None = None, rcvbuf: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to *url*'s host and port, from *source* (an address of 127.0.0.0/8)."""
    host, port = _host_port(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connect, so the window is announced small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if source is not None:
        sock.bind((source, 0))
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock, limit=1 << 24)


async def read_http_response(reader: asyncio.StreamReader, *, body: bool = True) -> Response:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    content = b""
    if body and status != 101:
        if "content-length" in headers:
            content = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break
                content += chunk[:-2]
        else:
            content = await reader.read()
    return Response(status, headers, content)


async def http_request(
    url: str,
    target: str,
    *,
    method: str = "GET",
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    source: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Response:
    """One request on its own connection (``Connection: close``), written in one piece:
    cheaper than an HTTP client, and any framing (*headers* say how *body* is framed)."""
    reader, writer = await open_stream(url, source=source)
    try:
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        writer.write(
            f"{method} {target} HTTP/1.1\r\nHost: {urlsplit(url).netloc}\r\n"
            f"Connection: close\r\n{extra}\r\n".encode()
            + body
        )
        async with asyncio.timeout(timeout):
            return await read_http_response(reader)
    finally:
        writer.close()


class RawWebSocket:
    """One WebSocket connection, framed by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.close_code: int | None = None
        self.received = 0
        """Bytes of frames read so far (headers included)."""

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        path: str = "/socket.io/",
        query: str = "EIO=4&transport=websocket",
        source: str | None = None,
        headers: dict[str, str] | None = None,
        rcvbuf: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> RawWebSocket:
        reader, writer = await open_stream(url, source=source, rcvbuf=rcvbuf)
        key = base64.b64encode(os.urandom(16)).decode()
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        writer.write(
            f"GET {path}?{query} HTTP/1.1\r\nHost: {urlsplit(url).netloc}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra}\r\n".encode()
        )
        try:
            async with asyncio.timeout(timeout):
                response = await read_http_response(reader)
        except BaseException:
            writer.close()
            raise
        if response.status != 101:
            writer.close()
            raise Refused(response)
        return cls(reader, writer)

    # -- frames

    async def send_frame(self, opcode: int, payload: bytes, *, fin: bool = True) -> None:
        mask = os.urandom(4)
        length = len(payload)
        head = bytes([(0x80 if fin else 0) | opcode])
        if length < 126:
            head += bytes([0x80 | length])
        elif length < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack("!H", length)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(head + mask + masked)
        await self.writer.drain()

    async def send(self, message: str | bytes) -> None:
        if isinstance(message, str):
            await self.send_frame(0x1, message.encode())
        else:
            await self.send_frame(0x2, message)

    async def recv(self, timeout: float = DEFAULT_TIMEOUT) -> str | bytes:
        """The next message (text or binary); ping frames are answered on the way."""
        async with asyncio.timeout(timeout):
            parts: list[bytes] = []
            kind = None
            while True:
                opcode, fin, payload = await self._frame()
                if opcode == 0x9:
                    await self.send_frame(0xA, payload)
                    continue
                if opcode == 0xA:
                    continue
                if opcode == 0x8:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                    self.close_code = code
                    with contextlib.suppress(OSError):
                        await self.send_frame(0x8, payload[:2])
                    raise Closed("close", code, payload[2:].decode(errors="replace"))
                if opcode in (0x1, 0x2):
                    kind = opcode
                parts.append(payload)
                if fin:
                    data = b"".join(parts)
                    return data.decode() if kind == 0x1 else data

    async def _frame(self) -> tuple[int, bool, bytes]:
        try:
            head = await self.reader.readexactly(2)
            length = head[1] & 0x7F
            if length == 126:
                length = struct.unpack("!H", await self.reader.readexactly(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            payload = await self.reader.readexactly(length)
            self.received += len(head) + length
        except asyncio.IncompleteReadError:
            raise Closed("eof") from None
        except ConnectionResetError:
            raise Closed("reset") from None
        return head[0] & 0x0F, bool(head[0] & 0x80), payload

    def stall(self) -> None:
        """Stop reading: what the server sends piles up in the kernel buffers (a slow or
        stuck client), until :meth:`resume`."""
        self.writer.transport.pause_reading()  # type: ignore[attr-defined]

    def resume(self) -> None:
        self.writer.transport.resume_reading()  # type: ignore[attr-defined]

    async def ended(self, timeout: float = DEFAULT_TIMEOUT) -> Closed:
        """Read (and drop) everything until the connection ends; how it ended."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self.recv(timeout)
        except Closed as closed:
            return closed

    async def close(self) -> None:
        with contextlib.suppress(OSError):
            self.writer.close()
            async with asyncio.timeout(1):
                await self.writer.wait_closed()


def _event_of(packet: str) -> tuple[str, list[Any]] | None:
    """``("name", [args])`` for a main-namespace Socket.IO EVENT packet (``2[...]``)."""
    if packet.startswith("2["):
        data = orjson.loads(packet[1:])
        return data[0], data[1:]
    return None


@dataclass
class SioSocket:
    """Engine.IO and Socket.IO over a :class:`RawWebSocket`.

    ``packets`` records every Socket.IO packet received (Engine.IO MESSAGE payloads, as text,
    or bytes for binary messages); pings are answered unless ``pong`` is off.
    """

    ws: RawWebSocket
    open_packet: dict[str, Any]
    pong: bool = True
    pings: int = 0
    packets: list[str | bytes] = field(default_factory=list)
    """Every Socket.IO packet received, in order."""
    engineio: list[str] = field(default_factory=list)
    """Engine.IO CLOSE and NOOP packets received."""
    sid: str | None = None
    _unread: list[str | bytes] = field(default_factory=list)

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> SioSocket:
        ws = await RawWebSocket.connect(url, **kwargs)
        first = await ws.recv()
        assert isinstance(first, str) and first.startswith("0{"), first
        return cls(ws, orjson.loads(first[1:]))

    async def send(self, sio_packet: str | bytes) -> None:
        """A Socket.IO packet (text, wrapped in an Engine.IO MESSAGE) or a binary message."""
        await self.ws.send("4" + sio_packet if isinstance(sio_packet, str) else sio_packet)

    async def next(self, timeout: float = DEFAULT_TIMEOUT) -> str | bytes:
        """The next Socket.IO packet (or binary message), answering pings."""
        if self._unread:
            return self._unread.pop(0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            message = await self.ws.recv(max(0.001, deadline - loop.time()))
            if message == "2":
                self.pings += 1
                if self.pong:
                    await self.ws.send("3")
                continue
            if isinstance(message, bytes):
                self.packets.append(message)
                return message
            if message in ("1", "6"):  # CLOSE (the end follows), NOOP
                self.engineio.append(message)
                continue
            assert message.startswith("4"), f"unexpected Engine.IO packet {message!r}"
            self.packets.append(message[1:])
            return message[1:]

    async def connect(self, auth: Any = None, *, welcome: bool = True) -> str:
        """CONNECT to the main namespace; the Socket.IO sid."""
        await self.send("0" + (dumps(auth) if auth is not None else ""))
        reply = await self.next()
        assert isinstance(reply, str) and reply.startswith("0{"), reply
        self.sid = orjson.loads(reply[1:])["sid"]
        if welcome:
            await self.expect("system:welcome")
        return self.sid  # type: ignore[return-value]

    async def emit(self, name: Any, *args: Any, ack: int | None = None) -> None:
        await self.send("2" + ("" if ack is None else str(ack)) + dumps([name, *args]))

    async def expect(self, name: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """The payload of the next event *name* (other packets are kept for :meth:`next`)."""
        return (await self.expect_args(name, timeout))[0]

    async def expect_args(self, name: str, timeout: float = DEFAULT_TIMEOUT) -> list[Any]:
        return await self._expect(lambda p: _matches(p, name), timeout)  # type: ignore[no-any-return]

    async def expect_ack(self, ack: int, timeout: float = DEFAULT_TIMEOUT) -> list[Any]:
        prefix = f"3{ack}["
        packet = await self._expect(
            lambda p: isinstance(p, str) and p.startswith(prefix) and p, timeout
        )
        return orjson.loads(packet[len(prefix) - 1 :])  # type: ignore[no-any-return]

    async def call(self, name: Any, *args: Any, ack: int = 1, timeout: float = DEFAULT_TIMEOUT):  # type: ignore[no-untyped-def]
        """Emit with an ack id and return the ack's single argument."""
        await self.emit(name, *args, ack=ack)
        (answer,) = await self.expect_ack(ack, timeout)
        return answer

    async def _expect(self, match: Callable[[str | bytes], Any], timeout: float) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        skipped: list[str | bytes] = []
        try:
            while True:
                packet = await self.next(max(0.001, deadline - loop.time()))
                found = match(packet)
                if found is not None and found is not False:
                    return found
                skipped.append(packet)
        except TimeoutError:
            raise AssertionError(f"not received in {timeout} s; got {skipped}") from None
        finally:
            self._unread[:0] = skipped

    async def drain(self, within: float = 0.3) -> list[str | bytes]:
        """Every Socket.IO packet that arrives in the next *within* seconds (and unread ones)."""
        got: list[str | bytes] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        with contextlib.suppress(TimeoutError):
            while (left := deadline - loop.time()) > 0:
                got.append(await self.next(left))
        return got

    def events(self, name: str) -> list[list[Any]]:
        """The arguments of every event *name* received so far."""
        out = []
        for packet in self.packets:
            event = _event_of(packet) if isinstance(packet, str) else None
            if event is not None and event[0] == name:
                out.append(event[1])
        return out

    async def close(self) -> None:
        await self.ws.close()


def _matches(packet: str | bytes, name: str) -> list[Any] | None:
    event = _event_of(packet) if isinstance(packet, str) else None
    return event[1] if event is not None and event[0] == name else None


class RawPolling:
    """Engine.IO long-polling, one session, over ``aiohttp`` from an optional local address."""

    def __init__(
        self,
        url: str,
        *,
        source: str | None = None,
        headers: dict[str, str] | None = None,
        path: str = "/socket.io/",
        keep_alive: bool = False,
    ) -> None:
        self.base = url + path
        self.headers = headers or {}
        # A connection per request by default: with keep-alive, a server socket without
        # TCP_NODELAY (the test LiveServer's) meets the client's delayed ACK, 40 ms a request.
        connector = aiohttp.TCPConnector(
            local_addr=(source, 0) if source else None, limit=0, force_close=not keep_alive
        )
        self.http = aiohttp.ClientSession(connector=connector)
        self.sid: str | None = None
        self.open_packet: dict[str, Any] = {}

    async def __aenter__(self) -> RawPolling:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def url(self, sid: str | None = None, query: str = "EIO=4&transport=polling") -> str:
        sid = sid if sid is not None else self.sid
        return f"{self.base}?{query}" + (f"&sid={sid}" if sid else "")

    async def request(
        self,
        method: str,
        url: str,
        *,
        data: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Response:
        async with self.http.request(
            method,
            url,
            data=data,
            headers={**self.headers, **(headers or {})},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            body = await response.read()
            return Response(
                response.status, {k.lower(): v for k, v in response.headers.items()}, body
            )

    async def handshake(self) -> dict[str, Any]:
        """Open a session; its OPEN packet. Raises :class:`Refused` when refused."""
        response = await self.request("GET", self.url(sid=""))
        if response.status != 200:
            raise Refused(response)
        assert response.text.startswith("0{"), response.text
        self.open_packet = orjson.loads(response.text[1:])
        self.sid = self.open_packet["sid"]
        return self.open_packet

    async def get(self, timeout: float = DEFAULT_TIMEOUT) -> Response:
        return await self.request("GET", self.url(), timeout=timeout)

    async def post(
        self, body: str | bytes | Any, headers: dict[str, str] | None = None
    ) -> Response:
        return await self.request("POST", self.url(), data=body, headers=headers)

    async def send(self, *sio_packets: str) -> Response:
        """Socket.IO packets as Engine.IO MESSAGEs in one POST."""
        return await self.post(SEPARATOR.join("4" + p for p in sio_packets))

    async def connect(self, auth: Any = None, *, welcome: bool = True) -> str:
        """CONNECT to the main namespace; the Socket.IO sid. The welcome is read too."""
        posted = await self.send("0" + (dumps(auth) if auth is not None else ""))
        assert posted.status == 200, posted
        got = await self.get()
        assert got.status == 200 and got.packets[0].startswith("40{"), got
        rest = got.packets[1:]
        if welcome and not rest:
            rest = (await self.get()).packets
        if welcome:
            assert rest[0].startswith('42["system:welcome"'), rest
        return orjson.loads(got.packets[0][2:])["sid"]  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self.http.close()


# -- helpers for tests against a LiveServer -------------------------------------------------


async def on_server(server: Any, fn: Callable[[], Any]) -> Any:
    """``fn()`` evaluated (and awaited, when it returns an awaitable) on a
    :class:`~tests.support.server.LiveServer`'s own loop: its tables are not safe to read
    from another thread."""

    async def read() -> Any:
        value = fn()
        return await value if inspect.isawaitable(value) else value

    return await asyncio.to_thread(server.call, read)


async def server_reaches(
    server: Any, fn: Callable[[], Any], expected: Any, *, timeout: float = 3.0
) -> None:
    """Wait until ``fn()``, read on *server*'s loop (:func:`on_server`), equals *expected*."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (value := await on_server(server, fn)) != expected:
        if loop.time() > deadline:
            raise AssertionError(f"not reached in {timeout} s: {value!r} != {expected!r}")
        await asyncio.sleep(0.02)


async def eventually(
    check: Callable[[], Any], *, timeout: float = 3.0, step: float = 0.02, what: str = ""
) -> Any:
    """Await until ``check()`` (a coroutine function or a plain one) returns something true;
    returns it. Fails after *timeout* seconds with the last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"not reached in {timeout} s: {what or check} (last: {value!r})")
        await asyncio.sleep(step)
