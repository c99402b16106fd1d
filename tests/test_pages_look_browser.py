"""How the pages look and read, in real Chromium against the real app and real test hosts:
every page at 1366x900 and 390x844, light and dark, fits its width (no sideways scroll),
keeps its text readable (WCAG contrast computed from the rendered colours), loads without a
console error or a failed request (the favicon included) and is written to artifacts/ as a
screenshot. Then the server page's charts (six of them, one shared cursor, legends that show
the latest values), a server that stops answering (greyed, "last seen", actions off and
refused), one time format in the browser's own time zone, and Acknowledge/Silence buttons
that keep their distance.
"""
from __future__ import annotations

import asyncio
import datetime
import math
import re
import time
import zoneinfo

import pytest

from central import servers
from central.actions import run_action
from tests.apiclient import PASSWORD, wait_online
from tests.helpers import wait_for
from tests.test_api_hosts import host_api  # noqa: F401  (fixture)
from tests.test_pages_browser import ARTIFACTS, CHROMIUM_ARGS, TIMEOUT_MS, base_url, browser  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.hosts]

playwright_api = pytest.importorskip("playwright.async_api")
expect = playwright_api.expect

VIEWPORTS = {"desktop": {"width": 1366, "height": 900}, "phone": {"width": 390, "height": 844}}

# Relative luminance and contrast ratio as WCAG 2.x defines them, over every element that
# carries text of its own, against the nearest ancestor with an opaque background.
CONTRAST_JS = """() => {
  const parse = (c) => { const m = c.match(/rgba?\\(([^)]+)\\)/); if (!m) return null;
    const p = m[1].split(/[ ,\\/]+/).filter(Boolean).map(Number); return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1}; };
  const lum = (c) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b); };
  const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
  const background = (node) => { for (let n = node; n; n = n.parentElement) {
      const c = parse(getComputedStyle(n).backgroundColor); if (c && c.a > 0.9) return c; }
    return {r: 255, g: 255, b: 255, a: 1}; };
  const out = [];
  for (const node of document.querySelectorAll("main *, header *, footer")) {
    const own = Array.from(node.childNodes).some((c) => c.nodeType === 3 && c.textContent.trim());
    const style = getComputedStyle(node);
    if (!own || style.visibility === "hidden" || node.closest("[hidden], dialog:not([open]), canvas, button:disabled")) continue;
    const r = node.getBoundingClientRect(); if (!r.width || !r.height) continue;
    const fg = parse(style.color); if (!fg) continue;
    // a translucent element (or colour) shows its background through: blend them first
    let alpha = fg.a;
    for (let n = node; n; n = n.parentElement) alpha *= Number(getComputedStyle(n).opacity);
    const bg = background(node), mix = (k) => fg[k] * alpha + bg[k] * (1 - alpha);
    out.push({text: node.textContent.trim().slice(0, 40), tag: node.tagName, cls: node.className && String(node.className),
              ratio: Math.round(ratio({r: mix("r"), g: mix("g"), b: mix("b")}, bg) * 100) / 100});
  }
  return out;
}"""

FITS_JS = "() => ({scroll: document.documentElement.scrollWidth, inner: window.innerWidth})"
COLOURS_JS = """() => ({bg: getComputedStyle(document.body).backgroundColor, text: getComputedStyle(document.body).color})"""


