"""WS-Hub benchmark (issue 15): a polite client's round trips next to an idle crowd.

One command, bounded in time (full: about 9 minutes, never more than 12; ``--quick``: about
2 minutes)::

    .venv/bin/python bench/idle_crowd.py [--quick] [--sizes 10000,15000]
        [--servers before,after,baseline,node] [--procs 2] [--output PREFIX]

For every crowd size and server: a fresh server on a free 127.0.0.1 port; one polite client (a
load generator process of its own) that sends ``client-ping`` every 100 ms and times each
``client-pong``; then N named idle clients (official socket.io-client, split over ``--procs``
processes, each binding its own loopback source addresses), connected ``--fill-concurrency`` at
a time. Once all are in, the runner waits for a heartbeat round to start (the polite client
reports each ``system:heartbeat``) and then measures two windows of two heartbeat intervals
each, which hold two round starts and two round closes each (the windows follow the rounds as
the polite client sees them: each ends ``--margin`` seconds after the second round close):

1. **acknowledging**: every client answers every heartbeat;
2. **not acknowledging**: the crowd stops answering (the polite client goes on), so the second
   round close of this window finds every crowd client two rounds behind, which is when the
   gateway warns them (``heartbeat_warn_after`` = 2, its default).

Reported per window: the polite client's round-trip p50 / p99 / worst (pings *sent* in the
window), the server's CPU per connection per heartbeat round (server CPU in the window / crowd
size / rounds seen by the polite client), heartbeats and warnings the crowd received, and the
noise. The relays have a heartbeat loop of their own (one emit per client every interval, no
timeout sweep, no warnings), run with the same interval: for them "not acknowledging" only
removes the inbound acks. Results: ``bench/results/idle_crowd.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import crowd
import run

SERVERS = ("before", "after", "baseline", "node")
FULL = {"sizes": [10000, 15000], "interval": 10.0, "timeout": 3.0}
QUICK = {"sizes": [2000], "interval": 4.0, "timeout": 1.5}
DEADLINE_S = 660.0  # no new run starts after this


def one_run(
    target: crowd.Target,
    size: int,
    args: argparse.Namespace,
    interval: float,
    timeout: float,
    tmp: Path,
) -> dict[str, Any]:
    entry: dict[str, Any] = {"server": target.key, "size": size}
    gateway_env = {**crowd.RATES_LIFTED_ENV, "WSHUB_HEARTBEAT_TIMEOUT": str(timeout)}
    node = crowd.Node(target, tmp, hb_interval=interval, gateway_env=gateway_env)
    polite: crowd.Controlled | None = None
    mob: crowd.Crowd | None = None
    fill_budget = 30 + size / 150  # s: 10 000 clients at 150/s at least
    hard = fill_budget + 4 * interval + 90
    try:
        node.wait_ready()
        polite = crowd.Controlled("polite", node.url, {"pingInterval": 100}, hard)
        polite.wait("ready", 20)
        rss0 = crowd.tree_rss_kb(node.pid)
        polite.send("seg fill")
        tag = uuid.uuid4().hex[:6]
        mob = crowd.Crowd(
            node.url,
            size,
            args.procs,
            concurrency=args.fill_concurrency,
            hard_timeout=hard,
            run_tag=tag,
        )
        entry["fill"] = fill = crowd.merge_connect_reports(mob.wait_all("ready", fill_budget))
        polite.send("seg -")
        run.log(
            f"{target.key:<9} {size}: {fill['connected']} connected in "
            f"{fill['all_connected_s']:.1f} s, {fill['failed']} failed"
        )
        time.sleep(1)
        # The windows follow the heartbeat rounds as the polite client sees them (a server's
        # rounds drift by the time each one takes): each starts just after a round closed and
        # ends just after the second round close that follows.
        polite.drain_events()
        polite.wait("hb", interval + 10)
        time.sleep(timeout + 1)
        clients = [polite.pid, *mob.pids]
        servers = {"server": node.pid}
        marks = [crowd.snapshot(servers, clients)]
        counts = [_crowd_counts(mob)]
        hbs: list[float] = []
        spies: dict[str, crowd.PySpy] = {}
        for k, name in enumerate(("ack", "noack")):
            if k == 1:
                mob.send("ack off")
            polite.send(f"seg {name}")
            if args.profile and target.kind == "gateway":
                # Attached for about the window's length (two intervals and the margin).
                out = Path(args.profile) / f"{target.key}-{size}-{name}.folded"
                spies[name] = crowd.PySpy(node.pid, 2 * interval + timeout + args.margin, out)
            for _ in range(2):
                hbs.append(polite.wait("hb", 2 * interval + 10)["_mono"])
            time.sleep(timeout + args.margin)
            if name == "noack" and target.kind == "gateway":
                # The round closes `timeout` after the gateway has sent the round to everyone,
                # which can be seconds after the polite client got it: wait (at most until just
                # before the next round) for the warnings to reach the crowd, then the margin.
                give_up = hbs[-1] + interval - 1
                while time.monotonic() < give_up:
                    got = _crowd_counts(mob)["heartbeatWarnings"] - counts[-1]["heartbeatWarnings"]
                    if got >= fill["connected"]:
                        break
                    time.sleep(0.5)
                time.sleep(args.margin / 2)
            marks.append(crowd.snapshot(servers, clients))
            counts.append(_crowd_counts(mob))
        polite.send("seg -")
        for name, spy in spies.items():
            entry.setdefault("profile", {})[name] = spy.wait()
        result = polite.finish()
        entry["polite"] = result
        entry["crowd"] = crowd.strip_raw(mob.finish())
        mob = None
        entry["rss_kb_per_conn"] = (marks[0]["rss_kb"]["server"] - rss0) / size
        entry["windows"] = {}
        for k, name in enumerate(("ack", "noack")):
            w = crowd.window(marks[k], marks[k + 1])
            rounds = sum(marks[k]["t"] <= t < marks[k + 1]["t"] for t in hbs)
            seg = (result.get("segments") or {}).get(name) or {}
            heartbeats = counts[k + 1]["heartbeats"] - counts[k]["heartbeats"]
            w.update(
                rounds=rounds,
                polite=seg,
                crowd_heartbeats=heartbeats,
                crowd_warnings=counts[k + 1]["heartbeatWarnings"] - counts[k]["heartbeatWarnings"],
                crowd_open=counts[k + 1]["open"],
                hb_cpu_us_per_conn_round=(
                    w["cpu_ms"]["server"] * 1000 / (size * rounds) if rounds else None
                ),
            )
            entry["windows"][name] = w
            rtt = seg.get("rttMs") or {}
            run.log(
                f"{target.key:<9} {size} {name:<5}: polite p50/p99/max "
                f"{crowd.fmt_ms(rtt.get('p50'))}/{crowd.fmt_ms(rtt.get('p99'))}/"
                f"{crowd.fmt_ms(rtt.get('max'))} ms, rounds {rounds}, "
                f"hb cpu/conn/round {crowd.fmt_ms(w['hb_cpu_us_per_conn_round'])} us, "
                f"server {w['cpu_util']['server']:.2f} core, others {w['others_cpu_util']:.2f}"
            )
        entry["fill_polite"] = (result.get("segments") or {}).get("fill")
        entry["dropped"] = counts[-1]["dropped"]
    except Exception as exc:  # reported; the bench goes on
        entry["error"] = f"{target.key} {size}: {exc}"
        run.log(entry["error"])
    finally:
        if mob is not None:
            mob.kill()
        if polite is not None:
            polite.kill()
        node.stop()
        entry["log"] = node.log_lines()
        time.sleep(1)
    return entry


def _crowd_counts(mob: crowd.Crowd) -> dict[str, int]:
    mob.send("stats")
    out: dict[str, int] = {}
    for body in mob.wait_all("stats", 15):
        for key in ("heartbeats", "heartbeatWarnings", "dropped", "open", "connectErrors"):
            out[key] = out.get(key, 0) + int(body.get(key) or 0)
    return out


# ------------------------------------------------------------------------------ report
def markdown(report: dict[str, Any]) -> str:
    mi = report["machine"]
    rv = report["revisions"]
    lines = [
        f"Run {report['date']} · `{report['command']}` · wall {report['wall_s']:.0f} s"
        + (" · **quick (validation only)**" if report["quick"] else ""),
        "",
        f"Machine: {mi['nproc']} cores, {mi['cpu_model']}, Linux {mi['kernel']}; Python "
        f"{mi['python']}, Node {mi['node']}; descriptors per process {report['nofile']}. "
        f"before = `{rv['before']['sha'][:10]}` {rv['before']['subject'][:60]}; after = working "
        f"tree at `{rv['after']['sha'][:10]}`"
        + (" (gateway/ modified)" if rv["after"]["gateway_dirty"] else "")
        + ".",
        "",
        f"Heartbeat every {report['interval']:g} s (gateway: `WSHUB_HEARTBEAT_INTERVAL="
        f"{report['interval']:g}`, `WSHUB_HEARTBEAT_TIMEOUT={report['timeout']:g}`; relays: "
        f"`--heartbeat-interval {report['interval']:g}`); each window is two intervals "
        f"({2 * report['interval']:g} s) and holds two heartbeat rounds. Crowd: "
        f"{report['procs']} load generator processes, {report['fill_concurrency']} connects in "
        "flight while filling; polite client: `client-ping` every 100 ms from a process of its "
        "own. Gateway limits lifted (`WSHUB_MAX_CONNECTIONS*`, `WSHUB_CONNECT_*`, "
        "`WSHUB_RATE_LIMIT*`).",
        "",
        "| crowd | server | window | polite p50 ms | p99 ms | worst ms | pings | rounds "
        "| server CPU-us / conn / round | server cores | crowd heartbeats | warnings | others |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in report["runs"]:
        if "error" in e:
            lines.append(f"| {e['size']} | {e['server']} | failed: {e['error'][:80]} |" + " |" * 10)
            continue
        for name, label in (("ack", "acknowledging"), ("noack", "not acknowledging")):
            w = e["windows"][name]
            rtt = (w["polite"] or {}).get("rttMs") or {}
            lines.append(
                f"| {e['size']} | {e['server']} | {label} | {crowd.fmt_ms(rtt.get('p50'))} | "
                f"{crowd.fmt_ms(rtt.get('p99'))} | {crowd.fmt_ms(rtt.get('max'))} | "
                f"{(w['polite'] or {}).get('answered', '-')} | {w['rounds']} | "
                f"{crowd.fmt_ms(w['hb_cpu_us_per_conn_round'])} | "
                f"{w['cpu_util']['server']:.2f} | {w['crowd_heartbeats']} | "
                f"{w['crowd_warnings']} | {w['others_cpu_util']:.2f} |"
            )
    lines += [
        "",
        "Filling the crowd: time until all were in, failed connects, time to `system:dataSet` "
        "over all clients, the polite client's round trips meanwhile, and the server's RSS per "
        "connection once all were in.",
        "",
        "| crowd | server | all in (s) | failed | connect p50 / p99 / max ms | polite p99 / worst "
        "ms while filling | KB / conn | dropped |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in report["runs"]:
        if "error" in e:
            continue
        f = e["fill"]
        r = f["ready_ms"]
        fp = ((e.get("fill_polite") or {}).get("rttMs")) or {}
        lines.append(
            f"| {e['size']} | {e['server']} | {f['all_connected_s']:.1f} | {f['failed']} | "
            f"{crowd.fmt_ms(r['p50'])} / {crowd.fmt_ms(r['p99'])} / {crowd.fmt_ms(r['max'])} | "
            f"{crowd.fmt_ms(fp.get('p99'))} / {crowd.fmt_ms(fp.get('max'))} | "
            f"{e['rss_kb_per_conn']:.1f} | {e['dropped']} |"
        )
    lines += [
        "",
        "Targets (issue 15), gateway after, 10 000 connections, both windows: polite "
        "p99 <= 50 ms, worst <= 150 ms.",
        "",
    ]
    for e in report["runs"]:
        if e.get("server") != "after" or "error" in e:
            continue
        for name in ("ack", "noack"):
            rtt = (e["windows"][name]["polite"] or {}).get("rttMs") or {}
            ok = (rtt.get("p99") or 1e9) <= 50 and (rtt.get("max") or 1e9) <= 150
            lines.append(
                f"- {e['size']} {name}: p99 {crowd.fmt_ms(rtt.get('p99'))} ms, worst "
                f"{crowd.fmt_ms(rtt.get('max'))} ms: {'met' if ok else '**not met**'}"
            )
    if report["failures"]:
        lines += ["", *[f"Failed: {f}" for f in report["failures"]]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description="Idle crowd: polite client next to N idle ones")
    parser.add_argument("--quick", action="store_true", help="2000 clients, 4 s heartbeats")
    parser.add_argument("--sizes", default="", help="comma list of crowd sizes")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--procs", type=int, default=2, help="crowd processes (default 2)")
    parser.add_argument("--fill-concurrency", type=int, default=100)
    parser.add_argument("--before", default=crowd.BEFORE_REV)
    parser.add_argument("--interval", type=float, default=None)
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument(
        "--margin",
        type=float,
        default=2.0,
        help="a window ends this long after its last round's close (default 2 s)",
    )
    parser.add_argument(
        "--profile",
        default="",
        help="a directory: py-spy records each gateway during both windows (folded stacks "
        "there, a summary in the JSON); it costs the gateway CPU, so figures of such a run "
        "are not comparable",
    )
    parser.add_argument("--output", default=str(run.RESULTS / "idle_crowd"))
    args = parser.parse_args()
    mode = QUICK if args.quick else FULL
    sizes = [int(x) for x in args.sizes.split(",") if x] or mode["sizes"]
    interval = args.interval or mode["interval"]
    timeout = args.timeout or mode["timeout"]
    servers = [s for s in args.servers.split(",") if s]
    if any(s not in SERVERS for s in servers) or not servers:
        parser.error(f"--servers: a comma list of {', '.join(SERVERS)}")
    nofile = crowd.nofile_limit()
    if max(sizes) + 500 > nofile:
        parser.error(f"a crowd of {max(sizes)} needs more than the {nofile} descriptors allowed")
    if max(sizes) / args.procs + 500 > nofile:
        parser.error("--procs: too few processes for the descriptor limit")
    problem = run.ensure_npm(run.LOADGEN) or run.ensure_npm(run.NODE_RELAY)
    if problem:
        run.log(problem)
        return 1

    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="wshub-idle-crowd-"))
    runs: list[dict[str, Any]] = []
    failures: list[str] = []
    try:
        with crowd.Revisions(args.before, tmp) as revs:
            targets = {
                "before": crowd.Target("before", "gateway", "gateway before", revs.worktree),
                "after": crowd.Target("after", "gateway", "gateway after"),
                "baseline": crowd.Target("baseline", "baseline", "python-socketio relay"),
                "node": crowd.Target("node", "node", "Node socket.io relay"),
            }
            for size in sizes:
                for key in servers:
                    if time.monotonic() - started > DEADLINE_S:
                        failures.append(f"{key} {size}: skipped, past the time budget")
                        continue
                    entry = one_run(targets[key], size, args, interval, timeout, tmp)
                    if "error" in entry:
                        failures.append(entry["error"].splitlines()[0])
                    runs.append(entry)
            rev_info = revs.info()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "bench/idle_crowd.py " + " ".join(sys.argv[1:]),
        "quick": args.quick,
        "wall_s": time.monotonic() - started,
        "machine": run.machine_info(),
        "nofile": nofile,
        "revisions": rev_info,
        "interval": interval,
        "timeout": timeout,
        "procs": args.procs,
        "fill_concurrency": args.fill_concurrency,
        "gateway_env": {
            **crowd.RATES_LIFTED_ENV,
            "WSHUB_HEARTBEAT_INTERVAL": str(interval),
            "WSHUB_HEARTBEAT_TIMEOUT": str(timeout),
        },
        "failures": failures,
        "runs": runs,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    md = markdown(report)
    out.with_suffix(".md").write_text("# Idle crowd\n\n" + md)
    print(md)
    run.log(f"done in {report['wall_s']:.0f} s; wrote {out.with_suffix('.json')} and .md")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
