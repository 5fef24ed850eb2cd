"""``ws-hub certs inspect FILE...``: what is in these files, and which key goes with which
certificate.

Everything found is described; a file that cannot be read or parsed stops the command with one
line naming the file (:class:`InspectError`), never a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from .material import (
    CertInfo,
    InvalidMaterial,
    cert_info,
    format_moment,
    key_type,
    load_certificates,
    spki_der,
)

_PEM_BEGIN = b"-----BEGIN "
_PEM_KEY_BLOCK = re.compile(
    rb"-----BEGIN ((?:RSA |EC |DSA |ENCRYPTED )?PRIVATE KEY)-----.+?-----END \1-----", re.DOTALL
)
_PEM_KEY_BEGIN = re.compile(rb"-----BEGIN (?:RSA |EC |DSA |ENCRYPTED )?PRIVATE KEY-----")


class InspectError(ValueError):
    """A file could not be inspected; the message is one line naming it."""


@dataclass(frozen=True, slots=True)
class _Cert:
    path: str
    info: CertInfo
    spki: bytes


@dataclass(frozen=True, slots=True)
class _Key:
    path: str
    key: PrivateKeyTypes | None  # None: encrypted, so its public half is unknown


def inspect_files(paths: Sequence[str], *, now: datetime | None = None) -> str:
    """A human-readable report on every certificate and private key in *paths*."""
    if not paths:
        raise InspectError("no files given")
    now = datetime.now(UTC) if now is None else now
    certs: list[tuple[_Cert, int, int]] = []
    keys: list[_Key] = []
    for path in paths:
        file_certs, file_keys = _parse(path)
        certs.extend((cert, index, len(file_certs)) for index, cert in enumerate(file_certs, 1))
        keys.extend(file_keys)
    lines: list[str] = []
    for cert, index, count in certs:
        lines.extend(_describe_cert(cert, index, count, now))
    for key in keys:
        lines.extend(_describe_key(key, [cert for cert, _, _ in certs]))
    return "\n".join(lines)


def _parse(path: str) -> tuple[list[_Cert], list[_Key]]:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise InspectError(f"{path}: cannot read file: {exc.strerror or exc}") from None
    if not data.strip():
        raise InspectError(f"{path}: file is empty")
    if _PEM_BEGIN in data:
        certs, keys = _parse_pem(path, data)
    else:
        certs, keys = _parse_der(path, data)
    if not certs and not keys:
        raise InspectError(f"{path}: no certificate or private key found")
    return certs, keys


def _parse_pem(path: str, data: bytes) -> tuple[list[_Cert], list[_Key]]:
    certs: list[_Cert] = []
    if b"-----BEGIN CERTIFICATE-----" in data:
        try:
            certs = [_cert(path, cert) for cert in load_certificates(data, path)]
        except InvalidMaterial as exc:
            raise InspectError(str(exc)) from None
    blocks = [match.group(0) for match in _PEM_KEY_BLOCK.finditer(data)]
    if len(_PEM_KEY_BEGIN.findall(data)) != len(blocks):
        raise InspectError(f"{path}: a PEM private key is truncated")
    return certs, [_load_pem_key(path, block) for block in blocks]


def _parse_der(path: str, data: bytes) -> tuple[list[_Cert], list[_Key]]:
    try:
        return [_cert(path, x509.load_der_x509_certificate(data))], []
    except ValueError:
        pass
    try:
        return [], [_Key(path, serialization.load_der_private_key(data, None))]
    except TypeError:
        return [], [_Key(path, None)]
    except (ValueError, UnsupportedAlgorithm):
        raise InspectError(f"{path}: not a PEM or DER certificate or private key") from None


def _load_pem_key(path: str, block: bytes) -> _Key:
    try:
        return _Key(path, serialization.load_pem_private_key(block, None))
    except TypeError:
        return _Key(path, None)
    except (ValueError, UnsupportedAlgorithm):
        raise InspectError(f"{path}: a PEM private key is corrupt or unsupported") from None


def _cert(path: str, cert: x509.Certificate) -> _Cert:
    return _Cert(path, cert_info(cert), spki_der(cert.public_key()))


def _describe_cert(cert: _Cert, index: int, count: int, now: datetime) -> list[str]:
    info = cert.info
    which = f"certificate {index} of {count}" if count > 1 else "certificate"
    return [
        f"{cert.path}: {which}",
        f"  subject:     {info.subject or '(empty)'}",
        f"  SANs:        {', '.join(info.sans) or '(none)'}",
        f"  issuer:      {info.issuer or '(empty)'}",
        f"  serial:      {info.serial_hex} ({info.serial})",
        f"  SHA-256:     {info.fingerprint_sha256}",
        f"  key:         {info.key_type}",
        f"  not before:  {format_moment(info.not_before)}",
        f"  not after:   {format_moment(info.not_after)}",
        f"  days left:   {_days_left(info, now)}",
    ]


def _days_left(info: CertInfo, now: datetime) -> str:
    if now < info.not_before:
        return f"{info.days_left(now):.1f} (NOT YET VALID)"
    days = info.days_left(now)
    if days <= 0:
        return f"{days:.1f} (EXPIRED {-days:.1f} days ago)"
    return f"{days:.1f}"


def _describe_key(key: _Key, certs: list[_Cert]) -> list[str]:
    if key.key is None:
        return [f"{key.path}: encrypted private key (give its password to check it)"]
    lines = [f"{key.path}: private key ({key_type(key.key)})"]
    spki = spki_der(key.key.public_key())
    matches = [cert for cert in certs if cert.spki == spki]
    if not certs:
        lines.append("  no certificate given to compare with")
    elif not matches:
        lines.append("  matches none of the certificates")
    for cert in matches:
        lines.append(
            f"  matches certificate {cert.info.subject or '(empty subject)'} "
            f"(serial {cert.info.serial_hex}) in {cert.path}"
        )
    return lines
