#!/usr/bin/env python3
"""Set up and run WS-Hub with nothing but Python 3.11+.

    python3 dev.py serve [ws-hub serve options]   # the gateway on its embedded defaults
    python3 dev.py test [pytest options]          # the whole test suite
    python3 dev.py lock [--upgrade]               # remake requirements/constraints.txt

Both create ``.venv`` on first use and reinstall only when ``pyproject.toml`` or the constraints
change. Every install takes its exact versions from ``requirements/constraints.txt``, which
``lock`` makes with uv (from PyPI, into .venv) from ``pyproject.toml``: ``--upgrade`` moves every
pin to the newest release that the ranges in ``pyproject.toml`` allow.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
INTEROP = ROOT / "tests" / "interop"
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"


def main() -> int:
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py runs on whatever python3 is first
        print("dev.py: WS-Hub needs Python 3.11 or newer", file=sys.stderr)
        return 2
    command, *rest = sys.argv[1:] or ["help"]
    if command == "serve":
        return serve(rest)
    if command == "test":
        return test(rest)
    if command == "lock":
        return lock(rest)
    print(__doc__)
    return 0 if command in {"help", "-h", "--help"} else 2


def serve(args: list[str]) -> int:
    python = ensure_venv("")
    run([str(python), "-m", "gateway", "certs", "generate", "--dir", "certs", "--if-missing"])
    return call([str(python), "-m", "gateway", "serve", "--config", "hypercorn.toml", *args])


def test(args: list[str]) -> int:
    python = ensure_venv("test,lint")
    ensure_node_modules(INTEROP)
    checks = [
        [str(python), "-m", "ruff", "check", "gateway", "tests", "bench", "tools", "dev.py"],
        [str(python), "-m", "mypy"],
        [str(python), "-m", "pytest", *args],
    ]
    for check in checks:
        status = call(check)
        if status != 0:
            return status
    return 0


def lock(args: list[str]) -> int:
    """``requirements/constraints.txt`` from ``pyproject.toml`` (every extra), for any platform."""
    python = ensure_venv("")
    run([str(python), "-m", "pip", "install", "--quiet", "uv"])
    return call(
        [
            str(python), "-m", "uv", "pip", "compile", "pyproject.toml", "--all-extras",
            "--universal", "--python-version", "3.11", "--quiet",
            "--output-file", str(CONSTRAINTS.relative_to(ROOT)), *args,
        ]
    )  # fmt: skip


def ensure_venv(extras: str) -> Path:
    python = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if not python.exists():
        print("dev.py: creating .venv", flush=True)
        venv.create(VENV, with_pip=True)
    inputs = (ROOT / "pyproject.toml").read_bytes() + CONSTRAINTS.read_bytes() + extras.encode()
    wanted = hashlib.sha256(inputs).hexdigest()
    stamp = VENV / f".installed-{extras or 'base'}"
    if not stamp.exists() or stamp.read_text() != wanted:
        spec = f".[{extras}]" if extras else "."
        print(f"dev.py: installing {spec} into .venv", flush=True)
        run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
        pinned = ["--constraint", str(CONSTRAINTS)]
        run([str(python), "-m", "pip", "install", "--quiet", *pinned, "-e", spec])
        stamp.write_text(wanted)
    return python


def ensure_node_modules(folder: Path) -> None:
    """``npm ci`` from the lock file when Node.js is present and the lock changed."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        print("dev.py: Node.js not found; the JavaScript interop tests will be skipped")
        return
    lock = (folder / "package-lock.json").read_bytes()
    stamp = folder / "node_modules" / ".lock-sha256"
    wanted = hashlib.sha256(lock).hexdigest()
    if not stamp.exists() or stamp.read_text() != wanted:
        print(f"dev.py: npm ci in {folder.relative_to(ROOT)}", flush=True)
        run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=folder)
        stamp.write_text(wanted)


def run(argv: list[str], cwd: Path = ROOT) -> None:
    status = call(argv, cwd)
    if status != 0:
        sys.exit(status)


def call(argv: list[str], cwd: Path = ROOT) -> int:
    try:
        return subprocess.call(argv, cwd=cwd)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
