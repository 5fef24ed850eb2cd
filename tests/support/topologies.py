"""The Redis topologies the Redis-backed tests run on, and what tests ask of each.

``single`` is the shared Redis on 127.0.0.1:6379 (``WSHUB_TEST_REDIS_URL`` elsewhere),
``cluster`` a private three-master Redis Cluster (:mod:`tests.support.redis_cluster`),
``sentinel`` a private primary, replica and Sentinel (:mod:`tests.support.redis_sentinel`);
the last two are started once per session by the fixtures in ``tests/conftest.py``.
``WSHUB_TEST_TOPOLOGIES`` (comma-separated) narrows a run to some of them.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
import redis

from tests.support.redis_cluster import RedisClusterServer
from tests.support.redis_sentinel import RedisSentinelServer

SINGLE_URL = os.environ.get("WSHUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ALL = ("single", "cluster", "sentinel")
SELECTED = tuple(
    name.strip() for name in os.environ.get("WSHUB_TEST_TOPOLOGIES", ",".join(ALL)).split(",")
)


def params(*names: str) -> list[object]:
    """``pytest.fixture(params=...)`` values for *names*; those not selected are skipped."""
    return [
        pytest.param(
            name,
            marks=[]
            if name in SELECTED
            else [pytest.mark.skip(reason=f"WSHUB_TEST_TOPOLOGIES excludes {name}")],
        )
        for name in names
    ]


def single_redis_up() -> bool:
    parts = urlsplit(SINGLE_URL)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or 6379), timeout=0.5
        ):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class Topology:
    name: str
    url: str
    """What ``WSHUB_REDIS_URL`` is set to."""
    cluster: RedisClusterServer | None = None
    sentinel: RedisSentinelServer | None = None

    def __str__(self) -> str:
        return self.name

    @contextmanager
    def data_node(self, key: str) -> Iterator[redis.Redis]:
        """A plain client of the server that holds *key* (or sharded channel *key*)."""
        if self.cluster is not None:
            with self.cluster.owner_of(key).client() as client:
                yield client
        elif self.sentinel is not None:
            with redis.Redis(port=self.sentinel.primary(), decode_responses=True) as client:
                yield client
        else:
            with redis.Redis.from_url(SINGLE_URL, decode_responses=True) as client:
                yield client

    def subscribers(self, channel: str) -> int:
        """How many connections subscribe to *channel* (sharded on a cluster)."""
        with self.data_node(channel) as client:
            if self.cluster is not None:
                reply = client.execute_command("PUBSUB", "SHARDNUMSUB", channel)
            else:
                reply = client.execute_command("PUBSUB", "NUMSUB", channel)
        return int(_flat_pairs(reply)[channel])

    def channels(self, pattern: str) -> list[str]:
        """Every channel matching *pattern* with a subscriber, on every node."""
        if self.cluster is None:
            with self.data_node(pattern) as client:
                return sorted(client.execute_command("PUBSUB", "CHANNELS", pattern))
        found: set[str] = set()
        for node in self.cluster.nodes:
            with node.client() as client:
                found.update(client.execute_command("PUBSUB", "SHARDCHANNELS", pattern))
        return sorted(found)


def _flat_pairs(reply: object) -> dict[str, object]:
    if isinstance(reply, dict):
        return {str(k): v for k, v in reply.items()}
    assert isinstance(reply, list)
    return {str(reply[i]): reply[i + 1] for i in range(0, len(reply) - 1, 2)}


def resolve(request: pytest.FixtureRequest, name: str) -> Topology:
    """The topology *name* for a test; skips when the shared single Redis is not running."""
    if name == "single":
        if not single_redis_up():
            pytest.skip(f"no Redis at {SINGLE_URL}")
        return Topology("single", SINGLE_URL)
    if name == "cluster":
        cluster: RedisClusterServer = request.getfixturevalue("redis_cluster")
        return Topology("cluster", cluster.url, cluster=cluster)
    sentinel: RedisSentinelServer = request.getfixturevalue("redis_sentinel")
    return Topology("sentinel", sentinel.url, sentinel=sentinel)
