"""``/console`` in headless Chromium against a live gateway and real Python clients."""

from __future__ import annotations

import asyncio
import re
import time

import jwt
import pytest

from gateway.tls import generate_dev_pair
from tests.browser.conftest import DEFAULT_TIMEOUT_MS, save_screenshot, updating_screenshot
from tests.support.client import Client

playwright = pytest.importorskip(
    "playwright.async_api", reason="playwright is not installed (pip install -e '.[test]')"
)
expect = playwright.expect
expect.set_options(timeout=DEFAULT_TIMEOUT_MS)

SECRET = "console-browser-secret-long-enough-for-hs256"


def token(sub: str, roles: list[str]) -> str:
    return jwt.encode({"sub": sub, "roles": roles, "exp": time.time() + 300}, SECRET, "HS256")


def event_row(page, event: str):
    return page.locator(f'#events-table tr[data-event="{event}"]')


def received(page, event: str):
    return page.locator(f'#event-log li[data-direction="in"][data-event="{event}"]')


async def demo_traffic(alice: Client, bob: Client, *, seconds: float) -> None:
    """A few seconds of varied traffic, so the README's screenshot shows charts with a shape."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    tick = 0
    while loop.time() < end:
        tick += 1
        for _ in range(1 + tick % 4):
            await alice.emit("client-ping")
        # Between the two Python clients only, so the try-it log keeps the page's own exchange.
        await bob.emit("system:direct", {"target": "alice", "type": "chat", "n": tick})
        if tick % 2 == 0:
            await alice.emit("system:typingStart", {"target": "bob"})
        if tick % 3 == 0:
            await alice.emit("system:direct", {"target": "nobody", "type": "chat"})
        await asyncio.sleep(0.25)


async def test_page_loads_without_console_errors(server, open_console) -> None:
    console = await open_console(server.url)
    page = console.page
    await expect(page.locator("#console")).to_be_visible()
    await expect(page.locator("#login")).to_be_hidden()
    await expect(page.locator("#fig-active")).to_have_text("0")
    await expect(page.locator("#auth-badge")).to_contain_text("Authentication off")
    await expect(page.locator("#tls-off")).to_be_visible()
    await expect(page.locator("#events-table tbody")).to_contain_text("No events yet")
    # The try-it panel's client is the bundle this gateway serves.
    assert await page.evaluate("typeof io") == "function"
    assert await page.evaluate("typeof io.Manager") == "function"
    # Let a few polls go by: an error in the poll loop or a redraw would show up here.
    uptime = await page.locator("#server-line").text_content()
    await expect(page.locator("#server-line")).not_to_have_text(uptime or "")
    assert console.errors == []


async def test_figures_move_after_real_traffic(server_factory, open_console) -> None:
    server = server_factory(rate_limit=0.5, rate_limit_burst=2)
    console = await open_console(server.url)
    page = console.page
    await expect(page.locator("#events-table tbody")).to_contain_text("No events yet")
    client = Client(server.url)
    try:
        await client.connect()
        for _ in range(4):
            await client.emit("client-ping")  # the cheap class: its own, larger bucket
        for _ in range(5):
            await client.emit("system:getConfig")  # 2 pass the bucket, 3 are rate-limited
        for _ in range(3):
            await client.expect("system:error")
        await expect(page.locator("#fig-active")).to_have_text("1")
        await expect(event_row(page, "client-ping").locator(".total")).to_have_text("4")
        await expect(event_row(page, "system:getConfig").locator(".total")).to_have_text("5")
        await expect(event_row(page, "system:getConfig").locator("td").nth(3)).to_have_text("3")
        await expect(page.locator('#errors-table tr[data-code="RATE_LIMIT"] .total')).to_have_text(
            "3"
        )
        await expect(page.locator("#fig-rate-limited")).to_have_text("3")
        await expect(page.locator("#fig-events-rate")).not_to_have_text("0")
        await expect(page.locator("#legend-events")).to_contain_text("client-ping")
    finally:
        await client.close()
    await expect(page.locator("#fig-active")).to_have_text("0")
    assert console.errors == []


async def test_python_clients_are_listed_and_searchable(server, connect, open_console) -> None:
    alice = await connect("alice")
    await alice.login("alice", following=["bob"])
    await connect("bob")
    console = await open_console(server.url)
    page = console.page
    rows = page.locator("#clients-table tbody tr")
    alice = page.locator('#clients-table tr[data-username="alice"]')
    await expect(rows).to_have_count(2)
    await expect(alice.locator("td").nth(2)).to_have_text("1")  # following
    await expect(alice.locator("td").nth(3)).to_have_text("websocket")
    await page.fill("#client-search", "ALI")
    await expect(rows).to_have_count(1)
    await expect(alice).to_be_visible()
    await expect(page.locator("#clients-count")).to_have_text("(1 of 2 match)")
    await page.fill("#client-search", "nobody-like-this")
    await expect(rows).to_have_text(["No client matches"])
    await page.fill("#client-search", "")
    await expect(rows).to_have_count(2)
    # A username is a button that makes it the try-it target.
    await alice.get_by_role("button", name="alice").click()
    await expect(page.locator("#try-target")).to_have_value("alice")
    await expect(page.locator("#try-payload")).to_have_value(re.compile('"target": "alice"'))
    assert console.errors == []


async def test_try_it_talks_to_a_python_client(server, connect, open_console, tmp_path) -> None:
    bob = await connect("bob")
    alice = await connect("alice")
    await alice.login("alice", following=["bob"])
    console = await open_console(server.url)
    page = console.page
    await page.fill("#try-username", "carol")
    await page.click("#try-connect")
    await expect(page.locator("#try-status")).to_have_text("connected (websocket)")
    await expect(received(page, "system:dataSet")).to_contain_text('"success": true')

    await page.fill("#try-target", "bob")
    await page.click("#try-send")  # system:direct is the default event
    message = await bob.expect("system:direct")
    assert (message["sender"]["username"], message["message"]) == ("carol", "Hello bob!")
    await bob.emit(
        "system:direct", {"target": "carol", "type": "chatReply", "message": "Got it, carol"}
    )
    reply = received(page, "system:direct")
    await expect(reply).to_contain_text('"message": "Got it, carol"')
    await expect(reply).to_contain_text('"username": "bob"')
    await expect(received(page, "system:directSent")).to_contain_text('"target": "bob"')

    await page.select_option("#try-event", "system:typingStart")
    await page.click("#try-send")
    assert (await bob.expect("system:typingUpdate"))["isTyping"] is True

    await page.select_option("#try-event", "system:notification")
    await page.click("#try-send")
    assert (await bob.expect("system:notification"))["type"] == "friendRequest"
    await expect(received(page, "system:notificationSent")).to_contain_text('"recipientCount": 1')

    await page.select_option("#try-event", "system:general")
    await page.check("#try-ack")
    await page.click("#try-send")
    assert (await bob.expect("system:general"))["sender"]["username"] == "carol"
    await expect(page.locator('#event-log li[data-event="system:general (ack)"]')).to_contain_text(
        '"success": true'
    )
    await expect(page.locator('#clients-table tr[data-username="carol"]')).to_be_visible()

    await page.fill("#log-filter", "directSent")
    await expect(page.locator("#event-log li:visible")).to_have_count(1)
    await page.fill("#log-filter", "")
    if updating_screenshot():
        await demo_traffic(alice, bob, seconds=20)
    await save_screenshot(page, tmp_path)
    assert console.errors == []


async def test_admin_protection(server_factory, open_console) -> None:
    server = server_factory(auth_jwt_secret=SECRET)
    console = await open_console(server.url)
    page = console.page
    await expect(page.locator("#login")).to_be_visible()
    await expect(page.locator("#console")).to_be_hidden()
    anonymous = await page.request.get(f"{server.url}/console/api/state")
    assert anonymous.status == 401
    assert set(await anonymous.json()) == {"error", "authRequired"}
    # Nothing was rendered for the anonymous visitor.
    assert await page.locator("#fig-active").text_content() == "\N{EN DASH}"  # the placeholder
    assert await page.locator("#clients-table tbody tr").count() == 0

    await page.fill("#token-input", token("mallory", ["user"]))
    await page.click("#login-form button")
    await expect(page.locator("#login-error")).to_contain_text("'admin'")
    await expect(page.locator("#console")).to_be_hidden()

    await page.fill("#token-input", token("root", ["admin"]))
    await page.click("#login-form button")
    await expect(page.locator("#console")).to_be_visible()
    await expect(page.locator("#auth-badge")).to_have_text("Admin: root")
    await expect(page.locator("#try-username")).to_have_value("root")
    await expect(page.locator("#try-username")).to_be_disabled()
    # The try-it connection authenticates with the same token.
    await page.click("#try-connect")
    await expect(page.locator("#try-status")).to_contain_text("connected")
    await expect(page.locator('#clients-table tr[data-username="root"]')).to_be_visible()

    await page.click("#sign-out")
    await expect(page.locator("#login")).to_be_visible()
    await expect(page.locator("#console")).to_be_hidden()
    await expect(page.locator("#clients-table tbody tr")).to_have_count(0)
    assert await page.evaluate("sessionStorage.length") == 0


async def test_over_https_with_the_dev_certificate(server_factory, open_console, tmp_path) -> None:
    cert, key = generate_dev_pair(tmp_path)
    server = server_factory(config={"certfile": cert, "keyfile": key})
    assert server.url.startswith("https://")
    console = await open_console(server.url, https=True)
    page = console.page
    await expect(page.locator("#tls-on")).to_be_visible()
    await expect(page.locator("#tls-subject")).to_have_text("CN=localhost")
    await expect(page.locator("#tls-sans")).to_contain_text("127.0.0.1")
    serial = server.gateway.tls.info.serial_hex
    await expect(page.locator("#tls-serial")).to_have_text(serial)
    await page.click("#try-connect")  # the app default: polling first, then the upgrade
    await expect(page.locator("#try-status")).to_contain_text("connected")

    generate_dev_pair(tmp_path)
    assert server.call(lambda: server.gateway.tls.reload("manual")).outcome == "ok"
    await expect(received(page, "system:certificateRefresh")).to_be_visible()
    # (The watcher may add an "unchanged" row of its own: it sees the files the test wrote.)
    manual = page.locator("#tls-reloads tbody tr", has_text="manual")
    await expect(manual.locator("td").nth(2)).to_have_text("ok")
    await expect(manual.locator("td").nth(4)).to_have_text("1")  # the page's own client
    await expect(page.locator("#tls-serial")).not_to_have_text(serial)
    # The failed WebSocket upgrade over HTTP/2 is the next test's subject, not this one's.
    assert [e for e in console.errors if "WebSocket" not in e] == []


async def test_websocket_from_a_browser_over_https(server_factory, open_console, tmp_path) -> None:
    cert, key = generate_dev_pair(tmp_path)
    server = server_factory(config={"certfile": cert, "keyfile": key})
    console = await open_console(server.url, https=True)
    page = console.page
    await page.check("#try-websocket-only")
    await page.click("#try-connect")
    await expect(page.locator("#try-status")).to_have_text("connected (websocket)", timeout=2_000)
