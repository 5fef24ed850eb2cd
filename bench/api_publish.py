"""WS-Hub benchmark: what a delivery costs the server through the server API, against the same
delivery sent by a connected client. One command, bounded, loopback only::

    .venv/bin/python bench/api_publish.py [--deliveries 5000] [--receivers 20]
        [--concurrency 8] [--batch 50] [--rounds 3] [--output PREFIX]

One gateway (memory backend, as ``run.py`` starts it, with an API key) serves every run, and the
same receivers (Python Socket.IO clients, logged in as ``r0``, ``r1``, ...) take every delivery.
Each round runs every mode, in turn, and each mode makes ``--deliveries`` deliveries of a
``system:notification``, each run ending when the receivers have had all of them:

===============  ===================================================================================
mode             how each notification is sent
===============  ===================================================================================
client           a connected client emits ``system:notification`` with ``targets: [one receiver]``
                 and waits for its ack (``--concurrency`` such clients, each in a closed loop)
api              ``POST /api/v1/notify`` ``{"to": [one receiver]}`` (``--concurrency`` keep-alive
                 HTTP connections, each in a closed loop)
api-batch        ``POST /api/v1/batch`` of ``--batch`` such notify calls
client-fanout    one event with ``targets`` = every receiver
api-fanout       one ``notify`` with ``to`` = every receiver
===============  ===================================================================================

The server's CPU time (user + system of its process tree, from ``/proc`` as ``run.py`` samples
it) is read at the start and the end of each run; the figure is CPU-ms per 1000 deliveries,
the median of the rounds; ``others`` in the log is the CPU (in cores) that the rest of the
machine used during a run, besides the server and this process. Results:
``bench/results/api_publish.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import run
import socketio

KEY = "bench-api-key-0123456789abcdef"
MODES = ("client", "api", "api-batch", "client-fanout", "api-fanout")
HARD_TIMEOUT = 600.0
RUN_TIMEOUT = 120.0
GATEWAY_ENV = {
    "WSHUB_API_KEYS": KEY,
    "WSHUB_API_RATE_LIMIT": "1000000",
    "WSHUB_API_RATE_LIMIT_BURST": "1000000",
}


class Receivers:
    """Connected clients ``r0``...; they count the notifications they get."""

    def __init__(self, url: str, count: int) -> None:
        self.url = url
        self.names = [f"r{n}" for n in range(count)]
        self.clients: list[socketio.AsyncClient] = []
        self.received = 0
        self._target = 0
        self._reached = asyncio.Event()

    async def connect(self) -> None:
        for name in self.names:
            client = socketio.AsyncClient(reconnection=False)
            client.on("system:notification", self._count)
            await client.connect(self.url, transports=["websocket"], wait_timeout=10)
            await client.call("system:setData", {"username": name}, timeout=10)
            self.clients.append(client)

    async def _count(self, payload: Any) -> None:
        self.received += 1
        if self.received >= self._target:
            self._reached.set()

    def expect(self, more: int) -> None:
        self._target = self.received + more
        self._reached.clear()

    async def wait(self) -> None:
        await asyncio.wait_for(self._reached.wait(), RUN_TIMEOUT)

    async def close(self) -> None:
        for client in self.clients:
            await client.disconnect()


async def closed_loops(
    workers: int, calls: int, one: Callable[[int], Awaitable[None]]
) -> list[float]:
    """*calls* calls of *one* (given the call's number), *workers* at a time; their latencies."""
    latencies: list[float] = []
    numbers = iter(range(calls))

    async def worker() -> None:
        for n in numbers:
            started = time.perf_counter()
            await one(n)
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return latencies


class Modes:
    def __init__(self, url: str, receivers: Receivers, concurrency: int, batch: int) -> None:
        self.url = url
        self.receivers = receivers
        self.concurrency = concurrency
        self.batch = batch
        self.senders: list[socketio.AsyncClient] = []
        self.http: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        for n in range(self.concurrency):
            client = socketio.AsyncClient(reconnection=False)
            await client.connect(self.url, transports=["websocket"], wait_timeout=10)
            await client.call("system:setData", {"username": f"sender{n}"}, timeout=10)
            self.senders.append(client)
        self.http = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {KEY}"},
            # Idle connections dropped before Hypercorn's keep_alive_timeout (5 s) closes them:
            # one reused just as the server closes it fails (and a POST is not retried).
            connector=aiohttp.TCPConnector(limit=self.concurrency, keepalive_timeout=2.0),
        )

    async def close(self) -> None:
        for client in self.senders:
            await client.disconnect()
        if self.http is not None:
            await self.http.close()

    def _to(self, n: int) -> str:
        names = self.receivers.names
        return names[n % len(names)]

    async def _post(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self.http is not None
        async with self.http.post(f"{self.url}/api/v1/{method}", json=body) as response:
            answer: dict[str, Any] = await response.json()
            if response.status != 200:
                raise RuntimeError(f"{method}: {response.status} {answer}")
            return answer

    async def run(self, mode: str, deliveries: int) -> list[float]:
        """Send *deliveries* deliveries in *mode*; the call latencies."""
        fan = len(self.receivers.names)
        content = {"kind": "bench", "orderId": 42}
        if mode == "client":
            senders = self.senders

            async def one(n: int) -> None:
                await senders[n % len(senders)].call(
                    "system:notification",
                    {"type": "bench", "content": content, "targets": [self._to(n)]},
                    timeout=10,
                )

            return await closed_loops(self.concurrency, deliveries, one)
        if mode == "api":

            async def one(n: int) -> None:
                await self._post(
                    "notify", {"to": [self._to(n)], "type": "bench", "content": content}
                )

            return await closed_loops(self.concurrency, deliveries, one)
        if mode == "api-batch":

            async def one(n: int) -> None:
                calls = [
                    {
                        "method": "notify",
                        "params": {
                            "to": [self._to(n * self.batch + k)],
                            "type": "bench",
                            "content": content,
                        },
                    }
                    for k in range(self.batch)
                ]
                answer = await self._post("batch", {"calls": calls})
                assert all(result["ok"] for result in answer["results"]), answer

            return await closed_loops(self.concurrency, deliveries // self.batch, one)
        if mode == "client-fanout":
            senders = self.senders

            async def one(n: int) -> None:
                await senders[n % len(senders)].call(
                    "system:notification",
                    {"type": "bench", "content": content, "targets": self.receivers.names},
                    timeout=10,
                )

            return await closed_loops(self.concurrency, deliveries // fan, one)
        if mode == "api-fanout":

            async def one(n: int) -> None:
                await self._post(
                    "notify", {"to": self.receivers.names, "type": "bench", "content": content}
                )

            return await closed_loops(self.concurrency, deliveries // fan, one)
        raise ValueError(mode)

    def deliveries_of(self, mode: str, deliveries: int) -> int:
        """How many deliveries *mode* really makes for a request of *deliveries*."""
        fan = len(self.receivers.names)
        if mode == "api-batch":
            return deliveries // self.batch * self.batch
        if mode.endswith("fanout"):
            return deliveries // fan * fan
        return deliveries


async def measure(server: run.Server, modes: Modes, mode: str, deliveries: int) -> dict[str, Any]:
    made = modes.deliveries_of(mode, deliveries)
    modes.receivers.expect(made)
    # This process (senders and receivers) is sampled as run.py samples its load generator,
    # so that what the rest of the machine did meanwhile shows.
    before = run.sample(server.proc.pid, os.getpid())
    started = time.monotonic()
    latencies = await modes.run(mode, deliveries)
    await modes.receivers.wait()
    wall = time.monotonic() - started
    after = run.sample(server.proc.pid, os.getpid())
    cpu_ms = after["cpu_ms"] - before["cpu_ms"]
    ours = after["loadgen_cpu_ms"] - before["loadgen_cpu_ms"]
    busy = after["machine_busy_ms"] - before["machine_busy_ms"]
    return {
        "mode": mode,
        "deliveries": made,
        "calls": len(latencies),
        "server_cpu_ms": round(cpu_ms, 1),
        "cpu_ms_per_1k": round(cpu_ms / made * 1000, 1),
        "deliveries_per_s": round(made / wall),
        "call_p50_ms": round(statistics.median(latencies) * 1000, 2),
        "load_cpu_ms": round(ours, 1),
        "others_cpu_util": round(max(0.0, busy - cpu_ms - ours) / (wall * 1000), 2),
    }


async def bench(args: argparse.Namespace, server: run.Server) -> dict[str, Any]:
    receivers = Receivers(server.url, args.receivers)
    await receivers.connect()
    modes = Modes(server.url, receivers, args.concurrency, args.batch)
    await modes.open()
    try:
        for mode in MODES:  # warm-up: imports, caches and connection pools
            await measure(server, modes, mode, max(args.batch, args.receivers) * 2)
        runs: list[dict[str, Any]] = []
        for rnd in range(1, args.rounds + 1):
            order = MODES[rnd - 1 :] + MODES[: rnd - 1]  # a noisy moment hits every mode alike
            for mode in order:
                entry = await measure(server, modes, mode, args.deliveries)
                entry["round"] = rnd
                runs.append(entry)
                run.log(
                    f"round {rnd} {mode:<14} {entry['cpu_ms_per_1k']:>7} CPU-ms/1k  "
                    f"{entry['deliveries_per_s']:>6}/s  p50 {entry['call_p50_ms']} ms  "
                    f"others {entry['others_cpu_util']}"
                )
    finally:
        await modes.close()
        await receivers.close()
    summary = {
        mode: {
            key: statistics.median(r[key] for r in runs if r["mode"] == mode)
            for key in ("cpu_ms_per_1k", "deliveries_per_s", "call_p50_ms", "calls")
        }
        for mode in MODES
    }
    return {"runs": runs, "summary": summary}


def markdown(report: dict[str, Any]) -> str:
    s = report["summary"]
    base = s["client"]["cpu_ms_per_1k"]
    o = report["options"]
    lines = [
        f"# API publish vs client publish ({report['date']})",
        "",
        f"{o['deliveries']} deliveries of a `system:notification` per run to {o['receivers']} "
        f"receivers, {o['concurrency']} senders in closed loops, batches of {o['batch']}; "
        f"median of {o['rounds']} rounds; one gateway process (memory backend), "
        f"{report['machine']}.",
        "",
        "| mode | server CPU-ms per 1k deliveries | vs client | deliveries/s | calls per run "
        "| call p50 (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        m = s[mode]
        lines.append(
            f"| {mode} | {m['cpu_ms_per_1k']:.1f} | {m['cpu_ms_per_1k'] / base:.2f}x "
            f"| {m['deliveries_per_s']:.0f} | {m['calls']:.0f} | {m['call_p50_ms']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=5000)
    parser.add_argument("--receivers", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, choices=range(1, 10))
    parser.add_argument("--output", default=str(run.RESULTS / "api_publish"))
    args = parser.parse_args()
    if args.deliveries < max(args.batch, args.receivers):
        parser.error("--deliveries must be at least --batch and --receivers")
    spec = run.ServerSpec("gateway", GATEWAY_ENV)
    problem = run.check_available(spec)
    if problem is not None:
        print(f"api_publish: {problem}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="wshub-bench-api-") as tmp:
        server = run.Server(spec, run.QUIET_HEARTBEAT_INTERVAL, None, Path(tmp))
        try:
            if not run.wait_ready(server.proc, server.port, False, timeout=30):
                print(
                    f"api_publish: the gateway did not start\n{server.log_tail()}", file=sys.stderr
                )
                return 1
            result = asyncio.run(asyncio.wait_for(bench(args, server), HARD_TIMEOUT))
        finally:
            server.stop()
    info = run.machine_info()
    report = {
        "date": dt.date.today().isoformat(),
        "machine": f"{info['nproc']} CPUs ({info['cpu_model']}), Python {info['python']}",
        "options": vars(args),
        **result,
    }
    Path(args.output + ".json").write_text(json.dumps(report, indent=2) + "\n")
    Path(args.output + ".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
