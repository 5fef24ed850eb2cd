from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from gateway.settings import Settings
from tests.support.client import Client, Clients
from tests.support.redis_cluster import RedisClusterServer
from tests.support.redis_sentinel import RedisSentinelServer
from tests.support.server import LiveServer

ServerFactory = Callable[..., LiveServer]


@pytest.fixture
def server_factory() -> Iterator[ServerFactory]:
    """Start gateways with settings overrides; all are stopped after the test."""
    started: list[LiveServer] = []

    def start(*, config: dict[str, Any] | None = None, **settings: Any) -> LiveServer:
        settings.setdefault("drain_window", 0.2)
        server = LiveServer(Settings.load(**settings), config_overrides=config or {})
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(server_factory: ServerFactory) -> LiveServer:
    return server_factory()


@pytest.fixture
async def clients(server_factory: ServerFactory) -> AsyncIterator[Clients]:
    """``clients.new(url)`` and ``await clients.connect(url, "alice")``; all closed after the test.

    It asks for ``server_factory`` so that its clients are closed before those gateways stop.
    """
    made = Clients()
    yield made
    await made.close_all()


@pytest.fixture
def connect(server: LiveServer, clients: Clients) -> Callable[..., Awaitable[Client]]:
    """``await connect("alice")`` gives a connected client, logged in when a name is given."""

    async def make(username: str | None = None, *, url: str | None = None, **kw: Any) -> Client:
        return await clients.connect(url or server.url, username, **kw)

    return make


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServer]:
    """A private three-master Redis Cluster, started once (about 2 s) for the whole session.

    Tests keep to key prefixes of their own, and leave the cluster as they found it: every
    master up (a test that kills one restarts it).
    """
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    cluster = RedisClusterServer().start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[RedisSentinelServer]:
    """A private primary, replica and Sentinel for the whole session (a test may fail over)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    sentinel = RedisSentinelServer().start()
    yield sentinel
    sentinel.stop()
