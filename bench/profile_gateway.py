"""WS-Hub: where the gateway spends its time under DM load (cProfile), one command (~1 minute).

::

    .venv/bin/python bench/profile_gateway.py [--duration 8] [--warmup 2] [--pairs 50]
        [--top 25] [--no-reference] [--save-prof FILE] [--output PREFIX]

It starts the gateway of the working tree (``python -m gateway serve`` as ``run.py`` does, with
``GATEWAY_BENCH_ENV`` and the 120 s heartbeat) through this script's ``--child`` mode, which
wraps ``gateway.server.runner.serve`` so that, once the event loop runs, SIGUSR1 starts a
``cProfile`` profiler and SIGUSR2 stops it and writes its stats. (A handler installed with
``signal.signal`` would not do: uvloop takes the process's signal handling over, and cProfile
only profiles the thread that enables it, so the loop itself must do it:
``loop.add_signal_handler``.) The load is the ``dm-closed`` scenario of ``run.py``; the profiler
runs exactly during the load generator's measured window (SIGUSR1 at ``MARK start``, SIGUSR2 at
``MARK end``), while the gateway's CPU time is read from ``/proc`` at the same moments.

First, unless ``--no-reference``, the same load runs once against the same wrapper without the
profiler, so that the profiler's own cost shows (CPU per DM with and without it).

The report, ``bench/results/profile.md``, groups the functions' own time into layers (event loop
machinery, socket writes, Hypercorn, wsproto, python-engineio, python-socketio, the gateway's
transport, the gateway's pipeline and services, JSON) and lists the top functions by own and by
cumulative time. See "Profile of the gateway under DM load" in ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROFILE_OUT_ENV = "WSHUB_BENCH_PROFILE_OUT"


# ------------------------------------------------------------------------------ child mode
def child(argv: list[str]) -> int:
    """Run ``gateway serve`` with a profiler that SIGUSR1 starts and SIGUSR2 stops and dumps."""
    import asyncio
    import cProfile

    from gateway.server import runner

    out = Path(os.environ[PROFILE_OUT_ENV])
    profiler = cProfile.Profile()
    state = {"on": False}

    def start() -> None:
        if not state["on"]:
            state["on"] = True
            profiler.enable()

    def stop_and_dump() -> None:
        if state["on"]:
            profiler.disable()
            state["on"] = False
        tmp = out.with_suffix(".tmp")
        profiler.dump_stats(str(tmp))
        tmp.rename(out)  # the parent waits for this name

    inner = runner.serve

    async def serve(*args: Any, **kwargs: Any) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, start)
        loop.add_signal_handler(signal.SIGUSR2, stop_and_dump)
        await inner(*args, **kwargs)

    runner.serve = serve  # run_worker looks it up in the module at call time
    from gateway.cli import main as gateway_main

    return gateway_main(argv)


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    sys.exit(child(sys.argv[2:]))

import run  # noqa: E402  (the child must not need the bench helpers)


# ------------------------------------------------------------------------------ runs
@dataclass
class ProfiledSpec(run.ServerSpec):
    """run.py's gateway command, started through this script's --child wrapper."""

    profile_out: Path | None = None

    def command(
        self, port: int, hb_interval: float, tls: tuple[Path, Path] | None
    ) -> tuple[list[str], dict[str, str]]:
        cmd, env = super().command(port, hb_interval, tls)
        assert cmd[1:3] == ["-m", "gateway"], cmd
        env[PROFILE_OUT_ENV] = str(self.profile_out)
        return [cmd[0], str(Path(__file__).resolve()), "--child", *cmd[3:]], env


def one_run(
    plan: run.Plan, opts: dict[str, Any], tmp: Path, profile: bool, name: str
) -> dict[str, Any]:
    out = tmp / f"{name}.prof"
    spec = ProfiledSpec("gateway", {}, profile_out=out)
    server = run.Server(spec, run.QUIET_HEARTBEAT_INTERVAL, None, tmp)
    entry: dict[str, Any] = {"name": name, "profiled": profile}
    calls = {"n": 0}

    def at_mark() -> dict[str, float]:
        # Called right after run.py sampled /proc at each MARK: start, then end.
        calls["n"] += 1
        if profile:
            os.kill(server.proc.pid, signal.SIGUSR1 if calls["n"] == 1 else signal.SIGUSR2)
        return {}

    try:
        if not run.wait_ready(server.proc, server.port, False, timeout=30):
            raise RuntimeError(f"gateway did not become ready: {server.log_tail(12)}")
        budget = opts["warmup"] + opts["duration"] + 40
        res, marks = run.run_loadgen(server, plan, opts, None, budget, extra_sample=at_mark)
        if "error" in res:
            raise RuntimeError(f"load generator: {res['error']} {res.get('stderr', '')}")
        entry["metrics"] = m = run.metrics_of(plan.loadgen_scenario, res, marks)
        entry["window_cpu_ms"] = marks["end"]["cpu_ms"] - marks["start"]["cpu_ms"]
        entry["window_s"] = marks["end"]["t"] - marks["start"]["t"]
        if profile:
            deadline = time.monotonic() + 15
            while not out.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            if not out.exists():
                raise RuntimeError(f"no profile was written: {server.log_tail(12)}")
            entry["prof"] = out
        run.log(
            f"{name}: {run.fmt(m['msgs_per_s'])} DMs/s, {run.fmt(m['cpu_ms_per_1k'])} CPU-ms / 1k, "
            f"p99 {run.fmt(m['p99_ms'])} ms, others {run.fmt(m.get('others_cpu_util'))}"
        )
    finally:
        server.stop()
        entry["log_tail"] = server.log_tail(8)
    return entry


# ------------------------------------------------------------------------------ analysis
LAYERS = (
    "event loop machinery",
    "socket writes",
    "Hypercorn",
    "wsproto",
    "python-engineio",
    "python-socketio",
    "gateway transport",
    "gateway pipeline + services",
    "JSON",
    "other",
)
LAYER_NOTES = {
    "event loop machinery": "asyncio's Python code (timeouts, queues, streams, futures, "
    "locks) and the `_asyncio` / uvloop / contextvars methods called from Python",
    "socket writes": "`StreamWriter.write`, i.e. uvloop's `transport.write` and the `send()` "
    "syscall under it (one per WebSocket frame)",
    "Hypercorn": "`TCPServer`, `WSStream`, the ASGI glue (and h11 during handshakes)",
    "wsproto": "WebSocket framing and parsing",
    "python-engineio": "the library's Engine.IO server, socket and packet code",
    "python-socketio": "`AsyncServer`, its manager, packet encode and decode",
    "gateway transport": "`gateway/transport` and `gateway/server`: the gateway's Engine.IO "
    "socket, Socket.IO server, manager, delivery, admission",
    "gateway pipeline + services": "the hub, pipeline (validation, permissions, rate limits), "
    "services, protocol, metrics and the rest of `gateway/`",
    "JSON": "orjson / json and the gateway's codec",
    "other": "everything else (stdlib, pydantic, logging, ...)",
}


def layer_of_file(filename: str, name: str = "") -> str | None:
    """The layer of a Python function by its file; None for built-in (C) functions."""
    if filename == "~" or filename.startswith("<"):
        return None
    f = filename.replace(os.sep, "/")
    if f.endswith("/asyncio/streams.py") and name in ("write", "writelines"):
        # StreamWriter.write only calls uvloop's transport.write, whose C code (the send()
        # syscall included) cProfile cannot see: the time shows as this function's own.
        return "socket writes"
    rules = (
        ("/gateway/protocol/codec.py", "JSON"),
        ("/gateway/transport/", "gateway transport"),
        ("/gateway/server/", "gateway transport"),
        ("/gateway/", "gateway pipeline + services"),
        ("/socketio/", "python-socketio"),
        ("/engineio/", "python-engineio"),
        ("/wsproto/", "wsproto"),
        ("/hypercorn/", "Hypercorn"),
        ("/h11/", "Hypercorn"),
        ("/asyncio/", "event loop machinery"),
        ("/uvloop/", "event loop machinery"),
        ("/contextvars", "event loop machinery"),
        ("/json/", "JSON"),
    )
    for part, layer in rules:
        if part in f:
            return layer
    return "other"


def layer_of_builtin(name: str) -> str | None:
    """The layer of a built-in function by its name; None: it goes to its callers' layers."""
    if "json" in name:
        return "JSON"
    if re.search(r"method '(write|writelines|send|sendall|sendmsg)' of '(uvloop|_socket)", name):
        return "socket writes"
    if "uvloop" in name or "_asyncio" in name or "Context" in name:
        return "event loop machinery"
    if re.search(r"method '(send|throw)' of '(coroutine|generator)' objects", name):
        return "event loop machinery"
    return None


