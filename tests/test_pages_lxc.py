"""What the page shows of a real Debian LXC overlay clone (tests/lxc.py) with systemd as PID 1:
its overlay root's disk usage (not "–"), its own eth0 in the inventory, and its units with the
actions its host policy allows, in the API and in real Chromium, down to a restart clicked on
the page.
"""
from __future__ import annotations

import asyncio

import pytest

from central import servers
from tests.agentutil import wait_for as wait_for_sync
from tests.apiclient import PASSWORD, start_api, wait_online
from tests.lxc import ECHO_UNIT, install_agent
from tests.test_actions_lxc import main_pid
from tests.test_pages_browser import ARTIFACTS, base_url, browser  # noqa: F401  (fixture)
from tests.test_pages_look_browser import new_context, screenshot

pytestmark = [pytest.mark.lxc, pytest.mark.browser]

POLICY = {"service_patterns": ["central-test-*", "cron.service"], "watched_units": [ECHO_UNIT]}


@pytest.fixture
async def lxc_api(config, client_key, lxc_container):
    import dataclasses

    container = lxc_container("page-web")
    assert container.wait_system_running() in ("running", "degraded")
    secret = await asyncio.to_thread(install_agent, container, POLICY)
    cfg = dataclasses.replace(config, ssh=dataclasses.replace(config.ssh, key_path=str(client_key.path)))
    api = await start_api(cfg)
    try:
        # root: the container has the central's key in root's authorized_keys (no deploy ran)
        added = await servers.add_server(api.central, container.name, container.address, user="root",
                                         fingerprint=container.fingerprint, agent_secret=secret)
        assert added["agent"]["ok"], added
        await wait_online(api, container.name, batches=200)
        yield api, container
    finally:
        await api.client.close()


