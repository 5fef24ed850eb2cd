"""WS-Hub benchmark (issue 13): N separate gateway processes on one Redis, and on a Redis Cluster.

One command, bounded in time (full: about 8 minutes; no new run starts after 9 min 20 s;
``--quick``: about 5 minutes)::

    .venv/bin/python bench/scaling.py [--quick] [--nodes 1,2,4] [--only dm,broadcast]
        [--revisions before,after] [--no-cluster] [--redis-url redis://127.0.0.1:6379/0]
        [--output PREFIX]

Two revisions, each in the same run: ``before`` (commit 129771c, python-socketio's Redis
manager: every node decodes every cross-node message) from a detached ``git worktree``, and
``after`` (the working tree: node-addressed Redis pub/sub). For each revision, setup and
scenario, fresh gateway processes, each its own ``python -m gateway serve --bind
127.0.0.1:PORT`` (separate processes on separate ports, not ``--workers``), with
``WSHUB_BACKEND=redis``, one ``WSHUB_REDIS_URL`` and a key prefix of the run's own,
``wshub-bench-<uuid>:<k>:``.

Setups: ``memory x1`` (one memory-backed node: the reference the issue compares against),
``redis xN`` for each N of ``--nodes``, and for the after revision ``cluster x4``: four nodes on
a Redis Cluster of three masters that the bench starts on loopback ports
(``redis-server --cluster-enabled yes``, ``redis-cli --cluster create``) and stops at the end,
with ``WSHUB_REDIS_URL=redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3``. The before
revision cannot run on a Redis Cluster (python-socketio's Redis manager takes one Redis URL):
its cluster row says so.

Load (official socket.io-client, one load generator process):

- **dm**: 50 sender/receiver pairs, 500 DMs a second in all. Senders connect to node 0,
  receivers to node 1 (with one node, both to node 0); nodes 2..N-1 are bystanders with 5 idle
  named clients each.
- **broadcast**: one sender on node 0, 500 receivers spread round-robin over all the nodes,
  20 broadcasts a second (each is 501 deliveries, the sender's own copy included).

Measurement: with every client connected, an idle window (no load) and, after a warm-up, the
load window, both bracketed by the load generator's marks. At each mark the runner reads every
node's process tree CPU from ``/proc``, and Redis's own CPU (``INFO cpu``, summed over the
cluster's masters). Reported per DM (per 1 000) or per delivery (per 1 000): each node's CPU,
split into sender, receiver and bystander; their sum over all nodes; the bystander's share of
sender + receiver; the sum against the memory-backed node's; Redis's CPU; and each node's idle
CPU (ms per second) from the idle window, to tell a bystander's fixed costs (lease, probe,
stats) from what the traffic costs it. Results: ``bench/results/scaling.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import crowd
import redis
import run

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
SCENARIOS = ("dm", "broadcast")
FULL = {"warmup": 2, "duration": 10, "idle": 4}
QUICK = {"warmup": 1, "duration": 4, "idle": 2}
DM_RATE = 500
BYSTANDER_CLIENTS = 5
DEADLINE_S = 560.0  # no new run starts after this


@dataclass(frozen=True)
class Setup:
    backend: str  # memory, redis, cluster
    nodes: int

    @property
    def label(self) -> str:
        return f"{self.backend} x{self.nodes}"


# ------------------------------------------------------------------------------ Redis
def redis_cpu_ms(clients: list[redis.Redis]) -> float:
    total = 0.0
    for c in clients:
        info = c.info("cpu")
        total += (float(info["used_cpu_user"]) + float(info["used_cpu_sys"])) * 1000
    return total


def delete_prefix(client: redis.Redis, prefix: str) -> int:
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=prefix + "*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            deleted += int(client.delete(*batch))
            batch.clear()
    if batch:
        deleted += int(client.delete(*batch))
    return deleted


def free_port_pair() -> int:
    """A free port P whose cluster bus port P + 10000 is free too."""
    for _ in range(200):
        p = run.free_port()
        if p + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 10000))
            except OSError:
                continue
        return p
    raise RuntimeError("no free port pair for a Redis Cluster node")


class RedisCluster:
    """Three Redis Cluster masters on loopback ports, in a temporary directory; stopped on exit."""

    def __init__(self, tmp: Path, masters: int = 3) -> None:
        self.dir = tmp / "redis-cluster"
        self.dir.mkdir()
        self.masters = masters
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> RedisCluster:
        try:
            for _ in range(self.masters):
                port = free_port_pair()
                self.ports.append(port)
                log = (self.dir / f"{port}.log").open("wb")
                self.procs.append(
                    subprocess.Popen(
                        [
                            "redis-server",
                            "--port",
                            str(port),
                            "--bind",
                            "127.0.0.1",
                            "--cluster-enabled",
                            "yes",
                            "--cluster-config-file",
                            f"nodes-{port}.conf",
                            "--dir",
                            str(self.dir),
                            "--save",
                            "",
                            "--appendonly",
                            "no",
                            "--protected-mode",
                            "no",
                        ],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
            for port in self.ports:
                self._wait(lambda p=port: redis.Redis(port=p, socket_timeout=1).ping(), 10)
            subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *[f"127.0.0.1:{p}" for p in self.ports],
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                capture_output=True,
                timeout=60,
                check=True,
            )
            for port in self.ports:
                self._wait(
                    lambda p=port: (
                        redis.Redis(port=p, socket_timeout=1).cluster("info")["cluster_state"]
                        == "ok"
                    ),
                    30,
                )
        except Exception:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def _wait(check: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(Exception):
                if check():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("Redis Cluster did not come up")
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def clients(self) -> list[redis.Redis]:
        return [redis.Redis(port=p, socket_timeout=5) for p in self.ports]

    def version(self) -> str:
        return str(redis.Redis(port=self.ports[0]).info("server").get("redis_version"))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


# ------------------------------------------------------------------------------ one run
class Shim:
    """What ``run.run_loadgen`` needs of a server: its URL and a process to sample."""

    def __init__(self, node: crowd.Node) -> None:
        self.url = node.url
        self.proc = node.server.proc


def roles(scenario: str, n: int) -> list[str]:
    if scenario == "broadcast":
        return ["sender+receivers"] + ["receivers"] * (n - 1)
    if n == 1:
        return ["sender+receiver"]
    return ["sender", "receiver"] + ["bystander"] * (n - 2)


def one_run(
    rev: str,
    target: crowd.Target,
    setup: Setup,
    scenario: str,
    timing: dict[str, float],
    redis_url: str,
    redis_clients: list[redis.Redis],
    prefix: str,
    tmp: Path,
    profile: Path | None = None,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "revision": rev,
        "setup": setup.label,
        "backend": setup.backend,
        "nodes": setup.nodes,
        "scenario": scenario,
        "roles": roles(scenario, setup.nodes),
    }
    env = {**crowd.RATES_LIFTED_ENV}
    if setup.backend == "memory":
        env["WSHUB_BACKEND"] = "memory"
    else:
        env.update(WSHUB_BACKEND="redis", WSHUB_REDIS_URL=redis_url, WSHUB_REDIS_PREFIX=prefix)
        entry["redis_prefix"] = prefix
    nodes: list[crowd.Node] = []
    try:
        for _ in range(setup.nodes):
            nodes.append(
                crowd.Node(target, tmp, hb_interval=run.QUIET_HEARTBEAT_INTERVAL, gateway_env=env)
            )
        for node in nodes:
            node.wait_ready(40)
        urls = [n.url for n in nodes]
        if scenario == "dm":
            plan = run.Plan("dm-rate", {})
            opts: dict[str, Any] = {
                "pairs": 50,
                "rate": DM_RATE,
                "urlSenders": urls[0],
                "urlReceivers": urls[min(1, len(urls) - 1)],
            }
            if len(urls) > 2:
                opts.update(urlBystanders=",".join(urls[2:]), bystanders=BYSTANDER_CLIENTS)
        else:
            plan = run.Plan("broadcast-rate", {})
            opts = {
                "receivers": 500,
                "rate": 20,
                "urlSenders": urls[0],
                "urlReceivers": ",".join(urls),
            }
        # Connects 10 at a time everywhere: the after revision's Redis Cluster client refuses
        # more than 32 calls in flight per Redis node (see bench/README.md), and the connects
        # are not what this bench measures.
        opts.update(
            warmup=timing["warmup"],
            duration=timing["duration"],
            idleWindow=timing["idle"],
            concurrency=10,
        )
        entry["options"] = opts

        spies: list[crowd.PySpy] = []
        calls = [0]

        def extra() -> dict[str, float]:
            # Marks come in this order: idle-start, idle-end, start, end. With --profile, py-spy
            # records the nodes that do the work from the load window's start, for its length.
            calls[0] += 1
            if profile is not None and calls[0] == 3:
                for k, n in enumerate(nodes[:2]):
                    out_file = (
                        profile / f"{rev}-{scenario}-{setup.backend}{setup.nodes}-n{k}.folded"
                    )
                    spies.append(crowd.PySpy(n.pid, timing["duration"], out_file))
            out = {
                f"node_cpu_ms:{k}": crowd.tree_cpu_ms_precise(n.pid) for k, n in enumerate(nodes)
            }
            if redis_clients:
                out["redis_cpu_ms"] = redis_cpu_ms(redis_clients)
            return out

        budget = timing["warmup"] + timing["duration"] + timing["idle"] + 40
        res, marks = run.run_loadgen(Shim(nodes[0]), plan, opts, None, budget, extra_sample=extra)
        entry["result"] = {k: v for k, v in res.items() if k != "marks"}
        if "error" in res:
            raise RuntimeError(f"load generator: {res['error']} {res.get('stderr', '')}")
        if spies:
            entry["profile"] = [spy.wait() for spy in spies]
        entry["metrics"] = m = metrics_of(scenario, setup.nodes, res, marks)
        run.log(
            f"{rev:<6} {scenario:<9} {setup.label:<10} {run.fmt(m['throughput'])}/s "
            f"per node cpu/1k={[round(x, 1) for x in m['node_cpu_ms_per_1k']]} "
            f"sum={run.fmt(m['sum_cpu_ms_per_1k'])} redis={run.fmt(m['redis_cpu_ms_per_1k'])} "
            f"lost={m['lost']} others={run.fmt(m['others_cpu_util'])}"
        )
    except Exception as exc:  # reported; the bench goes on
        entry["error"] = f"{rev} {scenario} {setup.label}: {exc}"
        run.log(entry["error"])
    finally:
        for node in nodes:
            node.stop()
        entry["log"] = [ln for n in nodes for ln in n.log_lines(10)]
        time.sleep(0.5)
    return entry


def metrics_of(
    scenario: str, n: int, res: dict[str, Any], marks: dict[str, dict[str, float]]
) -> dict[str, Any]:
    start, end = marks["start"], marks["end"]
    wall_s = end["t"] - start["t"]
    units = int(res["receivedInWindow"] if scenario == "dm" else res["deliveriesInWindow"])
    if units == 0:
        counts = {
            k: res.get(k)
            for k in (
                "sent",
                "received",
                "broadcasts",
                "deliveries",
                "lost",
                "failedReplies",
                "serverErrors",
            )
        }
        raise RuntimeError(
            f"nothing delivered in the window {counts}; the nodes logged: see the JSON"
        )
    per = [(end[f"node_cpu_ms:{k}"] - start[f"node_cpu_ms:{k}"]) for k in range(n)]
    idle_rate = [0.0] * n  # ms of CPU per second with no load
    if "idle-start" in marks and "idle-end" in marks:
        a, b = marks["idle-start"], marks["idle-end"]
        idle_s = b["t"] - a["t"]
        idle_rate = [(b[f"node_cpu_ms:{k}"] - a[f"node_cpu_ms:{k}"]) / idle_s for k in range(n)]
    per_1k = [c / units * 1000 for c in per]
    net_1k = [max(0.0, c - r * wall_s) / units * 1000 for c, r in zip(per, idle_rate, strict=True)]
    redis_ms = end.get("redis_cpu_ms", 0.0) - start.get("redis_cpu_ms", 0.0)
    total = sum(per)
    busy = end["machine_busy_ms"] - start["machine_busy_ms"]
    loadgen = end["loadgen_cpu_ms"] - start["loadgen_cpu_ms"]
    lat = res["latencyMs"] if scenario == "dm" else res["lastReceiverMs"]
    m: dict[str, Any] = {
        "units": units,
        "throughput": res["throughput"] if scenario == "dm" else res["deliveriesPerS"],
        "p50_ms": lat["p50"],
        "p99_ms": lat["p99"],
        "lost": res["lost"],
        "out_of_order": res["outOfOrder"],
        "errors": (res.get("serverErrors") or 0)
        + (res.get("failedReplies") or 0)
        + (res.get("connectErrors") or 0)
        + (res.get("dropped") or 0),
        "node_cpu_ms_per_1k": per_1k,
        "node_net_cpu_ms_per_1k": net_1k,
        "node_idle_cpu_ms_per_s": idle_rate,
        "node_cpu_util": [c / (wall_s * 1000) for c in per],
        "sum_cpu_ms_per_1k": total / units * 1000,
        "redis_cpu_ms_per_1k": redis_ms / units * 1000,
        "redis_cpu_util": redis_ms / (wall_s * 1000),
        "loadgen_cpu_util": loadgen / (wall_s * 1000),
        "others_cpu_util": max(0.0, busy - total - loadgen - redis_ms) / (wall_s * 1000),
    }
    if scenario == "dm" and n >= 2:
        work = per_1k[0] + per_1k[1]
        bys = per_1k[2:]
        m["sender_receiver_cpu_ms_per_1k"] = work
        if bys:
            m["bystander_cpu_ms_per_1k"] = sum(bys) / len(bys)
            m["bystander_share"] = m["bystander_cpu_ms_per_1k"] / work
            net_bys = net_1k[2:]
            m["bystander_net_cpu_ms_per_1k"] = sum(net_bys) / len(net_bys)
            m["bystander_net_share"] = m["bystander_net_cpu_ms_per_1k"] / (net_1k[0] + net_1k[1])
    return m


# ------------------------------------------------------------------------------ report
def reference(runs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, float]]:
    """Per revision and scenario, the memory x1 reference: the mean of its runs (the first and
    the last of the scenario), so that one noisy moment moves every ratio less."""
    runs_of: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        if r["backend"] == "memory" and "metrics" in r:
            runs_of.setdefault((r["revision"], r["scenario"]), []).append(r["metrics"])
    return {
        key: {"sum_cpu_ms_per_1k": sum(m["sum_cpu_ms_per_1k"] for m in ms) / len(ms)}
        for key, ms in runs_of.items()
    }


def markdown(report: dict[str, Any]) -> str:
    mi = report["machine"]
    rv = report["revisions"]
    runs = report["runs"]
    ref = reference(runs)
    f = run.fmt
    lines = [
        crowd.run_line(report),
        "",
        crowd.machine_words(mi) + f"; Redis {report['redis_version']} on 127.0.0.1:6379 "
        "(shared with other sessions: its CPU figure includes theirs)"
        + (
            f"; Redis Cluster: 3 masters, Redis {report['cluster_version']}, started by the bench"
            if report.get("cluster_version")
            else ""
        )
        + f". before = `{rv['before']['sha'][:10]}` {rv['before']['subject'][:50]}…; "
        + crowd.after_words(rv)
        + (
            f" **after run from `{report['after_tree']}`, not the working tree**"
            if report.get("after_tree")
            else ""
        )
        + f". Windows: idle {report['timing']['idle']:g} s, warm-up "
        f"{report['timing']['warmup']:g} s, load {report['timing']['duration']:g} s; one run per "
        "cell.",
        "",
        f"**DM, {DM_RATE}/s, senders on node 0, receivers on node 1, nodes 2..N-1 bystanders "
        f"({BYSTANDER_CLIENTS} idle clients each).** CPU-ms per 1 000 DMs (each with its "
        "`directSent`), per node and summed over the nodes; bystander = the mean of the "
        "bystander nodes; share = bystander / (sender + receiver); vs memory = sum / the same "
        "revision's memory x1 (the mean of its two runs, the first and the last of the "
        "scenario); Redis = the Redis server(s), `INFO cpu`.",
        "",
        "| revision | setup | DMs/s | p50 / p99 ms | sender | receiver | bystander (each) "
        "| bystander share | sum over nodes | vs memory x1 | Redis | lost / errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        if r["scenario"] != "dm":
            continue
        if "metrics" not in r:
            lines.append(
                f"| {r['revision']} | {r['setup']} | {r.get('error', 'failed')[:120]} "
                + "|" * 10
                + "|"
            )
            continue
        m = r["metrics"]
        per = m["node_cpu_ms_per_1k"]
        base = ref.get((r["revision"], "dm"))
        if r["nodes"] == 1:
            sender, receiver = f"{f(per[0])} (both)", "-"
        else:
            sender, receiver = f(per[0]), f(per[1])
        bys = m.get("bystander_cpu_ms_per_1k")
        lines.append(
            f"| {r['revision']} | {r['setup']} | {f(m['throughput'])} | {f(m['p50_ms'])} / "
            f"{f(m['p99_ms'])} | {sender} | {receiver} | {f(bys) if bys is not None else '-'} | "
            + (f"{m['bystander_share'] * 100:.1f}%" if "bystander_share" in m else "-")
            + f" | {f(m['sum_cpu_ms_per_1k'])} | "
            + (f"{m['sum_cpu_ms_per_1k'] / base['sum_cpu_ms_per_1k']:.2f}x" if base else "-")
            + f" | {f(m['redis_cpu_ms_per_1k'])} | {m['lost']} / {m['errors']} |"
        )
    for note in report["not_run"]:
        lines.append(
            f"| {note['revision']} | {note['setup']} | not run: {note['why']} " + "|" * 10 + "|"
        )
    lines += [
        "",
        "Each node's idle CPU (ms per second, every client connected, no load) and the "
        "bystander's figure with that idle cost taken out (net):",
        "",
        "| revision | setup | idle ms/s per node | bystander net CPU-ms / 1k | net share |",
        "|---|---|---|---|---|",
    ]
    for r in runs:
        if r["scenario"] == "dm" and "metrics" in r and r["nodes"] > 2:
            m = r["metrics"]
            lines.append(
                f"| {r['revision']} | {r['setup']} | "
                + " / ".join(f(x) for x in m["node_idle_cpu_ms_per_s"])
                + f" | {f(m['bystander_net_cpu_ms_per_1k'])} | "
                f"{m['bystander_net_share'] * 100:.1f}% |"
            )
    lines += [
        "",
        "**Broadcast, 20/s, sender on node 0, 500 receivers spread over the nodes** (501 "
        "deliveries per broadcast). CPU-ms per 1 000 deliveries.",
        "",
        "| revision | setup | deliveries/s | last receiver p50 / p99 ms | per node (node 0 first) "
        "| sum over nodes | vs memory x1 | Redis | lost / errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        if r["scenario"] != "broadcast":
            continue
        if "metrics" not in r:
            lines.append(
                f"| {r['revision']} | {r['setup']} | {r.get('error', 'failed')[:120]} "
                + "|" * 7
                + "|"
            )
            continue
        m = r["metrics"]
        base = ref.get((r["revision"], "broadcast"))
        lines.append(
            f"| {r['revision']} | {r['setup']} | {f(m['throughput'])} | {f(m['p50_ms'])} / "
            f"{f(m['p99_ms'])} | "
            + " / ".join(f(x) for x in m["node_cpu_ms_per_1k"])
            + f" | {f(m['sum_cpu_ms_per_1k'])} | "
            + (f"{m['sum_cpu_ms_per_1k'] / base['sum_cpu_ms_per_1k']:.2f}x" if base else "-")
            + f" | {f(m['redis_cpu_ms_per_1k'])} | {m['lost']} / {m['errors']} |"
        )
    lines += [
        "",
        "Targets (issue 13), after revision, four nodes, DM: bystander share <= 5%; sum over the "
        "nodes <= 1.6x memory x1.",
        "",
    ]
    for r in runs:
        if (
            r["revision"] == "after"
            and r["scenario"] == "dm"
            and r["nodes"] == 4
            and "metrics" in r
        ):
            m = r["metrics"]
            base = ref.get(("after", "dm"))
            share = m.get("bystander_share")
            ratio = m["sum_cpu_ms_per_1k"] / base["sum_cpu_ms_per_1k"] if base else None
            lines.append(
                f"- {r['setup']}: bystander share "
                + (
                    f"{share * 100:.1f}% ({'met' if share <= 0.05 else '**not met**'})"
                    if share is not None
                    else "-"
                )
                + "; sum vs memory "
                + (
                    f"{ratio:.2f}x ({'met' if ratio <= 1.6 else '**not met**'})"
                    if ratio is not None
                    else "-"
                )
            )
    lines += [
        "",
        "Where the CPU went in the load window, as a share of one core: each node (node 0 "
        "first), Redis, the load generator, every other process on the machine (other "
        "sessions: above about 0.3 the run was disturbed).",
        "",
        "| revision | scenario | setup | nodes | Redis | loadgen | others |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        if "metrics" in r:
            m = r["metrics"]
            lines.append(
                f"| {r['revision']} | {r['scenario']} | {r['setup']} | "
                + " / ".join(f"{x:.2f}" for x in m["node_cpu_util"])
                + f" | {m['redis_cpu_util']:.2f} | {m['loadgen_cpu_util']:.2f} | "
                f"{m['others_cpu_util']:.2f} |"
            )
    if report["failures"]:
        lines += ["", *[f"Failed: {x}" for x in report["failures"]]]
    lines += [
        "",
        f"Redis keys deleted at the end (prefix `{report['redis_prefix']}`): "
        f"{report['redis_keys_deleted']}",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ main
def main() -> int:
    parser = argparse.ArgumentParser(description="Gateway scale-out: N processes on Redis")
    parser.add_argument("--quick", action="store_true", help="short windows (validation)")
    parser.add_argument("--nodes", default="1,2,4", help="Redis node counts (default 1,2,4)")
    parser.add_argument("--only", default="", help="comma list of: dm, broadcast")
    parser.add_argument("--revisions", default="before,after")
    parser.add_argument("--no-cluster", action="store_true", help="skip the Redis Cluster rows")
    parser.add_argument("--cluster-nodes", type=int, default=4)
    parser.add_argument("--before", default=crowd.BEFORE_REV)
    parser.add_argument(
        "--after-tree",
        default=None,
        help="run the after revision from this directory (a checkout with a patch to try) "
        "instead of the working tree",
    )
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument(
        "--profile",
        default="",
        help="a directory: py-spy records nodes 0 and 1 during every load window (folded "
        "stacks there, a summary in the JSON); it costs those nodes CPU, so the figures of "
        "such a run are not comparable",
    )
    parser.add_argument("--output", default=str(run.RESULTS / "scaling"))
    args = parser.parse_args()
    timing = QUICK if args.quick else FULL
    scenarios = [s for s in args.only.split(",") if s] or list(SCENARIOS)
    revisions = [r for r in args.revisions.split(",") if r]
    if any(s not in SCENARIOS for s in scenarios) or any(
        r not in ("before", "after") for r in revisions
    ):
        parser.error("--only: dm, broadcast; --revisions: before, after")
    counts = sorted({int(x) for x in args.nodes.split(",") if x})
    if not counts or not all(1 <= c <= 8 for c in counts):
        parser.error("--nodes: 1 to 8 each")
    problem = run.ensure_npm(run.LOADGEN)
    if problem:
        run.log(problem)
        return 1
    shared = redis.Redis.from_url(args.redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        redis_version = shared.info("server").get("redis_version")
    except redis.RedisError as exc:
        run.log(f"Redis at {args.redis_url} is not reachable: {exc}")
        return 2
    if not args.no_cluster and not (shutil.which("redis-server") and shutil.which("redis-cli")):
        run.log("redis-server / redis-cli not found: no Redis Cluster rows")
        args.no_cluster = True

    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    base_prefix = f"wshub-bench-{uuid.uuid4().hex[:12]}:"
    crowd.exit_on_signals()
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="wshub-scaling-"))
    runs: list[dict[str, Any]] = []
    failures: list[str] = []
    not_run: list[dict[str, str]] = []
    deleted = 0
    cluster_version = None
    ids = iter(range(1, 10_000))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, tmp, True)
        revs = stack.enter_context(crowd.Revisions(args.before, tmp))
        cluster: RedisCluster | None = None
        if not args.no_cluster and "after" in revisions:
            try:
                cluster = stack.enter_context(RedisCluster(tmp))
                cluster_version = cluster.version()
                run.log(f"Redis Cluster up: {cluster.url}")
            except Exception as exc:
                run.log(f"could not start a Redis Cluster: {exc}")
                not_run.append(
                    {
                        "revision": "after",
                        "setup": f"cluster x{args.cluster_nodes}",
                        "why": f"Redis Cluster did not start: {exc}",
                    }
                )
        targets = {
            "before": crowd.Target("before", "gateway", "gateway before", revs.worktree),
            "after": crowd.Target(
                "after",
                "gateway",
                "gateway after",
                Path(args.after_tree).resolve() if args.after_tree else None,
            ),
        }
        setups = [Setup("memory", 1), *[Setup("redis", c) for c in counts]]
        if not args.no_cluster:
            not_run.append(
                {
                    "revision": "before",
                    "setup": f"cluster x{args.cluster_nodes}",
                    "why": "python-socketio's Redis manager (the before revision's backplane) "
                    "takes one Redis URL and has no Redis Cluster support",
                }
            )
        try:
            for scenario in scenarios:
                # The memory-backed reference runs first and again last: the ratios use the mean.
                for setup_ in [*setups, Setup("cluster", args.cluster_nodes), Setup("memory", 1)]:
                    for rev in revisions:
                        if setup_.backend == "cluster" and (rev == "before" or cluster is None):
                            continue
                        if time.monotonic() - started > DEADLINE_S:
                            failures.append(f"{rev} {scenario} {setup_.label}: skipped (time)")
                            continue
                        url = (
                            cluster.url
                            if setup_.backend == "cluster" and cluster
                            else args.redis_url
                        )
                        rclients = (
                            cluster.clients()
                            if setup_.backend == "cluster" and cluster
                            else [shared]
                        )
                        entry = one_run(
                            rev,
                            targets[rev],
                            setup_,
                            scenario,
                            timing,
                            url,
                            rclients,
                            f"{base_prefix}{next(ids)}:",
                            tmp,
                            Path(args.profile) if args.profile else None,
                        )
                        if "error" in entry:
                            failures.append(entry["error"].splitlines()[0])
                        runs.append(entry)
        finally:
            try:
                deleted = delete_prefix(shared, base_prefix)
                run.log(f"deleted {deleted} Redis keys under {base_prefix}")
            except redis.RedisError as exc:
                run.log(f"could not delete the Redis keys under {base_prefix}: {exc}")
        rev_info = revs.info()

    report = {
        **crowd.report_head("bench/scaling.py", args.quick, started, rev_info),
        "redis_version": redis_version,
        "cluster_version": cluster_version,
        "redis_url": args.redis_url,
        "redis_prefix": base_prefix,
        "redis_keys_deleted": deleted,
        "timing": timing,
        "after_tree": args.after_tree,
        "gateway_env": {**crowd.RATES_LIFTED_ENV, "WSHUB_HEARTBEAT_INTERVAL": "120.0"},
        "not_run": not_run,
        "failures": failures,
        "runs": runs,
    }
    return crowd.write_report(report, args.output, "Scaling across gateway processes", markdown)


if __name__ == "__main__":
    sys.exit(main())