# Where the cumulative time of one DM's path goes: three entry points that the event loop
# resumes independently (each a task of its own), and the gateway's hub inside the second.
STAGES: tuple[tuple[str, str, str], ...] = (
    (
        "hypercorn/asyncio/tcp_server.py",
        "_read_data",
        "read: Hypercorn reads the socket, wsproto parses the frame, the event is queued for "
        "the app",
    ),
    (
        "hypercorn/asyncio/task_group.py",
        "_handle",
        "handle: the ASGI app's task per connection: Engine.IO and Socket.IO decode, dispatch, "
        "the gateway's hub, packets queued for the recipients",
    ),
    (
        "gateway/hub.py",
        "handle",
        "of which the gateway's hub (pipeline, DM service, replies and delivery queued)",
    ),
    (
        "gateway/transport/engine_socket.py",
        "writer",
        "write: the writer task per connection: polls its queue, encodes, Hypercorn and "
        "wsproto frame it, `transport.write`",
    ),
)


def short_name(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    if filename == "~":
        return name
    f = filename.replace(os.sep, "/")
    for marker in ("/site-packages/", "/lib/python3.11/", str(run.ROOT) + "/"):
        if marker in f:
            f = f.split(marker, 1)[1]
            break
    return f"{f}:{line} {name}"


def analyse(prof: Path, top: int) -> dict[str, Any]:
    stats = pstats.Stats(str(prof))
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, dict[Any, Any]]]
    raw = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for _, _, tt, _, _ in raw.values())

    # Own time per layer. A built-in whose name says nothing (len, dict.get, ...) is charged to
    # the layers of its callers, in proportion to the time each caller spent in it.
    memo: dict[Any, str] = {}

    def layer(func: tuple[str, int, str], depth: int = 0) -> str:
        if func in memo:
            return memo[func]
        found = layer_of_file(func[0], func[2]) if func[0] != "~" else layer_of_builtin(func[2])
        if found is None:
            found = "other"
            if depth < 4 and func in raw:
                callers = raw[func][4]
                if callers:
                    best = max(callers.items(), key=lambda kv: kv[1][2])[0]
                    found = layer(best, depth + 1)
        memo[func] = found
        return found

    own: dict[str, float] = defaultdict(float)
    top_in_layer: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for func, (_, _, tt, _, callers) in raw.items():
        direct = layer_of_file(func[0], func[2]) if func[0] != "~" else layer_of_builtin(func[2])
        if direct is not None or not callers:
            lay = direct or "other"
            own[lay] += tt
            top_in_layer[lay].append((tt, short_name(func)))
            continue
        # Split this built-in's own time over its callers' layers.
        spent = sum(c[2] for c in callers.values()) or 1.0
        for caller, c in callers.items():
            lay = layer(caller)
            own[lay] += tt * c[2] / spent
        top_in_layer[layer(max(callers.items(), key=lambda kv: kv[1][2])[0])].append(
            (tt, short_name(func))
        )

    def row(func: tuple[str, int, str]) -> dict[str, Any]:
        cc, nc, tt, ct, _ = raw[func]
        return {
            "function": short_name(func),
            "layer": layer(func),
            "calls": nc,
            "primitive_calls": cc,
            "own_ms": tt * 1000,
            "own_share": tt / total if total else None,
            "cum_ms": ct * 1000,
            "cum_share": ct / total if total else None,
        }

    stages = []
    for suffix, name, what in STAGES:
        ct = sum(v[3] for f, v in raw.items() if f[2] == name and f[0].endswith(suffix))
        stages.append(
            {"function": f"{suffix} {name}", "what": what, "cum_ms": ct * 1000, "share": ct / total}
        )
    by_own = sorted(raw, key=lambda f: raw[f][2], reverse=True)[:top]
    # Cumulative: the loop's entry points (run_forever, Task.__step, ...) would head the list at
    # ~100% and say nothing; the list still shows them, since they bound the rest.
    by_cum = sorted(raw, key=lambda f: raw[f][3], reverse=True)[:top]
    return {
        "profiled_ms": total * 1000,
        "functions": len(raw),
        "layers": [
            {
                "layer": lay,
                "own_ms": own.get(lay, 0.0) * 1000,
                "share": own.get(lay, 0.0) / total if total else None,
                "top": [n for _, n in sorted(top_in_layer[lay], reverse=True)[:3]],
            }
            for lay in LAYERS
        ],
        "stages": stages,
        "by_own": [row(f) for f in by_own],
        "by_cum": [row(f) for f in by_cum],
    }


