"""`central action ...` through click's CliRunner, acting on the `local` server for real."""
import getpass
import json

import pytest
from click.testing import CliRunner

from central.cli import cli
from tests.test_agent_actions import sleeper  # noqa: F401 - a fixture


@pytest.fixture
def run(tmp_path):
    # as root (the suite's user) local actions need the operator's explicit yes
    env = {"CENTRAL_DATA_DIR": str(tmp_path / "data"), "CENTRAL_CONFIG": "", "CENTRAL_ACTIONS_LOCAL_AS_ROOT": "true"}

    def invoke(*args, input=None):
        return CliRunner().invoke(cli, list(args), env=env, input=input, catch_exceptions=False)

    assert invoke("init").exit_code == 0  # only init makes a data directory
    return invoke



def audit(run):
    res = run("action", "log", "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_kill_with_yes_shows_the_process_and_kills_it(run, sleeper):
    p = sleeper()
    res = run("action", "kill", "local", str(p.pid), "--signal", "kill", "--yes")
    assert res.exit_code == 0, res.output
    assert f"send SIGKILL to pid {p.pid} (sleep" in res.output and "sleep 300" in res.output
    assert "ok (exit status 0" in res.output
    assert p.wait(10) == -9
    row = audit(run)[0]
    assert row["actor"] == "cli:" + getpass.getuser() and row["role"] == "admin" and row["result"] == "ok"


def test_without_a_terminal_and_without_yes_nothing_happens(run, sleeper):
    p = sleeper()
    res = run("action", "kill", "local", str(p.pid))
    assert res.exit_code == 1
    assert res.output.splitlines()[-1] == "Error: refusing to act without confirmation: no terminal, pass --yes"
    assert p.poll() is None
    assert audit(run) == []


@pytest.mark.parametrize("args,message", [
    (("kill", "local", "12ab"), "pid: expected a process id"),
    (("kill", "local", "1234", "--signal", "STOP"), "signal: expected one of TERM"),
    (("kill", "local", "1234", "--start-time", "-3"), "start_time: expected"),
    (("service", "local", "nginx;reboot", "restart"), "unit: expected a service name"),
    (("service", "local", "nginx", "enable"), "verb: expected one of start, stop, restart"),
    (("docker", "local", "../web", "stop"), "container: expected a container name"),
    (("docker", "nowhere", "web", "stop"), "no server named 'nowhere'"),
])
def test_bad_input_is_one_line_and_audited(run, args, message):
    res = run("action", *args, "--yes")
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], res.output
    row = audit(run)[0]
    assert row["result"] == "invalid" and row["action"] == args[0]


def test_json_output_and_the_log_table(run, sleeper, monkeypatch):
    import central.cli
    from rich.console import Console

    monkeypatch.setattr(central.cli, "console", Console(width=250))
    p = sleeper()
    res = run("action", "kill", "local", str(p.pid), "--yes", "--json")
    assert res.exit_code == 0
    result = json.loads(res.output)
    assert result["ok"] is True and result["arguments"]["pid"] == p.pid
    run("action", "kill", "local", "1", "--yes")
    res = run("action", "log", "local", "--limit", "5")
    assert res.exit_code == 0
    assert "refused" in res.output and "ok" in res.output and f"pid={p.pid}" in res.output


@pytest.mark.parametrize("command", [("action",), ("action", "kill"), ("action", "service"),
                                     ("action", "docker"), ("action", "log")])
def test_every_action_command_has_help_with_an_example(run, command):
    res = run(*command, "--help")
    assert res.exit_code == 0 and "Example:" in res.output
