"""``WSHUB_REDIS_URL``: which topology each scheme names, and the client made for it."""

from __future__ import annotations

import re
import ssl

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import SentinelConnectionPool, SentinelManagedSSLConnection

from gateway.store.redis_topology import (
    Locator,
    QueuedRedisCluster,
    RedisTarget,
    connect,
    parse,
)
from gateway.store.resp_link import Endpoint, LinkDown


def test_one_redis_keeps_its_url() -> None:
    for url in ("redis://:pw@10.0.0.1:6380/3", "rediss://h:6379/0", "unix:///run/redis.sock"):
        assert parse(url) == RedisTarget("standalone", url)


def test_sentinel_urls_name_the_sentinels_database_service_and_credentials() -> None:
    url = "redis+sentinel://:s%40cret@10.0.0.1:26379,[::1]:26380/2/wshub"
    assert parse(url) == RedisTarget(
        "sentinel",
        url,
        (("10.0.0.1", 26379), ("::1", 26380)),
        "wshub",
        {"ssl": False, "password": "s@cret", "db": 2},
    )
    bare = parse("redis+sentinel://user:pw@h:26379")
    assert (bare.service, bare.options) == (
        "mymaster",
        {"ssl": False, "username": "user", "password": "pw"},
    )
    assert parse("rediss+sentinel://h:26379/0").options == {"ssl": True, "db": 0}
    assert not bare.sharded


def test_cluster_urls_name_the_start_nodes() -> None:
    target = parse("rediss+cluster://:pw@h1:7000,h2:7001")
    assert (target.kind, target.nodes, target.options) == (
        "cluster",
        (("h1", 7000), ("h2", 7001)),
        {"ssl": True, "password": "pw"},
    )
    assert target.sharded


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("memcached://h:1", "unsupported Redis URL scheme 'memcached'"),
        ("redis+shard://h:1", "unsupported Redis URL scheme 'redis+shard'"),
        ("redis+cluster://h:7000/1", "a redis+cluster:// URL takes no path"),
        ("redis+sentinel://h/0", "Redis node 'h' needs a host and a port"),
        ("redis+sentinel://h:x/0", "Redis URL port 'x' is not a number"),
        ("redis+sentinel://h:26379/zero", "Redis URL database 'zero' is not a number"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse(url)


async def test_each_topology_gets_its_client() -> None:
    single = connect(parse("redis://h:6379/1"), timeout=1, pool_size=3, decode_responses=True)
    assert type(single) is Redis and single.connection_pool.max_connections == 3
    sentinel = connect(
        parse("rediss+sentinel://h:26379/0/svc"), timeout=1, pool_size=3, decode_responses=True
    )
    assert isinstance(sentinel.connection_pool, SentinelConnectionPool)
    assert sentinel.connection_pool.service_name == "svc"
    assert sentinel.connection_pool.connection_class is SentinelManagedSSLConnection
    cluster = connect(
        parse("rediss+cluster://h:7000"), timeout=1, pool_size=3, decode_responses=True
    )
    assert isinstance(cluster, QueuedRedisCluster)
    assert cluster.nodes_manager.connection_kwargs["connection_class"] is SSLConnection
    for client in (single, sentinel, cluster):
        await client.aclose()


# -- where the backplane's own links connect ------------------------------------------------


async def test_the_locator_reads_address_credentials_and_tls_from_the_url() -> None:
    async def endpoint(url: str) -> Endpoint:
        client = connect(parse(url), timeout=1, pool_size=1, decode_responses=False)
        try:
            return await Locator(client).endpoint("any-channel")
        finally:
            await client.aclose()

    plain = await endpoint("redis://alice:s%40cret@10.0.0.1:6380/3")
    assert (plain.host, plain.port, plain.path, plain.username, plain.password, plain.tls) == (
        "10.0.0.1",
        6380,
        None,
        "alice",
        "s@cret",
        None,
    )
    assert (await endpoint("unix:///run/redis.sock?db=1")).path == "/run/redis.sock"
    assert (await endpoint("redis://h:6379/0?client_name=wshub-7")).client_name == "wshub-7"
    checked = await endpoint("rediss://:pw@redis.example:6390/0")
    assert checked.tls is not None and checked.password == "pw"
    assert (checked.tls.verify_mode, checked.tls.check_hostname) == (ssl.CERT_REQUIRED, True)
    unchecked = await endpoint("rediss://redis.example:6390/0?ssl_cert_reqs=none")
    assert unchecked.tls is not None and unchecked.tls.verify_mode == ssl.CERT_NONE


async def test_the_locator_says_clearly_when_no_sentinel_answers() -> None:
    client = connect(
        parse("redis+sentinel://127.0.0.1:1/0/wshub"),
        timeout=0.5,
        pool_size=1,
        decode_responses=False,
    )
    try:
        with pytest.raises(LinkDown, match="cannot find the Redis for ch: "):
            await Locator(client).endpoint("ch")
    finally:
        await client.aclose()
