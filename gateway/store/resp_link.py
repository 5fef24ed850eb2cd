"""One lean connection to Redis, for the backplane's hot path: commands pipelined on one socket,
replies parsed in C (hiredis), no pool and no per-call wrappers.

Why not redis-py here: every cross-node message is one ``PUBLISH``, and redis-py's awaited
``publish()`` costs about 80 µs of client CPU per call on a 2-core machine (the pool's get and
release, its retry and observability wrappers, a timeout task per send, the command packing),
more than the rest of the message's journey through the sending node; on the receiving side its
pub/sub reader wakes a task for every message. This link writes a command at once and hands back
a future for its reply, so any number of callers share one connection without waiting for each
other, and a subscription's messages are handed over from the event loop's read callback itself.
Measured in ``bench/README.md`` (the scaling bench).

It speaks RESP2 to one :class:`Endpoint`; *which* endpoint (the one Redis, the primary Sentinel
names, the shard that owns a channel's slot) is :mod:`gateway.store.redis_topology`'s business.

- :meth:`Link.call` sends one command and returns a future for its reply; replies come back in
  the order the commands went out.
- A subscribed connection receives only pushes: with :attr:`Link.on_push` set, every reply that
  no command is waiting for goes there (the subscription's messages, and the ``sunsubscribe``
  Redis Cluster sends when the channel's slot moves).

A command that gets no reply within *timeout* takes the connection down: a Redis that stopped
answering (or a network that stopped carrying) is not waited for once per command, and every
caller waiting on the link hears :class:`LinkDown` at once. An error reply arrives as a
:class:`ReplyError` (``MOVED``, ``NOAUTH``, ...). A cancelled caller's reply, when it comes, is
read and dropped, so the next caller still gets its own.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import hiredis


class LinkDown(ConnectionError):
    """The connection is gone, or never came up; what was waiting on it failed with it."""


class ReplyError(Exception):
    """Redis answered a command with an error."""


@dataclass(frozen=True)
class Endpoint:
    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    """A Unix socket, instead of host and port."""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: ssl.SSLContext | None = None
    client_name: str | None = None
    """Sent with ``CLIENT SETNAME`` (``?client_name=`` in the URL), for ``CLIENT LIST``."""

    @property
    def address(self) -> str:
        return self.path or f"{self.host}:{self.port}"


# TCP keepalive, as redis-py sets it by default: an idle link (a shard this node rarely
# publishes to) behind a NAT or a load balancer that forgets quiet connections is found dead
# by the kernel, not by the next publish's timeout.
_KEEPALIVE = [
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    *(
        (socket.IPPROTO_TCP, getattr(socket, name), value)
        for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3))
        if hasattr(socket, name)
    ),
]


def pack(*args: bytes) -> bytes:
    """One command, as RESP writes it: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(parts)


