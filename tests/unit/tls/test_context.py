"""Contexts built from checked bytes match Hypercorn's own, and leave nothing behind."""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypercorn.config import Config

from gateway.tls import (
    InvalidMaterial,
    TlsFiles,
    ValidatedMaterial,
    build_context,
    read_material,
    validate,
)
from gateway.tls import context as context_module
from tests.support.tls import Issuer, Pair, client_context, connect, echo_server


def _material(files: TlsFiles) -> ValidatedMaterial:
    return validate(read_material(files), datetime.now(UTC))


def _mtls_config(files: TlsFiles, ca_path: Path) -> Config:
    config = Config()
    config.certfile, config.keyfile, config.ca_certs = files.certfile, files.keyfile, str(ca_path)
    config.verify_mode = ssl.CERT_REQUIRED
    config.verify_flags = ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN
    config.ciphers = "ECDHE+AESGCM:ECDHE+CHACHA20"
    return config


def test_parity_with_hypercorn(
    ca: Issuer, tmp_path: Path, write_pair: Callable[[Pair], TlsFiles]
) -> None:
    files = write_pair(ca.issue(0x2001))
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    config = _mtls_config(files, tmp_path / "ca.pem")
    ours = build_context(
        config, _material(TlsFiles(files.certfile, files.keyfile, str(tmp_path / "ca.pem")))
    )
    theirs = config.create_ssl_context()
    assert theirs is not None
    for attribute in (
        "options",
        "minimum_version",
        "maximum_version",
        "verify_mode",
        "verify_flags",
        "check_hostname",
        "post_handshake_auth",
    ):
        assert getattr(ours, attribute) == getattr(theirs, attribute), attribute
    assert [c["name"] for c in ours.get_ciphers()] == [c["name"] for c in theirs.get_ciphers()]
    assert ours.cert_store_stats() == theirs.cert_store_stats()
    assert ours.verify_mode == ssl.CERT_REQUIRED


async def test_alpn_is_hypercorns(ca: Issuer, write_pair: Callable[[Pair], TlsFiles]) -> None:
    files = write_pair(ca.issue(0x2002))
    built = build_context(Config(), _material(files))
    async with echo_server(built) as port:
        conn = await connect(port, client_context(ca.cert_pem, alpn=["h2", "http/1.1"]))
        try:
            assert conn.ssl_object.selected_alpn_protocol() == "h2"
            assert conn.peer_serial == 0x2002
        finally:
            await conn.close()


def test_config_is_not_modified(ca: Issuer, write_pair: Callable[[Pair], TlsFiles]) -> None:
    files = write_pair(ca.issue(0x2003))
    config = Config()
    build_context(config, _material(files))
    assert (config.certfile, config.keyfile, config.ca_certs) == (None, None, None)


def test_overridden_create_ssl_context_is_not_called(
    ca: Issuer, write_pair: Callable[[Pair], TlsFiles]
) -> None:
    # A launcher's Config subclass hands out the reloader's context from create_ssl_context;
    # building through it would recurse.
    class LauncherConfig(Config):
        def create_ssl_context(self) -> ssl.SSLContext | None:
            raise AssertionError("must not be called")

    files = write_pair(ca.issue(0x2004))
    assert isinstance(build_context(LauncherConfig(), _material(files)), ssl.SSLContext)


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_memfd_staging_leaves_no_descriptor(
    ca: Issuer, write_pair: Callable[[Pair], TlsFiles]
) -> None:
    material = _material(write_pair(ca.issue(0x2005)))
    before = _open_fds()
    build_context(Config(), material)
    assert _open_fds() <= before


async def test_tempfile_fallback_cleans_up(
    ca: Issuer,
    tmp_path: Path,
    write_pair: Callable[[Pair], TlsFiles],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    monkeypatch.setattr(context_module, "_memfd_usable", lambda: False)
    monkeypatch.setattr("tempfile.tempdir", str(staging))
    built = build_context(Config(), _material(write_pair(ca.issue(0x2006))))
    assert list(staging.iterdir()) == []
    async with echo_server(built) as port:
        conn = await connect(port, client_context(ca.cert_pem))
        assert conn.peer_serial == 0x2006
        await conn.close()


def test_openssl_refusal_is_a_rejection(ca: Issuer, tmp_path: Path) -> None:
    # cryptography accepts a 1024-bit RSA key; OpenSSL's security level does not.
    weak = ca.issue(0x2007, key=rsa.generate_private_key(public_exponent=65537, key_size=1024))
    (tmp_path / "cert.pem").write_bytes(weak.cert_pem)
    (tmp_path / "key.pem").write_bytes(weak.key_pem)
    material = _material(TlsFiles(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")))
    with pytest.raises(InvalidMaterial) as caught:
        build_context(Config(), material)
    assert caught.value.reason == (
        "OpenSSL refused the material: [SSL: EE_KEY_TOO_SMALL] ee key too small"
    )
