"""WS-Hub benchmarks: the gateway against a bare python-socketio relay (and Node socket.io).

One command, bounded in time, stops by itself::

    .venv/bin/python bench/run.py [--quick] [--only SCENARIO[,SCENARIO]]
        [--servers gateway,baseline,node] [--rounds N] [--gateway-env KEY=VALUE ...]

For every round, scenario and server (servers interleaved, their order rotated each round) it
starts the server as a subprocess on a free 127.0.0.1 port, waits until it answers an Engine.IO
handshake, runs the Node load generator (``bench/loadgen``), samples the server's CPU time and
RSS from ``/proc`` exactly at the load generator's window boundaries, and stops the server.
Results: ``bench/results/latest.json``, ``bench/results/latest.md`` (and every raw load generator
report in ``bench/results/latest.raw.json``, git-ignored). See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import selectors
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LOADGEN = BENCH / "loadgen"
NODE_RELAY = BENCH / "node_relay"
RESULTS = BENCH / "results"

CLK_TCK = os.sysconf("SC_CLK_TCK")
ALL_SERVERS = ("gateway", "baseline", "node")
SCENARIOS = (
    "dm-closed",
    "dm-rate",
    "broadcast-closed",
    "broadcast-rate",
    "idle",
    "connect",
    "connect-tls",
)
# Heartbeat interval for the idle scenario (s) and for every other scenario: the message
# scenarios keep the server's own heartbeat out of their windows (it is measured by `idle`).
# All load comes from one loopback address and each bench client sends far more than one user
# would, so the gateway's per-IP admission and per-connection rate limits are lifted (the
# limiters still run: their cost is measured). Unknown WSHUB_* names are ignored by the gateway.
GATEWAY_BENCH_ENV = {
    "WSHUB_MAX_CONNECTIONS": "100000",
    "WSHUB_MAX_CONNECTIONS_PER_IP": "100000",
    "WSHUB_CONNECT_RATE_PER_IP": "100000",
    "WSHUB_CONNECT_BURST_PER_IP": "100000",
    "WSHUB_RATE_LIMIT": "100000",
    "WSHUB_RATE_LIMIT_BURST": "100000",
    "WSHUB_RATE_LIMIT_CHEAP": "100000",
    "WSHUB_RATE_LIMIT_CHEAP_BURST": "100000",
    # system:clients has a rate class of its own since the Socket.IO layer rewrite (25e8a5e);
    # older revisions ignore the names.
    "WSHUB_RATE_LIMIT_CLIENTS": "100000",
    "WSHUB_RATE_LIMIT_CLIENTS_BURST": "100000",
    "WSHUB_LOG_LEVEL": "WARNING",
}
IDLE_HEARTBEAT_INTERVAL = 1.0
QUIET_HEARTBEAT_INTERVAL = 120.0


@dataclass(frozen=True)
class Plan:
    """Load generator options per scenario, default and --quick."""

    loadgen_scenario: str
    options: dict[str, Any]
    quick: dict[str, Any] = field(default_factory=dict)
    tls: bool = False


PLANS: dict[str, Plan] = {
    "dm-closed": Plan(
        "dm-closed", {"pairs": 50, "warmup": 1.5, "duration": 4}, {"warmup": 1, "duration": 2}
    ),
    "dm-rate": Plan(
        "dm-rate",
        {"pairs": 50, "rate": 2000, "warmup": 1.5, "duration": 4},
        {"warmup": 1, "duration": 2.5},
    ),
    "broadcast-closed": Plan(
        "broadcast-closed",
        {"receivers": 500, "warmup": 1.5, "duration": 4},
        {"warmup": 1, "duration": 2},
    ),
    "broadcast-rate": Plan(
        "broadcast-rate",
        {"receivers": 500, "rate": 20, "warmup": 1.5, "duration": 8},
        {"warmup": 1, "duration": 5},
    ),
    "idle": Plan(
        "idle", {"conns": 1000, "settle": 1.5, "hbWindow": 5, "deflate": "on"}, {"hbWindow": 3}
    ),
    "connect": Plan(
        "connect", {"connectConcurrency": 8, "warmup": 1, "duration": 4}, {"duration": 2}
    ),
    "connect-tls": Plan(
        "connect", {"connectConcurrency": 8, "warmup": 1, "duration": 4}, {"duration": 2}, tls=True
    ),
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ /proc sampling
def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[1].split()  # fields after "comm", which may hold spaces


def process_tree(root: int) -> list[int]:
    """*root* and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def _tree_ticks_and_rss(root: int) -> tuple[int, int]:
    ticks = 0
    rss_kb = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is None:
            continue
        ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss_kb += int(line.split()[1])
                    break
    return ticks, rss_kb


