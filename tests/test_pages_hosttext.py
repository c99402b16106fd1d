"""The pages render whatever a host stored: wrong types are a dash (never a 500), bidi and
zero-width characters are shown as visible escapes, and a giant command line is cut.

Rendering is robust on its own, whatever the parser lets through into the store (the document
is written straight into the real SQLite database here). The browser half (the page's own
JavaScript rendering the same document from the API) is tests/test_security_browser.py.
"""
from __future__ import annotations

import json
import time

import pytest

from central.model import PollOutcome
from central.sample import extract_sample
from central.web.pages import SHOWN_LIMIT, fmt_ago, fmt_bytes, fmt_num, fmt_pct, fmt_time, level, shown
from tests.apiclient import PASSWORD, api  # noqa: F401  (fixture)

BIDI = "evil\u202etxt.exe\u200b\u2066"
HUGE = "python3 -c " + "A" * 200_000
WRONG = ["NaN%", None, [], {}, True, float("nan"), float("inf"), "12"]


def hostile_document() -> dict:
    return {
        "agent": {"version": "1.0" + BIDI, "sha256": "0" * 64, "python": "3.11"},
        "timestamp": time.time(), "hostname": "web" + BIDI, "uptime": "forever",
        "cpu": {"percent": "NaN%", "count": "two"},
        "memory": {"total": "lots", "available": [], "percent": {}, "swap_percent": "x"},
        "load": {"load1": "high", "load5": None, "load15": [1]},
        "filesystems": [{"mountpoint": "/srv" + BIDI, "percent": "97%", "total": "big", "used": None},
                        "not a filesystem"],
        "processes": {"count": "many", "top_cpu": [
            {"pid": 4242, "name": "bad" + BIDI, "cmdline": HUGE, "cpu_percent": "NaN%", "rss": "lots",
             "user": "x" + BIDI, "start_time": "yesterday"},
            {"pid": "4243", "name": ["list"], "cmdline": {"a": 1}, "cpu_percent": None, "rss": -1},
            "not a process",
        ], "top_memory": [{"pid": 1, "name": "init", "cpu_percent": [], "rss": "1 GB"}]},
        "systemd": {"available": True, "failed": ["bad" + BIDI + ".service", 7], "watched": {"x.service": ["active"]}},
        "docker": {"available": True, "containers": [{"name": "c" + BIDI, "image": None, "state": 5}]},
        "network": {"rx_rate": "fast", "tx_rate": None, "interfaces": "eth0"},
        "errors": {"units": "failed" + BIDI},
    }


@pytest.mark.parametrize("value", WRONG)
def test_formatters_show_a_dash_for_anything_but_a_number(value):
    assert fmt_pct(value) == fmt_bytes(value) == fmt_num(value) == fmt_time(value) == "–"
    assert fmt_ago(value) == "never" and level(value) == ""


def test_formatters_still_format_numbers():
    assert (fmt_pct(12.34), fmt_bytes(2048), fmt_num(1), level(95)) == ("12.3%", "2.0 KiB", "1.00", "crit")
    assert fmt_time(1e18) == "–"  # a clock a host made up


def test_shown_escapes_invisible_characters_and_cuts_long_text():
    assert shown("web" + BIDI) == "webevil\\u202etxt.exe\\u200b\\u2066"
    assert shown("line 1\nline 2\x1b[2J") == "line 1\nline 2\\x1b[2J"  # line breaks kept, escapes shown
    cut = shown(HUGE)
    assert len(cut) == SHOWN_LIMIT and cut.endswith("\u2026")
    assert shown(7) == 7 and shown("plain") == "plain"


async def _login(api):
    async with api.client.post("/api/v1/login", json={"username": "viewer1", "password": PASSWORD}) as resp:
        assert resp.status == 200


async def store_hostile_server(api, name: str = "web1"):
    """A server (unreachable, so the poller never overwrites it) whose latest document is hostile."""
    storage = api.central.storage
    server = await storage.add_server(name, "127.0.0.1", port=1, host_key_fingerprint="SHA256:" + "a" * 43)
    doc = hostile_document()
    await storage.write_polls([PollOutcome(server.id, time.time(), 0.01, True, doc_text=json.dumps(doc),
                                           sample=extract_sample(doc), agent_version=doc["agent"]["version"],
                                           hostname=doc["hostname"])], offline_after=3)
    return server


async def test_the_server_page_renders_a_hostile_document(api):
    await store_hostile_server(api)
    await _login(api)
    async with api.client.get("/servers/web1") as resp:
        html = await resp.text()
        assert resp.status == 200, html[:2000]
    for ch in ("\u202e", "\u200b", "\u2066"):
        assert ch not in html
    assert "webevil\\u202etxt.exe\\u200b\\u2066" in html
    assert "A" * (SHOWN_LIMIT + 1) not in html and "A" * (SHOWN_LIMIT - 20) in html
    assert "NaN%" not in html  # the cpu cell shows a dash, not what the host sent
    assert len(html) < 100_000


async def test_the_overview_and_alerts_pages_render_with_a_hostile_server(api):
    await store_hostile_server(api)
    await _login(api)
    for path in ("/", "/alerts"):
        async with api.client.get(path) as resp:
            html = await resp.text()
            assert resp.status == 200, (path, html[:2000])
            assert "\u202e" not in html
