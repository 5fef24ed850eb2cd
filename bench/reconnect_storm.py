"""WS-Hub benchmark (issue 15): 10 000 clients reconnecting at once.

One command, bounded in time (full: 4 to 8 minutes, longer only if a server needs its
retries; no new server starts after 7 minutes; ``--quick``: about 1.5 minutes)::

    .venv/bin/python bench/reconnect_storm.py [--quick] [--clients 10000]
        [--servers before,after,baseline,node] [--procs 2] [--output PREFIX]

For every server: a fresh server on a free 127.0.0.1 port; a polite client (its own load
generator process) sending ``client-ping`` every 100 ms; N named clients (official
socket.io-client, split over ``--procs`` processes binding their own loopback source addresses)
connected ``--fill-concurrency`` at a time. Then the storm: every crowd client closes its
connection, and one second later all of them connect again **at once** (every ``io()`` created
in the same instant; ``--storm-concurrency`` caps that), each with the username it had. A client
whose ``system:setData`` is refused because its old connection still holds the name asks again
every 250 ms (at most 40 times; counted as name retries). Each attempt has 20 s to connect and
get ``system:dataSet`` (socket.io-client's default ``timeout``); a client whose attempt failed
tries again, as socket.io-client's reconnection does by default (1 s doubling up to 5 s,
randomised by half), at most ``--retries`` times (3).

Reported: time from the reconnect until every client had ``system:dataSet``; clients whose
first attempt failed (``connect_error``, time-outs, refusals: the issue's connect errors), the
retries, and clients that never got in; time to ``system:dataSet`` p50 / p99 / worst over all
clients; name retries; the polite client's round trips before, during and after the storm; the
server's CPU during the storm. Heartbeats are out of the way (every 120 s). Results:
``bench/results/reconnect_storm.json`` and ``.md``.
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
DEADLINE_S = 420.0
STORM_BUDGET_S = 150.0  # 20 s per attempt, 3 retries with their backoff: about 90 s at most


def one_run(target: crowd.Target, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    n = args.clients
    entry: dict[str, Any] = {"server": target.key, "clients": n}
    node = crowd.Node(
        target, tmp, hb_interval=run.QUIET_HEARTBEAT_INTERVAL, gateway_env=crowd.RATES_LIFTED_ENV
    )
    polite: crowd.Controlled | None = None
    mob: crowd.Crowd | None = None
    fill_budget = 30 + n / 150
    hard = fill_budget + STORM_BUDGET_S + 60
    try:
        node.wait_ready()
        polite = crowd.Controlled("polite", node.url, {"pingInterval": 100}, hard)
        polite.wait("ready", 20)
        mob = crowd.Crowd(
            node.url,
            n,
            args.procs,
            concurrency=args.fill_concurrency,
            hard_timeout=hard,
            run_tag=uuid.uuid4().hex[:6],
            extra={"stormConcurrency": args.storm_concurrency, "stormRetries": args.retries},
        )
        entry["fill"] = fill = crowd.merge_connect_reports(mob.wait_all("ready", fill_budget))
        run.log(f"{target.key:<9} {fill['connected']} connected in {fill['all_connected_s']:.1f} s")
        time.sleep(1)
        clients = [polite.pid, *mob.pids]
        servers = {"server": node.pid}
        polite.send("seg before")
        time.sleep(args.quiet)
        marks = [crowd.snapshot(servers, clients)]
        stalls = crowd.stall_counts(node.url) if target.kind == "gateway" else None
        polite.send("seg storm")
        spy = None
        if args.profile and target.kind == "gateway":
            out = Path(args.profile) / f"{target.key}-storm.folded"
            spy = crowd.PySpy(node.pid, args.profile_seconds, out)
        mob.send("storm 1")
        done = mob.wait_all("storm-done", STORM_BUDGET_S)
        if spy is not None:
            entry["profile"] = spy.wait()
        marks.append(crowd.snapshot(servers, clients))
        if stalls is not None:
            entry["stalls"] = crowd.stalls_between(stalls, crowd.stall_counts(node.url))
        polite.send("seg after")
        time.sleep(args.quiet)
        polite.send("seg -")
        entry["storm"] = storm = crowd.merge_connect_reports(done)
        storm["connect_errors"] = sum(d["connectErrors"] for d in done)
        storm["name_retries"] = sum(d["nameRetries"] for d in done)
        storm["since_close_s"] = max(d["sinceCloseS"] for d in done)
        storm["window"] = crowd.window(marks[0], marks[1])
        entry["polite"] = result = polite.finish()
        entry["crowd"] = crowd.strip_raw(mob.finish())
        mob = None
        seg = (result.get("segments") or {}).get("storm", {}).get("rttMs") or {}
        run.log(
            f"{target.key:<9} storm: all in after {storm['all_connected_s']:.1f} s, "
            f"{storm['first_failed']} failed at first, {storm['failed']} never in, "
            f"ready p99 {crowd.fmt_ms(storm['ready_ms']['p99'])} ms, "
            f"name retries {storm['name_retries']}, polite p99/max {crowd.fmt_ms(seg.get('p99'))}/"
            f"{crowd.fmt_ms(seg.get('max'))} ms, others {storm['window']['others_cpu_util']:.2f}"
        )
    except Exception as exc:  # reported; the bench goes on
        entry["error"] = f"{target.key}: {exc}"
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


def markdown(report: dict[str, Any]) -> str:
    mi = report["machine"]
    rv = report["revisions"]
    lines = [
        crowd.run_line(report),
        "",
        crowd.machine_words(mi)
        + f". before = `{rv['before']['sha'][:10]}`; "
        + crowd.after_words(rv)
        + f". {report['clients']} clients in {report['procs']} processes; storm: all close, "
        "1 s later all reconnect at once"
        + (f" ({report['storm_concurrency']} in flight)" if report["storm_concurrency"] else "")
        + ". Gateway limits lifted.",
        "",
        "| server | all reconnected (s) | failed first attempts | never in | retries "
        "| dataSet p50 / p99 / worst ms | name retries "
        "| polite p99 / worst ms: before | during | after | server CPU-s in the storm | others |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in report["runs"]:
        if "error" in e:
            lines.append(f"| {e['server']} | failed: {e['error'][:100]} |" + " |" * 10)
            continue
        s = e["storm"]
        r = s["ready_ms"]
        segs = (e["polite"].get("segments")) or {}

        def seg(name: str, segs: dict[str, Any] = segs) -> str:
            g = segs.get(name) or {}
            rtt = g.get("rttMs") or {}
            if g.get("sent") and not g.get("answered"):
                return f"none of {g['sent']} answered"
            return f"{crowd.fmt_ms(rtt.get('p99'))} / {crowd.fmt_ms(rtt.get('max'))}"

        lines.append(
            f"| {e['server']} | {s['all_connected_s']:.1f} | {s['first_failed']} | "
            f"{s['failed']} | {s['retries']} | "
            f"{crowd.fmt_ms(r['p50'])} / {crowd.fmt_ms(r['p99'])} / {crowd.fmt_ms(r['max'])} | "
            f"{s['name_retries']} | {seg('before')} | {seg('storm')} | {seg('after')} | "
            f"{s['window']['cpu_ms']['server'] / 1000:.1f} | "
            f"{s['window']['others_cpu_util']:.2f} |"
        )
    dropped = [
        f"- {e['server']}: the polite client lost its connection ({e['polite'].get('dropped')} "
        "unrequested disconnect) and did not get it back (it does not reconnect)"
        for e in report["runs"]
        if (e.get("polite") or {}).get("dropped")
    ]
    if dropped:
        lines += ["", "The polite client:", "", *dropped]
    why = [
        f"- {e['server']}: " + ", ".join(f"{k} x{v}" for k, v in e["storm"]["failures"].items())
        for e in report["runs"]
        if "storm" in e and e["storm"]["failures"]
    ]
    if why:
        lines += [
            "",
            "Why attempts failed in the storm (every failed attempt, retries included):",
            "",
            *why,
        ]
    lines += [
        "",
        "The first fill, "
        f"{report['fill_concurrency']} connects in flight: time until all in, failed, "
        "dataSet p99.",
        "",
        "| server | all in (s) | failed | dataSet p99 ms |",
        "|---|---|---|---|",
    ]
    for e in report["runs"]:
        if "fill" in e:
            f = e["fill"]
            lines.append(
                f"| {e['server']} | {f['all_connected_s']:.1f} | {f['failed']} | "
                f"{crowd.fmt_ms(f['ready_ms']['p99'])} |"
            )
    lines += stall_table(report["runs"])
    if report["failures"]:
        lines += ["", *[f"Failed: {f}" for f in report["failures"]]]
    return "\n".join(lines) + "\n"


def stall_table(runs: list[dict[str, Any]]) -> list[str]:
    """The gateway's own stalls during the storm, from its /metrics (where it has them)."""
    rows = [e for e in runs if e.get("stalls")]
    if not rows:
        return []
    lines = [
        "",
        "The gateway's own stalls from the storm's start until everyone was in, from its "
        "`/metrics`: how late its event loop ran a timer (sampled every 0.1 s) and each garbage "
        "collection by generation; count, seconds in all, how many over 50 ms, the worst "
        "(under the histogram bound given).",
        "",
        "| server | series | count | seconds | over 50 ms | worst under (s) |",
        "|---|---|---|---|---|---|",
    ]
    for e in rows:
        for key, st in sorted(e["stalls"].items()):
            worst = st["worst_under_s"]
            lines.append(
                f"| {e['server']} | {key} | {st['count']:.0f} | {st['seconds']:.2f} | "
                f"{st['over_50ms']:.0f} | {'> 2.5' if worst is None else f'{worst:g}'} |"
            )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description="Reconnect storm: N clients reconnect at once")
    parser.add_argument("--quick", action="store_true", help="2000 clients")
    parser.add_argument("--clients", type=int, default=None, help="default 10000 (quick: 2000)")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--fill-concurrency", type=int, default=100)
    parser.add_argument("--storm-concurrency", type=int, default=0, help="0: all at once")
    parser.add_argument(
        "--retries",
        type=int,
        default=3,
        help="attempts after a failed reconnect, with socket.io-client's default backoff "
        "(default 3; 0: one attempt each)",
    )
    parser.add_argument("--quiet", type=float, default=None, help="s before and after (3)")
    parser.add_argument("--before", default=crowd.BEFORE_REV)
    parser.add_argument(
        "--profile",
        default="",
        help="a directory: py-spy records each gateway from the storm's start for "
        "--profile-seconds (folded stacks there, a summary in the JSON; not comparable figures)",
    )
    parser.add_argument("--profile-seconds", type=float, default=20.0)
    parser.add_argument("--output", default=str(run.RESULTS / "reconnect_storm"))
    args = parser.parse_args()
    args.clients = args.clients or (2000 if args.quick else 10000)
    args.quiet = args.quiet or (2.0 if args.quick else 3.0)
    servers = [s for s in args.servers.split(",") if s]
    if any(s not in SERVERS for s in servers) or not servers:
        parser.error(f"--servers: a comma list of {', '.join(SERVERS)}")
    nofile = crowd.nofile_limit()
    if args.clients + 500 > nofile:
        parser.error(f"{args.clients} clients need more than the {nofile} descriptors allowed")
    problem = run.ensure_npm(run.LOADGEN) or run.ensure_npm(run.NODE_RELAY)
    if problem:
        run.log(problem)
        return 1
    crowd.exit_on_signals()
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="wshub-storm-"))
    runs: list[dict[str, Any]] = []
    failures: list[str] = []
    try:
        with crowd.Revisions(args.before, tmp) as revs:
            targets = crowd.server_targets(revs)
            for key in servers:
                if time.monotonic() - started > DEADLINE_S:
                    failures.append(f"{key}: skipped, past the time budget")
                    continue
                entry = one_run(targets[key], args, tmp)
                if "error" in entry:
                    failures.append(entry["error"].splitlines()[0])
                elif entry["storm"]["failed"]:
                    failures.append(f"{key}: {entry['storm']['failed']} clients never got in")
                runs.append(entry)
            rev_info = revs.info()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report = {
        **crowd.report_head("bench/reconnect_storm.py", args.quick, started, rev_info),
        "clients": args.clients,
        "procs": args.procs,
        "fill_concurrency": args.fill_concurrency,
        "storm_concurrency": args.storm_concurrency,
        "gateway_env": crowd.RATES_LIFTED_ENV,
        "failures": failures,
        "runs": runs,
    }
    return crowd.write_report(report, args.output, "Reconnect storm", markdown)


if __name__ == "__main__":
    sys.exit(main())
