"""Measure certificate reload latency at the gateway's DEFAULT watch settings
(``tls_watch_step_ms``, ``tls_watch_debounce_ms`` of :class:`gateway.settings.Settings`), with
real TLS handshakes.

Run from the repository root:  .venv/bin/python bench/tls_reload_latency.py

1. Latency: N atomic rotations (tmp file + os.replace, cert then key). For each, the time from
   the second rename to the first fresh handshake that presents the new serial; a client polls
   with full handshakes back to back.
2. Load: 10 rotations while several client threads open new connections non-stop (handshake,
   echo one line, close); every failed handshake or echo is counted.

The server (echo + reloader) runs in its own thread and event loop; clients are blocking
``ssl`` sockets in other threads, so polling does not steal the server loop.
Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography import x509
from hypercorn.config import Config

from gateway.settings import Settings
from gateway.tls import TlsFiles, TlsReloader
from tests.support.tls import echo_server, make_ca, write_atomic


class Server:
    """Echo server + reloader (default settings) on a private loop in a daemon thread."""

    def __init__(self, files: TlsFiles) -> None:
        defaults = Settings.load()
        self.reloader = TlsReloader(
            Config(),
            files,
            step_ms=defaults.tls_watch_step_ms,
            debounce_ms=defaults.tls_watch_debounce_ms,
        )
        self.port = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with echo_server(self.reloader.listening_context()) as port:
            self.port = port
            await self.reloader.start()
            self._ready.set()
            await self._stop.wait()
            await self.reloader.stop()

    def __enter__(self) -> Server:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("server did not start")
        return self

    def __exit__(self, *_: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def handshake(port: int, ctx: ssl.SSLContext) -> int:
    """One fresh full handshake and echo; the served serial."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"ping\n")
        received = b""
        while not received.endswith(b"\n"):
            chunk = tls.recv(64)
            if not chunk:
                raise ConnectionError("closed before echo")
            received += chunk
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number


def rotate(directory: Path, cert_pem: bytes, key_pem: bytes) -> float:
    write_atomic(directory / "cert.pem", cert_pem)
    write_atomic(directory / "key.pem", key_pem)
    return time.perf_counter()


def measure_latency(rotations: int) -> None:
    ca = make_ca("latency CA")
    ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        first = ca.issue(1)
        rotate(directory, first.cert_pem, first.key_pem)
        files = TlsFiles(str(directory / "cert.pem"), str(directory / "key.pem"))
        with Server(files) as server:
            latencies: list[float] = []
            polls: list[int] = []
            for serial in range(2, rotations + 2):
                pair = ca.issue(serial)
                cert_pem, key_pem = pair.cert_pem, pair.key_pem
                changed = rotate(directory, cert_pem, key_pem)
                count = 0
                while True:
                    count += 1
                    if handshake(server.port, ctx) == serial:
                        latencies.append(time.perf_counter() - changed)
                        break
                    if time.perf_counter() - changed > 10:
                        raise RuntimeError(f"rotation to serial {serial} not served in 10 s")
                polls.append(count)
                time.sleep(0.3)  # let the watcher go idle, like real rotations far apart
            outcomes = Counter(r.outcome for r in server.reloader.history)
    ms = sorted(latency * 1000 for latency in latencies)
    print(f"[latency] {rotations} atomic rotations (tmp + os.replace, cert then key), defaults")
    print(
        f"  median {statistics.median(ms):.1f} ms   p90 {ms[int(0.9 * (len(ms) - 1))]:.1f} ms"
        f"   best {ms[0]:.1f} ms   worst {ms[-1]:.1f} ms"
    )
    print(f"  handshakes per rotation until the new serial: median {statistics.median(polls)}")
    print(f"  reload outcomes: {dict(outcomes)}")


def measure_under_load(rotations: int, clients: int, interval: float) -> None:
    ca = make_ca("load CA")
    ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        first = ca.issue(1)
        rotate(directory, first.cert_pem, first.key_pem)
        files = TlsFiles(str(directory / "cert.pem"), str(directory / "key.pem"))
        with Server(files) as server:
            stop = threading.Event()
            lock = threading.Lock()
            served: Counter[int] = Counter()
            failures: list[str] = []

            def client() -> None:
                while not stop.is_set():
                    try:
                        serial = handshake(server.port, ctx)
                    except (OSError, ssl.SSLError) as exc:
                        with lock:
                            failures.append(f"{type(exc).__name__}: {exc}")
                        continue
                    with lock:
                        served[serial] += 1

            threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            time.sleep(interval)
            for serial in range(2, rotations + 2):
                pair = ca.issue(serial)
                rotate(directory, pair.cert_pem, pair.key_pem)
                time.sleep(interval)
            stop.set()
            for thread in threads:
                thread.join(10)
            elapsed = time.perf_counter() - started
            reloads_ok = server.reloader.reloads_ok
            rejected = server.reloader.reloads_rejected
    total = sum(served.values()) + len(failures)
    print(
        f"[load] {rotations} rotations every {interval:.1f} s, {clients} client threads "
        f"opening new connections non-stop for {elapsed:.1f} s"
    )
    print(
        f"  handshakes {total} ({total / elapsed:.0f}/s), failed {len(failures)}, "
        f"serials seen {len(served)} of {rotations + 1}, reloads ok {reloads_ok}, "
        f"refused {rejected}"
    )
    for failure, count in Counter(failures).most_common(5):
        print(f"  failure x{count}: {failure}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rotations", type=int, default=24)
    parser.add_argument("--load-rotations", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--interval", type=float, default=0.5)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        measure_latency(args.rotations)
        measure_under_load(args.load_rotations, args.clients, args.interval)


if __name__ == "__main__":
    main()
