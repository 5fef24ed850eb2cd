"""``/socket.io/socket.io.js`` and friends: the official browser client, served by the gateway.

The Node server served its client bundle from its Socket.IO path (``serveClient``), and browser
apps load it from there with ``<script src="/socket.io/socket.io.js">``. Those requests would
otherwise reach Engine.IO (which owns ``/socket.io/``) before Quart, so this thin ASGI wrapper
sits in front of it and answers them itself.

It behaves like Node's ``serveClient`` of socket.io 4: the same file names, ``ETag`` the quoted
client version with ``If-None-Match`` answered 304, ``Cache-Control: public, max-age=0``, and gzip
when the browser accepts it. The msgpack build is not served: this gateway speaks the default
JSON parser, so that client could not talk to it (404 saying so).

The files are vendored unchanged from the npm package ``socket.io-client`` (see
``socketio_client/manifest.json`` and ``tools/update_socketio_client.py``).
"""

from __future__ import annotations

import functools
import gzip
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

# Loose on purpose: servers type their scopes and events as TypedDicts (Hypercorn does), and a
# wrapper must accept whatever its server passes.
Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

VENDOR_DIR = "socketio_client"
_NOT_SERVED = ("socket.io.msgpack.min.js", "socket.io.msgpack.min.js.map")
_MSGPACK_REFUSAL = (
    b"This gateway speaks the default (JSON) Socket.IO parser; "
    b"load /socket.io/socket.io.min.js instead of the msgpack build.\n"
)
# Smaller than the largest file by far; gzip of the five files costs ~20 ms once per process.
_GZIP_LEVEL = 6


@dataclass(slots=True)
class ClientFile:
    """One vendored file with its response headers; the gzip body is made on first request."""

    body: bytes
    content_type: bytes
    etag: bytes
    _gzipped: bytes | None = field(default=None, repr=False)

    @property
    def gzipped(self) -> bytes:
        if self._gzipped is None:
            self._gzipped = gzip.compress(self.body, _GZIP_LEVEL, mtime=0)
        return self._gzipped

    @property
    def gzip_etag(self) -> bytes:
        # A representation-specific tag, so a cache never pairs one encoding's bytes with the
        # other's validator.
        return self.etag[:-1] + b'-gzip"'


@dataclass(frozen=True, slots=True)
class Bundle:
    version: str
    license: str
    files: dict[str, ClientFile]


@functools.cache
def load_bundle() -> Bundle:
    """The vendored files, read once per process."""
    folder = resources.files("gateway.http").joinpath(VENDOR_DIR)
    manifest = json.loads(folder.joinpath("manifest.json").read_text("utf-8"))
    version = str(manifest["version"])
    etag = f'"{version}"'.encode()
    files = {}
    for name in manifest["files"]:
        kind = b"application/json" if name.endswith(".map") else b"text/javascript"
        files[name] = ClientFile(
            folder.joinpath(name).read_bytes(), kind + b"; charset=utf-8", etag
        )
    return Bundle(version, str(manifest["license"]), files)


class ClientBundle:
    """ASGI middleware: serves the client files under *path*, passes everything else on."""

    def __init__(self, app: ASGIApp, *, path: str = "/socket.io", bundle: Bundle | None = None):
        self.app = app
        self.bundle = bundle or load_bundle()
        self._prefix = f"{path}/socket.io."
        self._files = {f"{path}/{name}": file for name, file in self.bundle.files.items()}
        self._refused = frozenset(f"{path}/{name}" for name in _NOT_SERVED)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # On the path of every Engine.IO request: one prefix comparison, nothing else.
        path = scope.get("path", "")
        if not path.startswith(self._prefix):
            return await self.app(scope, receive, send)
        method = scope.get("method")
        if scope["type"] != "http" or method not in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        file = self._files.get(path)
        if file is not None:
            return await _serve(file, scope, send, head=method == "HEAD")
        if path in self._refused:
            return await _respond(send, 404, [(b"content-type", b"text/plain")], _MSGPACK_REFUSAL)
        return await self.app(scope, receive, send)


async def _serve(file: ClientFile, scope: Scope, send: Send, *, head: bool) -> None:
    request = _headers(scope["headers"])
    use_gzip = _accepts_gzip(request.get(b"accept-encoding", b""))
    etag = file.gzip_etag if use_gzip else file.etag
    headers = [
        (b"cache-control", b"public, max-age=0"),
        (b"etag", etag),
        (b"vary", b"Accept-Encoding"),
        # A public, credential-free file: lets apps on other origins import the ESM build.
        (b"access-control-allow-origin", b"*"),
        (b"x-content-type-options", b"nosniff"),
    ]
    if _etag_matches(request.get(b"if-none-match"), (file.etag, file.gzip_etag)):
        return await _respond(send, 304, headers, b"")
    body = file.gzipped if use_gzip else file.body
    headers.append((b"content-type", file.content_type))
    if use_gzip:
        headers.append((b"content-encoding", b"gzip"))
    await _respond(send, 200, headers, body, head=head)


async def _respond(
    send: Send,
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    *,
    head: bool = False,
) -> None:
    if status != 304:  # a 304 has no body, and its Content-Length would describe the cached one
        headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def _headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    # ASGI header names are lower-case already.
    return {name: value for name, value in raw}


def _accepts_gzip(header: bytes) -> bool:
    """Whether ``Accept-Encoding`` allows gzip (RFC 9110 12.5.3: ``gzip;q=0`` refuses it)."""
    for item in header.split(b","):
        coding, _, params = item.partition(b";")
        if coding.strip().lower() not in (b"gzip", b"x-gzip", b"*"):
            continue
        name, _, value = params.strip().partition(b"=")
        if name.strip().lower() == b"q":
            try:
                return float(value) > 0
            except ValueError:
                return False
        return True
    return False


def _etag_matches(header: bytes | None, tags: tuple[bytes, ...]) -> bool:
    """``If-None-Match`` uses the weak comparison (RFC 9110 13.1.2): ``W/`` is ignored."""
    if header is None:
        return False
    for candidate in header.split(b","):
        candidate = candidate.strip()
        if candidate == b"*":
            return True
        if candidate.removeprefix(b"W/") in tags:
            return True
    return False
