"""Several gateways on one Redis topology: one hub, for the multi-node e2e tests.

A hub's gateways are processes (``python -m gateway serve``: what signals need) or, to start
in a fraction of the time, gateways in this process, each on its own event loop and port
(:class:`~tests.support.server.LiveServer`), with the same settings.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from gateway.transport.backplane import Backplane
from tests.support.ops import get
from tests.support.process import GatewayProcess
from tests.support.server import LiveServer
from tests.support.topologies import SINGLE_URL, Topology

Node = GatewayProcess | LiveServer


def redis_up() -> bool:
    """Whether the shared single Redis (127.0.0.1:6379) answers."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


def cluster_env(url: str = SINGLE_URL, **extra: str) -> dict[str, str]:
    """The environment of one hub's gateways: a key prefix of its own, short intervals."""
    return {
        "WSHUB_BACKEND": "redis",
        "WSHUB_REDIS_URL": url,
        "WSHUB_REDIS_PREFIX": f"wshub-e2e-{uuid.uuid4().hex[:8]}:",
        "WSHUB_REDIS_LEASE_SECONDS": "1",
        "WSHUB_BACKPLANE_PROBE_INTERVAL": "0.3",
        "WSHUB_BACKPLANE_PROBE_TIMEOUT": "0.5",
        "WSHUB_STATS_INTERVAL": "0.3",
        **extra,
    }


def ready(node: Node) -> tuple[int, dict[str, Any]]:
    status, body = get(node.url + "/ready")
    return status, json.loads(body)


@dataclass
class Hub:
    """Gateways sharing *topology* under one prefix; :meth:`stop` ends those still running."""

    topology: Topology
    extra: dict[str, str] = field(default_factory=dict)
    local: Callable[..., LiveServer] | None = None
    """The ``server_factory`` fixture, for :meth:`start_local` (it stops them)."""
    nodes: list[GatewayProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.env = cluster_env(self.topology.url, **self.extra)
        self.prefix = self.env["WSHUB_REDIS_PREFIX"]
        self.broadcast_channel = f"{self.prefix}ch:all"

    def start(self, count: int = 1, *, url: str = "") -> list[GatewayProcess]:
        """*count* more gateways, started side by side (each takes a second to import); *url*
        gives them another way to the same Redis (a relay)."""
        env = {**self.env, "WSHUB_REDIS_URL": url} if url else self.env
        made = [GatewayProcess(env=env) for _ in range(count)]
        self.nodes += made
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(GatewayProcess.start, made))
        return made

    def start_local(self, count: int = 1, *, url: str = "") -> list[LiveServer]:
        """*count* more gateways in this process, with the settings the processes get."""
        assert self.local is not None, "Hub(..., local=server_factory)"
        env = {**self.env, "WSHUB_REDIS_URL": url} if url else self.env
        settings = {name.removeprefix("WSHUB_").lower(): value for name, value in env.items()}
        return [self.local(**settings) for _ in range(count)]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def node_id(self, node: Node) -> str:
        """The gateway's node id: its own, or (``{host}-{pid}-{random}``) read off its
        subscription for a process."""
        if isinstance(node, LiveServer):
            return backplane_of(node).node_id
        assert node.proc is not None
        found = self.topology.channels(f"{self.prefix}ch:node:*-{node.proc.pid}-*")
        assert len(found) == 1, found
        return found[0].removeprefix(f"{self.prefix}ch:node:")

    def channel(self, node: Node) -> str:
        return f"{self.prefix}ch:node:{self.node_id(node)}"


def backplane_of(server: LiveServer) -> Backplane:
    assert server.gateway is not None and server.gateway.backplane is not None
    return server.gateway.backplane
