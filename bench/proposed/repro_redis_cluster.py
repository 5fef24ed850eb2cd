"""Reproduce the two Redis Cluster problems of the gateway (bench/README.md, "Problems" 1 and 2).

    .venv/bin/python bench/proposed/repro_redis_cluster.py     # about 10 s

Starts a three-master Redis Cluster on free loopback ports (bench/scaling.py's ``RedisCluster``,
stopped at the end), then, with the gateway's own ``redis_topology.connect``:

1. does what ``Backplane._subscribe`` does first (``nodes_manager.initialize()``) and then one
   ``SPUBLISH``, as ``Backplane._publish`` does: redis-py 8.1 fails it with
   ``'AsyncCommandsParser' object has no attribute 'node'``; the same after
   ``RedisCluster.initialize()`` succeeds;
2. runs 50 commands at once on a client built with the gateway's ``POOL_SIZE`` (32): the ones
   past 32 fail with ``MaxConnectionsError()``, whose message is empty.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

from scaling import RedisCluster  # noqa: E402

from gateway.store.redis import POOL_SIZE  # noqa: E402
from gateway.store.redis_topology import connect, parse  # noqa: E402


async def spublish_after_bare_nodes_manager_init(url: str) -> None:
    for init_first in (False, True):
        client = connect(parse(url), timeout=5, pool_size=POOL_SIZE, decode_responses=False)
        try:
            if init_first:
                await client.initialize()
            await client.nodes_manager.initialize()  # what Backplane._subscribe does
            n = await client.execute_command("SPUBLISH", "wshub-repro:ch:node:x", b"hello")
            print(f"1. RedisCluster.initialize() first={init_first}: SPUBLISH -> {n}")
        except Exception as exc:
            print(f"1. RedisCluster.initialize() first={init_first}: SPUBLISH -> {exc!r}")
        finally:
            await client.aclose()


async def burst(url: str) -> None:
    client = connect(parse(url), timeout=5, pool_size=POOL_SIZE, decode_responses=True)
    try:
        await client.initialize()

        async def one(i: int) -> str:
            try:
                # BLPOP holds its connection for a moment, as a slow command under load would.
                await client.blpop(["{wshub-repro}:empty"], timeout=0.3)
                return "ok"
            except Exception as exc:
                return repr(exc)

        results = await asyncio.gather(*(one(i) for i in range(50)))
        kinds: dict[str, int] = {}
        for r in results:
            kinds[r] = kinds.get(r, 0) + 1
        print(f"2. 50 calls at once, pool of {POOL_SIZE} per node: {kinds}")
    finally:
        await client.aclose()


def main() -> None:
    with RedisCluster(Path(tempfile.mkdtemp(prefix="wshub-repro-"))) as cluster:
        asyncio.run(spublish_after_bare_nodes_manager_init(cluster.url))
        asyncio.run(burst(cluster.url))


if __name__ == "__main__":
    main()
