#!/usr/bin/env python3
"""Re-vendor the official Socket.IO browser client into ``gateway/http/socketio_client/``.

    python3 tools/update_socketio_client.py              # the version tests/interop pins
    python3 tools/update_socketio_client.py --version 4.8.1

The files come from the npm package ``socket.io-client`` (fetched with ``npm pack``, which
checks the tarball against the registry's integrity hash) and are copied unchanged with the
package's LICENSE. ``manifest.json`` records the version, the tarball's integrity and a SHA-256
per file; ``gateway.http.client_bundle`` serves exactly the files it lists.

The version defaults to the one ``tests/interop/package.json`` pins, so the bundle the gateway
serves is the client the interoperability tests run against. Change both together.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "gateway" / "http" / "socketio_client"
INTEROP_PACKAGE = ROOT / "tests" / "interop" / "package.json"
PACKAGE = "socket.io-client"

# What the Node server's ``serveClient`` serves, less the msgpack build: this gateway speaks the
# default (JSON) Socket.IO parser, so a page loading the msgpack client could not talk to it.
DIST_FILES = (
    "socket.io.js",
    "socket.io.js.map",
    "socket.io.min.js",
    "socket.io.min.js.map",
    "socket.io.esm.min.js",
    "socket.io.esm.min.js.map",
)


def pinned_version() -> str:
    version = json.loads(INTEROP_PACKAGE.read_text())["dependencies"][PACKAGE]
    if not isinstance(version, str) or not version[:1].isdigit():
        raise SystemExit(f"{INTEROP_PACKAGE}: {PACKAGE} must be pinned to an exact version")
    return version


def npm_pack(version: str, workdir: Path) -> tuple[Path, str]:
    """Download the package tarball with npm; returns its path and integrity string."""
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm not found: install Node.js to re-vendor the client")
    out = subprocess.run(
        [npm, "pack", f"{PACKAGE}@{version}", "--json", "--pack-destination", str(workdir)],
        check=True,
        capture_output=True,
        text=True,
        cwd=workdir,
    ).stdout
    [info] = json.loads(out)
    if info.get("version") != version:
        raise SystemExit(f"npm gave {PACKAGE} {info.get('version')}, not {version}")
    return workdir / info["filename"], str(info["integrity"])


def vendor(version: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        tarball, integrity = npm_pack(version, workdir)
        with tarfile.open(tarball) as archive:
            archive.extractall(workdir / "unpacked", filter="data")
        package = workdir / "unpacked" / "package"
        TARGET.mkdir(parents=True, exist_ok=True)
        for stale in TARGET.iterdir():
            if stale.name != "__init__.py":
                stale.unlink()
        files: dict[str, str] = {}
        for name in DIST_FILES:
            data = (package / "dist" / name).read_bytes()
            (TARGET / name).write_bytes(data)
            files[name] = hashlib.sha256(data).hexdigest()
        shutil.copyfile(package / "LICENSE", TARGET / "LICENSE")
        license_name = json.loads((package / "package.json").read_text())["license"]
    manifest = {
        "package": PACKAGE,
        "version": version,
        "license": license_name,
        "integrity": integrity,
        "files": files,
    }
    (TARGET / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"vendored {PACKAGE} {version} ({license_name}) into {TARGET.relative_to(ROOT)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", help="exact version (default: tests/interop's pin)")
    args = parser.parse_args()
    vendor(args.version or pinned_version())
    return 0


if __name__ == "__main__":
    sys.exit(main())
