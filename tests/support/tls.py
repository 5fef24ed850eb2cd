"""Test support for the TLS layer: certificates with known serials, the writers each rotation
style uses, a TLS echo server and clients that report which certificate they were served.

Shared by the tests and by ``measure_reload_latency.py``; not collected by pytest.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1")


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: CertificateIssuerPrivateKeyTypes, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


@dataclass(frozen=True)
class Pair:
    """A leaf certificate, its key, and the intermediates to send after it."""

    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes
    intermediates: tuple[x509.Certificate, ...] = ()

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    @property
    def cert_pem(self) -> bytes:
        return b"".join(pem(cert) for cert in (self.cert, *self.intermediates))

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)

    @property
    def combined_pem(self) -> bytes:
        return self.key_pem + self.cert_pem


@dataclass(frozen=True)
class Issuer:
    """A CA (root or intermediate) that issues certificates with chosen serials."""

    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes
    # What a server sends after a leaf this issuer signed: nothing for a root, else itself and
    # the intermediates above it.
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def cert_pem(self) -> bytes:
        return pem(self.cert)

    def issue(
        self,
        serial: int,
        *,
        key: CertificateIssuerPrivateKeyTypes | None = None,
        hosts: Sequence[str] = DEFAULT_HOSTS,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        client: bool = False,
        common_name: str = "localhost",
    ) -> Pair:
        key = ec_key() if key is None else key
        now = datetime.now(UTC)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - timedelta(hours=1) if not_before is None else not_before)
            .not_valid_after(now + timedelta(days=30) if not_after is None else not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if hosts:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return Pair(cert, key, self.chain)

    def intermediate(self, common_name: str) -> Issuer:
        key = ec_key()
        cert = _ca_builder(common_name, key, self.cert.subject).sign(self.key, hashes.SHA256())
        return Issuer(cert, key, (cert, *self.chain))


def _ca_builder(
    common_name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name
) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )


def make_ca(common_name: str) -> Issuer:
    key = ec_key()
    cert = _ca_builder(common_name, key, _name(common_name)).sign(key, hashes.SHA256())
    return Issuer(cert, key)


# -- writers: one per rotation style -------------------------------------------------------


def write_in_place(path: Path, data: bytes) -> None:
    """Truncate and rewrite the existing file (non-atomic: readers may see it half-written)."""
    with open(path, "wb") as fh:
        fh.write(data)


def write_atomic(path: Path, data: bytes) -> None:
    """Write a sibling temporary file, then rename it over *path*."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class SecretMount:
    """A directory updated like a Kubernetes secret volume.

    ``tls.crt`` -> ``..data/tls.crt``, ``..data`` -> ``..<timestamp>``; an update writes a new
    timestamped directory, renames a ``..data_tmp`` symlink over ``..data`` and deletes the old
    directory. No event ever names ``tls.crt``.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._generation = 0
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.directory / name

    def publish(self, files: dict[str, bytes]) -> None:
        self._generation += 1
        data_dir = self.directory / f"..2025_01_01_00_00_00.{self._generation}"
        data_dir.mkdir()
        for name, content in files.items():
            (data_dir / name).write_bytes(content)
        data_link = self.directory / "..data"
        old_target = os.readlink(data_link) if data_link.is_symlink() else None
        tmp_link = self.directory / "..data_tmp"
        os.symlink(data_dir.name, tmp_link)
        os.replace(tmp_link, data_link)
        for name in files:
            link = self.directory / name
            if not link.is_symlink():
                os.symlink(f"..data/{name}", link)
        if old_target is not None:
            old_dir = self.directory / old_target
            for child in old_dir.iterdir():
                child.unlink()
            old_dir.rmdir()


# -- server and clients ---------------------------------------------------------------------


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def echo_server(context: ssl.SSLContext) -> AsyncIterator[int]:
    """A line echo server on 127.0.0.1 serving *context*; yields its port."""
    server = await asyncio.start_server(_echo, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def client_context(
    ca_pem: bytes,
    *,
    version: ssl.TLSVersion | None = None,
    client_cert: tuple[Path, Path] | None = None,
    ciphers: str | None = None,
    alpn: Sequence[str] | None = None,
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    if client_cert is not None:
        ctx.load_cert_chain(*client_cert)
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    if alpn is not None:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def server_hostname(sni: bool) -> str:
    # Python never sends an IP literal as SNI, so connecting "to 127.0.0.1" is the no-SNI case
    # (and still verifies the certificate's IP SAN).
    return "localhost" if sni else "127.0.0.1"


@dataclass
class Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @property
    def ssl_object(self) -> ssl.SSLObject:
        obj = self.writer.get_extra_info("ssl_object")
        assert isinstance(obj, ssl.SSLObject)
        return obj

    @property
    def peer_serial(self) -> int:
        der = self.ssl_object.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number

    async def echo(self, payload: bytes = b"ping\n", timeout: float = 2.0) -> bytes:
        self.writer.write(payload)
        await self.writer.drain()
        return await asyncio.wait_for(self.reader.readline(), timeout)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 2.0)


async def connect(
    port: int, ctx: ssl.SSLContext, *, sni: bool = True, timeout: float = 2.0
) -> Connection:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=server_hostname(sni)),
        timeout,
    )
    return Connection(reader, writer)


async def fetch_serial(port: int, ctx: ssl.SSLContext, *, sni: bool = True) -> int:
    """A fresh full handshake plus one echo; the serial of the certificate served."""
    conn = await connect(port, ctx, sni=sni)
    try:
        assert await conn.echo() == b"ping\n"
        return conn.peer_serial
    finally:
        await conn.close()


async def echo_or_none(port: int, ctx: ssl.SSLContext, *, sni: bool = True) -> bytes | None:
    """The echoed line, or None if the server refused us at any point.

    A client certificate refused on TLS 1.3 does not fail the client's handshake: the server
    checks it after the client has finished, and then closes. Only "no answer" is reliable.
    """
    try:
        conn = await connect(port, ctx, sni=sni)
    except (ssl.SSLError, ConnectionError, TimeoutError):
        return None
    try:
        return await conn.echo() or None
    except (ssl.SSLError, ConnectionError, TimeoutError):
        return None
    finally:
        await conn.close()


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float = 5.0,
    interval: float = 0.005,
    what: str = "condition",
) -> float:
    """Poll until *predicate* holds; returns the seconds it took. Fails after *timeout*."""
    start = time.monotonic()
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


async def wait_for_serial(
    port: int, ctx: ssl.SSLContext, serial: int, *, sni: bool = True, timeout: float = 5.0
) -> float:
    async def served() -> bool:
        return await fetch_serial(port, ctx, sni=sni) == serial

    return await wait_until(served, timeout=timeout, what=f"serial {serial:#x}")