# ------------------------------------------------------------------------------ report
def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def markdown(report: dict[str, Any]) -> str:
    mi = report["machine"]
    prof = report["profiled"]
    ref = report.get("reference")
    a = report["analysis"]
    pm = prof["metrics"]
    lines = [
        f"Run {report['date']} · `{report['command']}` · wall {report['wall_s']:.0f} s",
        "",
        f"Machine: {mi['nproc']} cores, {mi['cpu_model']}, Linux {mi['kernel']}; "
        f"Python {mi['python']}, Node {mi['node'] or '-'}; "
        + ", ".join(f"{k} {v}" for k, v in mi["versions"].items() if "socket.io" not in k)
        + f", uvloop {report['uvloop']}, orjson {report['orjson']}",
        "",
        f"Gateway: the working tree at `{report['git_head'][:10]}`"
        + (
            f" (with uncommitted changes under `gateway/`: {report['git_dirty']})"
            if report["git_dirty"]
            else " (no uncommitted change under `gateway/`)"
        )
        + ", one worker, memory backend, `GATEWAY_BENCH_ENV` (limits lifted, log level WARNING). "
        f"Load: `dm-closed`, {report['plan']['pairs']} pairs, warm-up {report['plan']['warmup']} "
        f"s, profiled window {report['plan']['duration']} s. Profiler: `cProfile` (wall-clock "
        "timer), enabled by the event loop at the window's start and stopped at its end.",
        "",
        "| run | DMs/s | server CPU-ms / 1k DMs | server cores | p50 / p99 ms | others |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in (("without profiler (same wrapper)", ref), ("with cProfile", prof)):
        if r is None or "metrics" not in r:
            continue
        m = r["metrics"]
        lines.append(
            f"| {label} | {run.fmt(m['msgs_per_s'])} | {run.fmt(m['cpu_ms_per_1k'])} | "
            f"{run.fmt(m.get('server_cpu_util'))} | {run.fmt(m['p50_ms'])} / "
            f"{run.fmt(m['p99_ms'])} | {run.fmt(m.get('others_cpu_util'))} |"
        )
    overhead = ""
    if ref and "metrics" in ref:
        overhead = (
            f" With the profiler on, each DM cost "
            f"{pm['cpu_ms_per_1k'] / ref['metrics']['cpu_ms_per_1k']:.2f}x the CPU it cost "
            "without it: that is the profiler's own overhead, charged to the Python functions "
            "it times."
        )
    lines += [
        "",
        f"The profiler saw {a['profiled_ms']:.0f} ms of execution in {a['functions']} functions "
        f"during the window, against {prof['window_cpu_ms']:.0f} ms of gateway CPU time from "
        f"`/proc` over {prof['window_s']:.2f} s. What it cannot see on its own: uvloop's C code "
        "(epoll, reading sockets, running callbacks) outside the Python functions, and the "
        "profiler's bookkeeping between calls. uvloop's methods are Cython functions that "
        "cProfile does not record at all: their time (`transport.write` and its `send()`, "
        "`call_at`, `create_future`, ...) is counted in the own time of the Python function "
        "that calls them." + overhead + " The overhead is a roughly fixed cost per Python call, "
        "so the shares below overstate the layers made of many small Python calls (asyncio, "
        "wsproto, Hypercorn, the gateway) and understate those that spend their time in C "
        "(socket writes, JSON). Read them as a ranking, not as exact fractions.",
        "",
        "### Own time by layer",
        "",
        "Each function's own time (not counting what it calls) goes to its layer, by the file "
        "it lives in. A built-in C function goes by its name where that tells (uvloop and "
        "`_asyncio` methods, coroutine `send`, the transport's `write`, orjson); any other "
        "built-in (`len`, `dict.get`, `bytes.join`, ...) goes to the layers of its callers. "
        "Shares are of the time the profiler saw.",
        "",
        "| layer | own ms | share | biggest functions | what |",
        "|---|---|---|---|---|",
    ]
    for lay in sorted(a["layers"], key=lambda x: x["own_ms"], reverse=True):
        lines.append(
            f"| {lay['layer']} | {lay['own_ms']:.0f} | {pct(lay['share'])} | "
            + "<br>".join(f"`{n}`" for n in lay["top"])
            + f" | {LAYER_NOTES[lay['layer']]} |"
        )
    lines += [
        "",
        "### The three stages of the path",
        "",
        "Cumulative time of the entry points the event loop resumes: reading, handling and "
        "writing run as separate tasks, so their shares add up to about 100%.",
        "",
        "| stage | function | cumulative ms | share |",
        "|---|---|---|---|",
    ]
    for st in a["stages"]:
        lines.append(
            f"| {st['what']} | `{st['function']}` | {st['cum_ms']:.0f} | {pct(st['share'])} |"
        )
    for key, title in (("by_own", "Top functions by own time"), ("by_cum", "Top by cumulative")):
        lines += [
            "",
            f"### {title}",
            "",
            "| function | layer | calls | own ms | own share | cumulative ms | cum. share |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in a[key]:
            calls = (
                str(r["calls"])
                if r["calls"] == r["primitive_calls"]
                else f"{r['calls']}/{r['primitive_calls']}"
            )
            lines.append(
                f"| `{r['function']}` | {r['layer']} | {calls} | {r['own_ms']:.0f} | "
                f"{pct(r['own_share'])} | {r['cum_ms']:.0f} | {pct(r['cum_share'])} |"
            )
    lines += [
        "",
        "Reading the cumulative list: a coroutine's figures add up the time of each of its "
        "resumptions, and its call count is the number of resumptions. The top of the list is "
        "one chain of nested coroutines, each connection's ASGI task (Hypercorn, Engine.IO, "
        "Socket.IO, then the gateway), so its rows share the same time.",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ main
def main() -> int:
    parser = argparse.ArgumentParser(description="WS-Hub: cProfile of the gateway under DM load")
    parser.add_argument("--duration", type=float, default=8.0, help="profiled window, s")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up before it, s")
    parser.add_argument("--pairs", type=int, default=50, help="DM sender/receiver pairs")
    parser.add_argument("--top", type=int, default=25, help="rows of the function tables")
    parser.add_argument(
        "--no-reference", action="store_true", help="skip the run without the profiler"
    )
    parser.add_argument("--save-prof", help="keep the raw cProfile stats in this file")
    parser.add_argument(
        "--output",
        default=str(run.RESULTS / "profile"),
        help="path prefix of the .md result (default bench/results/profile)",
    )
    args = parser.parse_args()
    if not 1 <= args.duration <= 60 or not 0.5 <= args.warmup <= 10:
        parser.error("--duration must be 1..60 s and --warmup 0.5..10 s")
    if shutil.which("node") is None:
        run.log("node is required: the load generator is bench/loadgen (socket.io-client)")
        return 1
    problem = run.ensure_npm(run.LOADGEN)
    if problem:
        run.log(problem)
        return 1

    plan = run.Plan("dm-closed", {"pairs": args.pairs, "warmup": args.warmup})
    opts = {**plan.options, "duration": args.duration}
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="wshub-profile-"))
    try:
        reference = None if args.no_reference else one_run(plan, opts, tmp, False, "reference")
        time.sleep(0.5)
        profiled = one_run(plan, opts, tmp, True, "profiled")
        analysis = analyse(profiled["prof"], args.top)
        if args.save_prof:
            shutil.copyfile(profiled["prof"], args.save_prof)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def git(*a: str) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            return subprocess.run(
                ["git", *a], cwd=run.ROOT, capture_output=True, text=True, timeout=30
            ).stdout.strip()
        return ""

    from importlib import metadata

    report = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["bench/profile_gateway.py", *sys.argv[1:]]),
        "wall_s": time.monotonic() - started,
        "machine": run.machine_info(),
        "uvloop": metadata.version("uvloop"),
        "orjson": metadata.version("orjson"),
        "git_head": git("rev-parse", "HEAD"),
        "git_dirty": " ".join(git("status", "--porcelain", "--", "gateway").split()),
        "plan": opts,
        "reference": {k: v for k, v in (reference or {}).items() if k != "prof"} or None,
        "profiled": {k: v for k, v in profiled.items() if k != "prof"},
        "analysis": analysis,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    md = markdown(report)
    out.with_suffix(".md").write_text(md)
    print(md)
    run.log(f"done in {report['wall_s']:.0f} s; wrote {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
