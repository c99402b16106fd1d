"""Every unit of a real Debian LXC container with systemd as PID 1 (tests/lxc.py), through the
agent installed in it and the central: services and timers with their state, since when, main
PID and their cgroup's memory, a failed unit first, the details sampled at the agent's slower
cadence (one `systemctl show` a minute, not one per request).
"""
from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from central import servers
from tests.apiclient import start_api, wait_online
from tests.lxc import ECHO_UNIT, install_agent

pytestmark = pytest.mark.lxc

POLICY = {"service_patterns": ["central-test-*"], "watched_units": [ECHO_UNIT]}
FAILING = "central-test-fails.service"


@pytest.fixture
async def unit_host(config, client_key, lxc_container):
    container = lxc_container("units-host")
    assert container.wait_system_running() in ("running", "degraded")
    # a unit that fails: a transient service whose command exits 3 stays "failed"
    container.attach(["systemd-run", "--unit", FAILING, "--", "/bin/sh", "-c", "exit 3"])
    secret = await asyncio.to_thread(install_agent, container, POLICY)
    cfg = dataclasses.replace(config, ssh=dataclasses.replace(config.ssh, key_path=str(client_key.path)))
    api = await start_api(cfg)
    try:
        added = await servers.add_server(api.central, container.name, container.address, user="root",
                                         fingerprint=container.fingerprint, agent_secret=secret)
        assert added["agent"]["ok"], added
        await wait_online(api, container.name, batches=200)
        yield api, container
    finally:
        await api.client.close()


def show(container, unit, prop):
    return container.attach(["systemctl", "show", "-p", prop, "--value", unit]).stdout.strip()


async def test_services_and_timers_with_their_details_failed_first(unit_host):
    api, c = unit_host
    status, doc, _ = await api.get(f"/api/v1/servers/{c.name}/services", role="viewer")
    assert status == 200 and doc["live"] is True and doc["available"] is True, doc
    units = {u["unit"]: u for u in doc["units"]}
    assert doc["units"][0]["unit"] == FAILING and units[FAILING]["active"] == "failed"
    assert [u["active"] for u in doc["units"]].index("failed") == 0
    assert {u["type"] for u in doc["units"]} >= {"service", "timer"}

    echo = units[ECHO_UNIT]
    assert echo["main_pid"] == int(show(c, ECHO_UNIT, "MainPID"))
    changed = int(show(c, ECHO_UNIT, "StateChangeTimestampMonotonic")) / 1e6
    uptime = float(c.attach(["cat", "/proc/uptime"]).stdout.split()[0])
    assert abs(echo["since"] - (time.time() - (uptime - changed))) <= 3, (echo["since"], uptime, changed)
    # memory from the unit's own cgroup, as the container sees its cgroup tree
    cg = show(c, ECHO_UNIT, "ControlGroup")
    v1 = c.attach(["cat", "/sys/fs/cgroup/memory" + cg + "/memory.usage_in_bytes"], check=False)
    files = int(v1.stdout) if v1.returncode == 0 else int(c.attach(["cat", "/sys/fs/cgroup" + cg + "/memory.current"]).stdout)
    assert echo["memory"] is not None and abs(echo["memory"] - files) <= 2 << 20, (echo["memory"], files)
    assert echo["restarts"] == 0 and echo["actions"] == ["start", "stop", "restart"]

    timer = units["apt-daily.timer"]
    assert timer["active"] == "active" and timer["main_pid"] is None and timer["actions"] == []
    assert timer["next_elapse"] is not None and timer["next_elapse"] > time.time()

    # the details are sampled at most once a minute: a second request reuses the sample
    _, again, _ = await api.get(f"/api/v1/servers/{c.name}/services", role="viewer")
    assert again["details_at"] == doc["details_at"] is not None

    # the page lists them with their figures and the type filter
    status, html, _ = await api.get(f"/servers/{c.name}", role="viewer")
    assert status == 200 and f'data-unit="{FAILING}"' in html  # the last poll's failed units
    assert '<option value="timer">timers</option>' in html
