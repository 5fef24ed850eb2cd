"""TLS termination with hot reload, end to end: real handshakes and Socket.IO clients over TLS."""

from __future__ import annotations

import asyncio
import signal
import ssl
from pathlib import Path

import pytest

from gateway.app import CERTIFICATE_REFRESH_MESSAGE
from tests.support.process import GatewayProcess
from tests.support.tls import (
    Issuer,
    client_context,
    connect,
    make_ca,
    write_atomic,
    write_in_place,
)
from tests.support.wait import wait_until


@pytest.fixture(scope="module")
def ca() -> Issuer:
    return make_ca("WS-Hub e2e CA")


@pytest.fixture
def cert_dir(tmp_path: Path, ca: Issuer) -> Path:
    pair = ca.issue(0x1001)
    (tmp_path / "cert.pem").write_bytes(pair.cert_pem)
    (tmp_path / "key.pem").write_bytes(pair.key_pem)
    return tmp_path


def tls_config(cert_dir: Path) -> dict[str, str]:
    return {"certfile": str(cert_dir / "cert.pem"), "keyfile": str(cert_dir / "key.pem")}


async def served_serial(
    port: int, ca: Issuer, *, sni: bool = True, version: ssl.TLSVersion | None = None
) -> int:
    conn = await connect(port, client_context(ca.cert_pem, version=version), sni=sni)
    try:
        return conn.peer_serial
    finally:
        await conn.close()


async def wait_for_serial(port: int, ca: Issuer, serial: int, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen = None
    while loop.time() < deadline:
        seen = await served_serial(port, ca)
        if seen == serial:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"serial {serial:#x} not served; still {seen:#x}")


FAST = {"tls_watch_step_ms": 10, "tls_settle_seconds": 0.3}


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.parametrize("sni", [True, False])
async def test_rotation_reaches_new_handshakes(server_factory, cert_dir, ca, sni, version) -> None:
    server = server_factory(config=tls_config(cert_dir), **FAST)
    assert await served_serial(server.port, ca, sni=sni, version=version) == 0x1001
    new = ca.issue(0x1002)
    write_atomic(cert_dir / "key.pem", new.key_pem)
    write_atomic(cert_dir / "cert.pem", new.cert_pem)
    await wait_for_serial(server.port, ca, 0x1002)
    assert await served_serial(server.port, ca, sni=sni, version=version) == 0x1002


async def test_open_socketio_connection_survives_and_is_told_once(
    server_factory, clients, cert_dir, ca
) -> None:
    server = server_factory(config=tls_config(cert_dir), **FAST)
    alice = await clients.connect(server.url, "alice", ssl_verify=False)
    bob = await clients.connect(server.url, "bob", ssl_verify=False)
    new = ca.issue(0x1002)
    # Non-atomic, one file after the other: the worst a writer can do.
    write_in_place(cert_dir / "cert.pem", new.cert_pem)
    write_in_place(cert_dir / "key.pem", new.key_pem)
    await wait_for_serial(server.port, ca, 0x1002)
    refresh = await alice.expect("system:certificateRefresh", timeout=3)
    assert refresh["message"] == CERTIFICATE_REFRESH_MESSAGE
    assert refresh["timestamp"].endswith("Z")
    await alice.expect_none("system:certificateRefresh", within=0.5)  # exactly one
    await alice.emit("system:direct", {"target": "bob", "type": "chat", "n": 1})
    assert (await bob.expect("system:direct"))["n"] == 1
    assert alice.sio.connected and bob.sio.connected


async def test_mismatched_or_expired_pairs_are_never_served(
    server_factory, clients, cert_dir, ca
) -> None:
    server = server_factory(config=tls_config(cert_dir), **FAST)
    client = await clients.connect(server.url, ssl_verify=False)
    other = ca.issue(0x2002)
    write_atomic(cert_dir / "cert.pem", other.cert_pem)  # key still the old one
    await asyncio.sleep(0.4)
    assert await served_serial(server.port, ca) == 0x1001
    from datetime import UTC, datetime, timedelta

    old = datetime.now(UTC) - timedelta(days=10)
    expired = ca.issue(0x3003, not_before=old, not_after=old + timedelta(days=1))
    write_atomic(cert_dir / "key.pem", expired.key_pem)
    write_atomic(cert_dir / "cert.pem", expired.cert_pem)
    await asyncio.sleep(0.4)
    assert await served_serial(server.port, ca) == 0x1001
    write_atomic(cert_dir / "cert.pem", b"-----BEGIN CERTIFICATE-----\nMIIB")  # half written
    await asyncio.sleep(0.4)
    assert await served_serial(server.port, ca) == 0x1001
    await client.expect_none("system:certificateRefresh", within=0.1)
    assert server.gateway is not None and server.gateway.tls is not None
    assert server.gateway.tls.reloads_rejected >= 3


async def test_health_reports_the_served_certificate(server_factory, cert_dir) -> None:
    import aiohttp

    server = server_factory(config=tls_config(cert_dir))
    async with (
        aiohttp.ClientSession() as session,
        session.get(server.url + "/health", ssl=False) as response,
    ):
        health = await response.json()
    assert health["tls"]["serial"] == "1001"
    assert 29 * 86400 < health["tls"]["secondsLeft"] <= 30 * 86400
    assert health["tls"]["notAfter"].endswith("Z")


