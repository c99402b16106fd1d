"""Holes found in the agent's action validation (while building central/actions.py), closed.

Each test runs the real agent as a subprocess on 127.0.0.1 and talks HTTP to it.
"""
import json
import os
import sys

import pytest

from tests.agentutil import request, wait_for


def post(agent_proc, kind, **body):
    s = agent_proc.connect()
    try:
        return request(s, "POST", "/api/actions/" + kind, body=body)
    finally:
        s.close()


def start_time_of(pid):
    with open("/proc/%d/stat" % pid, "rb") as f:
        data = f.read()
    return int(data[data.rfind(b")") + 2:].split()[19])


def test_a_thread_id_of_the_agent_does_not_kill_the_agent(start_agent):
    a = start_agent()
    s = a.connect()
    request(s, "GET", "/api/health")  # the worker threads exist now
    s.close()
    tids = wait_for(lambda: [int(t) for t in os.listdir("/proc/%d/task" % a.pid) if int(t) != a.pid])
    for tid in tids:
        status, _, doc = post(a, "kill", pid=tid, start_time=start_time_of(tid), signal="KILL")
        assert status == 400 and doc["detail"] == "pid: %d is a thread of process %d, not a process" % (tid, a.pid)
    assert a.proc.poll() is None
    s = a.connect()
    assert request(s, "GET", "/api/health")[0] == 200
    s.close()


@pytest.mark.parametrize("pid", [2 ** 64, 10 ** 30, 4194305])
def test_a_huge_pid_is_a_clean_400(start_agent, pid):
    a = start_agent()
    status, _, doc = post(a, "kill", pid=pid, start_time=1, signal="TERM")
    assert status == 400 and doc["detail"].startswith("pid:")


class FakeSystemctl(str):
    """The stub's path, with .calls() listing the argv of every call."""

    def __new__(cls, path, calls):
        self = str.__new__(cls, path)
        self.calls = calls
        return self


@pytest.fixture
def fake_systemctl(tmp_path):
    """A systemctl stand-in that knows some aliases (answers `show`) and records every call."""
    log = tmp_path / "argv.json"
    fake = tmp_path / "systemctl"
    aliases = {"dbus-org.freedesktop.login1.service": "systemd-logind.service",
               "autovt@tty1.service": "getty@tty1.service",
               "www.service": "nginx.service"}
    fake.write_text(
        "#!%s\nimport json, sys\nopen(%r, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "aliases = %r\n"
        "if sys.argv[1] == 'show':\n"
        "    unit = sys.argv[-1]\n"
        "    real = aliases.get(unit, unit)\n"
        "    names = sorted({real} | {a for a, r in aliases.items() if r == real})\n"
        "    print('Id=' + real); print('Names=' + ' '.join(names))\n"
        "else:\n"
        "    print('done')\n" % (sys.executable, str(log), aliases))
    os.chmod(str(fake), 0o755)

    def calls():
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    return FakeSystemctl(str(fake), calls)


@pytest.mark.parametrize("alias,real", [("dbus-org.freedesktop.login1", "systemd-logind.service"),
                                        ("autovt@tty1.service", "getty@tty1.service")])
def test_an_alias_of_a_protected_unit_is_refused(start_agent, fake_systemctl, alias, real):
    a = start_agent("--systemctl", str(fake_systemctl), "--policy", "/nonexistent/policy.json")
    status, _, doc = post(a, "service", unit=alias, verb="stop")
    assert status == 403 and real in doc["detail"] and "protected" in doc["detail"]
    assert [c[0] for c in fake_systemctl.calls()] == ["show"]


def test_an_alias_outside_the_service_patterns_is_refused(start_agent, fake_systemctl, tmp_path):
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"service_patterns": ["www.service", "app-*"]}))
    os.chmod(str(policy), 0o600)
    a = start_agent("--systemctl", str(fake_systemctl), "--policy", str(policy))
    status, _, doc = post(a, "service", unit="www", verb="restart")
    assert status == 403 and "nginx.service" in doc["detail"]
    status, _, doc = post(a, "service", unit="app-1", verb="restart")
    assert status == 200 and doc["ok"] is True
    assert fake_systemctl.calls() == [
        ["show", "--property=Id", "--property=Names", "--", "www.service"],
        ["show", "--property=Id", "--property=Names", "--", "app-1.service"],
        ["restart", "--no-ask-password", "--", "app-1.service"]]


@pytest.mark.parametrize("comm", ["sshd-session", "sshd-auth"])
def test_default_policy_protects_openssh_session_processes(agent, comm):
    policy, _ = agent.load_policy(None)
    assert comm in policy["protected_processes"]