def _machine_ticks() -> tuple[int, int]:
    """Busy (user+nice+system+irq+softirq) and steal ticks of the whole machine."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("cpu "):
                f = [int(x) for x in line.split()[1:]]
                return f[0] + f[1] + f[2] + f[5] + f[6], f[7]
    return 0, 0


def sample(root: int, loadgen: int | None = None) -> dict[str, float]:
    """CPU time (ms) and RSS (KB) of the process tree under *root*, plus context.

    CPU = utime + stime of every live process of the tree (all its threads) plus cutime + cstime
    (the children each of them has reaped), so a worker that exits mid-window is not lost.
    The load generator's CPU and the whole machine's busy and steal time are sampled at the same
    moment, so that the CPU used by everything else on the machine can be reported.
    """
    ticks, rss_kb = _tree_ticks_and_rss(root)
    lg_ticks = _tree_ticks_and_rss(loadgen)[0] if loadgen else 0
    busy, steal = _machine_ticks()
    ms = 1000 / CLK_TCK
    return {
        "t": time.monotonic(),
        "cpu_ms": ticks * ms,
        "rss_kb": rss_kb,
        "loadgen_cpu_ms": lg_ticks * ms,
        "machine_busy_ms": busy * ms,
        "machine_steal_ms": steal * ms,
    }


# ------------------------------------------------------------------------------ servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_cert(directory: Path) -> tuple[Path, Path]:
    """Self-signed ECDSA P-256 certificate for 127.0.0.1 / localhost (what a modern CA issues)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certfile, keyfile


@dataclass
class ServerSpec:
    name: str
    gateway_env: dict[str, str]

    def command(
        self, port: int, hb_interval: float, tls: tuple[Path, Path] | None
    ) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        if self.name == "gateway":
            # The gateway's own CLI; TLS flags follow Hypercorn's CLI names.
            cmd = [sys.executable, "-m", "gateway", "serve", "--bind", f"127.0.0.1:{port}"]
            if tls:
                cmd += ["--certfile", str(tls[0]), "--keyfile", str(tls[1])]
            env.update(GATEWAY_BENCH_ENV)
            env.update(
                WSHUB_HEARTBEAT_INTERVAL=str(hb_interval),
                WSHUB_HEARTBEAT_TIMEOUT=str(min(5.0, hb_interval / 2)),
            )
            env.update(self.gateway_env)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        elif self.name == "baseline":
            cmd = [
                sys.executable,
                str(BENCH / "baseline_relay.py"),
                "--port",
                str(port),
                "--heartbeat-interval",
                str(hb_interval),
            ]
            if tls:
                cmd += ["--certfile", str(tls[0]), "--keyfile", str(tls[1])]
        elif self.name == "node":
            cmd = [
                "node",
                str(NODE_RELAY / "relay.js"),
                "--port",
                str(port),
                "--heartbeat-interval",
                str(hb_interval),
            ]
            if tls:
                cmd += ["--certfile", str(tls[0]), "--keyfile", str(tls[1])]
        else:
            raise ValueError(self.name)
        return cmd, env


def check_available(spec: ServerSpec) -> str | None:
    """None if the server can run here, else one line saying why not."""
    if spec.name == "gateway":
        _, env = spec.command(0, 30.0, None)
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "gateway", "serve", "--help"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
            )
        except subprocess.TimeoutExpired:
            return "`python -m gateway serve --help` did not answer within 30 s"
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            return f"`python -m gateway serve` is not available yet: {last}"
        return None
    if spec.name == "node":
        if shutil.which("node") is None:
            return "node is not installed"
        return ensure_npm(NODE_RELAY)
    return None


def ensure_npm(directory: Path) -> str | None:
    """Install the pinned npm packages from the lock file if node_modules is missing."""
    if (directory / "node_modules").is_dir():
        return None
    if shutil.which("npm") is None:
        return f"npm is not installed (needed for {directory.name})"
    log(f"npm ci in {directory.relative_to(ROOT)}")
    try:
        proc = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        return f"npm ci in {directory} took more than 300 s"
    if proc.returncode != 0:
        return f"npm ci in {directory} failed: {proc.stderr.strip().splitlines()[-1:]}"
    return None


