"""Several worker processes on shared listening sockets.

Hypercorn's own multi-worker ``run()`` restarts every worker on SIGHUP, dropping every open
connection; our supervisor forwards SIGHUP to the workers instead, which reload their TLS
material in place. SIGINT and SIGTERM are forwarded too, and the supervisor exits with the
first non-zero worker status (0 when all stop cleanly).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import tempfile
from multiprocessing.context import SpawnProcess
from types import FrameType

from ..observability.metrics import MULTIPROC_ENV
from ..settings import Settings
from .config import GatewayConfig
from .listeners import create_listeners
from .runner import run_worker

log = logging.getLogger("wshub.supervisor")

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def supervise(config: GatewayConfig, settings: Settings) -> int:
    listeners = create_listeners(config, settings.ops_bind)
    # Each worker writes its metric samples here; any worker's /metrics sums them all.
    metrics_dir = tempfile.TemporaryDirectory(prefix="wshub-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir.name
    context = multiprocessing.get_context("spawn")
    workers: list[SpawnProcess] = [
        context.Process(target=run_worker, args=(config, settings, listeners), name=f"worker-{n}")
        for n in range(config.workers)
    ]
    for worker in workers:
        worker.start()
    for sock in (
        *listeners.public.secure_sockets,
        *listeners.public.insecure_sockets,
        *listeners.ops,
    ):
        sock.close()  # the workers hold their own copies

    def forward(signum: int, _: FrameType | None) -> None:
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    status = 0
    for worker in workers:
        worker.join()
        if worker.exitcode and not status:
            status = worker.exitcode
            log.error("%s exited with status %s; stopping the others", worker.name, status)
            for other in workers:
                if other.is_alive():
                    other.terminate()
    metrics_dir.cleanup()
    return status
