"""Certificate material: read the files once, check them, describe the served certificate.

Nothing here touches OpenSSL. The checks run in the order of ``docs/tls-reload.md`` (cheapest
and most specific first), so a half-written or mismatched pair is refused with a reason a person
can act on before any ``SSLContext`` sees it. The bytes that were checked are the bytes that get
loaded (:mod:`gateway.tls.context`), so the files cannot change between the check and the load.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from ..protocol.timestamps import iso_timestamp

_SECONDS_PER_DAY = 86_400.0
_PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
_PEM_PRIVATE_KEY = b"PRIVATE KEY-----"
# NIST names are what operators and browsers show; OpenSSL's curve names are not.
_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}

JsonScalar = str | int | float | None
CertInfoDict = dict[str, JsonScalar | list[str]]


class InvalidMaterial(ValueError):
    """The certificate, key or CA bundle cannot be served.

    ``reason`` is short and human ("private key does not match the certificate"); ``path`` names
    the file it is about, when there is one. ``str()`` gives both on one line.
    """

    def __init__(self, reason: str, path: str | None = None) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.reason = reason
        self.path = path


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where the served material lives.

    Paths are made absolute but never resolved: in a Kubernetes secret mount ``tls.crt`` is a
    symlink through ``..data`` into a timestamped directory that the kubelet deletes on the next
    rotation, so the resolved path would go stale while the configured one stays right.
    ``certfile`` and ``keyfile`` may name the same combined PEM file.
    """

    certfile: str
    keyfile: str
    ca_certs: str | None = None
    keyfile_password: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "certfile", os.path.abspath(self.certfile))
        object.__setattr__(self, "keyfile", os.path.abspath(self.keyfile))
        if self.ca_certs is not None:
            object.__setattr__(self, "ca_certs", os.path.abspath(self.ca_certs))

    @property
    def paths(self) -> tuple[str, ...]:
        """The distinct files, in configuration order."""
        found = [self.certfile, self.keyfile]
        if self.ca_certs is not None:
            found.append(self.ca_certs)
        return tuple(dict.fromkeys(found))


@dataclass(frozen=True, slots=True)
class RawMaterial:
    """The bytes of one read of the files, and a digest over all of them."""

    files: TlsFiles
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes | None
    digest: str

    def __repr__(self) -> str:
        # The key bytes must never reach a log line through a stray repr().
        return f"RawMaterial(files={self.files!r}, digest={self.digest!r})"


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What operators and metrics need to know about a leaf certificate."""

    subject: str
    issuer: str
    sans: tuple[str, ...]
    serial: int
    fingerprint_sha256: str
    not_before: datetime
    not_after: datetime
    key_type: str
    chain_length: int

    @property
    def serial_hex(self) -> str:
        """The serial as ``openssl x509 -serial`` prints it (upper-case hex, even length)."""
        digits = f"{self.serial:X}"
        return digits.zfill(len(digits) + len(digits) % 2)

    def seconds_left(self, now: datetime) -> float:
        return (self.not_after - now).total_seconds()

    def days_left(self, now: datetime) -> float:
        return self.seconds_left(now) / _SECONDS_PER_DAY

    def as_dict(self, now: datetime) -> CertInfoDict:
        """A JSON-ready view. The serial is a string: serials run to 159 bits, JSON numbers
        are IEEE doubles."""
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "sans": list(self.sans),
            "serial": str(self.serial),
            "serial_hex": self.serial_hex,
            "fingerprint_sha256": self.fingerprint_sha256,
            "not_before": iso_timestamp(self.not_before),
            "not_after": iso_timestamp(self.not_after),
            "seconds_left": round(self.seconds_left(now), 3),
            "days_left": round(self.days_left(now), 3),
            "key_type": self.key_type,
            "chain_length": self.chain_length,
        }


@dataclass(frozen=True, slots=True)
class ValidatedMaterial:
    """Material that passed every check; only this type may be turned into a context."""

    raw: RawMaterial
    chain: tuple[x509.Certificate, ...]
    ca_count: int | None
    info: CertInfo


def read_material(files: TlsFiles) -> RawMaterial:
    """Read every configured file exactly once.

    A combined PEM (``certfile == keyfile``) is read once, so certificate and key come from the
    same version of the file even while it is being replaced.
    """
    contents: dict[str, bytes] = {}
    for path in files.paths:
        try:
            with open(path, "rb") as fh:
                contents[path] = fh.read()
        except OSError as exc:
            raise InvalidMaterial(f"cannot read file: {exc.strerror or exc}", path) from None
    cert_pem = contents[files.certfile]
    key_pem = contents[files.keyfile]
    ca_pem = contents[files.ca_certs] if files.ca_certs is not None else None
    return RawMaterial(files, cert_pem, key_pem, ca_pem, _digest(cert_pem, key_pem, ca_pem))


def validate(raw: RawMaterial, now: datetime, min_validity_left: float = 0.0) -> ValidatedMaterial:
    """Check *raw* for serving at *now* (an aware datetime).

    *min_validity_left* is in seconds: a certificate that expires sooner is refused too.
    Raises :class:`InvalidMaterial` naming the first problem found.
    """
    files = raw.files
    chain = _load_certificates(raw.cert_pem, files.certfile, "certificate")
    key = _load_private_key(raw.key_pem, files.keyfile, files.keyfile_password)
    leaf = chain[0]
    if spki_der(key.public_key()) != spki_der(leaf.public_key()):
        raise InvalidMaterial("private key does not match the certificate", files.keyfile)
    _check_validity(leaf, now, min_validity_left, files.certfile)
    _check_chain(chain, now, files.certfile)
    ca_count = None
    if raw.ca_pem is not None and files.ca_certs is not None:
        ca_count = len(_load_certificates(raw.ca_pem, files.ca_certs, "CA certificate"))
    return ValidatedMaterial(raw, chain, ca_count, cert_info(leaf, chain_length=len(chain)))


def cert_info(cert: x509.Certificate, chain_length: int = 1) -> CertInfo:
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        sans=_sans(cert),
        serial=cert.serial_number,
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(":").upper(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        key_type=key_type(cert.public_key()),
        chain_length=chain_length,
    )


def key_type(key: PublicKeyTypes | PrivateKeyTypes) -> str:
    """Name a key the way operators know it: "EC P-256", "RSA 2048", "Ed25519"."""
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return f"EC {_CURVE_NAMES.get(key.curve.name, key.curve.name)}"
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"RSA {key.key_size}"
    if isinstance(key, dsa.DSAPublicKey | dsa.DSAPrivateKey):
        return f"DSA {key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey | ed448.Ed448PrivateKey):
        return "Ed448"
    return type(key).__name__


def spki_der(key: PublicKeyTypes) -> bytes:
    """SubjectPublicKeyInfo DER: comparing these bytes matches a key to a certificate for
    every algorithm (RSA, EC, EdDSA) without algorithm-specific code."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def format_moment(moment: datetime) -> str:
    """Seconds precision is enough for validity dates and reads better in a message."""
    return iso_timestamp(moment).replace(".000Z", "Z")


