"""The page's half of the trust rules in real Chromium (Debian's /usr/bin/chromium via Playwright).

central.safeNext() in static/common.js must agree with safe_redirect() on every vector of
tests/test_security.py, and a login from /login?next=<trick> must land on this site. The
page's JavaScript renders a hostile host document (tests/test_pages_hosttext.py) inertly:
central.shown() agrees with pages.shown(), wrong types are a dash, nothing throws.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from urllib.parse import quote

import pytest

from central.model import PollOutcome
from central.web.pages import shown
from tests.apiclient import PASSWORD, api  # noqa: F401
from tests.test_pages_hosttext import BIDI, HUGE, hostile_document, store_hostile_server
from tests.test_security import REDIRECTS

pytestmark = [pytest.mark.browser]

playwright_api = pytest.importorskip("playwright.async_api")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture
async def page(api):
    """A page whose requests off the test server are recorded in page.foreign and aborted (no traffic leaves)."""
    if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
        pytest.skip("BROWSER TESTS SKIPPED: no /usr/bin/chromium (apt-get install chromium)")
    base = base_url(api)

    async def only_the_site(route):
        if route.request.url == base or route.request.url.startswith(base + "/"):
            await route.continue_()
        else:
            pg.foreign.append(route.request.url)
            await route.abort()

    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = await browser.new_context()
            await context.route("**/*", only_the_site)
            pg = await context.new_page()
            pg.foreign = []
            pg.set_default_timeout(20_000)
            yield pg
        finally:
            await browser.close()


def base_url(api) -> str:
    return str(api.client.make_url("")).rstrip("/")


async def test_the_page_applies_the_same_redirect_rule(api, page):
    await page.goto(base_url(api) + "/login")
    got = await page.evaluate("(targets) => targets.map((t) => central.safeNext(t))", [t for t, _ in REDIRECTS])
    assert got == [expected for _, expected in REDIRECTS]
    assert await page.evaluate("() => [central.safeNext(null), central.safeNext(undefined), central.safeNext(7)]") == ["/"] * 3


@pytest.mark.parametrize("target", ["/\\evil.example", "/\t/evil.example", "//evil.example", "/\\/evil.example"])
async def test_logging_in_from_a_trick_next_stays_on_the_site(api, page, target):
    """The issue's /login?next=/%5Cevil.example: the page's JS once followed it off the site."""
    await page.goto(base_url(api) + "/login?next=" + quote(target, safe="/"))
    await page.fill("input[name=username]", "viewer1")
    await page.fill("input[name=password]", PASSWORD)
    await page.click("form#login button[type=submit]")
    await page.wait_for_url(re.compile(re.escape(base_url(api)) + "/$"))
    assert page.foreign == []


async def test_the_page_follows_a_local_next(api, page):
    await page.goto(base_url(api) + "/login?next=/alerts")
    await page.fill("input[name=username]", "viewer1")
    await page.fill("input[name=password]", PASSWORD)
    await page.click("form#login button[type=submit]")
    await page.wait_for_url(base_url(api) + "/alerts")


SHOWN = ["plain", "web" + BIDI, "line 1\nline 2\x1b[2J\t\x00\x7f\x9b", "\ufeff\u061c\u2028\u2060x", HUGE, "caf\u00e9 \u4e2d"]


async def test_the_page_shows_host_text_like_the_server_does(api, page):
    await page.goto(base_url(api) + "/login")
    assert await page.evaluate("(xs) => xs.map((x) => central.shown(x))", SHOWN) == [shown(x) for x in SHOWN]
    dashes = await page.evaluate("""() => ["NaN%", null, undefined, [], {}, true, NaN, Infinity, "12"].map(
        (v) => [central.fmtPct(v), central.fmtNum(v), central.fmtBytes(v), central.fmtTime(v), central.fmtAgo(v, 0),
                central.level(v)])""")
    assert dashes == [["\u2013"] * 4 + ["never", ""]] * 9


async def log_in(page, api, path: str) -> None:
    await page.goto(base_url(api) + "/login?next=" + path)
    await page.fill("input[name=username]", "operator1")
    await page.fill("input[name=password]", PASSWORD)
    await page.click("form#login button[type=submit]")
    await page.wait_for_url(base_url(api) + path)


async def test_the_server_page_script_renders_a_hostile_document(api, page):
    """The page's own refresh (GET .../processes, rendered by server.js) copes with the document."""
    server = await store_hostile_server(api)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await log_in(page, api, "/servers/web1")
    # empty the server-rendered table: only the script's refresh can fill it again
    await page.evaluate("() => document.querySelector('#processes tbody').replaceChildren()")
    first = page.locator("#processes tbody tr").first
    await playwright_api.expect(first).to_have_attribute("data-pid", "4242", timeout=30_000)
    cells = await first.locator("td").all_text_contents()
    assert cells[1] == "bad" + shown(BIDI) and cells[3] == "\u2013" and cells[4] == "\u2013"
    assert cells[5] == shown(HUGE) and len(cells[5]) == 1000
    text = await page.locator("body").text_content()
    assert not any(ch in text for ch in "\u202e\u200b\u2066")
    assert errors == []
    # the kill confirmation quotes the process name inertly too. The server never answers, so
    # once its figures are stale the page offers no Kill: make its document current again
    await api.central.poller.stop()
    await api.central.storage.update_server("web1", interval_s=3600.0)  # an hour before it is stale
    await api.central.storage.write_polls([PollOutcome(server.id, time.time(), 0.01, True,
                                                       doc_text=json.dumps(hostile_document()))], offline_after=3)
    await first.locator("button[data-kill]").click(timeout=30_000)
    body = await page.locator("#modal-body").text_content()
    assert "\u202e" not in body and shown("bad" + BIDI) in body
