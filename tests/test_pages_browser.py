"""The pages in a real browser: Debian's Chromium driven by Playwright, against the real app
(create_app behind aiohttp's test server on a random port) with real test hosts behind it
(sshd in network namespaces, the real agent).

The app and Playwright share the test's event loop, so every blocking host operation runs in a
thread (a blocked loop would stall the very server the browser talks to). Screenshots land in
artifacts/ (gitignored).
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

import pytest

from central import servers
from central.actions import audit_log
from tests.apiclient import PASSWORD
from tests.test_api_hosts import host_api  # noqa: F401  (fixture)

pytestmark = [pytest.mark.browser]

playwright_api = pytest.importorskip("playwright.async_api")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
BURNER = ["python3", "-c", "while True: pass"]
TIMEOUT_MS = 40_000  # polls every second; an offline host needs connect timeouts and retries
playwright_api.expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture
async def browser():
    if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
        pytest.skip("BROWSER TESTS SKIPPED: no /usr/bin/chromium (apt-get install chromium)")
    async with playwright_api.async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
def app(host_api):
    """The real app, its SSH pool using the key the test hosts authorize."""
    return host_api


def base_url(api) -> str:
    return str(api.client.make_url("")).rstrip("/")


async def new_page(browser, api):
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # CSP violations and script errors count; a refused request (401, 403) is the test's own doing
    page.on("console", lambda msg: errors.append(msg.text)
            if msg.type == "error" and not msg.text.startswith("Failed to load resource") else None)
    page.errors = errors  # type: ignore[attr-defined]
    return page


async def log_in(page, api, user: str, path: str = "/") -> None:
    await page.goto(base_url(api) + path)
    assert "/login" in page.url  # not logged in yet: sent to the login page
    await page.fill("input[name=username]", user)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("form#login button[type=submit]")
    await page.wait_for_url(re.compile(re.escape(base_url(api) + path) + "$"))


async def add_through_the_form(page, host, name: str, tags: str) -> None:
    """The two-step add: fetch the host key, check the fingerprint shown, trust it."""
    await page.click("#add-toggle")
    form = page.locator("form#add-server")
    await form.locator("input[name=name]").fill(name)
    await form.locator("input[name=host]").fill(host.address)
    await form.locator("input[name=tags]").fill(tags)
    await form.locator("button[type=submit]").click()
    modal = page.locator("dialog#modal")
    await playwright_api.expect(modal.locator("#modal-title")).to_have_text("Confirm the host key")
    assert host.fingerprint in await modal.locator("#modal-body").text_content()
    await modal.locator("#modal-ok").click()
    await playwright_api.expect(modal.locator("#modal-title")).to_have_text(f"Added {name}")
    assert "The agent answers" in await modal.locator("#modal-body").text_content()
    await modal.locator("#modal-ok").click()


def row(page, name: str):
    return page.locator(f'#servers tbody tr[data-name="{name}"]')


async def test_overview_live_figures_filter_offline_and_server_page_kill(app, browser, test_host):
    hosts = await asyncio.to_thread(test_host.many, 2)
    web, db = hosts
    for host in hosts:  # deploy hands the central each host's agent secret before it is added
        await servers.store_agent_secret(app.central, host.agent_secret, host=host.address)
    page = await new_page(browser, app)
    await log_in(page, app, "admin1")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)

    # add both hosts through the page's two-step form (fingerprint confirmation)
    await add_through_the_form(page, web, "web-1", "web, prod")
    await add_through_the_form(page, db, "db-1", "db, prod")

    # rows appear on their own, with live figures from the agents
    for name in ("web-1", "db-1"):
        await playwright_api.expect(row(page, name).locator('[data-f="status"] .badge')).to_have_text("online")
        await playwright_api.expect(row(page, name).locator('[data-f="cpu"]')).to_have_text(re.compile(r"^\d+\.\d%$"))
        await playwright_api.expect(row(page, name).locator('[data-f="mem"]')).to_have_text(re.compile(r"^\d+\.\d%$"))
        await playwright_api.expect(row(page, name).locator('[data-f="last_seen"]')).to_have_text(re.compile(r"^\d+ s ago$"))
    await playwright_api.expect(page.locator('[data-stat="total"]')).to_have_text("3")  # local, web-1, db-1
    assert await row(page, "web-1").locator(".tag").all_text_contents() == ["web", "prod"]

    # the filter narrows the list (name, tag, status), and a refresh keeps it applied
    await page.fill("#f-name", "web")
    await playwright_api.expect(page.locator("#servers tbody tr:visible")).to_have_count(1)
    await playwright_api.expect(row(page, "web-1")).to_be_visible()
    await page.fill("#f-name", "")
    await page.select_option("#f-tag", "db")
    await playwright_api.expect(page.locator("#servers tbody tr:visible")).to_have_count(1)
    await playwright_api.expect(row(page, "db-1")).to_be_visible()
    refreshed = int(await page.locator("#servers tbody").get_attribute("data-refreshed") or 0)
    await playwright_api.expect(page.locator("#servers tbody")).to_have_attribute(
        "data-refreshed", re.compile(rf"^(?!{refreshed}$)\d+$"))
    await playwright_api.expect(page.locator("#servers tbody tr:visible")).to_have_count(1)
    await page.select_option("#f-tag", "")
    await playwright_api.expect(page.locator("#servers tbody tr:visible")).to_have_count(3)

    # a sparkline of the last hour draws points
    await playwright_api.expect(row(page, "web-1").locator("svg")).to_have_attribute("data-points", re.compile(r"^([2-9]|\d\d+)$"))
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "overview.png"), full_page=True)

    # the page notices on its own when a host goes offline: no reload, no navigation
    await page.evaluate("window.__sameDocument = true")
    navigations.clear()
    await asyncio.to_thread(db.stop_sshd)
    await playwright_api.expect(row(page, "db-1")).not_to_have_attribute("data-status", "online")
    await playwright_api.expect(row(page, "db-1").locator(".reason")).not_to_be_empty()
    await playwright_api.expect(page.locator('[data-stat="online"]')).to_have_text("2")
    assert await page.evaluate("window.__sameDocument") is True
    assert navigations == []
    await page.select_option("#f-status", "online")
    await playwright_api.expect(page.locator("#servers tbody tr:visible")).to_have_count(2)
    await playwright_api.expect(row(page, "db-1")).to_be_hidden()
    await page.screenshot(path=str(ARTIFACTS / "overview-offline.png"), full_page=True)

    # the server page: inventory header, charts with points, a kill that reaches the host
    burner = await asyncio.to_thread(web.start_process, BURNER)
    await page.click('#servers a[href="/servers/web-1"]')
    await page.wait_for_url(base_url(app) + "/servers/web-1")
    await playwright_api.expect(page.locator("#server h1")).to_contain_text("web-1")
    facts = await page.locator("dl.facts").text_content()
    assert "Linux" in facts or "Debian" in facts
    for chart in ("chart-cpu", "chart-mem", "chart-disk", "chart-net"):
        await playwright_api.expect(page.locator(f"#{chart}")).to_have_attribute("data-points", re.compile(r"^([2-9]|\d\d+)$"))
        await playwright_api.expect(page.locator(f"#{chart} canvas")).to_have_count(1)
    # the CPU series' stroke colour (#2563eb) is on the canvas: uPlot drew the line, not just axes
    painted = await page.evaluate("""() => {
        const c = document.querySelector('#chart-cpu canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4)
          if (d[i + 3] > 200 && Math.abs(d[i] - 37) < 40 && Math.abs(d[i + 1] - 99) < 40 && d[i + 2] > 190) n++;
        return n;
    }""")
    assert painted > 0
    kill = page.locator(f'#processes button[data-kill="{burner.ns_pid}"]')
    await playwright_api.expect(kill).to_be_visible()
    await kill.click()
    modal = page.locator("dialog#modal")
    await playwright_api.expect(modal.locator("#modal-body")).to_contain_text(f"SIGTERM to process {burner.ns_pid}")
    await page.screenshot(path=str(ARTIFACTS / "server-confirm-kill.png"))
    await modal.locator("#modal-ok").click()
    await playwright_api.expect(modal.locator("#modal-title")).to_have_text("Done")
    await playwright_api.expect(modal.locator("#modal-output")).to_contain_text(f"sent SIGTERM to {burner.ns_pid}")
    assert "exit status 0" in await modal.locator("#modal-body").text_content()
    await modal.locator("#modal-ok").click()
    await asyncio.to_thread(burner.wait, 10)
    assert not burner.alive()
    audit_row = page.locator("#audit tbody tr").first
    await playwright_api.expect(audit_row).to_contain_text("kill")
    await playwright_api.expect(audit_row).to_contain_text(f"pid={burner.ns_pid}")
    await playwright_api.expect(audit_row.locator(".badge")).to_have_text("ok")
    (stored,) = await audit_log(app.central, "web-1", 10)
    assert stored["actor"] == "admin1" and stored["result"] == "ok" and stored["arguments"]["pid"] == burner.ns_pid
    await page.screenshot(path=str(ARTIFACTS / "server.png"), full_page=True)
    await page.click('#ranges button[data-range="24h"]')
    await playwright_api.expect(page.locator("#history-source")).to_contain_text("step 289s")
    assert page.errors == []  # no JavaScript errors, no CSP violations


async def test_a_viewer_sees_no_action_buttons(app, browser):
    await app.central.poller.wait_flushed()
    page = await new_page(browser, app)
    await log_in(page, app, "viewer1", "/servers/local")
    await playwright_api.expect(page.locator("#processes tbody tr:not(.empty)").first).to_be_visible()
    await playwright_api.expect(page.locator("#chart-cpu canvas")).to_have_count(1)
    buttons = "button[data-kill], button[data-service], button[data-container], button[data-ack], button[data-unsilence]"
    assert await page.locator(buttons).count() == 0
    await page.goto(base_url(app) + "/")
    await playwright_api.expect(row(page, "local")).to_be_visible()
    assert await page.locator("#add-toggle, form#add-server").count() == 0
    await page.goto(base_url(app) + "/alerts")
    assert await page.locator("form#silence-form").count() == 0
    assert await page.locator(buttons).count() == 0
    await page.screenshot(path=str(ARTIFACTS / "alerts-viewer.png"), full_page=True)
    # a kill sent by hand is refused for a viewer (the buttons are not the only guard)
    status = await page.evaluate("""async () => {
        const csrf = document.querySelector('meta[name="csrf-token"]').content;
        const r = await fetch('/api/v1/servers/local/actions', {method: 'POST',
          headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrf},
          body: JSON.stringify({action: 'kill', arguments: {pid: 2}})});
        return r.status;
    }""")
    assert status == 403
    assert page.errors == []


async def test_logout_and_a_wrong_password(app, browser):
    page = await new_page(browser, app)
    await page.goto(base_url(app) + "/alerts")
    await page.fill("input[name=username]", "operator1")
    await page.fill("input[name=password]", "wrong password")
    await page.click("form#login button[type=submit]")
    await playwright_api.expect(page.locator("#login-error")).to_have_text("wrong user name or password")
    await page.fill("input[name=password]", PASSWORD)
    await page.click("form#login button[type=submit]")
    await page.wait_for_url(base_url(app) + "/alerts")
    await page.click("#logout")
    await page.wait_for_url(re.compile(r"/login$"))
    await page.goto(base_url(app) + "/")
    assert "/login?next=" in page.url
    assert page.errors == []


async def test_an_hour_of_history_draws_full_charts_and_sparklines(app, browser):
    """Samples imported for the last hour (as bench/ does): the charts and the sparkline span it."""
    import math
    import time

    server = await app.central.storage.get_server("local")
    now = time.time()
    rows = []
    for i in range(360):  # one sample every 10 s
        ts = now - 3600 + i * 10
        wave = (math.sin(i / 25) + 1) / 2
        rows.append((server.id, ts, 20 + 60 * wave, 40 + 10 * wave, 1.0, 0.5 + wave, 0.4, 0.3, 55.0,
                     2e5 * wave, 5e4 + 1e5 * (1 - wave), 1e4, 2e4, 120, "[]"))
    await app.central.storage.import_samples(rows)
    page = await new_page(browser, app)
    await log_in(page, app, "operator1", "/servers/local")
    for chart in ("chart-cpu", "chart-mem", "chart-disk", "chart-net"):
        await playwright_api.expect(page.locator(f"#{chart}")).to_have_attribute("data-points", re.compile(r"^\d{3,}$"))
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "server-hour.png"), full_page=True)
    await page.goto(base_url(app) + "/")
    await playwright_api.expect(row(page, "local").locator("svg")).to_have_attribute("data-points", re.compile(r"^\d{2,}$"))
    await page.screenshot(path=str(ARTIFACTS / "overview-hour.png"))
    assert page.errors == []