@pytest.fixture
async def fleet(host_api, test_host):
    """The app with web-1 (answering, one real kill in its audit) and db-1 (stopped answering),
    an info alert next to the warning one db-1 raises, and the local server."""
    api = host_api
    web, db = await asyncio.to_thread(test_host.many, 2)
    for name, host, tags in (("web-1", web, ("web", "prod")), ("db-1", db, ("db",))):
        await servers.store_agent_secret(api.central, host.agent_secret, host=host.address)
        await servers.add_server(api.central, name, host.address, fingerprint=host.fingerprint, tags=tags)
    for name in ("web-1", "db-1", "local"):
        await wait_online(api, name, batches=200)
    victim = await asyncio.to_thread(web.start_process, ["sleep", "1000"])
    await wait_for(lambda: _has_process(api, "web-1", victim.ns_pid), 30, "the sleeper in web-1's process list")
    await run_action(api.central, "cli:tester", "admin", "web-1", "kill", {"pid": victim.ns_pid})
    # an hour of history behind local's live samples (as bench/ imports it), for full charts
    local = await api.central.storage.get_server("local")
    start = time.time() - 3600
    await api.central.storage.import_samples([
        (local.id, start + i * 10, 20 + 60 * w, 40 + 10 * w, 1.0, 0.5 + w, 0.4, 0.3, 55.0, 2e5 * w,
         5e4 + 1e5 * (1 - w), 1e4 * w, 2e4 * (1 - w), 120, "[]")
        for i in range(350) for w in [(math.sin(i / 25) + 1) / 2]])
    # a long summary: what wraps
    server = await api.central.storage.get_server("web-1")
    now = time.time()
    await api.central.storage.save_alerts([{
        "rule": "inventory_changed", "server_id": server.id, "label": "network_change (test)", "severity": "info",
        "state": "firing", "summary": "web-1: inventory changed (network change): interfaces: 1 -> 2 entries; "
        "interfaces.eth1.addresses: 10.0.0.5/24 -> 10.0.0.6/24", "value": None, "started_at": now - 90,
        "fired_at": now - 90, "last_evaluated": now, "details": {}}], [], [])
    await asyncio.to_thread(db.stop_sshd)
    await wait_for(lambda: _status(api, "db-1", "offline"), 60, "db-1 offline")
    await wait_for(lambda: _firing(api, "db-1"), 60, "db-1's alert firing")
    return api, web, db


async def _has_process(api, name, pid):
    doc = await api.central.storage.latest_document((await api.central.storage.get_server(name)).id)
    return doc and any(p["pid"] == pid for p in doc[1]["processes"]["top_memory"] + doc[1]["processes"]["top_cpu"])


async def _status(api, name, status):
    return (await api.central.storage.get_server(name)).status == status


async def _firing(api, name):
    alerts = await api.central.storage.list_alerts(firing_only=True)
    return [a for a in alerts if a["server"] == name]