def wait_ready(proc: subprocess.Popen[bytes], port: int, tls: bool, timeout: float) -> bool:
    """Poll an Engine.IO polling handshake until the server answers it."""
    deadline = time.monotonic() + timeout
    ctx = ssl._create_unverified_context() if tls else None  # self-signed bench cert
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            conn: http.client.HTTPConnection
            if ctx is not None:
                conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=2, context=ctx)
            else:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/socket.io/?EIO=4&transport=polling")
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            if resp.status == 200 and b'"sid"' in body:
                return True
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.1)
    return False


class Server:
    def __init__(
        self, spec: ServerSpec, hb_interval: float, tls: tuple[Path, Path] | None, logdir: Path
    ):
        self.spec = spec
        self.port = free_port()
        self.tls = tls
        cmd, env = spec.command(self.port, hb_interval, tls)
        self.logfile = logdir / f"{spec.name}-{self.port}.log"
        self._log = self.logfile.open("wb")
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 8) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=6)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        else:
            # The leader is gone; make sure no worker of its group lingers.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


# ------------------------------------------------------------------------------ one run
def run_loadgen(
    server: Server,
    plan: Plan,
    opts: dict[str, Any],
    cafile: Path | None,
    timeout: float,
    extra_sample: Callable[[], dict[str, float]] | None = None,
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """Run the load generator against *server*; answer its MARK lines with /proc samples.

    *extra_sample*, when given, is called at each MARK too and its figures join that sample.
    """
    cmd = [
        "node",
        str(LOADGEN / "loadgen.js"),
        "--scenario",
        plan.loadgen_scenario,
        "--url",
        server.url,
        "--marks",
        "--hard-timeout",
        str(int(timeout)),
    ]
    for key, value in opts.items():
        flag = "--" + "".join("-" + c.lower() if c.isupper() else c for c in key)
        cmd += [flag, str(value)]
    if cafile:
        cmd += ["--ca", str(cafile)]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdin and proc.stdout and proc.stderr
    marks: dict[str, dict[str, float]] = {}
    result: dict[str, Any] | None = None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout + 10
    buf = b""
    try:
        while result is None and time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, min(1.0, deadline - time.monotonic()))):
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf and result is None:
                line, buf = buf.split(b"\n", 1)
                text = line.decode(errors="replace")
                if text.startswith("MARK "):
                    marks[text[5:].strip()] = sample(server.proc.pid, proc.pid)
                    if extra_sample is not None:
                        marks[text[5:].strip()].update(extra_sample())
                    proc.stdin.write(b"ok\n")
                    proc.stdin.flush()
                elif text.startswith("{"):
                    result = json.loads(text)
    finally:
        sel.close()
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    if result is None:
        err = proc.stderr.read().decode(errors="replace").strip().splitlines()[-5:]
        result = {"error": "load generator gave no result", "stderr": err}
    proc.stderr.close()
    proc.stdout.close()
    return result, marks


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den in (None, 0):
        return None
    return num / den


