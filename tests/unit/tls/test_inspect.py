"""``ws-hub certs inspect``: what a person sees, and one line per bad file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.tls import InspectError, inspect_files
from tests.support.tls import Issuer, key_pem, pem

NOW = datetime(2030, 6, 1, tzinfo=UTC)


@pytest.fixture
def pairs(ca: Issuer, tmp_path: Path) -> dict[str, Path]:
    issuing = ca.intermediate("Issuing CA")
    served = issuing.issue(
        0xA1B2,
        not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=10, hours=12),
        hosts=("ws.example.test", "10.0.0.7"),
    )
    stray = ca.issue(0xC3, not_before=NOW - timedelta(days=1), not_after=NOW + timedelta(days=1))
    files = {
        "cert": tmp_path / "fullchain.pem",
        "key": tmp_path / "privkey.pem",
        "stray_key": tmp_path / "stray.key",
        "ca": tmp_path / "ca.pem",
    }
    files["cert"].write_bytes(served.cert_pem)
    files["key"].write_bytes(served.key_pem)
    files["stray_key"].write_bytes(stray.key_pem)
    files["ca"].write_bytes(ca.cert_pem)
    return files


def test_certificates_are_described(pairs: dict[str, Path]) -> None:
    out = inspect_files([str(pairs["cert"])], now=NOW)
    path = pairs["cert"]
    assert f"{path}: certificate 1 of 2" in out
    assert f"{path}: certificate 2 of 2" in out
    assert "  subject:     CN=localhost" in out
    assert "  SANs:        ws.example.test, 10.0.0.7" in out
    assert "  issuer:      CN=Issuing CA" in out
    assert f"  serial:      A1B2 ({0xA1B2})" in out
    assert "  key:         EC P-256" in out
    assert "  not before:  2030-05-31T00:00:00Z" in out
    assert "  not after:   2030-06-11T12:00:00Z" in out
    assert "  days left:   10.5" in out
    fingerprint = next(line for line in out.splitlines() if "SHA-256" in line).split()[-1]
    assert len(fingerprint.split(":")) == 32


def test_keys_are_matched_to_certificates(pairs: dict[str, Path]) -> None:
    out = inspect_files([str(pairs["cert"]), str(pairs["key"]), str(pairs["stray_key"])], now=NOW)
    lines = out.splitlines()
    key_at = lines.index(f"{pairs['key']}: private key (EC P-256)")
    assert lines[key_at + 1] == (
        f"  matches certificate CN=localhost (serial A1B2) in {pairs['cert']}"
    )
    stray_at = lines.index(f"{pairs['stray_key']}: private key (EC P-256)")
    assert lines[stray_at + 1] == "  matches none of the certificates"


def test_key_alone(pairs: dict[str, Path]) -> None:
    out = inspect_files([str(pairs["key"])], now=NOW)
    assert out.splitlines() == [
        f"{pairs['key']}: private key (EC P-256)",
        "  no certificate given to compare with",
    ]


def test_combined_pem_and_expired_and_der(ca: Issuer, tmp_path: Path) -> None:
    old = ca.issue(0x77, not_before=NOW - timedelta(days=30), not_after=NOW - timedelta(days=2))
    both = tmp_path / "tls.pem"
    both.write_bytes(old.combined_pem)
    der = tmp_path / "ca.der"
    der.write_bytes(ca.cert.public_bytes(serialization.Encoding.DER))
    out = inspect_files([str(both), str(der)], now=NOW)
    assert "  days left:   -2.0 (EXPIRED 2.0 days ago)" in out
    assert f"  matches certificate CN=localhost (serial 77) in {both}" in out
    assert f"{der}: certificate\n  subject:     CN=WS-Hub Test Root A" in out


def test_not_yet_valid(ca: Issuer, tmp_path: Path) -> None:
    future = ca.issue(0x78, not_before=NOW + timedelta(days=1), not_after=NOW + timedelta(days=9))
    (tmp_path / "c.pem").write_bytes(pem(future.cert))
    assert "(NOT YET VALID)" in inspect_files([str(tmp_path / "c.pem")], now=NOW)


def test_encrypted_key(ca: Issuer, tmp_path: Path) -> None:
    (tmp_path / "k.pem").write_bytes(key_pem(ca.issue(0x79).key, password=b"pw"))
    assert inspect_files([str(tmp_path / "k.pem")]) == (
        f"{tmp_path / 'k.pem'}: encrypted private key (give its password to check it)"
    )


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read file: No such file or directory"),
        (b"", "file is empty"),
        (b"\x00\x01 not a certificate", "not a PEM or DER certificate or private key"),
        (
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            "no certificate or private key found",
        ),
        ("cert-half", "a PEM certificate is truncated or corrupt"),
        ("key-half", "a PEM private key is truncated"),
        ("key-corrupt", "a PEM private key is corrupt or unsupported"),
    ],
)
def test_bad_files_give_one_line(
    ca: Issuer, tmp_path: Path, content: bytes | str | None, problem: str
) -> None:
    pair = ca.issue(0x80)
    path = tmp_path / "bad.pem"
    if content == "cert-half":
        content = pair.cert_pem[: len(pair.cert_pem) // 2]
    elif content == "key-half":
        content = pair.key_pem[: len(pair.key_pem) // 2]
    elif content == "key-corrupt":
        content = pair.key_pem.replace(b"\n", b"\n!", 2)
    if isinstance(content, bytes):
        path.write_bytes(content)
    good = tmp_path / "good.pem"
    good.write_bytes(pair.cert_pem)
    with pytest.raises(InspectError) as caught:
        inspect_files([str(good), str(path)])
    assert str(caught.value) == f"{path}: {problem}"
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, ValueError)
