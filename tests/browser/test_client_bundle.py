"""``/socket.io/socket.io.js`` and friends over plain HTTP (no browser needed)."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict

from gateway.http.client_bundle import _accepts_gzip, _etag_matches, load_bundle
from tests.support.client import Client

VENDORED = Path(__file__).resolve().parents[2] / "gateway" / "http" / "socketio_client"
INTEROP_PACKAGE = Path(__file__).resolve().parents[1] / "interop" / "package.json"
# What Node's serveClient serves from the 4.8 dist, less the msgpack build.
SERVED = [
    "socket.io.js",
    "socket.io.js.map",
    "socket.io.min.js",
    "socket.io.min.js.map",
    "socket.io.esm.min.js",
    "socket.io.esm.min.js.map",
]


async def fetch(
    url: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, CIMultiDict[str], bytes]:
    # The bytes on the wire: no decompression, and no gzip unless the test asks for it.
    headers = {"Accept-Encoding": "identity", **(headers or {})}
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.request(method, url, headers=headers) as response,
    ):
        return response.status, response.headers.copy(), await response.read()


def test_vendored_files_match_the_manifest_and_the_interop_pin() -> None:
    manifest = json.loads((VENDORED / "manifest.json").read_text())
    pinned = json.loads(INTEROP_PACKAGE.read_text())["dependencies"]["socket.io-client"]
    assert manifest["package"] == "socket.io-client"
    assert manifest["version"] == pinned
    assert manifest["license"] == "MIT"
    assert "MIT License" in (VENDORED / "LICENSE").read_text()
    assert sorted(manifest["files"]) == sorted(SERVED)
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((VENDORED / name).read_bytes()).hexdigest() == digest, name
    assert f"Socket.IO v{pinned}" in (VENDORED / "socket.io.min.js").read_text()[:200]


@pytest.mark.parametrize("name", SERVED)
async def test_each_file_is_served_with_its_type_and_etag(server, name) -> None:
    status, headers, body = await fetch(f"{server.url}/socket.io/{name}")
    assert status == 200
    assert body == (VENDORED / name).read_bytes()
    expected = "application/json" if name.endswith(".map") else "text/javascript"
    assert headers["Content-Type"] == f"{expected}; charset=utf-8"
    assert headers["ETag"] == f'"{load_bundle().version}"'
    assert headers["Cache-Control"] == "public, max-age=0"
    assert headers["Content-Length"] == str(len(body))


async def test_etag_revalidation_answers_304(server) -> None:
    url = f"{server.url}/socket.io/socket.io.js"
    _, headers, _ = await fetch(url)
    etag = headers["ETag"]
    for tag in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        status, again, body = await fetch(url, headers={"If-None-Match": tag})
        assert (status, body) == (304, b""), tag
        assert again["ETag"] == etag
    status, _, _ = await fetch(url, headers={"If-None-Match": '"4.0.0"'})
    assert status == 200


async def test_gzip_when_accepted(server) -> None:
    url = f"{server.url}/socket.io/socket.io.min.js"
    status, headers, body = await fetch(url, headers={"Accept-Encoding": "gzip, deflate"})
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert headers["Vary"] == "Accept-Encoding"
    assert gzip.decompress(body) == (VENDORED / "socket.io.min.js").read_bytes()
    status, _, _ = await fetch(
        url, headers={"Accept-Encoding": "gzip", "If-None-Match": headers["ETag"]}
    )
    assert status == 304
    _, plain, _ = await fetch(url, headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert "Content-Encoding" not in plain


async def test_head_has_the_headers_and_no_body(server) -> None:
    status, headers, body = await fetch(f"{server.url}/socket.io/socket.io.js", "HEAD")
    assert status == 200
    assert body == b""
    assert headers["Content-Length"] == str((VENDORED / "socket.io.js").stat().st_size)


async def test_msgpack_build_is_refused_with_the_reason(server) -> None:
    status, _, body = await fetch(f"{server.url}/socket.io/socket.io.msgpack.min.js")
    assert status == 404
    assert b"JSON" in body


async def test_engineio_polling_still_works_through_the_wrapper(server) -> None:
    url = f"{server.url}/socket.io/?EIO=4&transport=polling"
    status, _, body = await fetch(url)
    assert status == 200
    assert body.startswith(b"0{")
    handshake = json.loads(body[1:])
    assert handshake["upgrades"] == ["websocket"]
    session = f"{url}&sid={handshake['sid']}"
    async with aiohttp.ClientSession() as http:
        async with http.post(session, data=b"40") as response:  # Socket.IO CONNECT
            assert (response.status, await response.text()) == (200, "ok")
        async with http.get(session) as response:
            packets = await response.text()
    assert packets.startswith("40{")
    assert "system:welcome" in packets


async def test_other_requests_under_the_prefix_go_to_engineio(server) -> None:
    status, _, _ = await fetch(f"{server.url}/socket.io/socket.io.js", "POST")
    assert status == 400  # Engine.IO's answer, not the bundle
    status, _, _ = await fetch(f"{server.url}/socket.io/socket.io.other.js")
    assert status == 400


@pytest.mark.parametrize("transports", [["websocket"], ["polling", "websocket"]])
async def test_socketio_clients_connect_through_the_wrapper(server, transports) -> None:
    # (A polling-only python-socketio client takes ~30 s to close, waiting for its pending
    # long poll; polling is covered by the raw test above instead.)
    client = Client(server.url, transports=transports)
    try:
        await client.connect()
        assert (await client.call("client-ping"))["timestamp"]
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        (b"", False),
        (b"gzip", True),
        (b"deflate, gzip;q=0.5", True),
        (b"GZIP", True),
        (b"gzip;q=0", False),
        (b"gzip; q=0.0", False),
        (b"*", True),
        (b"br, deflate", False),
        (b"gzip;q=junk", False),
    ],
)
def test_accept_encoding(header: bytes, accepted: bool) -> None:
    assert _accepts_gzip(header) is accepted


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (None, False),
        (b'"4.8.1"', True),
        (b'W/"4.8.1"', True),
        (b'"a", "4.8.1"', True),
        (b"*", True),
        (b'"4.8.0"', False),
        (b"4.8.1", False),
    ],
)
def test_if_none_match(header: bytes | None, matches: bool) -> None:
    assert _etag_matches(header, (b'"4.8.1"', b'"4.8.1-gzip"')) is matches