async def new_context(browser, viewport="desktop", scheme="light", timezone="Europe/Berlin"):
    context = await browser.new_context(viewport=VIEWPORTS[viewport], color_scheme=scheme, timezone_id=timezone)
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.problems = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda exc: page.problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: page.problems.append(f"console: {msg.text}") if msg.type == "error" else None)
    page.on("response", lambda r: page.problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    return context, page


async def log_in(page, api, user="operator1"):
    await page.goto(base_url(api) + "/login")
    await page.fill("input[name=username]", user)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("form#login button[type=submit]")
    await page.wait_for_url(base_url(api) + "/")


async def ready(page, path):
    """Wait until the page has drawn what it fetches after loading."""
    if path == "/":
        for name in ("web-1", "local"):
            await expect(page.locator(f'#servers tr[data-name="{name}"] svg')).to_have_attribute(
                "data-points", re.compile(r"^([2-9]|\d\d+)$"))
    elif path.startswith("/servers/"):
        for chart in ("chart-cpu", "chart-net"):
            await expect(page.locator(f"#{chart} canvas")).to_have_count(1)
        await expect(page.locator("#services-info")).not_to_have_text("")


async def check_page(page, api, path, name):
    """Load path, and check that it fits, reads well and loaded cleanly; screenshot it."""
    page.problems.clear()
    await page.goto(base_url(api) + path)
    await ready(page, path)
    size = await page.evaluate(FITS_JS)
    assert size["scroll"] <= size["inner"], (name, size)
    header = await page.evaluate("() => document.querySelector('header.top').getBoundingClientRect().height")
    assert header <= 48, (name, "the header wraps", header)
    # and no button hides in a table that scrolls sideways
    cut = await page.evaluate("""() => Array.from(document.querySelectorAll('main button')).filter((b) => {
        const r = b.getBoundingClientRect(); return r.width && (r.left < 0 || r.right > innerWidth); })
        .map((b) => b.textContent + ' ' + Math.round(b.getBoundingClientRect().right))""")
    assert cut == [], (name, cut)
    texts = await page.evaluate(CONTRAST_JS)
    assert len(texts) > 5, (name, texts)
    low = [e for e in texts if e["ratio"] < 4.5]  # WCAG AA for normal text
    assert low == [], (name, low[:8])
    await screenshot(page, name)
    assert page.problems == [], (name, page.problems)


async def screenshot(page, name):
    """The whole page, and a tall page also in screen-high parts (name-1.png, ...) to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    width, height = await page.evaluate("() => [innerWidth, document.documentElement.scrollHeight]")
    step = page.viewport_size["height"]
    if height > step * 1.5:
        for i, top in enumerate(range(0, height, step), 1):
            await page.screenshot(path=str(ARTIFACTS / f"{name}-{i}.png"), full_page=True,
                                  clip={"x": 0, "y": top, "width": width, "height": min(step, height - top)})


@pytest.mark.parametrize("viewport", ["desktop", "phone"])
@pytest.mark.parametrize("scheme", ["light", "dark"])
async def test_every_page_fits_reads_well_and_loads_cleanly(fleet, browser, viewport, scheme):
    api, web, db = fleet
    alert_id = (await _firing(api, "db-1"))[0]["id"]
    context, page = await new_context(browser, viewport, scheme)
    try:
        await page.goto(base_url(api) + "/login")
        await check_page(page, api, "/login", f"login-{viewport}-{scheme}")
        colours = await page.evaluate(COLOURS_JS)
        dark_bg = colours["bg"] in ("rgb(13, 17, 23)",)
        assert dark_bg is (scheme == "dark"), colours  # the scheme follows prefers-color-scheme
        await log_in(page, api)
        for path, name in (("/", "overview"), ("/servers/web-1", "server"), ("/servers/db-1", "server-offline"),
                           ("/servers/local", "server-local"), ("/alerts", "alerts"), (f"/alerts/{alert_id}", "alert"),
                           ("/actions", "actions")):
            await check_page(page, api, path, f"{name}-{viewport}-{scheme}")
    finally:
        await context.close()


async def test_dark_and_light_differ_and_favicon_is_served(fleet, browser):
    api, _, _ = fleet
    seen = {}
    for scheme in ("light", "dark"):
        context, page = await new_context(browser, "desktop", scheme)
        try:
            await log_in(page, api)
            seen[scheme] = await page.evaluate(COLOURS_JS)
            icon = await page.evaluate("""async () => {
                const r = await fetch('/favicon.ico'); const link = document.querySelector('link[rel=icon]');
                const s = await fetch(link.href);
                return [r.status, r.headers.get('content-type'), s.status]; }""")
            assert icon == [200, "image/svg+xml", 200]
        finally:
            await context.close()
    assert seen["light"]["bg"] != seen["dark"]["bg"] and seen["light"]["text"] != seen["dark"]["text"]


async def test_server_page_charts_share_a_cursor_and_legends_show_the_latest_values(fleet, browser):
    api, _, _ = fleet
    context, page = await new_context(browser)
    try:
        await log_in(page, api)
        await page.goto(base_url(api) + "/servers/web-1")
        charts = ("chart-cpu", "chart-mem", "chart-load", "chart-disk", "chart-diskio", "chart-net")
        for chart in charts:
            await expect(page.locator(f"#{chart}")).to_have_attribute("data-points", re.compile(r"^([2-9]|\d\d+)$"))
        values = page.locator("#chart-load .u-legend .u-series:not(:first-child) .u-value")
        await expect(values.first).to_have_text(re.compile(r"^\d+\.\d\d$"))  # latest, not "–", before any hover
        for chart in charts:
            legend = await page.locator(f"#{chart} .u-legend .u-series .u-value").all_text_contents()
            assert legend and "\u2013" not in legend[1:], (chart, legend)
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", legend[0]), legend  # the time, one format
        # hovering one chart moves the cursor of every other one to the same time
        box = await page.locator("#chart-cpu .u-over").bounding_box()
        await page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] / 2)
        cpu_time = await page.locator("#chart-cpu .u-legend .u-series").first.locator(".u-value").text_content()
        for chart in charts[1:]:
            await expect(page.locator(f"#{chart} .u-legend .u-series").first.locator(".u-value")).to_have_text(cpu_time)
            left = await page.locator(f"#{chart} .u-cursor-x").evaluate("n => n.style.transform || n.style.left")
            assert left and "-10" not in left, (chart, left)
        await page.mouse.move(5, 5)  # off the charts: the newest point again
        latest = await page.locator("#chart-cpu .u-legend .u-series").first.locator(".u-value").text_content()
        assert latest != cpu_time
        await page.screenshot(path=str(ARTIFACTS / "server-charts.png"))
    finally:
        await context.close()


async def test_an_offline_server_is_greyed_with_actions_off_and_refused(fleet, browser):
    api, web, db = fleet
    context, page = await new_context(browser)
    try:
        await log_in(page, api)
        row = page.locator('#servers tr[data-name="db-1"]')
        await expect(row).to_have_class(re.compile(r"\bstale\b"))
        await expect(row.locator(".reason")).not_to_be_empty()
        await expect(row.locator('[data-f="last_seen"]')).to_have_text(re.compile(r"^\d+ (s|min) ago$"))
        # greyed: its last figures wear the muted colour, not green or red
        muted, cpu = await row.evaluate("""r => [getComputedStyle(document.documentElement).getPropertyValue('--muted').trim(),
                                                 getComputedStyle(r.querySelector('[data-f=cpu]')).color]""")
        live = await page.locator('#servers tr[data-name="web-1"] [data-f=cpu]').evaluate("n => getComputedStyle(n).color")
        as_rgb = await page.evaluate("""(c) => { const d = document.createElement('div'); d.style.color = c;
            document.body.append(d); const rgb = getComputedStyle(d).color; d.remove(); return rgb; }""", muted)
        assert cpu != live and cpu == as_rgb, (cpu, live, as_rgb)
        # the hostname is on the overview beside the address
        assert await page.locator('#servers tr[data-name="web-1"] .hostname').text_content() == web.name
        await page.goto(base_url(api) + "/servers/db-1")
        await expect(page.locator("#stale-note")).to_contain_text(re.compile(r"Last seen \d+ (s|min) ago"))
        await expect(page.locator("#stale-note")).to_contain_text("actions are off")
        await expect(page.locator("#processes")).to_have_class(re.compile("stale-list"))
        await expect(page.locator("#proc-info")).to_contain_text("the last list it sent")
        assert await page.locator("#processes button[data-kill]").count() == 0
        await expect(page.locator("#processes tbody tr:not(.empty)").first).to_be_visible()
        await screenshot(page, "server-stale")
        # and the API refuses an action on it at once, saying why (the buttons are not the only guard)
        doc = await api.central.storage.latest_document((await api.central.storage.get_server("db-1")).id)
        pid = doc[1]["processes"]["top_memory"][0]["pid"]
        status, body, _ = await api.request("POST", "/api/v1/servers/db-1/actions", role="operator",
                                            json={"action": "kill", "arguments": {"pid": pid}})
        assert status == 409 and "db-1 is offline" in body["detail"], body
        # it answers again: no longer stale, its Kill buttons are back (but never on pid 1)
        sleeper = await asyncio.to_thread(db.start_process, ["sleep", "1000"])
        await asyncio.to_thread(db.start_sshd)
        await expect(page.locator("#stale-note")).to_be_hidden()
        await expect(page.locator(f'#processes button[data-kill="{sleeper.ns_pid}"]')).to_be_visible()
        assert await page.locator('#processes button[data-kill="1"]').count() == 0
        await expect(page.locator("#processes")).not_to_have_class(re.compile("stale-list"))
    finally:
        await context.close()
    # all along, test hosts came and went on this machine (veths on a bridge of their own, in
    # and out of network namespaces): none of it was an inventory change of the central's own
    # host, nor of the hosts themselves
    for name in ("local", "web-1", "db-1"):
        history = await api.central.storage.inventory_history((await api.central.storage.get_server(name)).id)
        assert [h["change_type"] for h in history] == ["initial"], (name, history)


async def test_times_are_one_format_in_the_browsers_time_zone(fleet, browser):
    api, _, _ = fleet
    context, page = await new_context(browser, timezone="Asia/Kathmandu")  # UTC+05:45: no hour-only offset
    try:
        await log_in(page, api)
        # (ICU spells it the old way)
        await expect(page.locator("#time-zone")).to_have_text(re.compile(r"^times in Asia/Kath?mandu \(UTC\+05:45\)$"))
        await page.goto(base_url(api) + "/actions")
        cell = page.locator("#audit tbody tr").first.locator("time")
        ts = float(await cell.get_attribute("data-ts"))
        shown = datetime.datetime.fromtimestamp(ts, zoneinfo.ZoneInfo("Asia/Kathmandu")).strftime("%Y-%m-%d %H:%M:%S")
        await expect(cell).to_have_text(shown)
        await page.goto(base_url(api) + "/alerts")
        for text in await page.locator("main time").all_text_contents():
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", text), text
        # the buttons of an alert keep their distance (they do not touch)
        buttons = page.locator("#open-alerts tr").filter(has=page.locator("button[data-ack]")).first.locator("button")
        first, second = [await b.bounding_box() for b in await buttons.all()][:2]
        gap = second["x"] - (first["x"] + first["width"]) if abs(first["y"] - second["y"]) < 2 else \
            second["y"] - (first["y"] + first["height"])
        assert gap >= 4, (first, second)
    finally:
        await context.close()
