"""The HTML pages through the real app (aiohttp's test client): login redirects, roles, headers.

The browser tests (tests/test_pages_browser.py) drive the same pages in real Chromium.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime
import os
import re
import sys
import time
from pathlib import Path

import pytest
from yarl import URL

from central import servers
from central.cluster import owner
from central.config import ClusterConfig
from central.model import PollOutcome
from central.web import pages
from tests.apiclient import PASSWORD, api, start_api, wait_online  # noqa: F401  (fixture)
from tests.helpers import wait_for

PAGES = ("/", "/servers/local", "/alerts")
ACTION_MARKERS = ("data-kill", "data-service=", "data-container=", "data-ack=", "data-unsilence=",
                  'id="add-server"', 'id="silence-form"')


async def login(api, user: str) -> str:
    async with api.client.post("/api/v1/login", json={"username": user, "password": PASSWORD}) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["csrf_token"]


async def page(api, path: str, **kw):
    async with api.client.get(path, allow_redirects=False, **kw) as resp:
        return resp.status, await resp.text(), resp


@pytest.mark.parametrize("path", [*PAGES, "/servers/nosuch"])
async def test_pages_redirect_to_login_without_a_session(api, path):
    status, _, resp = await page(api, path + "?x=1")
    assert status == 302
    location = URL(resp.headers["Location"])
    assert location.path == "/login" and location.query["next"] == path + "?x=1"


async def test_login_page_renders_and_a_logged_in_user_goes_on(api):
    status, html, resp = await page(api, "/login?next=/alerts")
    assert status == 200 and resp.content_type == "text/html"
    assert 'action="/api/v1/login"' in html and 'name="next" value="/alerts"' in html
    await login(api, "viewer1")
    status, _, resp = await page(api, "/login?next=/alerts")
    assert status == 302 and resp.headers["Location"] == "/alerts"
    status, _, resp = await page(api, "/login?next=//evil.example/")
    assert status == 302 and resp.headers["Location"] == "/"


async def test_html_form_login_redirects_to_next(api):
    async with api.client.post("/api/v1/login", allow_redirects=False,
                               data={"username": "viewer1", "password": PASSWORD, "next": "/alerts"}) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/alerts"
    status, html, _ = await page(api, "/alerts")
    assert status == 200 and "Open alerts" in html


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
async def test_every_page_renders_for_every_role(api, role):
    await wait_online(api)
    csrf = await login(api, role + "1")
    for path in PAGES:
        status, html, resp = await page(api, path)
        assert status == 200, (path, html[:500])
        assert f'<meta name="csrf-token" content="{csrf}">' in html
        assert f'data-role="{role}"' in html
        assert "<script>" not in html and " style=" not in html  # the CSP allows neither
    status, html, _ = await page(api, "/")
    assert 'data-name="local"' in html and 'href="/servers/local"' in html
    status, html, _ = await page(api, "/servers/local")
    assert "Top processes" in html and 'id="chart-cpu"' in html
    assert "this central's own host" in html and "localhost:0" not in html
    assert "/static/vendor/uplot/uPlot.iife.min.js" in html


async def test_a_viewer_gets_no_action_buttons_or_forms(api):
    await wait_online(api)
    await login(api, "viewer1")
    for path in PAGES:
        _, html, _ = await page(api, path)
        for marker in ACTION_MARKERS:
            assert marker not in html, (path, marker)


async def test_operators_get_kill_buttons_and_only_admins_the_add_form(api):
    # A process the agent would kill, big enough to be in the top memory list whatever else
    # runs on the machine (a quiet machine's top lists may hold only this test, the agent
    # itself here, and kernel threads, none of which is offered).
    hog = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys, time; b = b'x' * (400 << 20); sys.stdout.write('ok'); sys.stdout.flush(); time.sleep(600)",
        stdout=asyncio.subprocess.PIPE)
    try:
        assert await hog.stdout.readexactly(2) == b"ok"
        await wait_online(api)
        await login(api, "operator1")
        html = ""

        async def offered():
            nonlocal html
            await servers.poll_now(api.central, "local")
            _, html, _ = await page(api, "/servers/local")
            return f'data-kill="{hog.pid}"' in html

        await wait_for(offered, timeout=30, what="a Kill button on the memory hog", interval=0.5)
        assert "data-start-time=" in html
    finally:
        hog.kill()
        await hog.wait()
    _, html, _ = await page(api, "/")
    assert 'id="add-server"' not in html
    _, html, _ = await page(api, "/alerts")
    assert 'id="silence-form"' in html
    await login(api, "admin1")
    _, html, _ = await page(api, "/")
    assert 'id="add-server"' in html


async def test_security_headers_on_pages_static_files_and_redirects(api):
    checked = []
    for path in ("/", "/login"):  # a redirect and the login form, before logging in
        checked.append(await page(api, path))
    await login(api, "viewer1")
    for path in ("/", "/static/common.js", "/static/vendor/uplot/uPlot.iife.min.js", "/api/v1/fleet"):
        checked.append(await page(api, path))
    assert [status for status, _, _ in checked] == [302, 200, 200, 200, 200, 200]
    for _, _, resp in checked:
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["Referrer-Policy"] == "no-referrer"
    _, _, resp = await page(api, "/static/common.js")
    assert resp.content_type in ("application/javascript", "text/javascript")


async def test_unknown_server_page_is_an_html_404(api):
    await login(api, "viewer1")
    status, html, resp = await page(api, "/servers/nosuch")
    assert status == 404 and resp.content_type == "text/html" and "nosuch" in html


async def test_pages_refuse_a_foreign_host_header(api):
    await login(api, "viewer1")
    status, _, _ = await page(api, "/", headers={"Host": "rebound.example"})
    assert status == 421


async def test_page_text_is_escaped(api):
    await api.central.storage.add_audit(actor="<b>x</b>", role="admin", server_id=None, server_name="local",
                                        action="kill", arguments={"pid": 5}, result="failed",
                                        output="<script>alert(1)</script>")
    await login(api, "viewer1")
    _, html, _ = await page(api, "/servers/local")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<b>x</b>" not in html


def test_static_files_referenced_by_templates_exist():
    templates = Path(pages.__file__).parent / "templates"
    refs = set()
    for t in templates.glob("*.html"):
        refs |= set(re.findall(r'(?:src|href)="/static/([^"]+)"', t.read_text()))
    assert refs, "templates reference static files"
    for ref in refs:
        assert (pages.STATIC_DIR / ref).is_file(), ref
    assert (pages.STATIC_DIR / "vendor/uplot/LICENSE").is_file()


def test_number_formatting_matches_the_pages_javascript():
    assert pages.fmt_pct(12.345) == "12.3%" and pages.fmt_pct(None) == "–"
    assert pages.fmt_bytes(512) == "512 B" and pages.fmt_bytes(1536) == "1.5 KiB"
    assert pages.fmt_bytes(3 * 1024 ** 3) == "3.0 GiB"
    assert pages.fmt_ago(100, now=159) == "59 s ago" and pages.fmt_ago(0, now=7200) == "2 h ago"
    assert pages.fmt_ago(0, now=180) == "3 min ago" and pages.fmt_ago(0, now=86400 * 3) == "3 d ago"
    assert pages.fmt_ago(None) == "never"


async def test_one_alert_has_a_page_and_an_endpoint(api):
    await wait_online(api)  # the alert engine has loaded its state: it leaves this row alone
    server = await api.central.storage.get_server("local")
    now = time.time()
    [alert_id] = await api.central.storage.save_alerts([{
        "rule": "disk_full", "server_id": server.id, "label": "/srv", "severity": "critical", "state": "firing",
        "summary": "local: / is <b>97%</b> full", "value": 97.0, "started_at": now - 60, "fired_at": now - 30,
        "last_evaluated": now}], [], [])
    await login(api, "operator1")
    status, html, _ = await page(api, f"/alerts/{alert_id}")
    assert status == 200 and "disk_full" in html and "&lt;b&gt;97%&lt;/b&gt;" in html
    assert f'data-ack="{alert_id}"' in html and "/alerts?rule=disk_full&amp;server=local#silence-form" in html
    status, body, _ = await api.get(f"/api/v1/alerts/{alert_id}", role="viewer")
    assert status == 200 and body["alert"]["id"] == alert_id and body["alert"]["notifications"] == []
    assert body["server"]["name"] == "local" and body["server"]["stale"] in (True, False)
    for missing in ("999999", "abc"):
        status, html, resp = await page(api, f"/alerts/{missing}")
        assert status == 404 and resp.content_type == "text/html"
    status, body, _ = await api.get("/api/v1/alerts/999999", role="viewer")
    assert status == 404 and body["error"] == "not_found"


async def test_the_headline_counts_warning_and_critical_and_info_apart(api):
    await wait_online(api)
    server = await api.central.storage.get_server("local")
    now = time.time()
    rows = [("cpu_high", "warning", "firing"), ("server_unreachable", "critical", "firing"),
            ("inventory_changed", "info", "firing"), ("inventory_changed", "info", "pending"),
            ("mem_high", "warning", "resolved")]
    await api.central.storage.save_alerts([
        {"rule": r, "server_id": server.id, "label": str(i), "severity": sev, "state": st, "summary": r,
         "started_at": now, "last_evaluated": now} for i, (r, sev, st) in enumerate(rows)], [], [])
    status, fleet, _ = await api.get("/api/v1/fleet")
    assert (fleet["alerts_firing"], fleet["alerts_info"], fleet["alerts_pending"]) == (2, 1, 1)
    await login(api, "viewer1")
    _, html, _ = await page(api, "/")
    assert 'data-stat="alerts_firing">2<' in html and 'data-stat="alerts_info"' in html


async def test_actions_page_favicon_and_banner_place(api):
    await api.central.storage.add_audit(actor="cli:x", role="admin", server_id=None, server_name="gone-1",
                                        action="kill", arguments={"pid": 5}, result="failed", output="no such process")
    await login(api, "viewer1")
    status, html, _ = await page(api, "/actions")
    assert status == 200 and "gone-1" in html and "no such process" in html and 'id="banners"' in html
    # served from memory: a browser that leaves mid-request leaves no open file behind
    assert '<link rel="icon" href="/favicon.ico" type="image/svg+xml">' in html
    async with api.client.get("/favicon.ico") as resp:  # no session needed
        assert resp.status == 200 and resp.content_type == "image/svg+xml" and b"<svg" in await resp.read()
    status, _, _ = await page(api, "/static/favicon.svg")
    assert status == 200


async def test_times_render_as_one_utc_format_that_the_page_localises(api):
    await api.central.storage.add_audit(actor="cli:x", role="admin", server_id=None, server_name="local",
                                        action="kill", arguments={"pid": 5}, result="failed", output="")
    ts = (await api.central.storage.audit_log("local", 1))[0]["ts"]
    await login(api, "viewer1")
    _, html, _ = await page(api, "/actions")
    utc = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    assert f'<time datetime="{utc:%Y-%m-%dT%H:%M:%SZ}" data-ts="{ts:.3f}">{utc:%Y-%m-%d %H:%M:%S}</time>' in html
    assert 'id="time-zone"' in html


async def test_services_and_processes_say_what_may_be_done(api):
    await wait_online(api)
    status, services, _ = await api.get("/api/v1/servers/local/services", role="viewer")
    assert status == 200 and services["server"] == "local"
    # this machine runs no systemd: nothing to list, and nothing was spawned to find that out
    if not os.path.isdir("/run/systemd/system"):
        assert services == {"server": "local", "live": True, "ts": services["ts"], "available": False,
                            "units": [], "error": None, "details_at": None}
    status, procs, _ = await api.get("/api/v1/servers/local/processes", role="viewer")
    assert status == 200 and procs["stale"] is False
    by_pid = {p["pid"]: p for p in procs["top_cpu"] + procs["top_memory"]}
    assert all(isinstance(p["kill"], bool) for p in by_pid.values())
    assert by_pid.get(1, {"kill": False})["kill"] is False
    assert by_pid.get(os.getpid(), {"kill": False})["kill"] is False  # the central itself
    await login(api, "operator1")
    _, html, _ = await page(api, "/servers/local")
    assert 'data-kill="1"' not in html and f'data-kill="{os.getpid()}"' not in html


async def test_a_server_that_stopped_answering_is_stale_everywhere(api):
    await wait_online(api)
    await api.central.poller.stop()  # nothing polls it back online under the test
    storage = api.central.storage
    server = await storage.get_server("local")
    failed = [PollOutcome(server.id, time.time(), 3.0, ok=False, reason="unreachable", error="no route to host")]
    for _ in range(api.central.config.poll.offline_after):
        await storage.write_polls(failed, api.central.config.poll.offline_after)
    status, shown, _ = await api.get("/api/v1/servers/local", role="viewer")
    assert shown["server"]["status"] == "offline" and shown["server"]["stale"] is True
    assert shown["server"]["seen_ago"] >= 0
    assert shown["server"]["status_text"] == "cannot reach the host over SSH"
    status, listed, _ = await api.get("/api/v1/servers?name=local", role="viewer")
    assert listed["servers"][0]["stale"] is True
    status, procs, _ = await api.get("/api/v1/servers/local/processes", role="viewer")
    assert procs["stale"] is True and not any(p["kill"] for p in procs["top_cpu"])
    status, services, _ = await api.get("/api/v1/servers/local/services", role="viewer")
    assert services["live"] is False and "local is offline" in services["error"]
    await login(api, "operator1")
    _, html, _ = await page(api, "/servers/local")
    assert re.search(r"Last seen \d+ s ago", html) and "actions are off" in html and "data-kill=" not in html
    _, html, _ = await page(api, "/")
    assert 'class="stale"' in html


async def test_the_overview_lists_the_centrals_sharing_the_database_with_their_share_and_lag(config):
    """Several centrals on one database: the page shows each live member, how many servers it
    polls, its poller's lag and its last heartbeat (what GET /api/v1/status says in `cluster`)."""
    cfg = dataclasses.replace(config, cluster=ClusterConfig(enabled=True, ttl=30.0, member="c-a"))
    api = await start_api(cfg)
    try:
        # a server shared by the members (each central polls its own host itself, outside the leases)
        shared = await api.central.storage.add_server("s1", "127.0.0.1", port=1)
        # a second member, alive (a heartbeat of its own), that the rendezvous gives no server
        other = next(n for n in (f"c-{i}" for i in range(100)) if n != "c-a" and owner(["c-a", n], shared.id) == "c-a")
        await api.central.storage.heartbeat(other, "10.0.0.2:9083", 30.0, lag=0.25)

        def both_seen() -> bool:
            members = {m["member"]: m for m in api.central.membership.members}
            return other in members and members.get("c-a", {}).get("servers") == 1
        await wait_for(both_seen, timeout=30, what="both members and c-a's lease at a heartbeat")
        await login(api, "viewer1")
        status, html, _ = await page(api, "/")
        assert status == 200
        rows = dict(re.findall(r'<tr data-member="([^"]+)"(.*?)</tr>', html, re.S))
        assert set(rows) == {"c-a", other}
        assert rows["c-a"].startswith(' class="self"') and "(this one)" in rows["c-a"]
        assert re.search(r'data-f="servers">1<', rows["c-a"]) and re.search(r'data-f="servers">0<', rows[other])
        assert 'data-f="share">100.0%<' in rows["c-a"] and 'data-f="share">0.0%<' in rows[other]
        assert 'data-f="lag">0.25 s<' in rows[other]
        assert re.search(r'data-f="lag">\d+\.\d\d s<', rows["c-a"])  # its own poller's lag, sent with its heartbeat
        assert "10.0.0.2:9083" in rows[other]
        status, body, _ = await api.get("/api/v1/status")
        assert {m["member"]: m["lag"] for m in body["cluster"]["members"]}[other] == 0.25
    finally:
        await api.client.close()


async def test_a_single_central_shows_no_centrals_table(api):
    await login(api, "viewer1")
    _, html, _ = await page(api, "/")
    assert 'id="servers"' in html and 'id="members"' not in html
