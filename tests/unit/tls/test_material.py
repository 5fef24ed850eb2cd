"""Validation of certificate material, in the order the reloader relies on."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from gateway.tls import InvalidMaterial, TlsFiles, read_material, validate
from gateway.tls.material import CertInfo
from tests.support.tls import Issuer, Pair, key_pem, make_ca, pem

NOW = datetime.now(UTC)


def check(files: TlsFiles, now: datetime = NOW, **kwargs: float) -> CertInfo:
    return validate(read_material(files), now, **kwargs).info


def refused(files: TlsFiles, now: datetime = NOW) -> InvalidMaterial:
    with pytest.raises(InvalidMaterial) as caught:
        check(files, now)
    return caught.value


def test_accepts_a_matching_pair(ca: Issuer, write_pair: Callable[[Pair], TlsFiles]) -> None:
    pair = ca.issue(0x1001)
    info = check(write_pair(pair))
    assert info.serial == 0x1001
    assert info.serial_hex == "1001"
    assert info.subject == "CN=localhost"
    assert info.issuer == "CN=WS-Hub Test Root A"
    assert info.sans == ("localhost", "127.0.0.1")
    assert info.key_type == "EC P-256"
    assert info.chain_length == 1
    assert info.not_after == pair.cert.not_valid_after_utc
    assert len(info.fingerprint_sha256.split(":")) == 32


def test_accepts_a_chain(ca: Issuer, write_pair: Callable[[Pair], TlsFiles]) -> None:
    issuing = ca.intermediate("Issuing CA 1").intermediate("Issuing CA 2")
    info = check(write_pair(issuing.issue(0x1002)))
    assert info.chain_length == 3
    assert info.issuer == "CN=Issuing CA 2"


def test_accepts_a_combined_pem(ca: Issuer, tmp_path: Path) -> None:
    both = tmp_path / "tls.pem"
    both.write_bytes(ca.issue(0x1003).combined_pem)
    files = TlsFiles(str(both), str(both))
    assert files.paths == (str(both),)
    assert check(files).serial == 0x1003


def test_paths_are_absolute_but_symlinks_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    files = TlsFiles("link/cert.pem", "link/key.pem", ca_certs="ca.pem")
    assert files.certfile == str(tmp_path / "link" / "cert.pem")
    assert files.ca_certs == str(tmp_path / "ca.pem")


def test_rejects_a_mismatched_key(ca: Issuer, tmp_path: Path) -> None:
    files = TlsFiles(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
    (tmp_path / "cert.pem").write_bytes(ca.issue(0x1004).cert_pem)
    (tmp_path / "key.pem").write_bytes(ca.issue(0x1005).key_pem)
    error = refused(files)
    assert error.reason == "private key does not match the certificate"
    assert error.path == files.keyfile
    assert str(error) == f"{files.keyfile}: private key does not match the certificate"


def test_rejects_an_expired_certificate(ca: Issuer, write_pair: Callable[[Pair], TlsFiles]) -> None:
    ended = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    pair = ca.issue(0x1006, not_before=ended - timedelta(days=10), not_after=ended)
    error = refused(write_pair(pair))
    assert error.reason == "certificate expired on 2025-03-01T12:00:00Z"


def test_rejects_a_not_yet_valid_certificate(
    ca: Issuer, write_pair: Callable[[Pair], TlsFiles]
) -> None:
    pair = ca.issue(0x1007, not_before=NOW + timedelta(days=1))
    assert refused(write_pair(pair)).reason.startswith("certificate is not valid until ")


def test_min_validity_left(ca: Issuer, write_pair: Callable[[Pair], TlsFiles]) -> None:
    files = write_pair(ca.issue(0x1008, not_after=NOW + timedelta(hours=1)))
    check(files, min_validity_left=60)
    with pytest.raises(InvalidMaterial, match="less than 7200 s from now"):
        check(files, min_validity_left=7200)


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_rejects_a_truncated_certificate(
    ca: Issuer, write_pair: Callable[[Pair], TlsFiles], cut: float
) -> None:
    pair = ca.issue(0x1009)
    files = write_pair(pair)
    Path(files.certfile).write_bytes(pair.cert_pem[: int(len(pair.cert_pem) * cut)])
    error = refused(files)
    assert error.reason == "a PEM certificate is truncated or corrupt"
    assert error.path == files.certfile


def test_rejects_a_truncated_key(ca: Issuer, write_pair: Callable[[Pair], TlsFiles]) -> None:
    pair = ca.issue(0x100A)
    files = write_pair(pair)
    Path(files.keyfile).write_bytes(pair.key_pem[: len(pair.key_pem) // 2])
    assert refused(files).reason == "the PEM private key is truncated or corrupt"


@pytest.mark.parametrize("which", ["certfile", "keyfile"])
def test_rejects_an_empty_file(
    ca: Issuer, write_pair: Callable[[Pair], TlsFiles], which: str
) -> None:
    files = write_pair(ca.issue(0x100B))
    Path(getattr(files, which)).write_bytes(b"")
    error = refused(files)
    assert (error.reason, error.path) == ("file is empty", getattr(files, which))


def test_rejects_a_missing_file(tmp_path: Path) -> None:
    error = refused(TlsFiles(str(tmp_path / "nope.pem"), str(tmp_path / "nope.key")))
    assert error.reason == "cannot read file: No such file or directory"


def test_rejects_swapped_files(ca: Issuer, write_pair: Callable[[Pair], TlsFiles]) -> None:
    files = write_pair(ca.issue(0x100C))
    swapped = TlsFiles(files.keyfile, files.certfile)
    assert refused(swapped).reason == "no PEM certificate found"


def test_rejects_a_chain_with_a_foreign_intermediate(
    ca: Issuer, other_ca: Issuer, write_pair: Callable[[Pair], TlsFiles]
) -> None:
    leaf = ca.intermediate("Issuing CA").issue(0x100D)
    stranger = other_ca.intermediate("Unrelated CA")
    files = write_pair(Pair(leaf.cert, leaf.key, (stranger.cert,)))
    assert refused(files).reason.startswith(
        "certificate chain is broken: certificate 1 (CN=localhost) is not issued by "
        "certificate 2 (CN=Unrelated CA)"
    )


def test_rejects_a_chain_with_an_impostor_of_the_same_name(
    ca: Issuer, write_pair: Callable[[Pair], TlsFiles]
) -> None:
    leaf = ca.intermediate("Issuing CA").issue(0x100E)
    impostor = make_ca("impostor root").intermediate("Issuing CA")
    files = write_pair(Pair(leaf.cert, leaf.key, (impostor.cert,)))
    assert refused(files).reason.endswith(": bad signature")


def test_ca_bundle_is_counted(
    ca: Issuer, other_ca: Issuer, tmp_path: Path, write_pair: Callable[[Pair], TlsFiles]
) -> None:
    files = write_pair(ca.issue(0x100F))
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(ca.cert_pem + b"# comment between blocks\n" + other_ca.cert_pem)
    with_ca = TlsFiles(files.certfile, files.keyfile, ca_certs=str(bundle))
    assert validate(read_material(with_ca), NOW).ca_count == 2


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"garbage, not a bundle\n", "no PEM CA certificate found"),
        (b"", "file is empty"),
        (b"-----BEGIN CERTIFICATE-----\nMIIB\n", "a PEM CA certificate is truncated or corrupt"),
    ],
)
def test_rejects_a_bad_ca_bundle(
    ca: Issuer,
    tmp_path: Path,
    write_pair: Callable[[Pair], TlsFiles],
    content: bytes,
    reason: str,
) -> None:
    files = write_pair(ca.issue(0x1010))
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(content)
    error = refused(TlsFiles(files.certfile, files.keyfile, ca_certs=str(bundle)))
    assert (error.reason, error.path) == (reason, str(bundle))


def test_encrypted_key_needs_the_right_password(ca: Issuer, tmp_path: Path) -> None:
    pair = ca.issue(0x1011)
    (tmp_path / "cert.pem").write_bytes(pair.cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem(pair.key, password=b"s3cret"))

    def files(password: str | None) -> TlsFiles:
        return TlsFiles(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"), None, password)

    assert check(files("s3cret")).serial == 0x1011
    assert refused(files(None)).reason == (
        "private key is encrypted and no keyfile_password is set"
    )
    assert refused(files("wrong")).reason == "wrong keyfile_password for the private key"


def test_password_for_a_plain_key_is_ignored_like_openssl_does(
    ca: Issuer, write_pair: Callable[[Pair], TlsFiles]
) -> None:
    files = write_pair(ca.issue(0x1012))
    assert check(TlsFiles(files.certfile, files.keyfile, None, "unused")).serial == 0x1012


def test_key_types(
    ca: Issuer, rsa_key: rsa.RSAPrivateKey, write_pair: Callable[[Pair], TlsFiles]
) -> None:
    assert check(write_pair(ca.issue(0x1013, key=rsa_key))).key_type == "RSA 2048"
    ed = ed25519.Ed25519PrivateKey.generate()
    assert check(write_pair(ca.issue(0x1014, key=ed))).key_type == "Ed25519"


def test_digest_changes_with_any_byte_and_not_otherwise(
    ca: Issuer, write_pair: Callable[[Pair], TlsFiles]
) -> None:
    files = write_pair(ca.issue(0x1015))
    first = read_material(files)
    assert read_material(files).digest == first.digest
    Path(files.keyfile).write_bytes(first.key_pem + b"\n")
    assert read_material(files).digest != first.digest
    assert "PRIVATE" not in repr(first)


def test_cert_info_as_dict_is_json(ca: Issuer, write_pair: Callable[[Pair], TlsFiles]) -> None:
    serial = (1 << 150) + 7  # beyond what a JSON number holds exactly
    not_after = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
    info = check(write_pair(ca.issue(serial, not_after=not_after)))
    now = not_after - timedelta(days=2, hours=12)
    data = json.loads(json.dumps(info.as_dict(now)))
    assert data["serial"] == str(serial)
    assert data["serial_hex"] == "4" + "0" * 36 + "7"
    assert data["not_after"] == "2031-01-02T03:04:05.000Z"
    assert data["days_left"] == 2.5
    assert data["seconds_left"] == 2.5 * 86_400
    assert data["sans"] == ["localhost", "127.0.0.1"]
    assert info.days_left(now) == 2.5


def test_ip_sans_are_reported_as_addresses(
    ca: Issuer, write_pair: Callable[[Pair], TlsFiles]
) -> None:
    pair = ca.issue(0x1016, hosts=("example.test", "::1", "10.0.0.1"))
    assert check(write_pair(pair)).sans == ("example.test", "::1", "10.0.0.1")


def test_leaf_must_come_first(ca: Issuer, write_pair: Callable[[Pair], TlsFiles]) -> None:
    issuing = ca.intermediate("Issuing CA")
    leaf = issuing.issue(0x1017)
    files = write_pair(leaf)
    Path(files.certfile).write_bytes(pem(issuing.cert) + pem(leaf.cert))
    assert refused(files).reason == "private key does not match the certificate"
