"""Turn validated bytes into an ``SSLContext`` exactly as Hypercorn would build one.

``SSLContext.load_cert_chain`` only takes paths, and reading the configured files a second time
would load whatever is there now rather than what was checked. So the checked bytes are staged
in anonymous memory (``memfd_create``, opened through ``/proc/self/fd/N``; the key never touches
a disk) or, where that is unavailable, in a private temporary directory that is removed at once.

The context itself comes from Hypercorn's own ``Config.create_ssl_context`` run on a shallow copy
of the server's config, so ciphers, minimum version, options, ALPN, ``verify_mode`` and
``verify_flags`` are Hypercorn's, not a re-implementation that could drift from them.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import shutil
import ssl
import tempfile
from collections.abc import Iterator

from hypercorn.config import Config

from .material import InvalidMaterial, ValidatedMaterial

# Captured at import: a launcher may later override or patch ``create_ssl_context`` to hand
# out the reloader's context, and calling that from here would recurse.
_hypercorn_create_ssl_context = Config.create_ssl_context

_PROC_FD = "/proc/self/fd"
_SSL_SOURCE_LOCATION = re.compile(r" \(_ssl\.c:\d+\)$")


def build_context(config: Config, material: ValidatedMaterial) -> ssl.SSLContext:
    """A new context serving *material* with *config*'s TLS settings.

    Raises :class:`InvalidMaterial` when OpenSSL refuses what ``cryptography`` accepted.
    """
    raw = material.raw
    with _staged(raw.cert_pem, raw.key_pem, raw.ca_pem) as (certfile, keyfile, ca_certs):
        shadow = copy.copy(config)
        shadow.certfile = certfile
        shadow.keyfile = keyfile
        shadow.ca_certs = ca_certs
        shadow.keyfile_password = raw.files.keyfile_password
        try:
            context = _hypercorn_create_ssl_context(shadow)
        except ssl.SSLError as exc:
            reason = _SSL_SOURCE_LOCATION.sub("", exc.strerror or str(exc))
            raise InvalidMaterial(f"OpenSSL refused the material: {reason}") from None
    if context is None:  # only when certfile/keyfile are unset, which _staged rules out
        raise RuntimeError("Hypercorn built no SSL context")
    return context


@contextlib.contextmanager
def _staged(*parts: bytes | None) -> Iterator[list[str | None]]:
    """Paths holding *parts* for the duration of the block (``None`` stays ``None``)."""
    if _memfd_usable():
        with _memfd_paths(parts) as paths:
            yield paths
    else:
        with _tempdir_paths(parts) as paths:
            yield paths


def _memfd_usable() -> bool:
    return hasattr(os, "memfd_create") and os.path.isdir(_PROC_FD)


@contextlib.contextmanager
def _memfd_paths(parts: tuple[bytes | None, ...]) -> Iterator[list[str | None]]:
    fds: list[int] = []
    try:
        paths: list[str | None] = []
        for part in parts:
            if part is None:
                paths.append(None)
                continue
            # CLOEXEC: spawned workers and subprocesses must not inherit the key.
            fd = os.memfd_create("ws-hub-tls", os.MFD_CLOEXEC)
            fds.append(fd)
            _write_all(fd, part)
            paths.append(f"{_PROC_FD}/{fd}")
        yield paths
    finally:
        for fd in fds:
            os.close(fd)


@contextlib.contextmanager
def _tempdir_paths(parts: tuple[bytes | None, ...]) -> Iterator[list[str | None]]:
    directory = tempfile.mkdtemp(prefix="ws-hub-tls-")  # mode 0700
    try:
        paths: list[str | None] = []
        for index, part in enumerate(parts):
            if part is None:
                paths.append(None)
                continue
            path = os.path.join(directory, f"part{index}.pem")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                _write_all(fd, part)
            finally:
                os.close(fd)
            paths.append(path)
        yield paths
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
