"""``ws-hub``: bad configuration is refused with one line naming what is wrong."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.tls import generate_dev_pair


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, **(env or {})},
    )


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("ws-hub: ") and done.stderr.count("\n") == 1, done.stderr
    return done.stderr


def test_bad_setting_names_the_variable() -> None:
    line = one_line_error(run("serve", env={"WSHUB_TYPING_TIMEOUT": "soon"}))
    assert "WSHUB_TYPING_TIMEOUT" in line


def test_misspelt_hypercorn_key(tmp_path: Path) -> None:
    config = tmp_path / "hypercorn.toml"
    config.write_text('certfle = "x.pem"\n')
    assert "certfle" in one_line_error(run("serve", "--config", str(config)))


def test_missing_certificate_file(tmp_path: Path) -> None:
    line = one_line_error(
        run(
            "serve",
            "--certfile",
            str(tmp_path / "nope.pem"),
            "--keyfile",
            str(tmp_path / "nope.key"),
        )
    )
    assert "certfile" in line and "not found" in line


def test_key_that_does_not_match(tmp_path: Path) -> None:
    cert, _ = generate_dev_pair(tmp_path / "a")
    _, other_key = generate_dev_pair(tmp_path / "b")
    line = one_line_error(run("serve", "--certfile", cert, "--keyfile", other_key))
    assert "does not match" in line


def test_workers_need_redis() -> None:
    line = one_line_error(run("serve", "--workers", "2"))
    assert "WSHUB_BACKEND=redis" in line


@pytest.mark.parametrize("garbage", [b"not a certificate", b""])
def test_inspect_bad_file(tmp_path: Path, garbage: bytes) -> None:
    path = tmp_path / "broken.pem"
    path.write_bytes(garbage)
    assert "broken.pem" in one_line_error(run("certs", "inspect", str(path)))


def test_generate_and_inspect(tmp_path: Path) -> None:
    done = run(
        "certs", "generate", "--dir", str(tmp_path), "--hosts", "example.test", "--days", "3"
    )
    assert done.returncode == 0, done.stderr
    shown = run("certs", "inspect", str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
    assert shown.returncode == 0
    assert "example.test" in shown.stdout and "matches certificate" in shown.stdout
