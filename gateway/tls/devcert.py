"""A self-signed certificate for local development, made so that clients actually accept it.

The details that trip people up: IP addresses must be ``IPAddress`` SANs (clients ignore the CN
and will not match an IP against a ``DNSName``), the start date is backdated a few minutes for
clock skew, and the key is written PKCS8 with mode 0600. Clients trust it with
``cafile=cert.pem``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .material import InvalidMaterial, TlsFiles, read_material, validate

log = logging.getLogger("wshub.tls")

CERT_NAME = "cert.pem"
KEY_NAME = "key.pem"
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
_CLOCK_SKEW = timedelta(minutes=5)
# A dev pair this close to expiry is replaced rather than reused.
_MIN_VALIDITY_LEFT = timedelta(days=1)


def generate_dev_pair(
    directory: str | os.PathLike[str],
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = 30,
    *,
    now: datetime | None = None,
) -> tuple[str, str]:
    """Write a fresh ``cert.pem``/``key.pem`` pair into *directory*; return their paths.

    Each file is replaced atomically; the key is written first, so a crash in between leaves a
    mismatched pair, which :func:`ensure_dev_pair` detects and replaces.
    """
    if not hosts:
        raise ValueError("a dev certificate needs at least one host name or address")
    if days <= 0:
        raise ValueError("days must be positive")
    now = datetime.now(UTC) if now is None else now
    key = ec.generate_private_key(ec.SECP256R1())
    names = [_san(host) for host in hosts]
    common_name = next((host for host in hosts if not _is_ip(host)), hosts[0])
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    os.makedirs(directory, exist_ok=True)
    cert_path = os.path.abspath(os.path.join(directory, CERT_NAME))
    key_path = os.path.abspath(os.path.join(directory, KEY_NAME))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomically(key_path, key_pem, 0o600)
    _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def ensure_dev_pair(
    directory: str | os.PathLike[str],
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = 30,
    *,
    now: datetime | None = None,
) -> tuple[str, str]:
    """Reuse the pair in *directory* if it is valid for a day more and covers *hosts*;
    otherwise generate a new one. Returns ``(cert_path, key_path)``."""
    now = datetime.now(UTC) if now is None else now
    cert_path = os.path.abspath(os.path.join(directory, CERT_NAME))
    key_path = os.path.abspath(os.path.join(directory, KEY_NAME))
    try:
        material = validate(
            read_material(TlsFiles(cert_path, key_path)),
            now,
            min_validity_left=_MIN_VALIDITY_LEFT.total_seconds(),
        )
    except InvalidMaterial as exc:
        problem = str(exc)
    else:
        missing = _normalised(hosts) - _normalised(material.info.sans)
        if not missing:
            return cert_path, key_path
        problem = f"it does not cover {', '.join(sorted(missing))}"
    log.info("Generating a development TLS certificate in %s (%s)", directory, problem)
    return generate_dev_pair(directory, hosts, days, now=now)


def _san(host: str) -> x509.GeneralName:
    if _is_ip(host):
        return x509.IPAddress(ipaddress.ip_address(host))
    return x509.DNSName(host)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _normalised(hosts: Sequence[str]) -> set[str]:
    # "::1" and "0:0:0:0:0:0:0:1" are the same SAN; DNS names compare case-insensitively.
    return {str(ipaddress.ip_address(h)) if _is_ip(h) else h.lower() for h in hosts}


def _write_atomically(path: str, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as fh:
            # mkstemp creates 0600; the public certificate may be readable by others.
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