def metrics_of(
    scenario: str, res: dict[str, Any], marks: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """Turn one load generator report plus /proc samples into the reported figures."""
    m: dict[str, Any] = {
        "dropped": res.get("dropped", 0),
        "failed_connects": res.get("failures", res.get("connectErrors", 0)) + res.get("pending", 0),
        "server_errors": res.get("serverErrors", 0) + res.get("failedReplies", 0),
    }

    def cpu(a: str, b: str, key: str = "cpu_ms") -> float | None:
        if a in marks and b in marks:
            return marks[b][key] - marks[a][key]
        return None

    # Everything else the machine ran in the measured window, as a share of one core: the noise.
    a, b = ("hb-start", "hb-end") if scenario == "idle" else ("start", "end")
    if a in marks and b in marks:
        wall_ms = (marks[b]["t"] - marks[a]["t"]) * 1000
        others = (
            (cpu(a, b, "machine_busy_ms") or 0)
            - (cpu(a, b) or 0)
            - (cpu(a, b, "loadgen_cpu_ms") or 0)
        )
        m["server_cpu_util"] = _ratio(cpu(a, b), wall_ms)
        m["loadgen_cpu_util"] = _ratio(cpu(a, b, "loadgen_cpu_ms"), wall_ms)
        m["others_cpu_util"] = _ratio(max(0.0, others), wall_ms)
        m["steal_util"] = _ratio(cpu(a, b, "machine_steal_ms"), wall_ms)

    if scenario in ("dm-closed", "dm-rate"):
        c = cpu("start", "end")
        m.update(
            cpu_ms_per_1k=_ratio(c, res["receivedInWindow"] / 1000),
            msgs_per_s=res["throughput"],
            p50_ms=res["latencyMs"]["p50"],
            p99_ms=res["latencyMs"]["p99"],
            max_ms=res["latencyMs"]["max"],
            lost=res["lost"],
            out_of_order=res["outOfOrder"],
            send_lag_max_ms=res.get("sendLagMaxMs"),
        )
    elif scenario in ("broadcast-closed", "broadcast-rate"):
        c = cpu("start", "end")
        m.update(
            cpu_ms_per_1k=_ratio(c, res["deliveriesInWindow"] / 1000),
            deliveries_per_s=res["deliveriesPerS"],
            broadcasts_per_s=res["broadcastsPerS"],
            p50_ms=res["lastReceiverMs"]["p50"],
            p99_ms=res["lastReceiverMs"]["p99"],
            max_ms=res["lastReceiverMs"]["max"],
            samples=res["lastReceiverMs"]["n"],
            lost=res["lost"],
            out_of_order=res["outOfOrder"],
            send_lag_max_ms=res.get("sendLagMaxMs"),
        )
    elif scenario == "idle":
        n = res["conns"]
        hb = res["heartbeatsInWindow"]
        c = cpu("hb-start", "hb-end")
        before = marks.get("before", {}).get("rss_kb")
        m.update(
            kb_per_conn=_ratio(marks["hb-end"]["rss_kb"] - before, n) if before else None,
            kb_per_conn_at_connect=(
                _ratio(marks["connected"]["rss_kb"] - before, n) if before else None
            ),
            hb_cpu_us_per_conn_cycle=_ratio(c * 1000 if c is not None else None, hb),
            hb_cycles=res["heartbeatCyclesInWindow"],
            deflate_negotiated=res["deflateNegotiated"],
            deflate_offered_seen_by_server=(res.get("serverStats") or {}).get("deflateOffered"),
            rss_before_kb=before,
            still_open=res["stillOpen"],
            lost=0,
            out_of_order=0,
        )
        m["dropped"] += n - res["stillOpen"]
    elif scenario == "connect":
        c = cpu("start", "end")
        m.update(
            cpu_ms_per_1k=_ratio(c, res["completedInWindow"] / 1000),
            connects_per_s=res["connectsPerS"],
            p50_ms=res["connectMs"]["p50"],
            p99_ms=res["connectMs"]["p99"],
            lost=0,
            out_of_order=0,
        )
    return m


# ------------------------------------------------------------------------------ summary
COUNT_KEYS = {"lost", "out_of_order", "dropped", "failed_connects", "server_errors"}


def work_done(scenario: str, res: dict[str, Any]) -> int:
    """The unit of work a scenario's window measured; 0 means the run measured nothing."""
    key = {
        "dm-closed": "receivedInWindow",
        "dm-rate": "receivedInWindow",
        "broadcast-closed": "deliveriesInWindow",
        "broadcast-rate": "deliveriesInWindow",
        "idle": "heartbeatsInWindow",
        "connect": "completedInWindow",
    }[scenario]
    return int(res.get(key) or 0)


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Median of every figure over the rounds; counts (lost, dropped, ...) are summed."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        if "metrics" in run:
            grouped.setdefault((run["scenario"], run["server"]), []).append(run["metrics"])
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (scenario, server), ms in grouped.items():
        keys = sorted({k for m in ms for k in m})
        agg: dict[str, Any] = {"rounds": len(ms)}
        for k in keys:
            vals = [m[k] for m in ms if isinstance(m.get(k), (int, float))]
            if not vals:
                agg[k] = None
            elif k in COUNT_KEYS:
                agg[k] = sum(vals)
            else:
                agg[k] = statistics.median(vals)
        out.setdefault(scenario, {})[server] = agg
    return out


# (scenario, metric, label, kind, target): kind "ratio" compares gateway/baseline with the
# target; "abs" compares the gateway's own figure; None: reported only.
ROWS: list[tuple[str, str, str, str | None, float | None]] = [
    (
        "dm-closed",
        "cpu_ms_per_1k",
        "DM closed loop, 50 pairs: server CPU-ms / 1k DMs",
        "ratio",
        0.8,
    ),
    ("dm-closed", "msgs_per_s", "DM closed loop: msgs/s", None, None),
    ("dm-closed", "p50_ms", "DM closed loop: p50 ms", None, None),
    ("dm-closed", "p99_ms", "DM closed loop: p99 ms", None, None),
    ("dm-rate", "cpu_ms_per_1k", "DM 2000/s: server CPU-ms / 1k DMs", "ratio", 0.8),
    ("dm-rate", "msgs_per_s", "DM 2000/s: msgs/s achieved", None, None),
    ("dm-rate", "p50_ms", "DM 2000/s: p50 ms", None, None),
    ("dm-rate", "p99_ms", "DM 2000/s: p99 ms", None, None),
    ("dm-rate", "max_ms", "DM 2000/s: max ms", None, None),
    (
        "broadcast-closed",
        "cpu_ms_per_1k",
        "Broadcast closed loop, 500 receivers: server CPU-ms / 1k deliveries",
        "ratio",
        0.8,
    ),
    ("broadcast-closed", "deliveries_per_s", "Broadcast closed loop: deliveries/s", None, None),
    ("broadcast-closed", "p50_ms", "Broadcast closed loop: last receiver p50 ms", None, None),
    ("broadcast-closed", "p99_ms", "Broadcast closed loop: last receiver p99 ms", None, None),
    (
        "broadcast-rate",
        "cpu_ms_per_1k",
        "Broadcast 20/s, 500 receivers: server CPU-ms / 1k deliveries",
        "ratio",
        0.8,
    ),
    ("broadcast-rate", "p50_ms", "Broadcast 20/s: last receiver p50 ms", None, None),
    ("broadcast-rate", "p99_ms", "Broadcast 20/s: last receiver p99 ms", "abs", 50.0),
    (
        "idle",
        "kb_per_conn",
        "Idle, 1000 conns offering permessage-deflate: KB / conn",
        "ratio",
        0.7,
    ),
    (
        "idle",
        "deflate_negotiated",
        "Idle: connections with permessage-deflate negotiated",
        None,
        None,
    ),
    (
        "idle",
        "deflate_offered_seen_by_server",
        "Idle: clients seen offering permessage-deflate by the server (bench relays only)",
        None,
        None,
    ),
    (
        "idle",
        "hb_cpu_us_per_conn_cycle",
        "Idle: server CPU-us / heartbeat cycle / conn",
        "ratio",
        1.0,
    ),
    ("connect", "cpu_ms_per_1k", "Connect+setData+disconnect (ws): server CPU-ms / 1k", None, None),
    ("connect", "connects_per_s", "Connect (ws): connects/s", None, None),
    ("connect", "p99_ms", "Connect (ws): p99 ms to dataSet", None, None),
    (
        "connect-tls",
        "cpu_ms_per_1k",
        "Connect+setData+disconnect (wss): server CPU-ms / 1k",
        None,
        None,
    ),
    ("connect-tls", "connects_per_s", "Connect (wss): connects/s", None, None),
    ("connect-tls", "p99_ms", "Connect (wss): p99 ms to dataSet", None, None),
]


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}".replace(",", " ")
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    return str(v)


