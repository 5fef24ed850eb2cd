"""Headless Chromium for the console tests, driven by Playwright against Debian's ``chromium``.

Playwright's own browser download is never used (``playwright install`` fetches builds from
outside the package registries): the tests launch the system Chromium. When it is missing they
install it with ``apt-get`` (as root), and skip, saying why, only where that is impossible.
Set ``WSHUB_CHROMIUM`` to use another Chromium binary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

DEFAULT_CHROMIUM = "/usr/bin/chromium"
APT_TIMEOUT_SECONDS = 900
# The flags a CI container needs: no sandbox (root, no user namespaces), no GPU, and no
# background traffic of Chromium's own to hosts outside the machine.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1440, "height": 1000}
# Every wait in these tests is for a condition; this bounds each one.
DEFAULT_TIMEOUT_MS = 8_000
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "console.png"


def _apt_install() -> str | None:
    """Install Debian's chromium; returns why it could not be, or None."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "not running as root, so apt-get cannot install it"
    apt = shutil.which("apt-get")
    if apt is None:
        return "apt-get is not available on this machine"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "--no-install-recommends", "chromium"]
    attempts = [[install], [[apt, "update"], install]]  # a fresh machine has no package lists
    output = ""
    for steps in attempts:
        try:
            for step in steps:
                done = subprocess.run(
                    step, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_SECONDS
                )
                output = (done.stdout + done.stderr).strip()
                if done.returncode != 0:
                    break
            else:
                return None
        except subprocess.TimeoutExpired:
            return f"apt-get did not finish within {APT_TIMEOUT_SECONDS} s"
    last = output.splitlines()[-1] if output else "no output"
    return f"apt-get install chromium failed: {last}"


@pytest.fixture(scope="session")
def chromium_path() -> str:
    pytest.importorskip(
        "playwright.async_api", reason="playwright is not installed (pip install -e '.[test]')"
    )
    path = os.environ.get("WSHUB_CHROMIUM", DEFAULT_CHROMIUM)
    if not Path(path).exists():
        if "WSHUB_CHROMIUM" in os.environ:
            pytest.skip(f"WSHUB_CHROMIUM={path} does not exist")
        problem = _apt_install()
        if problem is not None or not Path(path).exists():
            pytest.skip(f"browser tests need Chromium at {path}: {problem or 'not installed'}")
    return path


@pytest.fixture
async def browser(chromium_path: str) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class Console:
    """One page of ``/console`` and what went wrong in it."""

    page: Any
    errors: list[str] = field(default_factory=list)


OpenConsole = Callable[..., Awaitable[Console]]


@pytest.fixture
async def open_console(browser: Any) -> AsyncIterator[OpenConsole]:
    """``await open_console(server.url)``: a fresh browser context on the console page.

    Console errors and uncaught exceptions are collected in ``Console.errors``.
    """
    contexts: list[Any] = []

    async def open_page(base_url: str, *, https: bool = False) -> Console:
        # The dev certificate is self-signed: the context trusts it as a developer would.
        context = await browser.new_context(viewport=VIEWPORT, ignore_https_errors=https)
        contexts.append(context)
        context.set_default_timeout(DEFAULT_TIMEOUT_MS)
        page = await context.new_page()
        console = Console(page)
        page.on(
            "console",
            lambda message: message.type == "error" and console.errors.append(message.text),
        )
        page.on("pageerror", lambda error: console.errors.append(f"uncaught: {error}"))
        await page.goto(f"{base_url}/console")
        return console

    yield open_page
    for context in contexts:
        await context.close()


def updating_screenshot() -> bool:
    return os.environ.get("WSHUB_UPDATE_SCREENSHOT") == "1"


async def save_screenshot(page: Any, tmp_path: Path) -> Path:
    """Save a full-page screenshot in the test's tmp dir, and as ``docs/console.png`` (the
    README's picture) when ``WSHUB_UPDATE_SCREENSHOT=1``: not on every run, so a test run
    does not rewrite a tracked file."""
    path = tmp_path / "console.png"
    await page.screenshot(path=str(path), full_page=True)
    if updating_screenshot():
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, DOCS_SCREENSHOT)
    return path
