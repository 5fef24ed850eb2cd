"""Bare python-socketio relay on stock Hypercorn: the comparison point of the benchmarks.

This is what a straightforward server for the WS-Hub wire contract looks like when written
directly against python-socketio, with nothing tuned: ``socketio.AsyncServer(async_mode="asgi")``
wrapped in ``socketio.ASGIApp``, served by Hypercorn with its default ``Config`` on the asyncio
loop. It implements only the events the benchmark scenarios use:

- ``system:setData`` {username} -> ``system:dataSet`` {success, updatedFields, timestamp}
  (usernames are unique among connected clients, released on disconnect);
- ``system:direct`` {target, type, ...} -> target: ``system:direct`` {..., sender, type,
  timestamp}; sender: ``system:directSent`` {success, target, timestamp[, reason]};
- ``system:general`` {type, ...} -> everyone, sender included: ``system:general``
  {..., sender, type, timestamp, broadcast: true}; sender: ``system:generalSent``;
- a heartbeat loop that every ``--heartbeat-interval`` seconds emits ``system:heartbeat``
  {id: fresh uuid} to each connected client, one emit per client as a naive server would, and
  accepts ``system:heartbeat-ack`` {id};
- ``client-ping`` -> ``client-pong`` {timestamp} (the polite client of the idle-crowd benches);
- ``bench:stats`` (bench only, answered through the Socket.IO acknowledgement): counters that let
  the load generator check, server side, that clients offered permessage-deflate.

Usage::

    .venv/bin/python bench/baseline_relay.py --port 8100 [--certfile C --keyfile K]
        [--heartbeat-interval 30]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import uuid
from typing import Any

import socketio
from hypercorn.asyncio import serve
from hypercorn.config import Config


def iso_now() -> str:
    """``Date.prototype.toISOString()`` form: UTC, milliseconds, ``Z``."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build(heartbeat_interval: float) -> tuple[socketio.AsyncServer, socketio.ASGIApp, Any]:
    sio = socketio.AsyncServer(async_mode="asgi")
    app = socketio.ASGIApp(sio)

    sid_by_name: dict[str, str] = {}
    name_by_sid: dict[str, str] = {}
    connected: set[str] = set()
    pending_heartbeat: dict[str, str | None] = {}
    stats = {"connects": 0, "deflateOffered": 0, "heartbeatsSent": 0, "heartbeatAcks": 0}

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        connected.add(sid)
        stats["connects"] += 1
        if "permessage-deflate" in environ.get("HTTP_SEC_WEBSOCKET_EXTENSIONS", ""):
            stats["deflateOffered"] += 1

    @sio.event
    async def disconnect(sid: str, reason: Any = None) -> None:
        connected.discard(sid)
        pending_heartbeat.pop(sid, None)
        name = name_by_sid.pop(sid, None)
        if name is not None and sid_by_name.get(name) == sid:
            del sid_by_name[name]

    @sio.on("system:setData")
    async def set_data(sid: str, data: Any) -> None:
        name = data.get("username") if isinstance(data, dict) else None
        if not isinstance(name, str) or not name:
            await sio.emit(
                "system:dataSet",
                {"success": False, "error": "Invalid username", "timestamp": iso_now()},
                to=sid,
            )
            return
        owner = sid_by_name.get(name)
        if owner is not None and owner != sid:
            await sio.emit(
                "system:dataSet",
                {"success": False, "error": "Username already taken", "timestamp": iso_now()},
                to=sid,
            )
            return
        old = name_by_sid.get(sid)
        if old is not None and old != name:
            sid_by_name.pop(old, None)
        sid_by_name[name] = sid
        name_by_sid[sid] = name
        await sio.emit(
            "system:dataSet",
            {"success": True, "updatedFields": ["username"], "timestamp": iso_now()},
            to=sid,
        )

    def sender_of(sid: str) -> dict[str, Any]:
        return {"id": sid, "username": name_by_sid.get(sid), "profile": {}}

    @sio.on("system:direct")
    async def direct(sid: str, data: Any) -> None:
        target = data.get("target")
        target_sid = sid_by_name.get(target)
        now = iso_now()
        if target_sid is None:
            await sio.emit(
                "system:directSent",
                {"success": False, "target": target, "reason": "User not found", "timestamp": now},
                to=sid,
            )
            return
        message = dict(data)
        message.update(sender=sender_of(sid), type=data.get("type"), timestamp=now)
        await sio.emit("system:direct", message, to=target_sid)
        await sio.emit(
            "system:directSent", {"success": True, "target": target, "timestamp": now}, to=sid
        )

    @sio.on("system:general")
    async def general(sid: str, data: Any) -> None:
        now = iso_now()
        message = dict(data)
        message.update(sender=sender_of(sid), type=data.get("type"), timestamp=now, broadcast=True)
        await sio.emit("system:general", message)
        await sio.emit(
            "system:generalSent",
            {"success": True, "originalMessage": data, "timestamp": now},
            to=sid,
        )

    @sio.on("client-ping")
    async def client_ping(sid: str, data: Any = None) -> None:
        await sio.emit("client-pong", {"timestamp": iso_now()}, to=sid)

    @sio.on("system:heartbeat-ack")
    async def heartbeat_ack(sid: str, data: Any) -> None:
        hb_id = data.get("id") if isinstance(data, dict) else None
        if hb_id is not None and pending_heartbeat.get(sid) == hb_id:
            pending_heartbeat[sid] = None
            stats["heartbeatAcks"] += 1

    @sio.on("bench:stats")
    async def bench_stats(sid: str, data: Any = None) -> dict[str, Any]:
        return {"server": "baseline", "connected": len(connected), **stats}

    async def heartbeat_loop() -> None:
        while True:
            await asyncio.sleep(heartbeat_interval)
            for sid in list(connected):
                hb_id = str(uuid.uuid4())
                pending_heartbeat[sid] = hb_id
                stats["heartbeatsSent"] += 1
                await sio.emit("system:heartbeat", {"id": hb_id}, to=sid)

    return sio, app, heartbeat_loop


async def main_async(args: argparse.Namespace) -> None:
    _, app, heartbeat_loop = build(args.heartbeat_interval)
    config = Config()
    config.bind = [f"{args.host}:{args.port}"]
    if args.certfile:
        config.certfile = args.certfile
        config.keyfile = args.keyfile
    task = asyncio.create_task(heartbeat_loop())
    try:
        await serve(app, config)  # type: ignore[arg-type]
    finally:
        task.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    parser.add_argument("--heartbeat-interval", type=float, default=30.0)
    args = parser.parse_args()
    if bool(args.certfile) != bool(args.keyfile):
        parser.error("--certfile and --keyfile go together")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