def paired_ratio(runs: list[dict[str, Any]], scenario: str, metric: str) -> float | None:
    """Median over the rounds of gateway / baseline, each round's two runs taken together.

    The two servers of one round ran within a minute of each other, so a slow drift of the
    machine's load cancels out of each round's ratio; a median of medians would not pair them.
    """
    by_round: dict[int, dict[str, float]] = {}
    for run in runs:
        value = (run.get("metrics") or {}).get(metric)
        if run["scenario"] == scenario and isinstance(value, (int, float)):
            by_round.setdefault(run["round"], {})[run["server"]] = value
    ratios = [
        r
        for pair in by_round.values()
        if (r := _ratio(pair.get("gateway"), pair.get("baseline"))) is not None
    ]
    return statistics.median(ratios) if ratios else None


def evaluate(
    summary: dict[str, dict[str, dict[str, Any]]], runs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    rows = []
    for scenario, metric, label, kind, target in ROWS:
        if scenario not in summary:
            continue
        per = {s: summary[scenario].get(s, {}).get(metric) for s in ALL_SERVERS}
        ratio = paired_ratio(runs, scenario, metric)
        met: bool | None = None
        if kind == "ratio" and ratio is not None and target is not None:
            met = ratio <= target
        elif kind == "abs" and per["gateway"] is not None and target is not None:
            met = per["gateway"] <= target
        rows.append(
            {
                "scenario": scenario,
                "metric": metric,
                "label": label,
                **per,
                "ratio": ratio,
                "kind": kind,
                "target": target,
                "met": met,
            }
        )
    # Correctness: lost, out-of-order, dropped, over every scenario and round.
    for key, label in (
        ("lost", "Lost messages (all scenarios, all rounds)"),
        ("out_of_order", "Out-of-order messages (all scenarios, all rounds)"),
        ("dropped", "Dropped connections (all scenarios, all rounds)"),
        ("failed_connects", "Failed connects (all scenarios, all rounds)"),
        ("server_errors", "system:error / failed replies (all scenarios, all rounds)"),
    ):
        per = {}
        for s in ALL_SERVERS:
            vals = [summary[sc][s].get(key) for sc in summary if s in summary[sc]]
            vals = [v for v in vals if v is not None]
            per[s] = sum(vals) if vals else None
        met = None if per["gateway"] is None else per["gateway"] == 0
        rows.append(
            {
                "scenario": "*",
                "metric": key,
                "label": label,
                **per,
                "ratio": None,
                "kind": "zero",
                "target": 0,
                "met": met,
            }
        )
    per = {s: None for s in ALL_SERVERS}
    for run in runs:
        per[run["server"]] = (per[run["server"]] or 0) + (1 if "error" in run else 0)
    rows.append(
        {
            "scenario": "*",
            "metric": "failed_runs",
            "label": "Runs that failed (server not ready, crash, no result)",
            **per,
            "ratio": None,
            "kind": "zero",
            "target": 0,
            "met": None if per["gateway"] is None else per["gateway"] == 0,
        }
    )
    return rows


def machine_info() -> dict[str, Any]:
    cpu_model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    node = None
    if shutil.which("node"):
        node = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    versions = {}
    for dist in ("python-socketio", "python-engineio", "hypercorn", "quart", "wsproto"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    for directory, pkg in ((LOADGEN, "socket.io-client"), (NODE_RELAY, "socket.io")):
        with contextlib.suppress(OSError, KeyError, ValueError):
            lock = json.loads((directory / "package-lock.json").read_text())
            versions[f"npm {pkg}"] = lock["packages"][f"node_modules/{pkg}"]["version"]
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": node,
        "versions": versions,
    }


def markdown(report: dict[str, Any]) -> str:
    mi = report["machine"]
    lines = [
        f"Run {report['date']} · `{report['command']}` · {report['rounds']} round(s), "
        f"median · wall {report['wall_s']:.0f} s",
        "",
        "Figures are medians over the rounds; counts are totals. The gateway / baseline column is "
        "the median of the per-round ratios (each round's two runs ran a minute apart).",
        "",
        f"Machine: {mi['nproc']} cores, {mi['cpu_model']}, Linux {mi['kernel']}; "
        f"Python {mi['python']}, Node {mi['node'] or '-'}; "
        + ", ".join(f"{k} {v}" for k, v in mi["versions"].items()),
        "",
        "| scenario / figure | gateway | baseline (python-socketio + Hypercorn) | node socket.io "
        "| gateway / baseline | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["table"]:
        if row["kind"] == "ratio":
            target = f"<= {row['target']}x"
        elif row["kind"] == "abs":
            target = f"<= {fmt(row['target'])} (gateway)"
        elif row["kind"] == "zero":
            target = "0"
        else:
            target = ""
        met = {True: "met", False: "**not met**", None: "-" if row["kind"] else ""}[row["met"]]
        ratio = f"{row['ratio']:.3f}x" if row["ratio"] is not None else "-"
        lines.append(
            f"| {row['label']} | {fmt(row['gateway'])} | {fmt(row['baseline'])} | "
            f"{fmt(row['node'])} | {ratio} | {target} | {met} |"
        )
    lines += [
        "",
        "CPU used in the measured window, as a share of one core: server process tree / load "
        "generator / every other process on the machine. A server near 1.0 is saturated; a load "
        "generator near 1.0 sets the pace itself, and then only the server's CPU per unit of "
        "work compares; other processes above about 0.2 make that run noisy.",
        "",
        "| scenario | gateway | baseline | node |",
        "|---|---|---|---|",
    ]
    for scenario, per in report["summary"].items():
        cells = []
        for name in ALL_SERVERS:
            agg = per.get(name)
            if agg is None:
                cells.append("-")
            else:
                cells.append(
                    f"{fmt(agg.get('server_cpu_util'))} / {fmt(agg.get('loadgen_cpu_util'))}"
                    f" / {fmt(agg.get('others_cpu_util'))}"
                )
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    if report["unavailable"]:
        lines.append("")
        for name, why in report["unavailable"].items():
            lines.append(f"Not run: **{name}**: {why}")
    if report["failures"]:
        lines.append("")
        for f in report["failures"]:
            lines.append(f"Failed: {f}")
    return "\n".join(lines) + "\n"


def quieter_of(entry: dict[str, Any], rerun: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run *rerun* once more after a noisy *entry*; keep whichever attempt was quieter.

    Noise is what every other process on the machine used during the measured window.
    """
    others = (entry.get("metrics") or {}).get("others_cpu_util") or 0.0
    log(f"  other processes used {others:.2f} core: running it again")
    again = rerun()
    again_others = (again.get("metrics") or {}).get("others_cpu_util")
    if again_others is not None and again_others < others:
        again["noisy_attempt_others_cpu_util"] = others
        return again
    entry["noisy_retry_others_cpu_util"] = again_others
    return entry


def one_run(
    spec: ServerSpec,
    scenario: str,
    rnd: int,
    quick: bool,
    cert: tuple[Path, Path],
    tmp: Path,
) -> dict[str, Any]:
    """Start *spec* fresh, run *scenario* against it, stop it; the entry for the report."""
    plan = PLANS[scenario]
    opts = dict(plan.options)
    if quick:
        opts.update(plan.quick)
    hb = IDLE_HEARTBEAT_INTERVAL if scenario == "idle" else QUIET_HEARTBEAT_INTERVAL
    budget = sum(opts.get(k, 0) for k in ("warmup", "duration", "settle", "hbWindow")) + 60
    tls = cert if plan.tls else None
    entry: dict[str, Any] = {
        "round": rnd,
        "scenario": scenario,
        "server": spec.name,
        "options": opts,
    }
    server = Server(spec, hb, tls, tmp)
    try:
        if not wait_ready(server.proc, server.port, bool(tls), timeout=30):
            tail = server.log_tail(12)
            last = (tail.splitlines() or ["(empty log)"])[-1]
            raise RuntimeError(f"server did not become ready: {last}\n{tail}")
        t0 = time.monotonic()
        res, marks = run_loadgen(server, plan, opts, cert[0] if tls else None, budget)
        entry.update(result=res, marks=marks, wall_s=time.monotonic() - t0)
        if "error" in res:
            raise RuntimeError(f"load generator: {res['error']} {res.get('stderr', '')}")
        if work_done(plan.loadgen_scenario, res) == 0:
            counts = {
                k: res[k]
                for k in ("sent", "received", "started", "completed", "failures", "pending")
                if k in res
            }
            raise RuntimeError(
                f"no work measured in the window {counts} (errors: {res.get('errorSamples')})"
            )
        entry["metrics"] = m = metrics_of(plan.loadgen_scenario, res, marks)
        key = next((k for k in ("cpu_ms_per_1k", "kb_per_conn") if k in m), None)
        log(
            f"round {rnd} {scenario:<16} {spec.name:<8} "
            + (f"{key}={fmt(m[key])} " if key else "")
            + f"p99={fmt(m.get('p99_ms'))} lost={m.get('lost')} "
            f"ooo={m.get('out_of_order')} dropped={m.get('dropped')} "
            f"others={fmt(m.get('others_cpu_util'))}"
        )
    except Exception as exc:  # reported; the bench goes on
        msg = f"round {rnd} {scenario} {spec.name}: {exc}"
        log(msg)
        entry["error"] = msg
    finally:
        server.stop()
        time.sleep(0.3)
    return entry


# ------------------------------------------------------------------------------ main
def main() -> int:
    parser = argparse.ArgumentParser(description="WS-Hub benchmarks (see bench/README.md)")
    parser.add_argument("--quick", action="store_true", help="1 short round (< 3 min)")
    parser.add_argument("--only", default="", help=f"comma list of: {', '.join(SCENARIOS)}")
    parser.add_argument(
        "--servers", default=",".join(ALL_SERVERS), help="comma list of: gateway, baseline, node"
    )
    parser.add_argument("--rounds", type=int, default=None, help="default 3 (1 with --quick)")
    parser.add_argument(
        "--noisy",
        type=float,
        default=0.5,
        help="run again (once) when other processes used more than this share of a core "
        "during the window (default 0.5)",
    )
    parser.add_argument(
        "--max-retries",
        type=int,
        default=None,
        help="cap on such repeats for the whole bench (default 8, 3 with --quick)",
    )
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the gateway (repeatable)",
    )
    parser.add_argument(
        "--output",
        default=str(RESULTS / "latest"),
        help="path prefix of the .json/.md results (default bench/results/latest)",
    )
    args = parser.parse_args()

    scenarios = [s for s in args.only.split(",") if s] or list(SCENARIOS)
    servers = [s for s in args.servers.split(",") if s]
    for s in scenarios:
        if s not in SCENARIOS:
            parser.error(f"unknown scenario {s!r}; choose from {', '.join(SCENARIOS)}")
    for s in servers:
        if s not in ALL_SERVERS:
            parser.error(f"unknown server {s!r}; choose from {', '.join(ALL_SERVERS)}")
    rounds = args.rounds or (1 if args.quick else 3)
    if args.max_retries is None:
        args.max_retries = 3 if args.quick else 8
    if not 1 <= rounds <= 9:
        parser.error("--rounds must be 1..9")
    gateway_env = {}
    for item in args.gateway_env:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--gateway-env wants KEY=VALUE, got {item!r}")
        gateway_env[key] = value

    if shutil.which("node") is None:
        log("node is required: the load generator is bench/loadgen (socket.io-client)")
        return 1
    problem = ensure_npm(LOADGEN)
    if problem:
        log(problem)
        return 1

    specs = {name: ServerSpec(name, gateway_env) for name in servers}
    unavailable: dict[str, str] = {}
    for name in list(specs):
        why = check_available(specs[name])
        if why:
            log(f"{name}: NOT RUN: {why}")
            unavailable[name] = why
            del specs[name]
    if not specs:
        log("no server can run")
        return 1

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="wshub-bench-"))
    # The certificate gets a directory of its own, apart from the server logs: the gateway
    # watches its certificate's directory for reloads.
    (tmp / "certs").mkdir()
    certfile, keyfile = make_cert(tmp / "certs")
    runs: list[dict[str, Any]] = []
    failures: list[str] = []
    order = list(specs)
    retries_left = args.max_retries
    try:
        for rnd in range(rounds):
            rotated = order[rnd % len(order) :] + order[: rnd % len(order)]
            for scenario in scenarios:
                for name in rotated:
                    entry = one_run(
                        specs[name], scenario, rnd + 1, args.quick, (certfile, keyfile), tmp
                    )
                    others = (entry.get("metrics") or {}).get("others_cpu_util") or 0.0
                    if others > args.noisy and retries_left > 0:
                        # Something else took much of the machine during the window: measure
                        # again once and keep the quieter attempt.
                        retries_left -= 1
                        entry = quieter_of(
                            entry,
                            partial(
                                one_run,
                                specs[name],
                                scenario,
                                rnd + 1,
                                args.quick,
                                (certfile, keyfile),
                                tmp,
                            ),
                        )
                    if "error" in entry:
                        failures.append(entry["error"].splitlines()[0])
                    runs.append(entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    summary = summarize(runs)
    report = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "bench/run.py " + " ".join(sys.argv[1:]),
        "rounds": rounds,
        "quick": args.quick,
        "wall_s": time.monotonic() - started,
        "machine": machine_info(),
        "servers": servers,
        "unavailable": unavailable,
        "failures": failures,
        "plans": {
            s: {**PLANS[s].options, **(PLANS[s].quick if args.quick else {})} for s in scenarios
        },
        "summary": summary,
        "table": evaluate(summary, runs),
        "runs": [{k: v for k, v in r.items() if k not in ("result", "marks")} for r in runs],
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".raw.json").write_text(json.dumps(runs, indent=1) + "\n")
    md = markdown(report)
    out.with_suffix(".md").write_text(md)
    print(md)
    log(f"done in {report['wall_s']:.0f} s; wrote {out.with_suffix('.json')} and .md")
    if unavailable:
        log("some servers were not run: " + "; ".join(f"{k}: {v}" for k, v in unavailable.items()))
        return 2
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
