"""End to end: systemd service actions in a real Debian LXC container, through the central's pool.

The container (tests/lxc.py) runs systemd as PID 1 and a test unit, central-test-echo.service.
The agent is installed as a transient systemd unit (central-agent.service) with a policy
that allows only central-test-* services.
"""
import dataclasses

import pytest

from central.actions import audit_log, run_action
from central.model import Forbidden
from central import servers
from central.service import Central
from tests.lxc import ECHO_UNIT, install_agent

pytestmark = pytest.mark.lxc

POLICY = {"service_patterns": ["central-test-*"]}


def main_pid(container, unit=ECHO_UNIT):
    return int(container.attach(["systemctl", "show", "-p", "MainPID", "--value", unit]).stdout.strip())


def active_state(container, unit=ECHO_UNIT):
    return container.attach(["systemctl", "show", "-p", "ActiveState", "--value", unit]).stdout.strip()


@pytest.fixture
async def central(config, client_key):
    cfg = dataclasses.replace(config, ssh=dataclasses.replace(config.ssh, key_path=str(client_key.path)))
    c = await Central.open(cfg)
    yield c
    await c.close()


async def test_restart_stop_start_a_real_systemd_service(central, lxc_container):
    container = lxc_container()
    assert container.wait_system_running() in ("running", "degraded")
    secret = install_agent(container, POLICY)
    # root: the container has the central's key in root's authorized_keys (no deploy ran)
    added = await servers.add_server(central, container.name, container.address, user="root",
                                     fingerprint=container.fingerprint, agent_secret=secret)
    assert added["agent"]["ok"], added

    before = main_pid(container)
    assert before > 1
    result = await run_action(central, "cli:tester", "admin", container.name, "service",
                              {"unit": "central-test-echo", "verb": "restart"})
    assert result["ok"] is True and result["exit_status"] == 0
    after = main_pid(container)
    assert after > 1 and after != before and active_state(container) == "active"

    result = await run_action(central, "cli:tester", "admin", container.name, "service",
                              {"unit": ECHO_UNIT, "verb": "stop"})
    assert result["ok"] is True
    assert active_state(container) == "inactive" and main_pid(container) == 0
    result = await run_action(central, "cli:tester", "admin", container.name, "service",
                              {"unit": ECHO_UNIT, "verb": "start"})
    assert result["ok"] is True
    assert active_state(container) == "active" and main_pid(container) > 1

    # outside the policy's patterns, and protected by default: refused, states untouched
    states = {u: active_state(container, u) for u in ("cron.service", "ssh.service", "systemd-logind.service")}
    assert states["cron.service"] == states["ssh.service"] == "active"
    with pytest.raises(Forbidden, match="service_patterns"):
        await run_action(central, "cli:tester", "admin", container.name, "service", {"unit": "cron", "verb": "stop"})
    with pytest.raises(Forbidden, match="protected"):
        await run_action(central, "cli:tester", "admin", container.name, "service", {"unit": "ssh", "verb": "stop"})
    # with the default policy (every service but the protected ones; the agent re-reads the
    # file per request), an alias of a protected unit is seen through
    container.attach(["tee", "/etc/central-agent.json"], input="{}")
    with pytest.raises(Forbidden, match="systemd-logind.service"):
        await run_action(central, "cli:tester", "admin", container.name, "service",
                         {"unit": "dbus-org.freedesktop.login1", "verb": "stop"})
    assert {u: active_state(container, u) for u in states} == states
    rows = await audit_log(central, container.name)
    assert [r["result"] for r in rows] == ["refused", "refused", "refused", "ok", "ok", "ok"]
