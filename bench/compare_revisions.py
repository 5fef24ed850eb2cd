"""WS-Hub benchmark: what each optimisation changed, every revision under the same load, one run.

One command, bounded in time (about 7 minutes with the defaults; no run starts after 430 s)::

    .venv/bin/python bench/compare_revisions.py [REV ...] [--rounds N] [--only SCENARIO,...]
        [--no-baseline] [--output PREFIX]

For every git revision it adds a detached ``git worktree`` in a temporary directory (removed at
the end, on failure too) and runs that revision's gateway with this venv's interpreter, from the
worktree (``cwd`` and ``PYTHONPATH`` set to it, so ``python -m gateway`` imports that revision's
package rather than the editable install of ``/work/main``; checked once per revision). The
gateway gets ``run.py``'s bench environment (``GATEWAY_BENCH_ENV``: limits lifted, log level
WARNING) and heartbeat settings. The bare python-socketio relay (``bench/baseline_relay.py``,
started as ``run.py`` starts it) runs in the same rounds as a fixed reference.

Within a round, every server runs each scenario in turn (round-robin, the order rotated from
round to round), so machine noise hits all alike; figures are medians over the rounds, and the
ratios are medians of per-round ratios. CPU is the server's process tree, read from ``/proc``
at the load generator's window edges (``run.sample``). Results: ``bench/results/revisions.json``
and ``bench/results/revisions.md``. See "What each optimisation changed" in ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import run

# (revision, label). The labels say what each commit added on top of the previous row.
DEFAULT_REVISIONS: list[tuple[str, str]] = [
    ("22ef729", "before the performance work (uvloop, orjson and deflate declined already in)"),
    (
        "503283c",
        "+ emit without a task per recipient, Engine.IO packet encoded once, GC frozen and tuned",
    ),
    (
        "58bc377",
        "+ Engine.IO socket without per-message tasks, JSON-only packets skip the binary walk, "
        "cached metric children",
    ),
    ("HEAD", "current"),
]
SCENARIOS = ("dm-closed", "dm-rate", "broadcast-rate", "idle")
# run.py's loads with shorter warm-ups and windows (run.py: 1.5 s warm-up; windows of 4, 4, 8
# and 5 s), so that 3 rounds of 5 servers x 4 scenarios fit in about 7 minutes.
PLANS: dict[str, run.Plan] = {
    "dm-closed": run.Plan("dm-closed", {"pairs": 50, "warmup": 1, "duration": 3}),
    "dm-rate": run.Plan("dm-rate", {"pairs": 50, "rate": 2000, "warmup": 1, "duration": 3}),
    "broadcast-rate": run.Plan(
        "broadcast-rate", {"receivers": 500, "rate": 20, "warmup": 1, "duration": 5}
    ),
    "idle": run.Plan("idle", {"conns": 1000, "settle": 1, "hbWindow": 3, "deflate": "on"}),
}
# (scenario, metric, label)
ROWS: list[tuple[str, str, str]] = [
    ("dm-closed", "cpu_ms_per_1k", "DM closed loop, 50 pairs: server CPU-ms / 1k DMs"),
    ("dm-closed", "msgs_per_s", "DM closed loop: msgs/s"),
    ("dm-closed", "p99_ms", "DM closed loop: p99 ms"),
    ("dm-rate", "cpu_ms_per_1k", "DM 2000/s: server CPU-ms / 1k DMs"),
    ("dm-rate", "p50_ms", "DM 2000/s: p50 ms"),
    ("dm-rate", "p99_ms", "DM 2000/s: p99 ms"),
    (
        "broadcast-rate",
        "cpu_ms_per_1k",
        "Broadcast 20/s, 500 receivers: server CPU-ms / 1k deliveries",
    ),
    ("broadcast-rate", "p50_ms", "Broadcast 20/s: last receiver (fan-out) p50 ms"),
    ("broadcast-rate", "p99_ms", "Broadcast 20/s: last receiver (fan-out) p99 ms"),
    (
        "idle",
        "hb_cpu_us_per_conn_cycle",
        "Idle, 1000 conns: server CPU-us / heartbeat cycle / conn",
    ),
    ("idle", "kb_per_conn", "Idle, 1000 conns offering permessage-deflate: KB / conn"),
]
# No new run starts after this many seconds, so the command ends within 8 minutes even when a
# run times out; noisy runs are repeated only before RETRY_CUTOFF_S.
DEADLINE_S = 430.0
RETRY_CUTOFF_S = 300.0
MAX_RETRIES = 3
BASELINE = "baseline"


# ------------------------------------------------------------------------------ revisions
@dataclass
class Revision:
    rev: str  # as given
    label: str
    sha: str = ""
    subject: str = ""
    worktree: Path | None = None
    imported: dict[str, str] | None = None  # where `import gateway` resolved, see imported_from


def git(*args: str, timeout: float = 60) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=run.ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def resolve(rev: Revision) -> None:
    rev.sha = git("rev-parse", "--verify", f"{rev.rev}^{{commit}}")
    rev.subject = git("log", "-1", "--format=%s", rev.sha)


def add_worktree(rev: Revision, tmp: Path) -> None:
    path = tmp / f"{len(list(tmp.iterdir())):02d}-{rev.sha[:10]}"
    git("worktree", "add", "--detach", str(path), rev.sha, timeout=120)
    rev.worktree = path


def remove_worktrees(revs: list[Revision]) -> None:
    for rev in revs:
        if rev.worktree is not None and rev.worktree.exists():
            try:
                git("worktree", "remove", "--force", str(rev.worktree), timeout=120)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                run.log(f"could not remove the worktree {rev.worktree}: {exc}")


# ------------------------------------------------------------------------------ servers
@dataclass
class RevisionSpec(run.ServerSpec):
    """run.py's gateway command, run from a worktree that holds one revision's package."""

    worktree: Path | None = None

    def command(
        self, port: int, hb_interval: float, tls: tuple[Path, Path] | None
    ) -> tuple[list[str], dict[str, str]]:
        cmd, env = super().command(port, hb_interval, tls)
        if self.worktree is not None:
            env["PYTHONPATH"] = str(self.worktree)  # before the editable install's finder
        return cmd, env


class RevisionServer(run.Server):
    """``run.Server`` with the working directory of the spec's worktree (run.py's is ROOT)."""

    def __init__(
        self, spec: RevisionSpec, hb_interval: float, tls: tuple[Path, Path] | None, logdir: Path
    ):
        self.spec = spec
        self.port = run.free_port()
        self.tls = tls
        cmd, env = spec.command(self.port, hb_interval, tls)
        self.logfile = logdir / f"{spec.name}-{self.port}.log"
        self._log = self.logfile.open("wb")
        self.proc = subprocess.Popen(
            cmd,
            cwd=spec.worktree or run.ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def imported_from(spec: RevisionSpec) -> dict[str, str]:
    """Where ``import gateway`` resolves under the spec's environment.

    Checked twice: from the worktree (as the server runs) and from a neutral directory, where
    only ``PYTHONPATH`` can point at the worktree, to show it wins over the editable install.
    """
    _, env = spec.command(0, run.QUIET_HEARTBEAT_INTERVAL, None)
    code = "import gateway; print(gateway.__file__)"
    out = {}
    for where, cwd in (("cwd", spec.worktree), ("pythonpath_only", Path(tempfile.gettempdir()))):
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        out[where] = proc.stdout.strip() or " ".join(proc.stderr.strip().splitlines()[-1:])
    return out


def one_run(
    name: str,
    spec: run.ServerSpec,
    scenario: str,
    rnd: int,
    tmp: Path,
) -> dict[str, Any]:
    """Start *spec* fresh, run *scenario* against it, stop it; the entry for the report."""
    plan = PLANS[scenario]
    opts = dict(plan.options)
    hb = run.IDLE_HEARTBEAT_INTERVAL if scenario == "idle" else run.QUIET_HEARTBEAT_INTERVAL
    budget = sum(opts.get(k, 0) for k in ("warmup", "duration", "settle", "hbWindow")) + 40
    entry: dict[str, Any] = {"round": rnd, "scenario": scenario, "server": name}
    t0 = time.monotonic()
    server = (
        RevisionServer(spec, hb, None, tmp)
        if isinstance(spec, RevisionSpec)
        else run.Server(spec, hb, None, tmp)
    )
    try:
        if not run.wait_ready(server.proc, server.port, False, timeout=30):
            tail = server.log_tail(12)
            last = (tail.splitlines() or ["(empty log)"])[-1]
            raise RuntimeError(f"server did not become ready: {last}\n{tail}")
        entry["ready_s"] = time.monotonic() - t0
        res, marks = run.run_loadgen(server, plan, opts, None, budget)
        if "error" in res:
            raise RuntimeError(f"load generator: {res['error']} {res.get('stderr', '')}")
        if run.work_done(plan.loadgen_scenario, res) == 0:
            raise RuntimeError(
                f"no work measured in the window (errors: {res.get('errorSamples')})"
            )
        entry["metrics"] = m = run.metrics_of(plan.loadgen_scenario, res, marks)
        key = "kb_per_conn" if scenario == "idle" else "cpu_ms_per_1k"
        extra = (
            f"hb_us={run.fmt(m.get('hb_cpu_us_per_conn_cycle'))}"
            if scenario == "idle"
            else f"p99={run.fmt(m.get('p99_ms'))}"
        )
        run.log(
            f"round {rnd} {scenario:<14} {name:<9} {key}={run.fmt(m.get(key))} {extra} "
            f"lost={m.get('lost')} dropped={m.get('dropped')} "
            f"others={run.fmt(m.get('others_cpu_util'))}"
        )
    except Exception as exc:  # reported; the bench goes on
        msg = f"round {rnd} {scenario} {name}: {exc}"
        run.log(msg)
        entry["error"] = msg
    finally:
        server.stop()
        with contextlib.suppress(OSError):
            lines = [ln for ln in server.logfile.read_text(errors="replace").splitlines() if ln]
            entry["log_lines"] = len(lines)
            entry["log_head"] = [ln[:300] for ln in lines[:5]]
        entry["wall_s"] = time.monotonic() - t0
        time.sleep(0.3)
    return entry


# ------------------------------------------------------------------------------ summary
def paired(
    runs: list[dict[str, Any]], scenario: str, metric: str, num: str, den: str
) -> float | None:
    """Median over the rounds of num / den, each round's two runs taken together."""
    by_round: dict[int, dict[str, float]] = {}
    for r in runs:
        value = (r.get("metrics") or {}).get(metric)
        if r["scenario"] == scenario and isinstance(value, (int, float)):
            by_round.setdefault(r["round"], {})[r["server"]] = value
    ratios = [
        pair[num] / pair[den]
        for pair in by_round.values()
        if pair.get(num) is not None and pair.get(den)
    ]
    return statistics.median(ratios) if ratios else None


