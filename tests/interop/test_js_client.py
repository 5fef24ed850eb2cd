"""Interoperability: the official npm ``socket.io-client`` against a live gateway.

The client comes from ``tests/interop/package-lock.json`` (``npm ci`` in the test setup). The
tests skip only where Node.js is absent; a missing ``node_modules`` is a setup error.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")


def run_scenario(url: str, mode: str) -> dict[str, Any]:
    if not (HERE / "node_modules" / "socket.io-client").is_dir():
        pytest.fail("run `npm ci` in tests/interop (the README's test command does it)")
    done = subprocess.run(
        ["node", str(HERE / "scenario.mjs"), url, mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    assert "failure" not in result, result
    return result


@pytest.mark.parametrize("mode", ["websocket", "polling"])
def test_official_js_client(server, mode: str) -> None:
    out = run_scenario(server.url, mode)
    alice, bob = out["ids"]["alice"], out["ids"]["bob"]
    alice_sender = {"id": alice, "username": "js-alice", "profile": {"displayName": "Alice"}}

    assert set(out["welcome"]) == {"message", "timestamp"}
    assert out["setDataAck"]["success"] is True
    assert out["dataSet"]["updatedFields"] == ["username", "profile"]
    assert out["followed"]["username"] == "js-bob"

    assert out["direct"] == {
        "target": "js-bob",
        "type": "chatMessage",
        "message": "Hello Bob!",
        "sender": alice_sender,
        "timestamp": out["direct"]["timestamp"],
    }
    assert out["directSent"]["success"] is True and out["directSent"]["target"] == "js-bob"
    for received in (out["generalAtBob"], out["generalAtAlice"]):
        assert received["broadcast"] is True and received["sender"] == alice_sender
        assert received["message"] == "Hello everyone!" and ISO.match(received["timestamp"])
    assert out["generalSent"]["originalMessage"] == {
        "type": "announcement",
        "message": "Hello everyone!",
    }
    assert out["typing"]["isTyping"] is True and out["typing"]["sender"] == alice_sender
    assert out["notification"]["content"] == {"id": 1}

    assert out["directFailed"] == {
        "success": False,
        "target": "ghost",
        "reason": "User not found",
        "timestamp": out["directFailed"]["timestamp"],
    }
    assert out["error"]["code"] == "TARGET_NOT_FOUND"

    assert out["clientsAck"]["count"] == 2
    assert {c["id"] for c in out["clientsAck"]["clients"]} == {alice, bob}
    assert set(out["pongAck"]) == {"timestamp"}
    assert set(out["config"]) == {"heartbeat", "security", "notifications", "appInfo"}
    assert out["transport"] == "websocket"


def test_official_js_client_over_tls(server_factory, tmp_path: Path) -> None:
    from gateway.tls import generate_dev_pair

    cert, key = generate_dev_pair(tmp_path)
    server = server_factory(config={"certfile": cert, "keyfile": key})
    assert server.url.startswith("https://")
    out = run_scenario(server.url, "websocket")
    assert out["directSent"]["success"] is True and out["transport"] == "websocket"
