"""``/console`` and ``/console/api/state`` over plain HTTP: figures, clients, TLS, protection."""

from __future__ import annotations

import ssl
import time
from typing import Any

import aiohttp
import jwt
import pytest
from multidict import CIMultiDict

from gateway.tls import generate_dev_pair
from tests.support.client import Client

SECRET = "console-test-secret-long-enough-for-hs256"


def token(sub: str, roles: list[str], *, ttl: float = 60) -> str:
    return jwt.encode({"sub": sub, "roles": roles, "exp": time.time() + ttl}, SECRET, "HS256")


async def get(
    url: str, *, bearer: str | None = None, context: ssl.SSLContext | None = None
) -> tuple[int, Any, CIMultiDict[str]]:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=headers, ssl=context if context else True) as response,
    ):
        is_json = response.content_type == "application/json"
        body = await response.json() if is_json else await response.read()
        return response.status, body, response.headers.copy()


async def test_state_counts_real_traffic(server, connect) -> None:
    alice = await connect("alice")
    for _ in range(3):
        await alice.call("client-ping")
    await alice.emit("system:direct", {"target": "nobody", "type": "chat"})
    await alice.expect("system:error")
    status, state, headers = await get(f"{server.url}/console/api/state")
    assert status == 200
    assert headers["Cache-Control"] == "no-store"
    assert state["server"]["auth"] is False
    assert state["viewer"] is None
    assert state["connections"] == {"local": 1, "active": 1, "total": 1}
    assert state["events"]["client-ping"] == {"ok": 3.0}
    assert state["events"]["system:direct"] == {"TARGET_NOT_FOUND": 1.0}
    assert state["errors"] == {"TARGET_NOT_FOUND": 1.0}
    assert state["rateLimited"] == 0
    assert state["tls"] is None


async def test_rate_limited_events_are_counted(server_factory) -> None:
    server = server_factory(rate_limit=0.5, rate_limit_burst=2)
    client = Client(server.url)
    try:
        await client.connect()
        for _ in range(5):
            await client.emit("system:getConfig")
        for _ in range(3):
            await client.expect("system:error")
        _, state, _ = await get(f"{server.url}/console/api/state")
    finally:
        await client.close()
    assert state["rateLimited"] == 3
    assert state["errors"] == {"RATE_LIMIT": 3.0}
    assert state["events"]["system:getConfig"] == {"ok": 2.0, "RATE_LIMIT": 3.0}


async def test_clients_list_search_and_limit(server, connect) -> None:
    await connect("alice", transports=["websocket"])
    await connect("bob", transports=["websocket"])
    await connect()  # no username yet
    bob = await connect("Alicia")
    await bob.login("Alicia", following=["alice", "bob"])
    _, state, _ = await get(f"{server.url}/console/api/state")
    clients = state["clients"]
    assert (clients["total"], clients["matched"]) == (4, 4)
    assert [c["username"] for c in clients["list"]] == ["alice", "Alicia", "bob", None]
    alicia = clients["list"][1]
    assert alicia["following"] == 2
    assert alicia["transport"] == "websocket"
    assert alicia["connectTime"].endswith("Z")
    _, state, _ = await get(f"{server.url}/console/api/state?q=ALI")
    assert [c["username"] for c in state["clients"]["list"]] == ["alice", "Alicia"]
    assert state["clients"]["matched"] == 2
    by_id = alicia["id"][:8]
    _, state, _ = await get(f"{server.url}/console/api/state?q={by_id}")
    assert [c["username"] for c in state["clients"]["list"]] == ["Alicia"]
    _, state, _ = await get(f"{server.url}/console/api/state?limit=1")
    assert (len(state["clients"]["list"]), state["clients"]["matched"]) == (1, 4)


async def test_page_and_assets(server) -> None:
    status, body, headers = await get(f"{server.url}/console")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert b'src="/socket.io/socket.io.min.js"' in body
    assert b"http://" not in body and b"https://" not in body  # nothing from elsewhere
    for name, kind in [("console.js", "text/javascript"), ("console.css", "text/css")]:
        status, asset, headers = await get(f"{server.url}/console/static/{name}")
        assert (status, headers["Content-Type"]) == (200, f"{kind}; charset=utf-8")
        assert b"https://" not in asset
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{server.url}/console/static/{name}", headers={"If-None-Match": headers["ETag"]}
            ) as again,
        ):
            assert again.status == 304
    for missing in ("console.html", "nope.js", "..%2Fconsole.py"):
        status, _, _ = await get(f"{server.url}/console/static/{missing}")
        assert status == 404, missing


@pytest.fixture
def auth_server(server_factory):
    return server_factory(auth_jwt_secret=SECRET)


@pytest.mark.parametrize(
    ("bearer", "status", "reason"),
    [
        (None, 401, "admin token is required"),
        ("not-a-jwt", 401, "token is invalid"),
        (token("eve", ["admin"], ttl=-10), 401, "token expired"),
        (token("bob", ["user"]), 403, "'admin'"),
    ],
)
async def test_protected_state_refuses(auth_server, bearer, status, reason) -> None:
    got, body, headers = await get(f"{auth_server.url}/console/api/state", bearer=bearer)
    assert got == status
    assert reason in body["error"]
    assert set(body) == {"error", "authRequired"}  # no figures at all
    if status == 401:
        assert headers["WWW-Authenticate"].startswith("Bearer")


async def test_admin_token_is_accepted(auth_server) -> None:
    status, body, _ = await get(
        f"{auth_server.url}/console/api/state", bearer=token("root", ["admin", "ops"])
    )
    assert status == 200
    assert body["server"]["auth"] is True
    assert body["viewer"] == {"username": "root", "roles": ["admin", "ops"]}


async def test_tls_certificate_and_clients_told(server_factory, tmp_path) -> None:
    cert, key = generate_dev_pair(tmp_path)
    server = server_factory(config={"certfile": cert, "keyfile": key})
    context = ssl.create_default_context(cafile=cert)
    client = Client(server.url, ssl_verify=False)
    await client.connect()
    try:
        _, state, _ = await get(f"{server.url}/console/api/state", context=context)
        first = state["tls"]["certificate"]
        assert first["subject"] == "CN=localhost"
        assert "127.0.0.1" in first["sans"]
        assert 29 < first["days_left"] <= 30
        assert [r["trigger"] for r in state["tls"]["reloads"]] == ["initial"]
        generate_dev_pair(tmp_path)
        outcome = server.call(lambda: server.gateway.tls.reload("manual"))
        assert outcome.outcome == "ok"
        await client.expect("system:certificateRefresh")
        context = ssl.create_default_context(cafile=cert)  # trusts the new certificate
        _, state, _ = await get(f"{server.url}/console/api/state", context=context)
    finally:
        await client.close()
    tls = state["tls"]
    assert tls["certificate"]["serial_hex"] != first["serial_hex"]
    assert tls["reloadsOk"] == 1
    last = tls["reloads"][-1]
    assert (last["trigger"], last["outcome"], last["clientsTold"]) == ("manual", "ok", 1)
    assert tls["reloads"][0]["clientsTold"] is None
