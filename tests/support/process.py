"""The gateway as a separate process (``python -m gateway serve``), for what needs one: RSS
measurements, signals, several workers, several gateways on one Redis."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

_insecure = ssl.create_default_context()
_insecure.check_hostname = False
_insecure.verify_mode = ssl.CERT_NONE


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    """Resident memory of *pid* and its children, in KiB, from /proc."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


@dataclass
class GatewayProcess:
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    scheme: str = "http"
    capture_stderr: bool = False
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(
        self, timeout: float = 15, health_scheme: str = "http", health_port: int | None = None
    ) -> GatewayProcess:
        if not self.port:
            self.port = free_port()
        env = {**os.environ, "WSHUB_LOG_LEVEL": "WARNING", "WSHUB_DRAIN_WINDOW": "0.5", **self.env}
        argv = [sys.executable, "-m", "gateway", "serve", *self.args]
        if not any(a.startswith("--config") for a in self.args) and "--bind" not in self.args:
            argv += ["--bind", f"127.0.0.1:{self.port}"]
        self.proc = subprocess.Popen(
            argv, env=env, stderr=subprocess.PIPE if self.capture_stderr else None
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(
                    f"{health_scheme}://127.0.0.1:{health_port or self.port}/health",
                    timeout=1,
                    context=_insecure,
                ):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("gateway did not answer /health in time")

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stderr_text(self) -> str:
        """Everything the process logged (it must have stopped; needs capture_stderr)."""
        assert self.proc is not None and self.proc.stderr is not None
        return self.proc.stderr.read().decode()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