async def test_an_overlay_clone_shows_its_disk_its_network_and_its_units(lxc_api, browser):
    api, c = lxc_api
    # the clone's root really is an overlay (lxc-copy -s -B overlay)
    mounts = c.attach(["cat", "/proc/self/mounts"]).stdout
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "lxc-overlay-clone.mounts").write_text(mounts)  # tests/data/mounts/ holds one such capture
    root = [line.split() for line in mounts.splitlines() if line.split()[1] == "/"][-1]
    assert root[2] == "overlay", root
    # and its usage is reported: the Disk figure and the chart have a value, not "–"
    status, listed, _ = await api.get(f"/api/v1/servers?name={c.name}", role="viewer")
    sample = listed["servers"][0]["sample"]
    assert sample["disk"] is not None and 0 < sample["disk"] < 100, sample
    status, detail, _ = await api.get(f"/api/v1/servers/{c.name}", role="viewer")
    [fs] = [f for f in detail["latest"]["document"]["filesystems"] if f["mountpoint"] == "/"]
    df = c.attach(["df", "--output=size,used,avail", "-B1", "/"]).stdout.split()[3:]
    assert fs["fstype"] == "overlay" and fs["total"] == int(df[0])
    # its own eth0 stays in its inventory (it is a veth, but the container's only link)
    names = [i["name"] for i in detail["inventory"]["doc"]["interfaces"]]
    assert names == ["eth0"], names

    # its units, failed first, then watched, each with the verbs the host's policy allows
    status, services, _ = await api.get(f"/api/v1/servers/{c.name}/services", role="viewer")
    assert status == 200 and services["live"] is True and services["available"] is True, services
    units = {u["unit"]: u for u in services["units"]}
    first_ok = next(u for u in services["units"] if u["active"] != "failed")  # failed units come first
    assert first_ok["unit"] == ECHO_UNIT and units[ECHO_UNIT]["watched"] is True
    assert units[ECHO_UNIT]["active"] == "active" and units[ECHO_UNIT]["sub"] == "running"
    assert units[ECHO_UNIT]["actions"] == ["start", "stop", "restart"]
    assert units["cron.service"]["actions"] == ["start", "stop", "restart"]
    assert units["ssh.service"]["actions"] == []                  # protected
    assert units["systemd-journald.service"]["actions"] == []     # protected
    assert all(u.endswith((".service", ".timer")) for u in units)
    assert len(units) > 10                                        # the host's units, not only failed/watched

    # the page: the units with their buttons and a filter, at both sizes
    for viewport, scheme in (("desktop", "light"), ("phone", "dark")):
        context, page = await logged_in(browser, api, viewport, scheme)
        try:
            await page.goto(base_url(api) + f"/servers/{c.name}")
            rows = page.locator("#services tbody tr[data-unit]")
            await playwright_expect(rows.first).to_have_attribute("data-unit", ECHO_UNIT)
            # the document's watched units show first; the host's whole list follows
            await playwright_expect(rows).to_have_count(len(units))
            # shown at first: watched, failed and running units; all of them on request
            main = [u for u in units.values() if u["watched"] or u["active"] == "failed" or u["sub"] == "running"]
            visible = page.locator("#services tbody tr[data-unit]:visible")
            await playwright_expect(visible).to_have_count(len(main))
            assert len(main) < len(units)
            await playwright_expect(page.locator("#svc-shown")).to_have_text(f"{len(main)} of {len(units)} units")
            echo = page.locator(f'#services tr[data-unit="{ECHO_UNIT}"]')
            assert await echo.locator("button").all_text_contents() == ["Restart", "Stop"]
            assert await page.locator('#services tr[data-unit="ssh.service"] button').count() == 0
            await page.fill("#svc-filter", "echo")
            await playwright_expect(page.locator("#services tbody tr[data-unit]:visible")).to_have_count(1)
            await page.fill("#svc-filter", "")
            await page.select_option("#svc-state", "watched")
            await playwright_expect(page.locator("#services tbody tr[data-unit]:visible")).to_have_count(1)
            await page.select_option("#svc-state", "all")
            await playwright_expect(visible).to_have_count(len(units))
            await page.select_option("#svc-state", "")
            size = await page.evaluate("() => [document.documentElement.scrollWidth, innerWidth]")
            assert size[0] <= size[1], size
            cut = await page.evaluate("""() => Array.from(document.querySelectorAll('main button')).filter((b) => {
                const r = b.getBoundingClientRect(); return r.width && (r.left < 0 || r.right > innerWidth); }).length""")
            assert cut == 0
            await screenshot(page, f"server-lxc-{viewport}-{scheme}")
            assert page.problems == [], page.problems
        finally:
            await context.close()

    # a restart clicked on the page reaches systemd, and the list shows the unit running again
    before = main_pid(c)
    context, page = await logged_in(browser, api)
    try:
        await page.goto(base_url(api) + f"/servers/{c.name}")
        await page.locator(f'#services tr[data-unit="{ECHO_UNIT}"] button[data-verb="restart"]').click()
        modal = page.locator("dialog#modal")
        await playwright_expect(modal.locator("#modal-body")).to_contain_text(f"Restart {ECHO_UNIT} on {c.name}?")
        await modal.locator("#modal-ok").click()
        await playwright_expect(modal.locator("#modal-title")).to_have_text("Done")
        await modal.locator("#modal-ok").click()
        await playwright_expect(page.locator("#audit tbody tr").first).to_contain_text(f"unit={ECHO_UNIT}")
        after = await asyncio.to_thread(wait_for_sync, lambda: main_pid(c) not in (0, before) and main_pid(c), 20)
        assert after != before
        await playwright_expect(page.locator(f'#services tr[data-unit="{ECHO_UNIT}"] .badge')).to_have_text("active")
        assert page.problems == [], page.problems
    finally:
        await context.close()


async def logged_in(browser, api, viewport="desktop", scheme="light"):
    context, page = await new_context(browser, viewport, scheme)
    await page.goto(base_url(api) + "/login")
    await page.fill("input[name=username]", "operator1")
    await page.fill("input[name=password]", PASSWORD)
    await page.click("form#login button[type=submit]")
    await page.wait_for_url(base_url(api) + "/")
    return context, page


playwright_expect = pytest.importorskip("playwright.async_api").expect