def spread(runs: list[dict[str, Any]], scenario: str, server: str, metric: str) -> list[float]:
    return [
        r["metrics"][metric]
        for r in runs
        if r["scenario"] == scenario
        and r["server"] == server
        and isinstance((r.get("metrics") or {}).get(metric), (int, float))
    ]


def build_table(runs: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    summary = run.summarize(runs)
    revs = [n for n in names if n != BASELINE]
    table = []
    for scenario, metric, label in ROWS:
        if scenario not in summary:
            continue
        row: dict[str, Any] = {"scenario": scenario, "metric": metric, "label": label}
        row["median"] = {n: summary[scenario].get(n, {}).get(metric) for n in names}
        row["runs"] = {n: spread(runs, scenario, n, metric) for n in names}
        row["vs_baseline"] = {n: paired(runs, scenario, metric, n, BASELINE) for n in revs}
        row["vs_previous"] = {
            n: paired(runs, scenario, metric, n, prev) for prev, n in itertools.pairwise(revs)
        }
        row["vs_first"] = {n: paired(runs, scenario, metric, n, revs[0]) for n in revs[1:]}
        table.append(row)
    for key in ("lost", "out_of_order", "dropped", "server_errors"):
        row = {"scenario": "*", "metric": key, "label": f"{key} (all scenarios, all rounds)"}
        row["median"] = {
            n: sum(summary[sc].get(n, {}).get(key) or 0 for sc in summary) for n in names
        }
        table.append(row)
    return table


def ratio_cell(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def markdown(report: dict[str, Any]) -> str:
    mi = report["machine"]
    names = report["servers"]
    revs = [n for n in names if n != BASELINE]
    info = {r["rev"]: r for r in report["revisions"]}
    lines = [
        f"Run {report['date']} · `{report['command']}` · {report['rounds_done']} round(s), "
        f"median · wall {report['wall_s']:.0f} s",
        "",
        f"Machine: {mi['nproc']} cores, {mi['cpu_model']}, Linux {mi['kernel']}; "
        f"Python {mi['python']}, Node {mi['node'] or '-'}; "
        + ", ".join(f"{k} {v}" for k, v in mi["versions"].items() if k != "npm socket.io"),
        "",
        "Revisions (each run from a detached worktree; `import gateway` resolved to the worktree):",
        "",
        "| column | commit | what it adds |",
        "|---|---|---|",
    ]
    for rev in revs:
        r = info[rev]
        lines.append(f"| `{rev}` | `{r['sha'][:10]}` {r['subject'][:70]} | {r['label']} |")
    lines += [
        f"| `{BASELINE}` | `bench/baseline_relay.py` of the working tree | bare python-socketio "
        "relay on stock Hypercorn (fixed reference) |",
        "",
        "Loads: "
        + "; ".join(
            f"{s} " + ", ".join(f"{k}={v}" for k, v in p.items())
            for s, p in report["plans"].items()
        )
        + ". Figures are medians over the rounds (the runs themselves are in the JSON); counts "
        "are totals.",
        "",
        "| figure | " + " | ".join(f"`{n}`" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for row in report["table"]:
        cells = [run.fmt(row["median"].get(n)) for n in names]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Ratios, each the median over the rounds of the two runs of the same round: to the "
        "baseline, and to the previous revision (what that step changed). Below 1 is better "
        "for CPU, latency and memory; above 1 is better for msgs/s.",
        "",
        "| figure | "
        + " | ".join(f"`{n}` / baseline" for n in revs)
        + " | "
        + " | ".join(f"`{b}` / `{a}`" for a, b in itertools.pairwise(revs))
        + " |",
        "|---|" + "---|" * (2 * len(revs) - 1),
    ]
    for row in report["table"]:
        if "vs_baseline" not in row:
            continue
        cells = [ratio_cell(row["vs_baseline"].get(n)) for n in revs]
        cells += [ratio_cell(row["vs_previous"].get(n)) for n in revs[1:]]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Each run's CPU-per-unit figure (CPU-ms / 1k, or CPU-us / heartbeat / conn for idle) and "
        "what every other process on the machine used in its window (share of a core), round "
        "by round:",
        "",
        "| scenario | " + " | ".join(f"`{n}`" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for scenario in report["plans"]:
        metric = "hb_cpu_us_per_conn_cycle" if scenario == "idle" else "cpu_ms_per_1k"
        cells = []
        for n in names:
            parts = []
            for r in report["runs"]:
                if r["scenario"] == scenario and r["server"] == n:
                    m = r.get("metrics") or {}
                    parts.append(
                        "failed"
                        if "error" in r
                        else f"{run.fmt(m.get(metric))} ({run.fmt(m.get('others_cpu_util'))})"
                    )
            cells.append(", ".join(parts) or "-")
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    if report["failures"]:
        lines.append("")
        lines += [f"Failed: {f}" for f in report["failures"]]
    if report["skipped"]:
        lines.append("")
        lines.append(f"Not run (time budget): {', '.join(report['skipped'])}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ main
def main() -> int:
    parser = argparse.ArgumentParser(description="WS-Hub: the gateway at several revisions")
    parser.add_argument(
        "revisions",
        nargs="*",
        help="git revisions, oldest first (default: "
        + " ".join(r for r, _ in DEFAULT_REVISIONS)
        + ")",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--only", default="", help=f"comma list of: {', '.join(SCENARIOS)}")
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline relay")
    parser.add_argument(
        "--noisy",
        type=float,
        default=0.5,
        help="run again (once, at most 3 times in all, while time allows) when other processes "
        "used more than this share of a core during the window (default 0.5)",
    )
    parser.add_argument(
        "--output",
        default=str(run.RESULTS / "revisions"),
        help="path prefix of the .json/.md results (default bench/results/revisions)",
    )
    args = parser.parse_args()
    scenarios = [s for s in args.only.split(",") if s] or list(SCENARIOS)
    for s in scenarios:
        if s not in SCENARIOS:
            parser.error(f"unknown scenario {s!r}; choose from {', '.join(SCENARIOS)}")
    if not 1 <= args.rounds <= 5:
        parser.error("--rounds must be 1..5")
    labels = dict(DEFAULT_REVISIONS)
    revs = [Revision(r, labels.get(r, r)) for r in args.revisions] or [
        Revision(r, label) for r, label in DEFAULT_REVISIONS
    ]
    if len({r.rev for r in revs}) != len(revs) or BASELINE in {r.rev for r in revs}:
        parser.error("revisions must be distinct (and not called 'baseline')")

    if shutil.which("node") is None:
        run.log("node is required: the load generator is bench/loadgen (socket.io-client)")
        return 1
    problem = run.ensure_npm(run.LOADGEN)
    if problem:
        run.log(problem)
        return 1
    for rev in revs:
        resolve(rev)

    # A SIGTERM (or SIGHUP) still removes the worktrees: it unwinds through the finally below.
    def interrupted(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="wshub-revisions-"))
    trees = tmp / "trees"
    trees.mkdir()
    runs: list[dict[str, Any]] = []
    failures: list[str] = []
    skipped: list[str] = []
    rounds_done = 0
    retries_left = MAX_RETRIES
    specs: dict[str, run.ServerSpec] = {}
    try:
        for rev in revs:
            add_worktree(rev, trees)
            spec = RevisionSpec("gateway", {}, worktree=rev.worktree)
            where = imported_from(spec)
            rev.imported = where
            ok = all(str(v).startswith(str(rev.worktree) + os.sep) for v in where.values())
            run.log(f"{rev.rev} = {rev.sha[:10]} in {rev.worktree}: gateway from {where['cwd']}")
            if not ok:
                raise RuntimeError(
                    f"{rev.rev}: `import gateway` does not load the worktree: {where}"
                )
            specs[rev.rev] = spec
        if not args.no_baseline:
            specs[BASELINE] = run.ServerSpec(BASELINE, {})
        names = list(specs)
        for rnd in range(args.rounds):
            rotated = names[rnd % len(names) :] + names[: rnd % len(names)]
            for scenario in scenarios:
                for name in rotated:
                    elapsed = time.monotonic() - started
                    if elapsed > DEADLINE_S:
                        skipped.append(f"round {rnd + 1} {scenario} {name}")
                        continue
                    entry = one_run(name, specs[name], scenario, rnd + 1, tmp)
                    others = (entry.get("metrics") or {}).get("others_cpu_util") or 0.0
                    if (
                        others > args.noisy
                        and retries_left > 0
                        and time.monotonic() - started < RETRY_CUTOFF_S
                    ):
                        retries_left -= 1
                        entry = run.quieter_of(
                            entry, partial(one_run, name, specs[name], scenario, rnd + 1, tmp)
                        )
                    if "error" in entry:
                        failures.append(entry["error"].splitlines()[0])
                    runs.append(entry)
            if not any(s.startswith(f"round {rnd + 1} ") for s in skipped):
                rounds_done = rnd + 1
    finally:
        remove_worktrees(revs)
        shutil.rmtree(tmp, ignore_errors=True)

    names = list(specs)
    report = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["bench/compare_revisions.py", *sys.argv[1:]]),
        "rounds": args.rounds,
        "rounds_done": rounds_done,
        "wall_s": time.monotonic() - started,
        "machine": run.machine_info(),
        "revisions": [
            {
                "rev": r.rev,
                "sha": r.sha,
                "subject": r.subject,
                "label": r.label,
                "gateway_imported_from": r.imported,
            }
            for r in revs
        ],
        "servers": names,
        "gateway_env": {
            **run.GATEWAY_BENCH_ENV,
            "WSHUB_HEARTBEAT_INTERVAL": f"{run.QUIET_HEARTBEAT_INTERVAL} "
            f"(idle: {run.IDLE_HEARTBEAT_INTERVAL})",
        },
        "plans": {s: PLANS[s].options for s in scenarios},
        "failures": failures,
        "skipped": skipped,
        "table": build_table(runs, names),
        "runs": runs,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    md = markdown(report)
    out.with_suffix(".md").write_text(md)
    print(md)
    run.log(f"done in {report['wall_s']:.0f} s; wrote {out.with_suffix('.json')} and .md")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
