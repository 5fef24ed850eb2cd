"""Hot reload seen through real TLS handshakes against an echo server.

Every rotation style a writer may use is exercised; the serial of the certificate a fresh
handshake is served is what tells which pair is in service.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypercorn.config import Config

from gateway.tls import CertInfo, InvalidMaterial, TlsFiles, TlsReloader
from tests.support.tls import (
    Issuer,
    Pair,
    SecretMount,
    client_context,
    connect,
    echo_or_none,
    echo_server,
    fetch_serial,
    wait_for_serial,
    wait_until,
    write_atomic,
    write_in_place,
)

MakeReloader = Callable[..., TlsReloader]
TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3


class Calls:
    """An async listener that remembers what it was called with."""

    def __init__(self) -> None:
        self.infos: list[CertInfo] = []

    async def __call__(self, info: CertInfo) -> None:
        self.infos.append(info)

    @property
    def serials(self) -> list[int]:
        return [info.serial for info in self.infos]


def files_in(directory: Path) -> TlsFiles:
    return TlsFiles(str(directory / "cert.pem"), str(directory / "key.pem"))


def rotate_atomically(directory: Path, pair: Pair) -> None:
    write_atomic(directory / "cert.pem", pair.cert_pem)
    write_atomic(directory / "key.pem", pair.key_pem)


async def settle(reloader: TlsReloader, seconds: float = 0.15) -> None:
    """Give the watcher time to act on anything still pending (for "nothing else happens")."""
    await asyncio.sleep(seconds)


# -- start-up ------------------------------------------------------------------------------


def test_load_initial_refuses_a_bad_pair(ca: Issuer, tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_bytes(ca.issue(0x3001).cert_pem)
    (tmp_path / "key.pem").write_bytes(ca.issue(0x3002).key_pem)
    reloader = TlsReloader(Config(), files_in(tmp_path))
    with pytest.raises(InvalidMaterial, match=r"key\.pem: private key does not match"):
        reloader.load_initial()
    with pytest.raises(InvalidMaterial):
        reloader.listening_context()


def test_load_initial_reports_the_pair(
    ca: Issuer, write_pair: Callable[[Pair], TlsFiles], make_reloader: MakeReloader
) -> None:
    reloader = make_reloader(write_pair(ca.issue(0x3003)))
    info = reloader.load_initial()
    assert info.serial == reloader.info.serial == 0x3003
    assert reloader.listening_context() is reloader.listening_context()
    assert reloader.listening_context() is not reloader.current
    assert [(r.trigger, r.outcome, r.serial) for r in reloader.history] == [
        ("initial", "ok", 0x3003)
    ]
    assert reloader.directories == (str(Path(reloader.files.certfile).parent),)


# -- rotations -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", [TLS12, TLS13], ids=["tls1.2", "tls1.3"])
@pytest.mark.parametrize("sni", [True, False], ids=["sni", "no-sni"])
async def test_atomic_rotation_reaches_new_handshakes(
    ca: Issuer,
    tmp_path: Path,
    write_pair: Callable[[Pair], TlsFiles],
    make_reloader: MakeReloader,
    version: ssl.TLSVersion,
    sni: bool,
) -> None:
    reloader = make_reloader(write_pair(ca.issue(0x3101)))
    calls = Calls()
    reloader.add_listener(calls)
    client = client_context(ca.cert_pem, version=version)
    async with echo_server(reloader.listening_context()) as port:
        await reloader.start()
        assert await fetch_serial(port, client, sni=sni) == 0x3101
        rotate_atomically(tmp_path, ca.issue(0x3102))
        await wait_for_serial(port, client, 0x3102, sni=sni)
        await settle(reloader)
    assert calls.serials == [0x3102]
    assert reloader.reloads_ok == 1


@pytest.mark.parametrize("version", [TLS12, TLS13], ids=["tls1.2", "tls1.3"])
async def test_open_connection_survives_rotation(
    ca: Issuer,
    tmp_path: Path,
    write_pair: Callable[[Pair], TlsFiles],
    make_reloader: MakeReloader,
    version: ssl.TLSVersion,
) -> None:
    reloader = make_reloader(write_pair(ca.issue(0x3201)))
    client = client_context(ca.cert_pem, version=version)
    async with echo_server(reloader.listening_context()) as port:
        await reloader.start()
        old = await connect(port, client)
        try:
            assert await old.echo(b"before\n") == b"before\n"
            rotate_atomically(tmp_path, ca.issue(0x3202))
            await wait_for_serial(port, client, 0x3202)
            assert await old.echo(b"after\n") == b"after\n"
            assert old.peer_serial == 0x3201
            assert old.ssl_object.version() == {TLS12: "TLSv1.2", TLS13: "TLSv1.3"}[version]
        finally:
            await old.close()


async def test_in_place_overwrite_cert_then_key(
    ca: Issuer,
    tmp_path: Path,
    write_pair: Callable[[Pair], TlsFiles],
    make_reloader: MakeReloader,
) -> None:
    reloader = make_reloader(write_pair(ca.issue(0x3301)))
    calls = Calls()
    reloader.add_listener(calls)
    client = client_context(ca.cert_pem)
    async with echo_server(reloader.listening_context()) as port:
        await reloader.start()
        for serial in (0x3302, 0x3303):
            pair = ca.issue(serial)
            write_in_place(tmp_path / "cert.pem", pair.cert_pem)
            write_in_place(tmp_path / "key.pem", pair.key_pem)
            await wait_for_serial(port, client, serial)
        await settle(reloader)
    # A read between the two writes is refused; each rotation is still announced exactly once.
    assert calls.serials == [0x3302, 0x3303]


async def test_cert_and_key_in_one_file_replaced_atomically(
    ca: Issuer, tmp_path: Path, make_reloader: MakeReloader
) -> None:
    both = tmp_path / "tls.pem"
    both.write_bytes(ca.issue(0x3401).combined_pem)
    reloader = make_reloader(TlsFiles(str(both), str(both)))
    calls = Calls()
    reloader.add_listener(calls)
    client = client_context(ca.cert_pem)
    async with echo_server(reloader.listening_context()) as port:
        await reloader.start()
        write_atomic(both, ca.issue(0x3402).combined_pem)
        await wait_for_serial(port, client, 0x3402)
        await settle(reloader)
    assert calls.serials == [0x3402]
    assert reloader.reloads_rejected == 0  # one file, one read: never a mixed pair


async def test_kubernetes_data_swap_twice(
    ca: Issuer, tmp_path: Path, make_reloader: MakeReloader
) -> None:
    mount = SecretMount(tmp_path / "secret")
    first = ca.issue(0x3501)
    mount.publish({"tls.crt": first.cert_pem, "tls.key": first.key_pem})
    reloader = make_reloader(TlsFiles(str(mount.path("tls.crt")), str(mount.path("tls.key"))))
    calls = Calls()
    reloader.add_listener(calls)
    client = client_context(ca.cert_pem)
    async with echo_server(reloader.listening_context()) as port:
        await reloader.start()
        # The second swap catches a watch that followed the first directory and died with it.
        for serial in (0x3502, 0x3503):
            pair = ca.issue(serial)
            mount.publish({"tls.crt": pair.cert_pem, "tls.key": pair.key_pem})
            await wait_for_serial(port, client, serial)
        await settle(reloader)
    assert calls.serials == [0x3502, 0x3503]
    assert reloader.reloads_rejected == 0  # the directory swap is an atomic pair


async def test_cert_key_and_ca_in_different_directories(
    ca: Issuer, other_ca: Issuer, tmp_path: Path, make_reloader: MakeReloader
) -> None:
    cert_dir, key_dir, ca_dir = (tmp_path / name for name in ("certs", "private", "trust"))
    for directory in (cert_dir, key_dir, ca_dir):
        directory.mkdir()
    first = ca.issue(0x3601)
    (cert_dir / "server.crt").write_bytes(first.cert_pem)
    (key_dir / "server.key").write_bytes(first.key_pem)
    (ca_dir / "clients.pem").write_bytes(ca.cert_pem)
    files = TlsFiles(
        str(cert_dir / "server.crt"), str(key_dir / "server.key"), str(ca_dir / "clients.pem")
    )
    reloader = make_reloader(files)
    assert reloader.directories == (str(cert_dir), str(key_dir), str(ca_dir))
    client = client_context(ca.cert_pem)
    async with echo_server(reloader.listening_context()) as port:
        await reloader.start()
        second = ca.issue(0x3602)
        write_atomic(cert_dir / "server.crt", second.cert_pem)
        write_atomic(key_dir / "server.key", second.key_pem)
        await wait_for_serial(port, client, 0x3602)
        write_atomic(ca_dir / "clients.pem", ca.cert_pem + other_ca.cert_pem)
        await wait_until(lambda: reloader.reloads_ok == 2, what="CA-only reload")
    assert reloader.info.serial == 0x3602


async def test_half_written_or_mismatched_pair_is_never_served(
    ca: Issuer,
    tmp_path: Path,
    write_pair: Callable[[Pair], TlsFiles],
    make_reloader: MakeReloader,
) -> None:
    reloader = make_reloader(write_pair(ca.issue(0x3701)), settle_seconds=30)
    calls = Calls()
    reloader.add_listener(calls)
    client = client_context(ca.cert_pem)
    new = ca.issue(0x3702)
    async with echo_server(reloader.listening_context()) as port:
        await reloader.start()

        write_atomic(tmp_path / "cert.pem", new.cert_pem[: len(new.cert_pem) // 2])
        await wait_until(lambda: reloader.reloads_rejected == 1, what="truncated refusal")
        assert "truncated or corrupt" in (reloader.last_error or "")
        assert await fetch_serial(port, client) == 0x3701

        write_atomic(tmp_path / "cert.pem", new.cert_pem)  # the key is still the old one
        await wait_until(lambda: reloader.reloads_rejected == 2, what="mismatch refusal")
        assert "private key does not match" in (reloader.last_error or "")
        assert await fetch_serial(port, client) == 0x3701
        assert calls.serials == []

        write_atomic(tmp_path / "key.pem", new.key_pem)
        await wait_for_serial(port, client, 0x3702)
    assert calls.serials == [0x3702]
    assert reloader.last_error is None
    assert [r.outcome for r in reloader.history] == ["ok", "rejected", "rejected", "ok"]
    assert [r.serial for r in reloader.history] == [0x3701, 0x3701, 0x3701, 0x3702]


async def test_lasting_refusal_escalates_to_error_after_settle(
    ca: Issuer,
    tmp_path: Path,
    write_pair: Callable[[Pair], TlsFiles],
    make_reloader: MakeReloader,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="wshub.tls")
    reloader = make_reloader(write_pair(ca.issue(0x3801)), settle_seconds=0.3)
    await reloader.start()
    write_atomic(tmp_path / "cert.pem", ca.issue(0x3802).cert_pem)
    await wait_until(lambda: reloader.reloads_rejected == 1, what="refusal")
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert [r.levelno for r in refusals] == [logging.WARNING]
    assert not any(r.levelno == logging.ERROR for r in caplog.records)

    await wait_until(lambda: any(r.levelno == logging.ERROR for r in caplog.records), what="ERROR")
    error = next(r for r in caplog.records if r.levelno == logging.ERROR).getMessage()
    assert "No valid TLS certificate/key pair within 0.3 s" in error
    assert "still serving serial 3801" in error
    assert "private key does not match the certificate" in error


async def test_transient_refusal_within_settle_logs_no_error(
    ca: Issuer,
    tmp_path: Path,
    write_pair: Callable[[Pair], TlsFiles],
    make_reloader: MakeReloader,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="wshub.tls")
    reloader = make_reloader(write_pair(ca.issue(0x3901)), settle_seconds=0.3)
    await reloader.start()
    new = ca.issue(0x3902)
    write_atomic(tmp_path / "cert.pem", new.cert_pem)
    await wait_until(lambda: reloader.reloads_rejected == 1, what="refusal")
    write_atomic(tmp_path / "key.pem", new.key_pem)
    await wait_until(lambda: reloader.info.serial == 0x3902, what="reload")
    await asyncio.sleep(0.4)  # past the settle window
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)


async def test_key_type_switch_ec_to_rsa(
    ca: Issuer,
    tmp_path: Path,
    write_pair: Callable[[Pair], TlsFiles],
    make_reloader: MakeReloader,
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    reloader = make_reloader(write_pair(ca.issue(0x3A01)))
    ecdsa_only = client_context(ca.cert_pem, version=TLS12, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
    async with echo_server(reloader.listening_context()) as port:
        await reloader.start()
        assert await fetch_serial(port, ecdsa_only) == 0x3A01
        rotate_atomically(tmp_path, ca.issue(0x3A02, key=rsa_key))
        for version in (TLS12, TLS13):
            for sni in (True, False):
                client = client_context(ca.cert_pem, version=version)
                await wait_for_serial(port, client, 0x3A02, sni=sni)
        # The EC certificate is gone, not merely outranked.
        assert await echo_or_none(port, ecdsa_only) is None
    assert reloader.info.key_type == "RSA 2048"


@pytest.mark.parametrize("version", [TLS12, TLS13], ids=["tls1.2", "tls1.3"])
async def test_mutual_tls_ca_removal(
    ca: Issuer,
    other_ca: Issuer,
    tmp_path: Path,
    write_pair: Callable[[Pair], TlsFiles],
    make_reloader: MakeReloader,
    version: ssl.TLSVersion,
) -> None:
    server = write_pair(ca.issue(0x3B01))
    bundle = tmp_path / "clients.pem"
    bundle.write_bytes(ca.cert_pem + other_ca.cert_pem)
    config = Config()
    config.verify_mode = ssl.CERT_REQUIRED
    reloader = make_reloader(TlsFiles(server.certfile, server.keyfile, str(bundle)), config)

    def client_of(issuer: Issuer, name: str) -> ssl.SSLContext:
        pair = issuer.issue(0x3BF0, client=True, hosts=(), common_name=name)
        (tmp_path / f"{name}.crt").write_bytes(pair.cert_pem)
        (tmp_path / f"{name}.key").write_bytes(pair.key_pem)
        return client_context(
            ca.cert_pem,
            version=version,
            client_cert=(tmp_path / f"{name}.crt", tmp_path / f"{name}.key"),
        )

    from_a, from_b = client_of(ca, "alice"), client_of(other_ca, "bob")
    anonymous = client_context(ca.cert_pem, version=version)
    async with echo_server(reloader.listening_context()) as port:
        await reloader.start()
        assert await echo_or_none(port, from_a) == b"ping\n"
        assert await echo_or_none(port, from_b) == b"ping\n"
        assert await echo_or_none(port, anonymous) is None

        write_atomic(bundle, ca.cert_pem)  # B removed
        await wait_until(lambda: reloader.reloads_ok == 1, what="CA reload")
        assert await echo_or_none(port, from_b) is None
        assert await echo_or_none(port, from_a) == b"ping\n"
        assert await echo_or_none(port, anonymous) is None


# -- behaviour of the reloader itself ------------------------------------------------------


async def test_concurrent_reloads_are_serialised(
    ca: Issuer,
    tmp_path: Path,
    write_pair: Callable[[Pair], TlsFiles],
    make_reloader: MakeReloader,
) -> None:
    reloader = make_reloader(write_pair(ca.issue(0x3C01)))
    reloader.load_initial()
    calls = Calls()
    reloader.add_listener(calls)
    rotate_atomically(tmp_path, ca.issue(0x3C02))
    outcomes = await asyncio.gather(*(reloader.reload("signal") for _ in range(5)))
    assert sorted(o.outcome for o in outcomes) == [
        "ok",
        "unchanged",
        "unchanged",
        "unchanged",
        "unchanged",
    ]
    assert calls.serials == [0x3C02]
    assert all(o.serial == 0x3C02 for o in outcomes)


async def test_manual_reload_without_watcher(
    ca: Issuer,
    tmp_path: Path,
    write_pair: Callable[[Pair], TlsFiles],
    make_reloader: MakeReloader,
) -> None:
    reloader = make_reloader(write_pair(ca.issue(0x3D01)))
    client = client_context(ca.cert_pem)
    async with echo_server(reloader.listening_context()) as port:
        unchanged = await reloader.reload("signal")
        assert (unchanged.outcome, unchanged.reason) == ("unchanged", None)
        (tmp_path / "key.pem").write_bytes(b"")
        rejected = await reloader.reload("signal")
        assert rejected.outcome == "rejected"
        assert rejected.reason == f"{reloader.files.keyfile}: file is empty"
        rotate_atomically(tmp_path, ca.issue(0x3D02))
        ok = await reloader.reload("signal")
        assert (ok.outcome, ok.serial, ok.trigger) == ("ok", 0x3D02, "signal")
        assert await fetch_serial(port, client) == 0x3D02
    assert ok.as_dict()["serial"] == str(0x3D02)
    assert ok.time.endswith("Z")
    assert [r.outcome for r in reloader.history] == ["ok", "unchanged", "rejected", "ok"]


async def test_listener_failure_is_logged_not_raised(
    ca: Issuer,
    tmp_path: Path,
    write_pair: Callable[[Pair], TlsFiles],
    make_reloader: MakeReloader,
    caplog: pytest.LogCaptureFixture,
) -> None:
    reloader = make_reloader(write_pair(ca.issue(0x3E01)))
    reloader.load_initial()

    async def broken(info: CertInfo) -> None:
        raise RuntimeError("broadcast failed")

    calls = Calls()
    reloader.add_listener(broken)
    reloader.add_listener(calls)
    rotate_atomically(tmp_path, ca.issue(0x3E02))
    assert (await reloader.reload("signal")).outcome == "ok"
    assert calls.serials == [0x3E02]
    assert any("listener" in r.getMessage() and r.exc_info for r in caplog.records)
    reloader.remove_listener(calls)
    rotate_atomically(tmp_path, ca.issue(0x3E03))
    await reloader.reload("signal")
    assert calls.serials == [0x3E02]


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


async def test_expiry_warning_at_start_and_daily(
    ca: Issuer,
    write_pair: Callable[[Pair], TlsFiles],
    make_reloader: MakeReloader,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="wshub.tls")
    clock = FakeClock()
    short = ca.issue(0x3F01, not_after=clock.now + timedelta(days=3))
    reloader = make_reloader(
        write_pair(short), expiry_warn_days=14, recheck_interval=0.02, clock=clock
    )

    def warnings() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and "expires in" in r.getMessage()
        ]

    await reloader.start()
    assert len(warnings()) == 1
    assert "serial 3F01" in warnings()[0] and "expires in 3.0 days" in warnings()[0]
    await asyncio.sleep(0.1)  # several re-check ticks within the same day: no repeat
    assert len(warnings()) == 1
    clock.now += timedelta(days=1, seconds=1)
    await wait_until(lambda: len(warnings()) == 2, what="the next day's warning")
    assert "expires in 2.0 days" in warnings()[1]


async def test_no_expiry_warning_for_a_long_lived_certificate(
    ca: Issuer,
    write_pair: Callable[[Pair], TlsFiles],
    make_reloader: MakeReloader,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="wshub.tls")
    reloader = make_reloader(write_pair(ca.issue(0x3F02)), expiry_warn_days=14)
    await reloader.start()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    loaded = [r.getMessage() for r in caplog.records if "loaded" in r.getMessage()]
    assert loaded and "serial 3F02" in loaded[0]


async def test_stop_is_prompt_and_keeps_serving(
    ca: Issuer,
    tmp_path: Path,
    write_pair: Callable[[Pair], TlsFiles],
    make_reloader: MakeReloader,
) -> None:
    reloader = make_reloader(write_pair(ca.issue(0x4001)), recheck_interval=60)
    client = client_context(ca.cert_pem)
    async with echo_server(reloader.listening_context()) as port:
        await reloader.start()
        assert reloader.running
        elapsed = asyncio.get_running_loop().time()
        await reloader.stop()
        elapsed = asyncio.get_running_loop().time() - elapsed
        assert elapsed < 1.0
        assert not reloader.running
        rotate_atomically(tmp_path, ca.issue(0x4002))
        await asyncio.sleep(0.1)
        assert await fetch_serial(port, client) == 0x4001  # no watcher, no reload
        await reloader.start()
        rotate_atomically(tmp_path, ca.issue(0x4003))
        await wait_for_serial(port, client, 0x4003)
