"""The backplane's lean Redis link: replies reach their own callers, and every way a connection
can go wrong (no answer, a drop, garbage, a reply nobody asked for, refused credentials) fails
what waits on it at once, with a reason that says what happened.

The real Redis on 127.0.0.1:6379 where Redis's behaviour is the point; a scripted server on
another loopback address where the point is a Redis that misbehaves.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from uuid import uuid4

import pytest

from gateway.store.resp_link import Endpoint, Link, LinkDown, ReplyError, pack
from tests.support.redis_server import RedisServer
from tests.support.wait import wait_until

REDIS = Endpoint("127.0.0.1", 6379)
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def scripted(script: Script, host: str = "127.0.0.2") -> AsyncIterator[Endpoint]:
    """A server on *host* that plays *script* with each connection."""
    server = await asyncio.start_server(script, host, 0)
    try:
        yield Endpoint(host, server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def link() -> AsyncIterator[Link]:
    made = await Link.open(REDIS, timeout=5)
    yield made
    made.close()


def test_commands_are_packed_as_resp_arrays_of_bulk_strings() -> None:
    assert (
        pack(b"PUBLISH", b"ch", b"a\r\nb") == b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$4\r\na\r\nb\r\n"
    )
    assert pack(b"PING") == b"*1\r\n$4\r\nPING\r\n"


async def test_replies_come_back_to_their_own_callers_in_order(link: Link) -> None:
    replies = await asyncio.gather(*(link.call(pack(b"ECHO", b"%d" % n)) for n in range(500)))
    assert replies == [b"%d" % n for n in range(500)]


async def test_an_error_reply_is_raised_and_the_link_goes_on(link: Link) -> None:
    with pytest.raises(ReplyError, match=r"^ERR unknown command 'NOSUCH'"):
        await link.call(pack(b"NOSUCH"))
    assert await link.call(pack(b"ECHO", b"still here")) == b"still here"
    assert link.is_open


async def test_a_cancelled_callers_reply_is_dropped_not_handed_to_the_next(link: Link) -> None:
    key = f"wshub-test:{uuid4().hex}".encode()
    blocked = link.call(pack(b"BLPOP", key, b"2"))
    behind = link.call(pack(b"ECHO", b"mine"))
    blocked.cancel()
    other = await Link.open(REDIS, timeout=5)
    try:
        await other.call(pack(b"RPUSH", key, b"for the cancelled one"))
    finally:
        other.close()
    assert await asyncio.wait_for(behind, 5) == b"mine"
    assert await link.call(pack(b"ECHO", b"next")) == b"next"


async def test_a_redis_that_stops_answering_fails_every_waiter_within_the_timeout() -> None:
    ended = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(4096):
            pass
        ended.set()

    async with scripted(silent) as endpoint:
        link = await Link.open(endpoint, timeout=0.2)
        first, second = link.call(pack(b"PING")), link.call(pack(b"PING"))
        for waiter in (first, second):
            with pytest.raises(LinkDown, match=r"did not answer within 0\.2 s"):
                await asyncio.wait_for(waiter, 2)
        assert link.closed.done() and not link.is_open
        with pytest.raises(LinkDown, match=r"did not answer within 0\.2 s"):
            link.call(pack(b"PING"))
        await asyncio.wait_for(ended.wait(), 2)  # the connection was taken down, not left open


async def test_a_late_command_gets_its_own_deadline_not_the_first_ones() -> None:
    """The overdue check follows the oldest waiting command: one sent just before the first's
    answer came is timed from when it was sent."""

    async def answers_the_first_only(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readexactly(len(pack(b"PING")))
        await asyncio.sleep(0.25)
        writer.write(b"+PONG\r\n")
        await writer.drain()
        await reader.read()

    async with scripted(answers_the_first_only) as endpoint:
        link = await Link.open(endpoint, timeout=0.4)
        assert await link.call(pack(b"PING")) == b"PONG"
        started = asyncio.get_running_loop().time()
        with pytest.raises(LinkDown, match="did not answer"):
            await link.call(pack(b"PING"))
        assert asyncio.get_running_loop().time() - started >= 0.4


async def test_a_dropped_connection_fails_what_waits_and_says_so() -> None:
    async def hangs_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.close()

    async with scripted(hangs_up, "127.0.0.3") as endpoint:
        link = await Link.open(endpoint, timeout=5)
        with pytest.raises(LinkDown, match=r"Redis at 127\.0\.0\.3:\d+ closed the connection"):
            await link.call(pack(b"PING"))
        assert not link.is_open
        assert await asyncio.wait_for(link.closed, 1) == link.closed.result()


@pytest.mark.parametrize(
    ("sent", "why"),
    [
        (b"?what is this\r\n", "unreadable reply"),
        (b"+OK\r\n+OK\r\n", "sent a reply nobody asked for"),
    ],
)
async def test_a_server_that_speaks_nonsense_ends_the_link(sent: bytes, why: str) -> None:
    async def nonsense(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(4096)
        writer.write(sent)
        await writer.drain()
        await reader.read()

    async with scripted(nonsense) as endpoint:
        link = await Link.open(endpoint, timeout=5)
        waiter = link.call(pack(b"PING"))
        if why == "unreadable reply":
            with pytest.raises(LinkDown, match=why):
                await waiter
        else:
            assert await waiter == b"OK"
        assert why in await asyncio.wait_for(link.closed, 1)
        assert not link.is_open


async def test_nothing_listening_is_a_clear_link_down() -> None:
    async with scripted(lambda r, w: asyncio.sleep(0)) as endpoint:
        pass  # the port is free again
    with pytest.raises(LinkDown, match=rf"cannot connect to Redis at {endpoint.address}"):
        await Link.open(endpoint, timeout=2)


async def test_credentials_are_sent_and_a_refusal_is_link_down() -> None:
    server = RedisServer(extra=("--requirepass", "s3cret")).start()
    try:
        endpoint = Endpoint("127.0.0.1", server.port)
        unauthenticated = await Link.open(endpoint, timeout=5)
        with pytest.raises(ReplyError, match=r"^NOAUTH"):
            await unauthenticated.call(pack(b"PING"))
        unauthenticated.close()
        with pytest.raises(LinkDown, match="refused to authenticate: WRONGPASS"):
            await Link.open(Endpoint("127.0.0.1", server.port, password="wrong"), timeout=5)
        link = await Link.open(Endpoint("127.0.0.1", server.port, password="s3cret"), timeout=5)
        assert await link.call(pack(b"PING")) == b"PONG"
        link.close()
        named = Endpoint("127.0.0.1", server.port, username="default", password="s3cret")
        link = await Link.open(named, timeout=5)
        assert await link.call(pack(b"PING")) == b"PONG"
        link.close()
    finally:
        server.kill()


async def test_a_subscription_hands_its_messages_to_on_push(link: Link) -> None:
    channel = f"wshub-test:{uuid4().hex}".encode()
    pushed: list[object] = []
    link.on_push = pushed.append
    assert await link.call(pack(b"SUBSCRIBE", channel)) == [b"subscribe", channel, 1]
    publisher = await Link.open(REDIS, timeout=5)
    try:
        for n in range(3):
            assert await publisher.call(pack(b"PUBLISH", channel, b"m%d" % n)) == 1
    finally:
        publisher.close()

    async def all_in() -> bool:
        return len(pushed) == 3

    await wait_until(all_in, timeout=2, step=0.01)
    assert pushed == [[b"message", channel, b"m%d" % n] for n in range(3)]


async def test_an_open_cancelled_while_authenticating_closes_its_connection() -> None:
    asked, ended = asyncio.Event(), asyncio.Event()

    async def slow_auth(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(4096)  # AUTH
        asked.set()
        await asyncio.sleep(0.3)
        writer.write(b"+OK\r\n")
        await writer.drain()
        await reader.read()  # until the link hangs up
        ended.set()

    async with scripted(slow_auth) as endpoint:
        opening = asyncio.create_task(
            Link.open(Endpoint(endpoint.host, endpoint.port, password="pw"), timeout=5)
        )
        await asyncio.wait_for(asked.wait(), 2)
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        await asyncio.wait_for(ended.wait(), 2)  # not left open, authenticated, unreferenced


async def test_a_redis_before_6_gets_the_password_alone() -> None:
    heard: list[bytes] = []

    async def old_redis(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heard.append(await reader.read(4096))
        writer.write(b"-ERR wrong number of arguments for 'auth' command\r\n")
        heard.append(await reader.read(4096))
        writer.write(b"+OK\r\n")
        await writer.drain()
        await reader.read()

    async with scripted(old_redis) as endpoint:
        named = Endpoint(endpoint.host, endpoint.port, username="default", password="pw")
        link = await Link.open(named, timeout=5)
        link.close()
    assert heard == [pack(b"AUTH", b"default", b"pw"), pack(b"AUTH", b"pw")]


async def test_the_client_name_is_set_and_tcp_keepalive_is_on() -> None:
    link = await Link.open(Endpoint("127.0.0.1", 6379, client_name="wshub-test-link"), timeout=5)
    try:
        assert await link.call(pack(b"CLIENT", b"GETNAME")) == b"wshub-test-link"
        assert link._transport is not None
        sock = link._transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
    finally:
        link.close()


def test_the_password_stays_out_of_reprs() -> None:
    assert "s3cret" not in repr(Endpoint("h", 1, username="u", password="s3cret"))
