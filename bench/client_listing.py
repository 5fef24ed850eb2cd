"""WS-Hub benchmark (issue 11, item 5): ``system:clients`` as an amplifier.

One command, bounded in time (full: about 3.5 minutes, never more than 7; ``--quick``: about
1 minute)::

    .venv/bin/python bench/client_listing.py [--quick] [--clients 10000]
        [--setups before,after,after-lifted] [--output PREFIX]

For every setup: a fresh gateway; N named idle clients (official socket.io-client, split over
two processes); a polite client sending ``client-ping`` every 100 ms; one *lister* client. After
``--settle`` s (6: past the ``system:stats`` broadcast that the end of the fill brings), a quiet
window (``--quiet`` s), then a listing window (``--duration`` s) in which the lister
sends ``system:clients`` (no arguments, no acknowledgement asked) 20 times a second, the default
per-connection event rate. Both windows report the gateway's CPU share and the polite client's
round trips; the listing window also what the lister got: answers, bytes, refusals.

Setups:

- ``before``: the gateway at commit 129771c, default event rates (20/s, burst 40): every
  request is answered with the whole list.
- ``after``: the working tree, default event rates: ``system:clients`` has its own class (5/s,
  burst 10) and answers a page of 100.
- ``after-lifted``: the same with ``WSHUB_RATE_LIMIT_CLIENTS`` lifted, so that all 20 requests a
  second are answered: the cost of answering, apart from the refusals.

Connection admission is lifted everywhere (all clients come from loopback); the per-connection
event rates keep their defaults except where said. Results:
``bench/results/client_listing.json`` and ``.md``.
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

SETUPS = ("before", "after", "after-lifted")
# The gateway's default per-connection event rates, said explicitly: the runner's gateway command
# lifts every rate (run.GATEWAY_BENCH_ENV), and this bench measures them as deployed. The
# before revision has no system:clients class and ignores those two names.
DEFAULT_RATES_ENV = {
    "WSHUB_RATE_LIMIT": "20",
    "WSHUB_RATE_LIMIT_BURST": "40",
    "WSHUB_RATE_LIMIT_CHEAP": "50",
    "WSHUB_RATE_LIMIT_CHEAP_BURST": "100",
    "WSHUB_RATE_LIMIT_CLIENTS": "5",
    "WSHUB_RATE_LIMIT_CLIENTS_BURST": "10",
}
DEADLINE_S = 400.0


def one_run(target: crowd.Target, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    n = args.clients
    entry: dict[str, Any] = {"setup": target.key, "clients": n, "env": target.env}
    node = crowd.Node(
        target,
        tmp,
        hb_interval=run.QUIET_HEARTBEAT_INTERVAL,
        gateway_env={**crowd.ADMISSION_ENV, **DEFAULT_RATES_ENV},
    )
    procs: list[crowd.Controlled] = []
    mob: crowd.Crowd | None = None
    fill_budget = 30 + n / 150
    hard = fill_budget + args.quiet + args.duration + 60
    try:
        node.wait_ready()
        polite = crowd.Controlled("polite", node.url, {"pingInterval": 100}, hard)
        lister = crowd.Controlled("lister", node.url, {"listRate": args.rate}, hard)
        procs += [polite, lister]
        polite.wait("ready", 20)
        lister.wait("ready", 20)
        mob = crowd.Crowd(
            node.url,
            n,
            2,
            concurrency=args.fill_concurrency,
            hard_timeout=hard,
            run_tag=uuid.uuid4().hex[:6],
        )
        entry["fill"] = fill = crowd.merge_connect_reports(mob.wait_all("ready", fill_budget))
        run.log(
            f"{target.key:<12} {fill['connected']} connected in {fill['all_connected_s']:.1f} s"
        )
        # The gateway sends system:stats to everyone when the counts have changed, at most every
        # WSHUB_STATS_INTERVAL (5 s): the end of the fill brings one such broadcast to all the
        # crowd, which is not what the quiet window is for.
        time.sleep(args.settle)
        servers = {"server": node.pid}
        clients = [p.pid for p in procs] + mob.pids
        marks = [crowd.snapshot(servers, clients)]
        polite.send("seg quiet")
        time.sleep(args.quiet)
        marks.append(crowd.snapshot(servers, clients))
        polite.send("seg listing")
        spy = None
        if args.profile:
            out = Path(args.profile) / f"{target.key}-listing.folded"
            spy = crowd.PySpy(node.pid, args.duration, out)
        lister.send("start")
        time.sleep(args.duration)
        lister.send("stop")
        marks.append(crowd.snapshot(servers, clients))
        polite.send("seg -")
        if spy is not None:
            entry["profile"] = spy.wait()
        stopped = lister.wait("stopped", 15)
        entry["lister_window"] = {k: v for k, v in stopped.items() if not k.startswith("_")}
        entry["polite"] = result = polite.finish()
        entry["lister"] = lister.finish()
        entry["crowd"] = crowd.strip_raw(mob.finish())
        mob = None
        entry["windows"] = {}
        for k, name in enumerate(("quiet", "listing")):
            w = crowd.window(marks[k], marks[k + 1])
            w["polite"] = (result.get("segments") or {}).get(name) or {}
            entry["windows"][name] = w
            rtt = w["polite"].get("rttMs") or {}
            run.log(
                f"{target.key:<12} {name:<8} server {w['cpu_util']['server']:.2f} core, polite "
                f"p50/p99/max {crowd.fmt_ms(rtt.get('p50'))}/{crowd.fmt_ms(rtt.get('p99'))}/"
                f"{crowd.fmt_ms(rtt.get('max'))} ms, others {w['others_cpu_util']:.2f}"
            )
        lw = entry["lister_window"]
        run.log(
            f"{target.key:<12} lister: {lw['asked']} asked, {lw['answers']} answers, "
            f"{lw['bytes'] / max(1, lw['answers']) / 1024:.1f} KB each, {lw['errors']} refused"
        )
    except Exception as exc:  # reported; the bench goes on
        entry["error"] = f"{target.key}: {exc}"
        run.log(entry["error"])
    finally:
        if mob is not None:
            mob.kill()
        for p in procs:
            p.kill()
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
        + f". {report['clients']} named idle clients; the lister asks `system:clients` "
        f"{report['rate']:g} times a second for {report['duration']:g} s; quiet window "
        f"{report['quiet']:g} s before it.",
        "",
        "| setup | gateway cores: quiet | listing | polite p50 / p99 / worst ms: quiet | listing "
        "| answers / s | KB / answer | refused | lister's MB received | others |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in report["runs"]:
        if "error" in e:
            lines.append(f"| {e['setup']} | failed: {e['error'][:100]} |" + " |" * 8)
            continue
        q, li = e["windows"]["quiet"], e["windows"]["listing"]
        lw = e["lister_window"]

        def rtt(w: dict[str, Any]) -> str:
            r = (w["polite"] or {}).get("rttMs") or {}
            return " / ".join(crowd.fmt_ms(r.get(k)) for k in ("p50", "p99", "max"))

        lines.append(
            f"| {e['setup']} | {q['cpu_util']['server']:.2f} | {li['cpu_util']['server']:.2f} | "
            f"{rtt(q)} | {rtt(li)} | {lw['answers'] / report['duration']:.1f} | "
            f"{lw['bytes'] / max(1, lw['answers']) / 1024:.1f} | {lw['errors']} | "
            f"{lw['bytes'] / 1e6:.1f} | {li['others_cpu_util']:.2f} |"
        )
    lines += [
        "",
        "Settings: "
        + "; ".join(
            f"{s}: "
            + (", ".join(f"`{k}={v}`" for k, v in env.items()) or "event rates at their defaults")
            for s, env in report["setups"].items()
        )
        + ". Event rates at their defaults said explicitly (`WSHUB_RATE_LIMIT=20`, burst 40; "
        "cheap 50, burst 100; `system:clients` 5, burst 10, after only). Admission lifted for "
        "all (`WSHUB_MAX_CONNECTIONS*`, `WSHUB_CONNECT_*`).",
    ]
    if report["failures"]:
        lines += ["", *[f"Failed: {f}" for f in report["failures"]]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description="system:clients at 20/s next to a polite client")
    parser.add_argument("--quick", action="store_true", help="2000 clients, shorter windows")
    parser.add_argument("--clients", type=int, default=None, help="default 10000 (quick 2000)")
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--duration", type=float, default=None, help="listing window, s (20)")
    parser.add_argument("--quiet", type=float, default=None, help="quiet window, s (8)")
    parser.add_argument("--fill-concurrency", type=int, default=100)
    parser.add_argument(
        "--settle", type=float, default=6.0, help="s after the fill, before the quiet window"
    )
    parser.add_argument("--before", default=crowd.BEFORE_REV)
    parser.add_argument(
        "--profile",
        default="",
        help="a directory: py-spy records each gateway during the listing window (folded "
        "stacks there, a summary in the JSON; not comparable figures)",
    )
    parser.add_argument("--output", default=str(run.RESULTS / "client_listing"))
    args = parser.parse_args()
    args.clients = args.clients or (2000 if args.quick else 10000)
    args.duration = args.duration or (8.0 if args.quick else 20.0)
    args.quiet = args.quiet or (4.0 if args.quick else 8.0)
    setups = [s for s in args.setups.split(",") if s]
    if any(s not in SETUPS for s in setups) or not setups:
        parser.error(f"--setups: a comma list of {', '.join(SETUPS)}")
    problem = run.ensure_npm(run.LOADGEN)
    if problem:
        run.log(problem)
        return 1
    crowd.exit_on_signals()
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="wshub-listing-"))
    runs: list[dict[str, Any]] = []
    failures: list[str] = []
    lifted = {"WSHUB_RATE_LIMIT_CLIENTS": "100000", "WSHUB_RATE_LIMIT_CLIENTS_BURST": "100000"}
    try:
        with crowd.Revisions(args.before, tmp) as revs:
            targets = {
                "before": crowd.Target("before", "gateway", "gateway before", revs.worktree),
                "after": crowd.Target("after", "gateway", "gateway after"),
                "after-lifted": crowd.Target("after-lifted", "gateway", "after", env=lifted),
            }
            for key in setups:
                if time.monotonic() - started > DEADLINE_S:
                    failures.append(f"{key}: skipped, past the time budget")
                    continue
                entry = one_run(targets[key], args, tmp)
                if "error" in entry:
                    failures.append(entry["error"].splitlines()[0])
                runs.append(entry)
            rev_info = revs.info()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report = {
        **crowd.report_head("bench/client_listing.py", args.quick, started, rev_info),
        "clients": args.clients,
        "rate": args.rate,
        "duration": args.duration,
        "quiet": args.quiet,
        "setups": {s: (lifted if s == "after-lifted" else {}) for s in setups},
        "gateway_env": {**run.GATEWAY_BENCH_ENV, **crowd.ADMISSION_ENV, **DEFAULT_RATES_ENV},
        "failures": failures,
        "runs": runs,
    }
    return crowd.write_report(report, args.output, "Client listing amplifier", markdown)


if __name__ == "__main__":
    sys.exit(main())
