"""The page's half of the redirect rule in real Chromium (Debian's /usr/bin/chromium via Playwright).

central.safeNext() in static/common.js must agree with safe_redirect() on every vector of
tests/test_security.py, and a login from /login?next=<trick> must land on this site.
"""
from __future__ import annotations

import os
import re
import shutil
from urllib.parse import quote

import pytest

from tests.apiclient import PASSWORD, api  # noqa: F401
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
