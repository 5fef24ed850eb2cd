from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from gateway.settings import Settings
from tests.support.client import Client
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
async def connect(server: LiveServer) -> AsyncIterator[Callable[..., Any]]:
    """``await connect("alice")`` gives a connected client, logged in when a name is given."""
    clients: list[Client] = []

    async def make(username: str | None = None, *, url: str | None = None, **kw: Any) -> Client:
        client = Client(url or server.url, **kw)
        clients.append(client)
        await client.connect()
        if username is not None:
            await client.login(username)
        return client

    yield make
    for client in clients:
        await client.close()
