"""Shared machinery of the crowd benches (idle_crowd.py, reconnect_storm.py, client_listing.py).

- **Servers.** The gateway at two revisions (``before``: a detached ``git worktree`` of an older
  commit, run as ``compare_revisions.py`` runs one; ``after``: the working tree), the bare
  python-socketio relay and the Node relay, each a fresh process on a free 127.0.0.1 port.
- **Clients.** Controlled load generator processes (``loadgen.js --scenario crowd|polite|lister``)
  that take commands on stdin and report ``EVT {json}`` lines; the crowd is split over several
  processes (each under the 20 000 descriptor limit, each binding its own loopback source
  addresses so that no source address runs out of ephemeral ports), and the polite client has a
  process of its own.
- **CPU.** The server's process tree, every client process and the whole machine, from ``/proc``,
  at the moments the runner chooses.

Every process started here is in its own process group and is killed by it at the end; every
wait is bounded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import queue
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import compare_revisions as cr
import run

BEFORE_REV = "129771c"
# Admission lifted for every gateway: all clients come from loopback and connect far faster than
# one address would (the crowd is what is measured, not the per-address caps). The gateway
# command of run.py applies run.GATEWAY_BENCH_ENV first (admission and every event rate lifted),
# then a bench's own settings: a bench that wants default event rates says them explicitly.
ADMISSION_ENV = {
    "WSHUB_MAX_CONNECTIONS": "100000",
    "WSHUB_MAX_CONNECTIONS_PER_IP": "100000",
    "WSHUB_CONNECT_RATE_PER_IP": "100000",
    "WSHUB_CONNECT_BURST_PER_IP": "100000",
    "WSHUB_LOG_LEVEL": "WARNING",
}
# Per-connection event rates lifted too (run.py's GATEWAY_BENCH_ENV, the system:clients class
# included, which only the after revision has; the before revision ignores the names it lacks).
RATES_LIFTED_ENV = dict(run.GATEWAY_BENCH_ENV)
# Source addresses: crowd process k binds 127.0.<k+1>.1 .. 127.0.<k+1>.ADDRS_PER_PROC (the whole
# of 127.0.0.0/8 is routed to the loopback interface on Linux).
ADDRS_PER_PROC = 4


def pctl(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(-(-p * len(s) // 1)) - 1))]


def stats_of(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None, "mean": None}
    return {
        "n": len(values),
        "p50": pctl(values, 0.5),
        "p99": pctl(values, 0.99),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


# ------------------------------------------------------------------------------ servers
@dataclass
class Target:
    """One server to measure: a gateway revision or a relay."""

    key: str  # column name: before, after, baseline, node, or before/after + a variant
    kind: str  # "gateway", "baseline" or "node"
    label: str
    worktree: Path | None = None  # gateway only; None = the working tree
    env: dict[str, str] = field(default_factory=dict)  # gateway only, on top of its defaults


class Revisions:
    """The before revision's worktree, added on entry and removed on exit (on failure too)."""

    def __init__(self, before: str, tmp: Path) -> None:
        self.rev = cr.Revision(before, "before")
        self.tmp = tmp

    def __enter__(self) -> Revisions:
        cr.resolve(self.rev)
        trees = self.tmp / "trees"
        trees.mkdir(exist_ok=True)
        cr.add_worktree(self.rev, trees)
        where = cr.imported_from(cr.RevisionSpec("gateway", {}, worktree=self.rev.worktree))
        self.rev.imported = where
        if not all(str(v).startswith(str(self.rev.worktree) + os.sep) for v in where.values()):
            raise RuntimeError(
                f"{self.rev.rev}: `import gateway` does not load the worktree: {where}"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        cr.remove_worktrees([self.rev])

    @property
    def worktree(self) -> Path:
        assert self.rev.worktree is not None
        return self.rev.worktree

    def info(self) -> dict[str, Any]:
        head = cr.git("rev-parse", "HEAD")
        dirty = bool(cr.git("status", "--porcelain", "--", "gateway"))
        return {
            "before": {
                "rev": self.rev.rev,
                "sha": self.rev.sha,
                "subject": self.rev.subject,
                "gateway_imported_from": self.rev.imported,
            },
            "after": {
                "rev": "working tree",
                "sha": head,
                "subject": cr.git("log", "-1", "--format=%s", head),
                "gateway_dirty": dirty,
            },
        }


class Node:
    """One server process (a gateway node or a relay) on a free 127.0.0.1 port."""

    def __init__(
        self,
        target: Target,
        logdir: Path,
        *,
        hb_interval: float,
        gateway_env: dict[str, str] | None = None,
        tag: str = "",
    ) -> None:
        self.target = target
        if target.kind == "gateway":
            env = {**(gateway_env or {}), **target.env}
            spec: run.ServerSpec = cr.RevisionSpec("gateway", env, worktree=target.worktree)
            self.server: run.Server = cr.RevisionServer(spec, hb_interval, None, logdir)  # type: ignore[arg-type]
        else:
            self.server = run.Server(run.ServerSpec(target.kind, {}), hb_interval, None, logdir)
        if tag:
            self.server.logfile = self.server.logfile  # kept for the report

    @property
    def pid(self) -> int:
        return self.server.proc.pid

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    def wait_ready(self, timeout: float = 30) -> None:
        if not run.wait_ready(self.server.proc, self.server.port, False, timeout=timeout):
            tail = self.server.log_tail(12)
            raise RuntimeError(f"{self.target.key} did not become ready:\n{tail}")

    def stop(self) -> None:
        self.server.stop()

    def log_lines(self, limit: int = 40) -> list[str]:
        with contextlib.suppress(OSError):
            lines = [
                ln for ln in self.server.logfile.read_text(errors="replace").splitlines() if ln
            ]
            return [ln[:300] for ln in lines[:limit]]
        return []


# ------------------------------------------------------------------------------ /proc
def tree_cpu_ms(root: int) -> float:
    ticks = 0
    for pid in run.process_tree(root):
        fields = run._stat_fields(pid)
        if fields is not None:
            ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ticks * 1000 / run.CLK_TCK


def tree_cpu_ms_precise(root: int) -> float:
    """CPU time (ms) of every live thread of every process under *root*, to the nanosecond
    (``/proc/PID/task/TID/schedstat``), plus what each process's reaped children used (ticks).
    A thread that ended is not counted: the gateway's threads live as long as it does."""
    total_ns = 0
    child_ticks = 0
    for pid in run.process_tree(root):
        with contextlib.suppress(OSError):
            for task in os.scandir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    total_ns += int(Path(task.path, "schedstat").read_text().split()[0])
        fields = run._stat_fields(pid)
        if fields is not None:
            child_ticks += int(fields[13]) + int(fields[14])
    return total_ns / 1e6 + child_ticks * 1000 / run.CLK_TCK


def tree_rss_kb(root: int) -> int:
    return run._tree_ticks_and_rss(root)[1]


def machine_busy_ms() -> float:
    return run._machine_ticks()[0] * 1000 / run.CLK_TCK


def snapshot(servers: dict[str, int], clients: list[int]) -> dict[str, Any]:
    """CPU (ms) of each server tree, of all client processes and of the machine, and RSS."""
    return {
        "t": time.monotonic(),
        "unix": time.time(),
        "cpu_ms": {name: tree_cpu_ms(pid) for name, pid in servers.items()},
        "rss_kb": {name: tree_rss_kb(pid) for name, pid in servers.items()},
        "clients_cpu_ms": sum(tree_cpu_ms(pid) for pid in clients),
        "machine_busy_ms": machine_busy_ms(),
    }


def window(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """What happened between two snapshots: each server's CPU, shares of a core, the noise."""
    wall_ms = (b["t"] - a["t"]) * 1000
    cpu = {k: b["cpu_ms"][k] - a["cpu_ms"][k] for k in b["cpu_ms"] if k in a["cpu_ms"]}
    clients = b["clients_cpu_ms"] - a["clients_cpu_ms"]
    busy = b["machine_busy_ms"] - a["machine_busy_ms"]
    return {
        "wall_s": wall_ms / 1000,
        "cpu_ms": cpu,
        "cpu_util": {k: v / wall_ms for k, v in cpu.items()},
        "clients_cpu_util": clients / wall_ms,
        "others_cpu_util": max(0.0, busy - sum(cpu.values()) - clients) / wall_ms,
        "rss_kb": b["rss_kb"],
    }


# ------------------------------------------------------------------------------ load generators
class Controlled:
    """A load generator process in a controlled scenario (crowd, polite, lister)."""

    def __init__(self, scenario: str, url: str, options: dict[str, Any], hard_timeout: float):
        cmd = [
            "node",
            str(run.LOADGEN / "loadgen.js"),
            "--scenario",
            scenario,
            "--url",
            url,
            "--hard-timeout",
            str(int(hard_timeout)),
        ]
        for key, value in options.items():
            flag = "--" + "".join("-" + c.lower() if c.isupper() else c for c in key)
            cmd += [flag, str(value)]
        self.scenario = scenario
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.result: dict[str, Any] | None = None
        self.stderr_tail: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._err = threading.Thread(target=self._read_err, daemon=True)
        self._err.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout
        for raw in self.proc.stdout:
            text = raw.decode(errors="replace").strip()
            if text.startswith("EVT "):
                with contextlib.suppress(ValueError):
                    body = json.loads(text[4:])
                    body["_mono"] = time.monotonic()
                    self.events.put(body)
            elif text.startswith("{"):
                with contextlib.suppress(ValueError):
                    self.result = json.loads(text)
        self.events.put({"evt": "_exit"})

    def _read_err(self) -> None:
        assert self.proc.stderr
        for raw in self.proc.stderr:
            self.stderr_tail = [*self.stderr_tail[-9:], raw.decode(errors="replace").rstrip()]

    def send(self, line: str) -> None:
        if self.proc.poll() is None and self.proc.stdin:
            with contextlib.suppress(OSError):
                self.proc.stdin.write(line.encode() + b"\n")
                self.proc.stdin.flush()

    def wait(self, name: str, timeout: float) -> dict[str, Any]:
        """The next event called *name*; others before it are dropped (hb, seg, ...)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.scenario}: no {name!r} within {timeout:.0f} s")
            try:
                body = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if body["evt"] == name:
                return body
            if body["evt"] == "_exit":
                raise RuntimeError(
                    f"{self.scenario} exited before {name!r}: {self.result or self.stderr_tail}"
                )
            if body["evt"] == "error":
                raise RuntimeError(f"{self.scenario}: {body.get('message')}")

    def drain_events(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                self.events.get_nowait()

    def finish(self, timeout: float = 20) -> dict[str, Any]:
        """Ask it to quit; its final report (or what went wrong)."""
        self.send("quit")
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._reader.join(timeout=5)
        return self.result or {"error": "no report", "stderr": self.stderr_tail}

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)


class Crowd:
    """*total* named idle clients split over *procs* processes, each with its source addresses."""

    def __init__(
        self,
        url: str,
        total: int,
        procs: int,
        *,
        concurrency: int,
        hard_timeout: float,
        run_tag: str,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.procs: list[Controlled] = []
        share, rest = divmod(total, procs)
        for k in range(procs):
            addrs = ",".join(f"127.0.{k + 1}.{j + 1}" for j in range(ADDRS_PER_PROC))
            self.procs.append(
                Controlled(
                    "crowd",
                    url,
                    {
                        "conns": share + (k < rest),
                        "concurrency": max(1, concurrency // procs),
                        "localAddresses": addrs,
                        "namePrefix": f"c{k}-{run_tag}-",
                        "connectTimeout": 20,
                        **(extra or {}),
                    },
                    hard_timeout,
                )
            )

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def wait_all(self, name: str, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        return [p.wait(name, max(0.1, deadline - time.monotonic())) for p in self.procs]

    def send(self, line: str) -> None:
        for p in self.procs:
            p.send(line)

    def grow(self, more: int, timeout: float) -> list[dict[str, Any]]:
        """*more* clients in all, split over the processes as the first ones were."""
        share, rest = divmod(more, len(self.procs))
        for k, p in enumerate(self.procs):
            p.send(f"grow {share + (k < rest)}")
        return self.wait_all("grown", timeout)

    def finish(self) -> list[dict[str, Any]]:
        return [p.finish() for p in self.procs]

    def kill(self) -> None:
        for p in self.procs:
            p.kill()


def merge_connect_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The processes' connect reports together: counts summed, time to dataSet over all clients
    (``ready_ms``), time to the Socket.IO connect as the worst process's percentiles."""
    out: dict[str, Any] = {
        "asked": sum(r["asked"] for r in reports),
        "connected": sum(r["connected"] for r in reports),
        "failed": sum(r["failed"] for r in reports),
        "first_failed": sum(r.get("firstFailed", r["failed"]) for r in reports),
        "retries": sum(r.get("retries", 0) for r in reports),
        "all_connected_s": max(r["allConnectedS"] for r in reports),
        "failures": {},
    }
    for r in reports:
        for why, n in (r.get("failures") or {}).items():
            out["failures"][why] = out["failures"].get(why, 0) + n
    out["ready_ms"] = stats_of([x for r in reports for x in r.get("readyRaw", [])])
    for r in reports:
        r.pop("readyRaw", None)  # merged; too long for the report
    parts = [r["connectMs"] for r in reports if r["connectMs"]["n"]]
    out["connect_ms_worst_process"] = {
        k: max((p[k] for p in parts), default=None) for k in ("p50", "p99", "max")
    }
    return out


def run_line(report: dict[str, Any]) -> str:
    """The first line of a result page: when, which command, how long, whether quick."""
    return f"Run {report['date']} · `{report['command']}` · wall {report['wall_s']:.0f} s" + (
        " · **quick (validation only)**" if report["quick"] else ""
    )


def machine_words(mi: dict[str, Any]) -> str:
    return (
        f"Machine: {mi['nproc']} cores, {mi['cpu_model']}, Linux {mi['kernel']}; Python "
        f"{mi['python']}, Node {mi['node']}"
    )


def after_words(rv: dict[str, Any]) -> str:
    return f"after = working tree at `{rv['after']['sha'][:10]}`" + (
        " (gateway/ modified)" if rv["after"]["gateway_dirty"] else ""
    )


def server_targets(revs: Revisions) -> dict[str, Target]:
    """The gateway before and after, the bare python-socketio relay and the Node relay."""
    return {
        "before": Target("before", "gateway", "gateway before", revs.worktree),
        "after": Target("after", "gateway", "gateway after"),
        "baseline": Target("baseline", "baseline", "python-socketio relay"),
        "node": Target("node", "node", "Node socket.io relay"),
    }


def report_head(script: str, quick: bool, started: float, revisions: Any) -> dict[str, Any]:
    """The fields every result file starts with: when, which command, how long, on what."""
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": f"{script} " + " ".join(sys.argv[1:]),
        "quick": quick,
        "wall_s": time.monotonic() - started,
        "machine": run.machine_info(),
        "revisions": revisions,
    }


def write_report(
    report: dict[str, Any], output: str, title: str, markdown: Callable[[dict[str, Any]], str]
) -> int:
    """*report* as ``output.json`` and, titled, ``output.md``; the page printed too. The exit
    status: 1 when anything failed."""
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    md = markdown(report)
    out.with_suffix(".md").write_text(f"# {title}\n\n" + md)
    print(md)
    run.log(f"done in {report['wall_s']:.0f} s; wrote {out.with_suffix('.json')} and .md")
    return 1 if report["failures"] else 0


STALL_HISTOGRAMS = ("wshub_event_loop_lag_seconds", "wshub_gc_pause_seconds")


def stall_counts(url: str) -> dict[str, dict[str, float]] | None:
    """The cumulative buckets (and ``sum``) of the gateway's stall histograms, by series (the GC's
    by generation), from its ``/metrics``; None from a server without them (the relays, older
    revisions)."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return None
    series: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        for name in STALL_HISTOGRAMS:
            if not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            labels = dict(re.findall(r'(\w+)="([^"]*)"', head))
            key = name + (f" gen{labels['generation']}" if "generation" in labels else "")
            if head.startswith(name + "_bucket"):
                series.setdefault(key, {})[labels["le"]] = float(value)
            elif head.startswith(name + "_sum"):
                series.setdefault(key, {})["sum"] = float(value)
    return series or None


def stalls_between(
    a: dict[str, dict[str, float]] | None, b: dict[str, dict[str, float]] | None
) -> dict[str, dict[str, Any]] | None:
    """Per series, between two :func:`stall_counts`: how many, seconds in all, how many over
    50 ms, and the bucket bound under which the worst one fell."""
    if a is None or b is None:
        return None
    out: dict[str, dict[str, Any]] = {}
    for key, after in b.items():
        before = a.get(key, {})
        diff = {le: after[le] - before.get(le, 0.0) for le in after}
        total = diff.get("+Inf", 0.0)
        bounds = sorted((float(le), n) for le, n in diff.items() if le not in ("+Inf", "sum"))
        worst = next((le for le, n in bounds if n >= total), None) if total else 0.0
        out[key] = {
            "count": total,
            "seconds": diff.get("sum", 0.0),
            "over_50ms": total - diff.get("0.05", 0.0),
            "worst_under_s": worst,  # None: above the largest bound
        }
    return out


def nofile_limit() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def fmt_ms(v: Any) -> str:
    return run.fmt(float(v)) if isinstance(v, (int, float)) else "-"


def strip_raw(report: Any) -> Any:
    """*report* without the per-client ``readyRaw`` lists (kept out of the JSON results)."""
    if isinstance(report, dict):
        return {k: strip_raw(v) for k, v in report.items() if k != "readyRaw"}
    if isinstance(report, list):
        return [strip_raw(v) for v in report]
    return report


# ------------------------------------------------------------------------------ py-spy
class PySpy:
    """``py-spy record`` attached to a server process for *seconds*, folded stacks to *out*."""

    def __init__(self, pid: int, seconds: float, out: Path, rate: int = 250) -> None:
        exe = Path(sys.executable).parent / "py-spy"
        self.out = out
        self.proc = subprocess.Popen(
            [
                str(exe if exe.exists() else "py-spy"),
                "record",
                "-p",
                str(pid),
                "-d",
                str(max(1, int(seconds))),
                "-r",
                str(rate),
                "-f",
                "raw",
                "-o",
                str(out),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def wait(self, timeout: float = 30) -> dict[str, Any]:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        return summarize_folded(self.out)


def summarize_folded(path: Path, top: int = 25) -> dict[str, Any]:
    """Samples per function, inclusive (on the stack) and own (innermost), from folded stacks."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = [
                f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")"
                if " (" in f
                else f
                for f in stack.split(";")
            ]
            for f in set(frames):
                inclusive[f] = inclusive.get(f, 0) + n
            if frames:
                own[frames[-1]] = own.get(frames[-1], 0) + n

    def best(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, round(v / total, 3)) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {
        "samples": total,
        "inclusive": best(inclusive) if total else [],
        "own": best(own) if total else [],
    }


def exit_on_signals() -> None:
    """SIGTERM and SIGHUP unwind through the ``finally`` blocks (servers, load generators, the
    Redis Cluster and the worktrees are stopped and removed) instead of killing the runner."""

    def interrupted(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
