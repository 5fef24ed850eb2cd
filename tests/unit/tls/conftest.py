from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypercorn.config import Config

from gateway.tls import TlsFiles, TlsReloader
from tests.support.tls import Issuer, Pair, make_ca

# Fast watcher settings: a 10 ms quiet step gives ~20 ms reloads (docs/tls-reload.md, Q3).
FAST = {"step_ms": 10, "debounce_ms": 200, "settle_seconds": 0.3}


@pytest.fixture(scope="session")
def ca() -> Issuer:
    return make_ca("WS-Hub Test Root A")


@pytest.fixture(scope="session")
def other_ca() -> Issuer:
    return make_ca("WS-Hub Test Root B")


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    # RSA generation costs tens of milliseconds: once per session.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def write_pair(tmp_path: Path) -> Callable[[Pair], TlsFiles]:
    """Write *pair* as cert.pem/key.pem in tmp_path and return the files."""

    def write(pair: Pair) -> TlsFiles:
        (tmp_path / "cert.pem").write_bytes(pair.cert_pem)
        (tmp_path / "key.pem").write_bytes(pair.key_pem)
        return TlsFiles(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))

    return write


@pytest.fixture
async def make_reloader() -> AsyncIterator[Callable[..., TlsReloader]]:
    """Build reloaders with fast test settings; every one is stopped at teardown."""
    made: list[TlsReloader] = []

    def make(files: TlsFiles, config: Config | None = None, **kwargs: Any) -> TlsReloader:
        reloader = TlsReloader(config or Config(), files, **{**FAST, **kwargs})
        made.append(reloader)
        return reloader

    yield make
    for reloader in made:
        await reloader.stop()