class Link(asyncio.Protocol):
    """Made by :meth:`open`; gone for good once :attr:`closed` is done (open another)."""

    on_push: Callable[[Any], None] | None = None
    """Takes every reply no command waits for (a subscription's pushes). It runs inside the
    event loop's read callback: it must not raise, and must not block."""

    def __init__(self, endpoint: Endpoint, timeout: float) -> None:
        self.endpoint = endpoint
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader(replyError=ReplyError)
        self._transport: asyncio.Transport | None = None
        # Each command's reply future and the loop time by which the reply must have come.
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._why = f"not connected to Redis at {endpoint.address}"
        self._ended = False
        self._paused = False
        self.closed: asyncio.Future[str] = self._loop.create_future()
        """Done, with the reason, when the connection has ended."""

    @classmethod
    async def open(cls, endpoint: Endpoint, *, timeout: float) -> Link:
        """Connect and authenticate, within *timeout*; raises :class:`LinkDown` if not."""
        loop = asyncio.get_running_loop()
        link = cls(endpoint, timeout)
        try:
            async with asyncio.timeout(timeout):
                if endpoint.path is not None:
                    await loop.create_unix_connection(lambda: link, endpoint.path, ssl=endpoint.tls)
                else:
                    await loop.create_connection(
                        lambda: link, endpoint.host, endpoint.port, ssl=endpoint.tls
                    )
        except (OSError, TimeoutError) as exc:
            raise LinkDown(
                f"cannot connect to Redis at {endpoint.address}: {exc or 'timed out'}"
            ) from exc
        try:
            await link._introduce()
        except BaseException:  # refused, or cancelled meanwhile: the connection goes too
            link.close()
            raise
        return link

    async def _introduce(self) -> None:
        endpoint = self.endpoint
        if endpoint.password is not None:
            password = endpoint.password.encode()
            try:
                if endpoint.username is None:
                    await self.call(pack(b"AUTH", password))
                else:
                    try:
                        await self.call(pack(b"AUTH", endpoint.username.encode(), password))
                    except ReplyError as exc:
                        if "wrong number of arguments" not in str(exc):
                            raise
                        # A Redis before 6 (no ACL users) takes the password alone, as redis-py
                        # falls back to.
                        await self.call(pack(b"AUTH", password))
            except ReplyError as exc:
                why = f"Redis at {endpoint.address} refused to authenticate: {exc}"
                raise LinkDown(why) from exc
        if endpoint.client_name is not None:
            await self.call(pack(b"CLIENT", b"SETNAME", endpoint.client_name.encode()))

    @property
    def is_open(self) -> bool:
        return not self._ended and self._transport is not None

    def call(self, command: bytes) -> asyncio.Future[Any]:
        """Send *command* (see :func:`pack`); the future of its reply. Raises LinkDown at once
        when the connection is gone."""
        if self._ended or self._transport is None or self._transport.is_closing():
            raise LinkDown(self._why)
        reply: asyncio.Future[Any] = self._loop.create_future()
        self._waiting.append((reply, self._loop.time() + self._timeout))
        self._transport.write(command)
        if self._timer is None:
            self._timer = self._loop.call_later(self._timeout, self._check_overdue)
        return reply

    def pause_reading(self) -> None:
        """Hand over no more replies (a subscriber's consumer is behind): what was read stays
        parsed-to-be, the rest stays in the kernel and in Redis's output buffer."""
        self._paused = True
        if self._transport is not None and not self._ended:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        """Go on; what was read meanwhile is handed over at once, from this call."""
        if not self._paused:
            return
        self._paused = False
        if self._transport is not None and not self._ended:
            self._transport.resume_reading()
        self._take_replies()

    def close(self, why: str = "closed") -> None:
        """End the connection politely; what still waits for a reply fails with *why*."""
        self._down(why)
        if self._transport is not None:
            self._transport.close()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but are transports.)
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            for level, option, value in _KEEPALIVE:
                sock.setsockopt(level, option, value)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        self._take_replies()

    # -- replies to their callers

    def _take_replies(self) -> None:
        while not self._paused:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self._abort(f"unreadable reply from Redis at {self.endpoint.address}: {exc}")
                return
            if reply is False:
                return
            if self._waiting:
                waiter, _ = self._waiting.popleft()
                if waiter.done():  # its caller was cancelled
                    continue
                if isinstance(reply, ReplyError):
                    waiter.set_exception(reply)
                else:
                    waiter.set_result(reply)
            elif self.on_push is not None:
                self.on_push(reply)
            else:
                self._abort(f"Redis at {self.endpoint.address} sent a reply nobody asked for")
                return

    def eof_received(self) -> bool:
        self._down(f"Redis at {self.endpoint.address} closed the connection")
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        detail = f": {exc}" if exc is not None else ""
        self._down(f"connection to Redis at {self.endpoint.address} lost{detail}")
        self._transport = None

    # -- the end, on every path

    def _check_overdue(self) -> None:
        self._timer = None
        if not self._waiting:
            return
        deadline = self._waiting[0][1]
        if deadline <= self._loop.time():
            self._abort(
                f"Redis at {self.endpoint.address} did not answer within {self._timeout:g} s"
            )
        else:
            self._timer = self._loop.call_at(deadline, self._check_overdue)

    def _abort(self, why: str) -> None:
        self._down(why)
        if self._transport is not None:
            self._transport.abort()

    def _down(self, why: str) -> None:
        """Fail everything still waiting, once: the first reason given is the one kept."""
        if self._ended:
            return
        self._ended = True
        self._why = why
        if not self.closed.done():  # (a waiter that was cancelled cancels it)
            self.closed.set_result(why)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        failure = LinkDown(why)
        while self._waiting:
            waiter, _ = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(failure)
