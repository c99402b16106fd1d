"""Every unit of a real Debian LXC container with systemd as PID 1 (tests/lxc.py), through the
agent installed in it and the central: services and timers with their state, since when, main
PID and their cgroup's memory, a failed unit first, the details sampled at the agent's slower
cadence (one `systemctl show` a minute, not one per request).
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import pytest

from click.testing import CliRunner

from central import servers
from central.cli import cli
from tests.agentutil import wait_for
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


LOG_UNIT = "central-test-logs.service"


async def test_journal_lines_written_in_the_container_are_read_back_through_the_central(unit_host):
    from central.hostlogs import fetch_logs

    api, c = unit_host
    marker = "marker-%d" % time.time_ns()
    # a unit whose own output, a logger line and a systemd-cat line land in its journal
    c.attach(["systemd-run", "--unit", LOG_UNIT, "--", "/bin/sh", "-c",
              # logger stays alive a second after sending (stdin open), so that journald still finds
              # its cgroup and files the line under the unit (a sender gone first loses _SYSTEMD_UNIT)
              "echo 'first %s'; { printf 'second %s <b>\\033[31m\\n'; sleep 1; } | logger -t central-test;"
              " { echo 'third %s'; sleep 1; } | systemd-cat -t central-cat -p warning"
              % (marker, marker, marker)])
    # the unit has finished when its journal holds the third line (systemd-run --wait needs D-Bus)
    wait_for(lambda: "third " + marker in c.attach(["journalctl", "-u", LOG_UNIT, "--no-pager", "-o", "cat"]
                                                    ).stdout.splitlines(), timeout=30, interval=0.2)
    status, doc, _ = await api.get(f"/api/v1/servers/{c.name}/logs?unit={LOG_UNIT}&lines=50", role="operator")
    assert status == 200, doc
    assert doc["source"] == "journal" and doc["name"] == LOG_UNIT and doc["truncated"] is False
    # (systemd's own "Started ... /bin/sh -c ..." line quotes the marker too)
    mine = [line for line in doc["lines"] if marker in line["message"] and line["identifier"] != "systemd"]
    assert [line["message"].split()[0] for line in mine] == ["first", "second", "third"], doc["lines"]
    second, third = mine[1], mine[2]
    assert second["identifier"] == "central-test" and second["priority"] == 5  # logger's default: user.notice
    assert "\x1b" not in second["message"] and "<b>" in second["message"]  # control characters cleaned
    assert third["identifier"] == "central-cat" and third["priority"] == 4
    assert all(abs(line["ts"] - time.time()) < 120 for line in mine)
    # the request is audited, and a viewer may not read logs
    [row] = [r for r in await api.central.storage.audit_log(c.name, 10) if r["action"] == "logs"]
    assert row["arguments"] == {"unit": LOG_UNIT, "lines": 50} and row["result"] == "ok"
    status, body, _ = await api.get(f"/api/v1/servers/{c.name}/logs?unit={LOG_UNIT}", role="viewer")
    assert status == 403
    # lines caps what comes back; a unit without a journal line gives none
    got = await fetch_logs(api.central, "t", "operator", c.name, unit=LOG_UNIT, lines=2)
    assert got["count"] == 2 and got["lines"][-1]["message"] == doc["lines"][-1]["message"]
    status, body, _ = await api.get(f"/api/v1/servers/{c.name}/logs?unit=bad;name", role="operator")
    assert status == 400 and body["error"] == "invalid"

    # the host policy turns logs off: refused on the host, and audited as refused
    c.attach(["tee", "/etc/central-agent.json"], input=json.dumps(dict(POLICY, logs=False)))
    status, body, _ = await api.get(f"/api/v1/servers/{c.name}/logs?unit={LOG_UNIT}", role="operator")
    assert status == 403 and "logs" in body["detail"], body
    rows = [r for r in await api.central.storage.audit_log(c.name, 10) if r["action"] == "logs"]
    assert rows[0]["result"] == "refused"
    host_log = c.attach(["journalctl", "-u", "central-agent", "--no-pager", "-o", "cat"]).stdout
    assert "logs unit=\"%s\" lines=\"50\" by" % LOG_UNIT in host_log and "refused 403" in host_log

    # `central logs SERVER UNIT -n N`, the CLI on the same database (its own process's Central)
    c.attach(["tee", "/etc/central-agent.json"], input=json.dumps(POLICY))
    env = {"CENTRAL_DATA_DIR": api.central.config.data_dir, "CENTRAL_CONFIG": "",
           "CENTRAL_SSH_KEY_PATH": api.central.config.ssh.key_path}
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["logs", c.name, LOG_UNIT, "-n", "5"], env=env,
                                     catch_exceptions=False)
    assert result.exit_code == 0, result.output
    printed = [line for line in result.output.splitlines() if marker in line and " systemd[1]: " not in line]
    assert len(printed) == 3 and "central-test[" in printed[1] and printed[1].endswith("<b>[31m"), printed
    assert "\x1b" not in result.output  # the escape never reaches the terminal
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["logs", c.name, "no-such-ct"], env=env)
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "no-such-ct" in result.output, result.output

