"""WS-Hub benchmark (issue 15): a polite client's round trips next to an idle crowd.

One command, bounded in time (full: about 10 minutes on a quiet machine, 13 on a busy one; no
new server starts after 13 minutes; ``--quick``: 3 to 5 minutes)::

    .venv/bin/python bench/idle_crowd.py [--quick] [--sizes 10000,15000]
        [--servers before,after,baseline,node] [--procs 2] [--output PREFIX]

For every server: a fresh server on a free 127.0.0.1 port; one polite client (a load generator
process of its own) that sends ``client-ping`` every 100 ms and times each ``client-pong``; then
N named idle clients (official socket.io-client, split over ``--procs`` processes, each binding
its own loopback source addresses), connected ``--fill-concurrency`` at a time, for the smallest
size; after its windows, the same crowd grows to the next size on the same server, and so on.
Once all are in, the runner waits for a heartbeat round to start (the polite client reports each
``system:heartbeat``) and then measures two windows, which hold two round starts and two round
closes each (they follow the rounds as the polite client sees them; see bench/README.md):

1. **acknowledging**: every client answers every heartbeat;
2. **not acknowledging**: the crowd stops answering (the polite client goes on), so the second
   round close of this window finds every crowd client two rounds behind, which is when the
   gateway warns them (``heartbeat_warn_after`` = 2, its default).

Reported per window: the polite client's round-trip p50 / p99 / worst (pings *sent* in the
window), the server's CPU per connection per heartbeat round (server CPU in the window /
heartbeats the crowd received), heartbeats and warnings the crowd received, and the noise. The
relays have a heartbeat loop of their own (one emit per client every interval, no timeout
sweep, no warnings), run with the same interval: for them "not acknowledging" only removes the
inbound acks. Results: ``bench/results/idle_crowd.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
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
FULL = {"sizes": [10000, 15000], "interval": 8.0, "timeout": 3.0}
QUICK = {"sizes": [2000, 3000], "interval": 4.0, "timeout": 1.5}
DEADLINE_S = 780.0  # no new server starts after this


def one_server(
    target: crowd.Target,
    sizes: list[int],
    args: argparse.Namespace,
    interval: float,
    timeout: float,
    tmp: Path,
) -> list[dict[str, Any]]:
    """One server, the crowd grown to each size in turn (smallest first), each measured."""
    entries: list[dict[str, Any]] = []
    gateway_env = {**crowd.RATES_LIFTED_ENV, "WSHUB_HEARTBEAT_TIMEOUT": str(timeout)}
    node = crowd.Node(target, tmp, hb_interval=interval, gateway_env=gateway_env)
    polite: crowd.Controlled | None = None
    mob: crowd.Crowd | None = None
    fill_budget = 30 + max(sizes) / 150  # s: 10 000 clients at 150/s at least
    hard = fill_budget * len(sizes) + len(sizes) * (6 * interval + 30) + 60
    entry: dict[str, Any] = {}
    try:
        try:
            node.wait_ready()
            polite = crowd.Controlled("polite", node.url, {"pingInterval": 100}, hard)
            polite.wait("ready", 20)
            rss0 = crowd.tree_rss_kb(node.pid)
            have = 0
            for size in sizes:
                entry = {"server": target.key, "size": size, "grown_from": have}
                entries.append(entry)
                polite.send(f"seg {size}-fill")
                if mob is None:
                    mob = crowd.Crowd(
                        node.url,
                        size,
                        args.procs,
                        concurrency=args.fill_concurrency,
                        hard_timeout=hard,
                        run_tag=uuid.uuid4().hex[:6],
                    )
                    reports = mob.wait_all("ready", fill_budget)
                else:
                    mob.send("ack on")
                    reports = mob.grow(size - have, fill_budget)
                entry["fill"] = fill = crowd.merge_connect_reports(reports)
                have += fill["connected"]
                polite.send("seg -")
                run.log(
                    f"{target.key:<9} {size}: {fill['connected']} more connected in "
                    f"{fill['all_connected_s']:.1f} s, {fill['failed']} failed"
                )
                measure(entry, node, polite, mob, size, have, args, interval, timeout)
                entry["rss_kb_per_conn"] = (entry.pop("_rss_kb") - rss0) / max(1, have)
        except Exception as exc:  # reported; the bench goes on
            entry["error"] = f"{target.key} {entry.get('size', '')}: {exc}"
            if not entries:
                entries.append({"server": target.key, "size": sizes[0], **entry})
            run.log(entry["error"])
        try:
            # The polite client's round trips, for every window measured (after a failure too).
            result = polite.finish() if polite is not None else {}
            polite = None
            for e in entries:
                segs = result.get("segments") or {}
                e["fill_polite"] = segs.get(f"{e['size']}-fill")
                for name, w in e.get("windows", {}).items():
                    w["polite"] = segs.get(f"{e['size']}-{name}") or {}
                    rtt = w["polite"].get("rttMs") or {}
                    run.log(
                        f"{target.key:<9} {e['size']} {name:<5}: polite p50/p99/max "
                        f"{crowd.fmt_ms(rtt.get('p50'))}/{crowd.fmt_ms(rtt.get('p99'))}/"
                        f"{crowd.fmt_ms(rtt.get('max'))} ms, rounds {w['rounds']}, "
                        f"hb cpu/conn/round {crowd.fmt_ms(w['hb_cpu_us_per_conn_round'])} us, "
                        f"warnings {w['crowd_warnings']}, "
                        f"server {w['cpu_util']['server']:.2f} core, "
                        f"others {w['others_cpu_util']:.2f}"
                    )
            entries[-1]["crowd"] = crowd.strip_raw(mob.finish()) if mob else None
            mob = None
        except Exception as exc:  # the figures so far stay
            entries[-1].setdefault("error", f"{target.key}: collecting the reports: {exc}")
    finally:
        if mob is not None:
            mob.kill()
        if polite is not None:
            polite.kill()
        node.stop()
        if entries:
            entries[-1]["log"] = node.log_lines()
        time.sleep(1)
    return entries


def measure(
    entry: dict[str, Any],
    node: crowd.Node,
    polite: crowd.Controlled,
    mob: crowd.Crowd,
    size: int,
    have: int,
    args: argparse.Namespace,
    interval: float,
    timeout: float,
) -> None:
    """The two windows on the crowd as it is now (acknowledging, then not)."""
    time.sleep(1)
    # The windows follow the heartbeat rounds as the polite client sees them (a server's rounds
    # drift by the time each one takes): each starts just after a round closed and ends just
    # after the second round close that follows.
    polite.drain_events()
    # A relay's heartbeat loop emits to one client after the other, so its rounds come later
    # and later with a large crowd: room for that.
    polite.wait("hb", 3 * interval + 10)
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
        polite.send(f"seg {size}-{name}")
        if args.profile and node.target.kind == "gateway":
            # Attached for about the window's length (two intervals and the margin).
            out = Path(args.profile) / f"{node.target.key}-{size}-{name}.folded"
            spies[name] = crowd.PySpy(node.pid, 2 * interval + timeout + args.margin, out)
        for _ in range(2):
            hbs.append(polite.wait("hb", 3 * interval + 10)["_mono"])
        time.sleep(timeout + args.margin)
        if name == "noack" and node.target.kind == "gateway":
            # The round closes `timeout` after the gateway has sent the round to everyone, which
            # can be seconds after the polite client got it: wait (at most until just before the
            # next round) for the warnings to reach the crowd, then the margin.
            give_up = hbs[-1] + interval - 1
            while time.monotonic() < give_up:
                got = _crowd_counts(mob)["heartbeatWarnings"] - counts[-1]["heartbeatWarnings"]
                if got >= have:
                    break
                time.sleep(0.5)
            time.sleep(args.margin / 2)
        marks.append(crowd.snapshot(servers, clients))
        counts.append(_crowd_counts(mob))
    polite.send("seg -")
    for name, spy in spies.items():
        entry.setdefault("profile", {})[name] = spy.wait()
    entry["_rss_kb"] = marks[0]["rss_kb"]["server"]
    entry["connected"] = have
    entry["windows"] = {}
    for k, name in enumerate(("ack", "noack")):
        w = crowd.window(marks[k], marks[k + 1])
        # Rounds as the crowd saw them: heartbeats it got / its size (a window can hold the
        # start of a third round, e.g. while the runner waits for the gateway's warnings).
        heartbeats = counts[k + 1]["heartbeats"] - counts[k]["heartbeats"]
        w.update(
            rounds=round(heartbeats / max(1, have), 2),
            polite_rounds=sum(marks[k]["t"] <= t < marks[k + 1]["t"] for t in hbs),
            crowd_heartbeats=heartbeats,
            crowd_warnings=counts[k + 1]["heartbeatWarnings"] - counts[k]["heartbeatWarnings"],
            crowd_open=counts[k + 1]["open"],
            # Server CPU in the window per heartbeat the crowd got (= per connection per round).
            hb_cpu_us_per_conn_round=(
                w["cpu_ms"]["server"] * 1000 / heartbeats if heartbeats else None
            ),
        )
        entry["windows"][name] = w
    entry["dropped"] = counts[-1]["dropped"]


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
        crowd.run_line(report),
        "",
        crowd.machine_words(mi) + f"; descriptors per process {report['nofile']}. "
        f"before = `{rv['before']['sha'][:10]}` {rv['before']['subject'][:60]}; "
        + crowd.after_words(rv)
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
        if "error" in e or "windows" not in e:
            why = e.get("error", "no measurement")[:80]
            lines.append(f"| {e['size']} | {e['server']} | failed: {why} |" + " |" * 10)
            continue
        for name, label in (("ack", "acknowledging"), ("noack", "not acknowledging")):
            w = e["windows"][name]
            rtt = (w.get("polite") or {}).get("rttMs") or {}
            lines.append(
                f"| {e['size']} | {e['server']} | {label} | {crowd.fmt_ms(rtt.get('p50'))} | "
                f"{crowd.fmt_ms(rtt.get('p99'))} | {crowd.fmt_ms(rtt.get('max'))} | "
                f"{(w.get('polite') or {}).get('answered', '-')} | {w['rounds']} | "
                f"{crowd.fmt_ms(w['hb_cpu_us_per_conn_round'])} | "
                f"{w['cpu_util']['server']:.2f} | {w['crowd_heartbeats']} | "
                f"{w['crowd_warnings']} | {w['others_cpu_util']:.2f} |"
            )
    lines += [
        "",
        "Filling the crowd (a larger crowd is the smaller one grown on the same server, so its "
        "row counts only the clients added): time until all were in, failed connects, time to "
        "`system:dataSet`, the polite client's round trips meanwhile, and the server's RSS per "
        "connection once all were in.",
        "",
        "| crowd | server | added | all in (s) | failed | connect p50 / p99 / max ms "
        "| polite p99 / worst ms while filling | KB / conn | dropped |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in report["runs"]:
        if "error" in e or "fill" not in e:
            continue
        f = e["fill"]
        r = f["ready_ms"]
        fp = ((e.get("fill_polite") or {}).get("rttMs")) or {}
        lines.append(
            f"| {e['size']} | {e['server']} | {f['asked']} | {f['all_connected_s']:.1f} | "
            f"{f['failed']} | "
            f"{crowd.fmt_ms(r['p50'])} / {crowd.fmt_ms(r['p99'])} / {crowd.fmt_ms(r['max'])} | "
            f"{crowd.fmt_ms(fp.get('p99'))} / {crowd.fmt_ms(fp.get('max'))} | "
            f"{e.get('rss_kb_per_conn', 0):.1f} | {e.get('dropped', '-')} |"
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
            rtt = (e["windows"][name].get("polite") or {}).get("rttMs") or {}
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
    sizes = sorted({int(x) for x in args.sizes.split(",") if x}) or mode["sizes"]
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
    crowd.exit_on_signals()
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="wshub-idle-crowd-"))
    runs: list[dict[str, Any]] = []
    failures: list[str] = []
    try:
        with crowd.Revisions(args.before, tmp) as revs:
            targets = crowd.server_targets(revs)
            for key in servers:
                if time.monotonic() - started > DEADLINE_S:
                    failures.append(f"{key}: skipped, past the time budget")
                    continue
                for entry in one_server(targets[key], sizes, args, interval, timeout, tmp):
                    if "error" in entry:
                        failures.append(entry["error"].splitlines()[0])
                    runs.append(entry)
            runs.sort(key=lambda e: (e["size"], servers.index(e["server"])))
            rev_info = revs.info()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report = {
        **crowd.report_head("bench/idle_crowd.py", args.quick, started, rev_info),
        "nofile": nofile,
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
    return crowd.write_report(report, args.output, "Idle crowd", markdown)


if __name__ == "__main__":
    sys.exit(main())