async def test_mutual_tls_with_ca_removal(server_factory, tmp_path, ca) -> None:
    ca_a, ca_b = make_ca("client CA A"), make_ca("client CA B")
    server_pair = ca.issue(0x1001)
    (tmp_path / "cert.pem").write_bytes(server_pair.cert_pem)
    (tmp_path / "key.pem").write_bytes(server_pair.key_pem)
    (tmp_path / "clients.pem").write_bytes(ca_a.cert_pem + ca_b.cert_pem)
    config = {
        **tls_config(tmp_path),
        "ca_certs": str(tmp_path / "clients.pem"),
        "verify_mode": "CERT_REQUIRED",
    }
    server = server_factory(config=config, **FAST)

    def client_files(issuer: Issuer, name: str) -> tuple[Path, Path]:
        pair = issuer.issue(0x55, client=True, common_name=name)
        cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
        cert.write_bytes(pair.cert_pem)
        key.write_bytes(pair.key_pem)
        return cert, key

    from_a, from_b = client_files(ca_a, "a"), client_files(ca_b, "b")

    async def accepted(files: tuple[Path, Path] | None) -> bool:
        ctx = client_context(ca.cert_pem, version=ssl.TLSVersion.TLSv1_3, client_cert=files)
        try:
            conn = await connect(server.port, ctx)
        except (ssl.SSLError, ConnectionError):
            return False
        try:  # TLS 1.3: a refused client certificate shows on the first read
            conn.writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            await conn.writer.drain()
            reply = await asyncio.wait_for(conn.reader.read(12), 2)
            return reply.startswith(b"HTTP/1.1 200")
        except (ssl.SSLError, ConnectionError):
            return False
        finally:
            await conn.close()

    assert await accepted(from_a) and await accepted(from_b)
    assert not await accepted(None)
    write_atomic(tmp_path / "clients.pem", ca_a.cert_pem)  # CA B removed

    async def b_refused() -> bool:
        return not await accepted(from_b)

    await wait_until(b_refused, timeout=5, step=0.05)
    assert not await accepted(from_b)
    assert await accepted(from_a)


async def test_sighup_reloads_in_place(clients, tmp_path, cert_dir, ca) -> None:
    """SIGHUP reloads without a restart; the watcher is slowed down so only SIGHUP can do it."""
    gateway = GatewayProcess(
        args=["--certfile", str(cert_dir / "cert.pem"), "--keyfile", str(cert_dir / "key.pem")],
        env={
            "WSHUB_TLS_WATCH_STEP_MS": "60000",
            "WSHUB_TLS_WATCH_DEBOUNCE_MS": "600000",
            "WSHUB_TLS_RECHECK_INTERVAL": "3600",
        },
        scheme="https",
    )
    gateway.start(health_scheme="https")
    try:
        client = await clients.connect(gateway.url, ssl_verify=False)
        new = ca.issue(0x1002)
        write_in_place(cert_dir / "key.pem", new.key_pem)
        write_in_place(cert_dir / "cert.pem", new.cert_pem)
        await asyncio.sleep(0.3)
        assert await served_serial(gateway.port, ca) == 0x1001  # the watcher is not it
        gateway.signal(signal.SIGHUP)
        await wait_for_serial(gateway.port, ca, 0x1002, timeout=5)
        assert (await client.expect("system:certificateRefresh", timeout=3))["message"]
        assert client.sio.connected
        assert gateway.proc is not None and gateway.proc.poll() is None
    finally:
        await clients.close_all()
        gateway.stop()


async def test_workers_reload_in_place_on_sighup(clients, cert_dir, ca) -> None:
    """Two workers: SIGHUP reaches both through the supervisor; nobody is restarted."""
    from tests.e2e.test_cluster import cluster_env, redis_up

    if not redis_up():
        pytest.skip("no Redis on 127.0.0.1:6379")
    env = cluster_env(
        WSHUB_TLS_WATCH_STEP_MS="60000",
        WSHUB_TLS_WATCH_DEBOUNCE_MS="600000",
        WSHUB_TLS_RECHECK_INTERVAL="3600",
    )
    gateway = GatewayProcess(
        args=[
            "--workers",
            "2",
            "--certfile",
            str(cert_dir / "cert.pem"),
            "--keyfile",
            str(cert_dir / "key.pem"),
        ],
        env=env,
        scheme="https",
    )
    gateway.start(health_scheme="https")
    try:
        connected = [await clients.connect(gateway.url, ssl_verify=False) for _ in range(6)]
        new = ca.issue(0x1002)
        write_atomic(cert_dir / "key.pem", new.key_pem)
        write_atomic(cert_dir / "cert.pem", new.cert_pem)
        gateway.signal(signal.SIGHUP)
        await wait_for_serial(gateway.port, ca, 0x1002, timeout=5)
        await asyncio.sleep(0.3)  # the other worker too
        serials = [await served_serial(gateway.port, ca) for _ in range(20)]
        assert serials == [0x1002] * 20
        for client in connected:  # every client, on either worker, is told once
            await client.expect("system:certificateRefresh", timeout=3)
            await client.expect_none("system:certificateRefresh", within=0.05)
            assert client.sio.connected
        assert gateway.proc is not None and gateway.proc.poll() is None
    finally:
        await clients.close_all()
        gateway.stop()


async def test_failed_handshakes_are_counted_not_fatal(server_factory, cert_dir, ca) -> None:
    server = server_factory(config=tls_config(cert_dir))
    other = make_ca("a CA the client trusts but the server does not use")
    for _ in range(3):  # the client refuses the server's certificate: a failed handshake
        with pytest.raises(ssl.SSLError):
            await served_serial(server.port, other)
    assert await served_serial(server.port, ca) == 0x1001  # others are unaffected
    assert server.gateway is not None
    scrape = server.gateway.metrics.render().decode()
    assert "wshub_tls_handshakes_started_total 4.0" in scrape
    assert "wshub_tls_handshakes_completed_total 1.0" in scrape
