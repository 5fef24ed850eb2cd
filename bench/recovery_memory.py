"""WS-Hub: what a session waiting for recovery costs the server, one command (~1 minute).

::

    .venv/bin/python bench/recovery_memory.py [--sessions 1000] [--held 5] [--output PREFIX]

The gateway of the working tree runs in this process, on its own thread and event loop, with
``tracemalloc`` tracing it; the clients are the official JS client (``tests/interop/driver.mjs``,
one Node process, on 127.0.0.1). The figures are the Python heap the gateway holds (allocations
whose traceback is in the gateway, python-engineio, Hypercorn or their protocol libraries), per
session, in each state:

1. *connected*: ``--sessions`` named JS clients;
2. *connected, with events*: each was sent ``--held`` DMs it has not yet been proven to have read
   (the Engine.IO ping is a minute away), so each session's replay log holds them;
3. *recovering*: every transport dropped without a close frame (the JS client's socket
   destroyed): each session waits for its client, holding its name, its data and those events;
4. after the recovery window: everything is released.

Results: ``bench/results/recovery_memory.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import sys
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.settings import Settings  # noqa: E402
from tests.support.jsclient import JsClients  # noqa: E402
from tests.support.raw import eventually  # noqa: E402
from tests.support.server import LiveServer  # noqa: E402

SERVER_CODE = ("/gateway/", "/engineio/", "/hypercorn/", "/wsproto/", "/h11/", "/asyncio/")
WINDOW = 20.0


def server_bytes(snapshot: tracemalloc.Snapshot) -> int:
    """Heap held by allocations made in the server's code (the JS clients are another process)."""
    return sum(
        stat.size
        for stat in snapshot.statistics("traceback")
        if any(any(part in frame.filename for part in SERVER_CODE) for frame in stat.traceback)
    )


async def measure(sessions: int, held: int) -> dict[str, Any]:
    settings = Settings.load(
        recovery_window=WINDOW,
        recovery_buffer=max(held, 1) + 10,
        engineio_ping_interval=60,
        engineio_ping_timeout=60,
        heartbeat_interval=600,
        heartbeat_timeout=5,
        max_connections_per_ip=100_000,
        connect_rate_per_ip=100_000,
        connect_burst_per_ip=100_000,
        rate_limit=100_000,
        rate_limit_burst=100_000,
        drain_window=0.5,
    )
    tracemalloc.start(25)
    server = LiveServer(settings).start()  # on its own thread and event loop
    js = await JsClients(lifetime=1800).start()  # a thousand sessions take minutes here
    url = f"http://127.0.0.1:{server.port}"
    figures: dict[str, float] = {}

    def heap() -> int:
        gc.collect()
        return server_bytes(tracemalloc.take_snapshot())

    try:
        baseline = heap()
        for n in range(sessions):
            await js.open(f"s{n}", url, reconnection=False)
            await js.emit(f"s{n}", "system:setData", {"username": f"user{n}"}, ack=True)
        await js.open("sender", url, reconnection=False)
        await js.emit("sender", "system:setData", {"username": "sender"}, ack=True)
        connected = heap()
        for n in range(sessions):
            for k in range(held):
                await js.emit(
                    "sender", "system:direct", {"target": f"user{n}", "type": "chat", "k": k}
                )
        await js.events(f"s{sessions - 1}", "system:direct", held, timeout=30)
        with_events = heap()
        for n in range(sessions):
            await js.command("drop", name=f"s{n}")
        gateway = server.gateway
        assert gateway is not None
        # Every dropped transport noticed: only the sender is still active.
        await eventually(lambda: gateway.sessions.table.active <= 1, timeout=30, step=0.1)
        recovering_count = sum(
            1 for c in gateway.sessions.table.by_sid.values() if c.state.value == "recovering"
        )
        recovering = heap()
        await asyncio.sleep(WINDOW + 1)
        expired = heap()
        figures = {
            "sessions": sessions,
            "held_per_session": held,
            "recovering_sessions": recovering_count,
            "kb_per_connected_session": (connected - baseline) / sessions / 1024,
            "kb_per_connected_session_with_events": (with_events - baseline) / sessions / 1024,
            "kb_per_recovering_session": (recovering - baseline) / sessions / 1024,
            "kb_per_session_after_the_window": (expired - baseline) / sessions / 1024,
        }
    finally:
        await js.stop()
        server.stop()
        tracemalloc.stop()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--held", type=int, default=5, help="DMs held per session")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "recovery_memory"))
    args = parser.parse_args()
    figures = asyncio.run(measure(args.sessions, args.held))
    held = figures["held_per_session"]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    Path(args.output + ".json").write_text(json.dumps({"date": stamp, **figures}, indent=2) + "\n")
    table = "\n".join(
        [
            f"# Memory of a session waiting for recovery ({stamp})",
            "",
            f"{figures['sessions']} JS clients, {held} unconfirmed DMs each; "
            "Python heap held by the gateway's code (tracemalloc), per session.",
            "",
            "| state | KB per session |",
            "|---|---|",
            f"| connected | {figures['kb_per_connected_session']:.1f} |",
            f"| connected, {held} events kept for recovery"
            f" | {figures['kb_per_connected_session_with_events']:.1f} |",
            "| recovering (transport gone; name, data and events kept)"
            f" | {figures['kb_per_recovering_session']:.1f} |",
            f"| after the recovery window | {figures['kb_per_session_after_the_window']:.1f} |",
            "",
        ]
    )
    Path(args.output + ".md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