def load_certificates(data: bytes, path: str, what: str = "certificate") -> list[x509.Certificate]:
    """Every PEM certificate in *data*; :class:`InvalidMaterial` if there is none or one is cut."""
    return list(_load_certificates(data, path, what))


def _load_certificates(data: bytes, path: str, what: str) -> tuple[x509.Certificate, ...]:
    if not data.strip():
        raise InvalidMaterial("file is empty", path)
    if _PEM_CERTIFICATE not in data:
        raise InvalidMaterial(f"no PEM {what} found", path)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise InvalidMaterial(f"a PEM {what} is truncated or corrupt", path) from None
    if not certs:
        raise InvalidMaterial(f"no PEM {what} found", path)
    return tuple(certs)


def _load_private_key(data: bytes, path: str, password: str | None) -> PrivateKeyTypes:
    if not data.strip():
        raise InvalidMaterial("file is empty", path)
    if _PEM_PRIVATE_KEY not in data:
        raise InvalidMaterial("no PEM private key found", path)
    secret = password.encode() if password is not None else None
    try:
        return serialization.load_pem_private_key(data, secret)
    except TypeError:
        if secret is None:
            raise InvalidMaterial(
                "private key is encrypted and no keyfile_password is set", path
            ) from None
        # OpenSSL ignores a password given for a plain key; refusing it here would reject
        # material Hypercorn itself accepts.
        return _load_private_key(data, path, None)
    except ValueError as exc:
        if secret is not None and "password" in str(exc).lower():
            raise InvalidMaterial("wrong keyfile_password for the private key", path) from None
        raise InvalidMaterial("the PEM private key is truncated or corrupt", path) from None
    except UnsupportedAlgorithm:
        raise InvalidMaterial("unsupported private key algorithm", path) from None


def _check_validity(
    cert: x509.Certificate, now: datetime, min_validity_left: float, path: str
) -> None:
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < not_before:
        raise InvalidMaterial(f"certificate is not valid until {format_moment(not_before)}", path)
    if now >= not_after:
        raise InvalidMaterial(f"certificate expired on {format_moment(not_after)}", path)
    if now >= not_after - timedelta(seconds=min_validity_left):
        raise InvalidMaterial(
            f"certificate expires on {format_moment(not_after)}, "
            f"less than {min_validity_left:g} s from now",
            path,
        )


def _check_chain(chain: tuple[x509.Certificate, ...], now: datetime, path: str) -> None:
    # OpenSSL sends the chain in file order, so it must run leaf first, each certificate
    # signed by the next one. A client would refuse anything else after we had published it.
    for position, (child, parent) in enumerate(pairwise(chain), start=1):
        broken = (
            f"certificate chain is broken: certificate {position} "
            f"({child.subject.rfc4514_string()}) is not issued by certificate {position + 1} "
            f"({parent.subject.rfc4514_string()})"
        )
        if child.issuer != parent.subject:
            raise InvalidMaterial(broken, path)
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            raise InvalidMaterial(broken + ": bad signature", path) from None
    for position, cert in enumerate(chain[1:], start=2):
        if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
            raise InvalidMaterial(
                f"chain certificate {position} ({cert.subject.rfc4514_string()}) is valid only "
                f"from {format_moment(cert.not_valid_before_utc)} "
                f"to {format_moment(cert.not_valid_after_utc)}",
                path,
            )


def _sans(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    dns = names.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
    return (*dns, *ips)


def _digest(*parts: bytes | None) -> str:
    # Length-prefixed so that moving bytes from one file to the next changes the digest.
    hasher = hashlib.sha256()
    for part in parts:
        if part is None:
            hasher.update(b"-")
            continue
        hasher.update(len(part).to_bytes(8, "big"))
        hasher.update(part)
    return hasher.hexdigest()
