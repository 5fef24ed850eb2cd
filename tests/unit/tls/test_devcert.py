"""The development certificate is one real clients accept."""

from __future__ import annotations

import ipaddress
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypercorn.config import Config

from gateway.tls import (
    TlsFiles,
    build_context,
    ensure_dev_pair,
    generate_dev_pair,
    read_material,
    validate,
)
from tests.support.tls import client_context, connect, echo_server


def _cert(path: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def test_files_and_fields(tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    cert_path, key_path = generate_dev_pair(tmp_path / "dev", now=now)
    assert (cert_path, key_path) == (
        str(tmp_path / "dev" / "cert.pem"),
        str(tmp_path / "dev" / "key.pem"),
    )
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert Path(key_path).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8
    assert sorted(p.name for p in (tmp_path / "dev").iterdir()) == ["cert.pem", "key.pem"]

    cert = _cert(cert_path)
    assert cert.subject == cert.issuer
    assert cert.subject.rfc4514_string() == "CN=localhost"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert cert.not_valid_before_utc == now - timedelta(minutes=5)
    assert cert.not_valid_after_utc == now + timedelta(days=30)

    info = validate(read_material(TlsFiles(cert_path, key_path)), now).info
    assert info.key_type == "EC P-256"


async def test_verified_handshake_to_127_0_0_1(tmp_path: Path) -> None:
    cert_path, key_path = generate_dev_pair(tmp_path)
    material = validate(read_material(TlsFiles(cert_path, key_path)), datetime.now(UTC))
    client = client_context(material.raw.cert_pem)  # trust cert.pem itself, as documented
    async with echo_server(build_context(Config(), material)) as port:
        for sni in (False, True):  # 127.0.0.1 checks the IP SAN, localhost the DNS SAN
            conn = await connect(port, client, sni=sni)
            try:
                assert await conn.echo() == b"ping\n"
            finally:
                await conn.close()


def test_ensure_reuses_a_good_pair(tmp_path: Path) -> None:
    first = ensure_dev_pair(tmp_path)
    serial = _cert(first[0]).serial_number
    assert ensure_dev_pair(tmp_path) == first
    assert _cert(first[0]).serial_number == serial


def test_ensure_replaces_an_expired_pair(tmp_path: Path) -> None:
    cert_path, _ = generate_dev_pair(tmp_path, days=2)
    serial = _cert(cert_path).serial_number
    ensure_dev_pair(tmp_path, now=datetime.now(UTC) + timedelta(days=3))
    assert _cert(cert_path).serial_number != serial


def test_ensure_replaces_a_mismatched_or_broken_pair(tmp_path: Path) -> None:
    cert_path, key_path = generate_dev_pair(tmp_path)
    other = tmp_path / "other"
    _, other_key = generate_dev_pair(other)
    Path(key_path).write_bytes(Path(other_key).read_bytes())
    serial = _cert(cert_path).serial_number
    ensure_dev_pair(tmp_path)
    assert _cert(cert_path).serial_number != serial
    validate(read_material(TlsFiles(cert_path, key_path)), datetime.now(UTC))

    Path(cert_path).write_bytes(b"-----BEGIN CERTIFICATE-----\ntrunc")
    ensure_dev_pair(tmp_path)
    validate(read_material(TlsFiles(cert_path, key_path)), datetime.now(UTC))


def test_ensure_replaces_a_pair_missing_a_host(tmp_path: Path) -> None:
    cert_path, _ = generate_dev_pair(tmp_path, hosts=("localhost",))
    ensure_dev_pair(tmp_path, hosts=("localhost", "0:0:0:0:0:0:0:1", "ws.example.test"))
    sans = validate(
        read_material(TlsFiles(cert_path, str(tmp_path / "key.pem"))), datetime.now(UTC)
    ).info.sans
    assert sans == ("localhost", "ws.example.test", "::1")
