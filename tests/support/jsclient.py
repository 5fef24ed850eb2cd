"""Official socket.io-client sockets driven from a test (``tests/interop/driver.mjs``).

The JS client is the one that implements connection state recovery, so the recovery tests use
it; each command is one JSON line to the driver and one JSON line back.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

DRIVER = Path(__file__).parents[1] / "interop" / "driver.mjs"


class JsClients:
    """A Node process holding named sockets."""

    def __init__(self, *, lifetime: float = 120) -> None:
        """*lifetime*: seconds after which the driver ends itself, so that a test that dies
        leaves no Node process behind."""
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._lifetime = lifetime

    async def start(self) -> JsClients:
        if shutil.which("node") is None:
            pytest.skip("Node.js is not installed")
        if not (DRIVER.parent / "node_modules" / "socket.io-client").is_dir():
            pytest.fail("run `npm ci` in tests/interop (the README's test command does it)")
        self._process = await asyncio.create_subprocess_exec(
            "node",
            str(DRIVER),
            str(self._lifetime),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=16 * 1024 * 1024,
        )
        return self

    async def command(self, cmd: str, **fields: Any) -> Any:
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        async with self._lock:
            process.stdin.write((json.dumps({"cmd": cmd, **fields}) + "\n").encode())
            await process.stdin.drain()
            line = await asyncio.wait_for(process.stdout.readline(), 30)
        if not line:
            raise AssertionError(f"{cmd} {fields}: the driver ended (past its lifetime?)")
        answer = json.loads(line)
        if not answer["ok"]:
            raise AssertionError(f"{cmd} {fields}: {answer['error']}")
        return answer["result"]

    async def open(self, name: str, url: str, **opts: Any) -> dict[str, Any]:
        """Connect socket *name*; its first connect ({id, recovered})."""
        return dict(await self.command("open", name=name, url=url, opts=opts))

    async def emit(self, name: str, event: str, payload: Any = None, *, ack: bool = False) -> Any:
        return await self.command("emit", name=name, event=event, payload=payload, ack=ack)

    async def events(self, name: str, event: str, count: int = 1, timeout: float = 5) -> list[Any]:
        """The first *count* events named *event*, each as its list of arguments."""
        found = await self.command(
            "wait", name=name, event=event, count=count, timeoutMs=int(timeout * 1000)
        )
        return [e["args"] for e in found]

    async def connected(self, name: str, index: int, timeout: float = 5) -> dict[str, Any]:
        """The *index*-th connect of socket *name* (0 is the first)."""
        return dict(
            await self.command("waitConnect", name=name, index=index, timeoutMs=int(timeout * 1000))
        )

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            try:
                await self.command("quit")
                await asyncio.wait_for(self._process.wait(), 5)
            except (AssertionError, TimeoutError, BrokenPipeError, ConnectionResetError):
                self._process.kill()
                await self._process.wait()
