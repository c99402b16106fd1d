"""`central deploy` against real sshd test hosts: the operator's access deploys, the
central's restricted key polls."""
from __future__ import annotations

import hashlib
import json
import subprocess

import pytest
from click.testing import CliRunner

from central.bundled import agent_sha256
from central.cli import cli
from central.service import restricted_key_line
from tests import hostfarm

pytestmark = pytest.mark.hosts

SCRIPT = hostfarm.REPO_DIR / "scripts" / "deploy-agent.sh"


@pytest.fixture(scope="module")
def operator_key(tmp_path_factory):
    """The operator's own key (deploys), distinct from the central's key (polls)."""
    path = tmp_path_factory.mktemp("operator") / "id_ed25519"
    hostfarm.generate_key(path, "operator")
    return path


@pytest.fixture
def run(tmp_path, monkeypatch, client_key):
    """Invoke the CLI with its own data directory and the session's central key."""
    monkeypatch.setenv("CENTRAL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CENTRAL_SSH_KEY_PATH", str(client_key.path))
    monkeypatch.delenv("CENTRAL_CONFIG", raising=False)
    # the operator's access in these tests is exactly the test key and known_hosts file
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)

    def invoke(*args):
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    assert invoke("init").exit_code == 0
    return invoke


@pytest.fixture
def operator(tmp_path, operator_key):
    """Options giving `central deploy` the operator's access; .known_hosts(hosts) writes the file."""
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text("")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")

    class Operator:
        options = ["--identity", str(operator_key), "--known-hosts", str(known_hosts),
                   "--ssh-config", str(ssh_config)]

        @staticmethod
        def trust(hosts):
            known_hosts.write_text("".join(h.known_hosts_line() + "\n" for h in hosts))

    return Operator


def make_hosts(test_host, operator_key, client_key, n):
    """Hosts where the operator's key logs in and the central's key only got as far as
    `central server add` needs; the central's line is removed again before deploying."""
    hosts = test_host.many(n, agent=False, authorized_keys=[
        operator_key.with_suffix(".pub").read_text(), restricted_key_line(client_key.public_key)])
    return hosts


def forget_central_key(host, operator_key):
    """Leave only the operator's key, so afterwards the central gets in through what deploy installs."""
    host.authorized_keys_path.write_text(operator_key.with_suffix(".pub").read_text())


def add(run, name, host):
    result = run("server", "add", name, host.address, "--host-key-fingerprint", host.fingerprint)
    assert result.exit_code == 0, result.output
    return result


def deploy(run, operator, *args):
    result = run("deploy", *operator.options, "--json", *args)
    return result, {r["server"]: r for r in json.loads(result.stdout)}


def agent_processes(host):
    ps = host.run(["ps", "-eo", "pid=,args="]).stdout.splitlines()
    return [line.split()[0] for line in ps if "/opt/central-agent/agent.py" in line and "run-agent" not in line]


def central_key_lines(host, client_key):
    lines = host.run(["cat", "/root/.ssh/authorized_keys"], check=False).stdout.splitlines()
    return [line for line in lines if client_key.public_key.split()[1] in line]


def test_deploy_then_central_polls_through_restricted_key_and_rerun_is_idempotent(
        run, operator, test_host, operator_key, client_key):
    hosts = make_hosts(test_host, operator_key, client_key, 2)
    for i, host in enumerate(hosts):
        added = add(run, f"web{i}", host)
        assert "does not answer" in added.output  # no agent yet
        forget_central_key(host, operator_key)
        assert run("server", "test", f"web{i}").exit_code == 1
    operator.trust(hosts)

    result, rows = deploy(run, operator, "web0", "web1", "--service-pattern", "nginx*",
                          "--watch-unit", "nginx.service")
    assert result.exit_code == 0, result.output
    for i, host in enumerate(hosts):
        row = rows[f"web{i}"]
        assert row["state"] == "ok" and row["sha256"] == agent_sha256() and row["mode"] == "fallback", row
        assert row["target"] == f"root@{host.address}:22"
        lines = central_key_lines(host, client_key)
        assert lines == [restricted_key_line(" ".join(client_key.public_key.split()[:2])) + " central"]
        tested = run("server", "test", f"web{i}")
        assert tested.exit_code == 0 and tested.output.startswith(f"web{i}: ok"), tested.output
        polled = json.loads(run("poll", f"web{i}", "--json").output)
        assert polled["ok"] and polled["document"]["hostname"] == host.name
        policy = json.loads(host.run(["cat", "/etc/central-agent.json"]).stdout)
        assert policy == {"actions": {"kill": True, "service": True, "docker": True},
                          "service_patterns": ["nginx*"], "container_patterns": ["*"],
                          "watched_units": ["nginx.service"]}
    first_pids = [agent_processes(h) for h in hosts]
    assert all(len(p) == 1 for p in first_pids)

    result, rows = deploy(run, operator, "--all", "--no-actions")
    assert result.exit_code == 0, result.output
    assert set(rows) == {"web0", "web1"}  # --all leaves out the central's own host
    for i, host in enumerate(hosts):
        assert rows[f"web{i}"]["state"] == "ok"
        assert len(central_key_lines(host, client_key)) == 1
        pids = agent_processes(host)
        assert len(pids) == 1 and pids != first_pids[i]
        assert host.run(["grep", "-c", "run-agent.sh", "/etc/rc.local"]).stdout.strip() == "1"
        assert json.loads(host.run(["cat", "/etc/central-agent.json"]).stdout)["actions"] == {
            "kill": False, "service": False, "docker": False}
        assert run("server", "test", f"web{i}").exit_code == 0


def test_upgrade_outdated_skips_current_and_upgrades_old(run, operator, test_host, operator_key, client_key,
                                                         tmp_path):
    old, current = make_hosts(test_host, operator_key, client_key, 2)
    add(run, "old", old)
    add(run, "current", current)
    operator.trust([old, current])
    older = tmp_path / "agent.py"
    older.write_text(hostfarm.default_agent_path().read_text() + "\n# an older release\n")
    older_sha = hashlib.sha256(older.read_bytes()).hexdigest()
    # the older agent goes out with the script, the current one with central deploy: one installer
    res = subprocess.run(["bash", str(SCRIPT), "--agent", str(older), "--no-central-key",
                          "--identity", str(operator_key), "--ssh-opt", f"UserKnownHostsFile={tmp_path}/known_hosts",
                          "--ssh-opt", "StrictHostKeyChecking=yes", "root@" + old.address],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    result, rows = deploy(run, operator, "current")
    assert result.exit_code == 0 and rows["current"]["state"] == "ok", result.output
    assert json.loads(run("server", "test", "old", "--json").output)["sha256"] == older_sha
    current_pids = agent_processes(current)

    result = run("deploy", *operator.options, "--all", "--upgrade-outdated")
    assert result.exit_code == 0, result.output
    assert "1 deployed, 1 skipped, 0 failed" in result.output
    assert "[current] skipped: agent is current" in result.output
    assert "[old] upload" in result.output and "[old] ok" in result.output
    assert "[current] upload" not in result.output
    assert old.run(["sha256sum", "/opt/central-agent/agent.py"]).stdout.split()[0] == agent_sha256()
    assert json.loads(run("server", "test", "old", "--json").output)["sha256"] == agent_sha256()
    assert agent_processes(current) == current_pids  # a current agent is not touched


def test_unreachable_and_unknown_host_keys_are_reported_per_host(run, operator, test_host, operator_key,
                                                                  client_key):
    good, dead, stranger = make_hosts(test_host, operator_key, client_key, 3)
    for name, host in (("good", good), ("dead", dead), ("stranger", stranger)):
        add(run, name, host)
    operator.trust([good, dead])  # the operator never met `stranger`
    dead.stop_sshd()

    result, rows = deploy(run, operator, "good", "dead", "stranger")
    assert result.exit_code == 1
    assert rows["good"]["state"] == "ok"
    assert rows["dead"]["state"] == "failed" and rows["dead"]["step"] == "connect"
    assert rows["dead"]["target"] == f"root@{dead.address}:22"
    assert rows["dead"]["message"].startswith("unreachable: ")
    assert "sshd answers on " + dead.address in rows["dead"]["hint"]
    assert rows["stranger"]["state"] == "failed" and rows["stranger"]["step"] == "connect"
    assert "not verified against your known_hosts" in rows["stranger"]["message"]
    assert "--pinned-host-key" in rows["stranger"]["hint"]
    assert stranger.run(["test", "-e", "/opt/central-agent/agent.py"], check=False).returncode != 0

    # the same without --json: a summary row naming host and step
    result = run("deploy", *operator.options, "dead")
    assert result.exit_code == 1
    assert "[dead] failed: unreachable: " in result.output, result.output
    assert "0 deployed, 0 skipped, 1 failed" in result.output
    # with the key central pinned instead of known_hosts, `stranger` is fine
    result, rows = deploy(run, operator, "--pinned-host-key", "stranger")
    assert result.exit_code == 0 and rows["stranger"]["state"] == "ok", result.output


def test_bad_options_are_one_line_errors(run, operator):
    result = run("deploy", "nope")
    assert result.exit_code == 1 and result.output.strip() == "Error: no server named 'nope'"
    result = run("deploy", "--all")
    assert result.exit_code == 1 and "no servers to deploy to" in result.output
    result = run("deploy", "local", "--service-pattern", "a;b")
    assert result.exit_code == 1 and "service pattern 'a;b'" in result.output
    result = run("deploy", "local", "--allow-actions", "reboot")
    assert result.exit_code == 1 and "unknown action kind 'reboot'" in result.output
    result, rows = deploy(run, operator, "local")
    assert result.exit_code == 0 and rows["local"]["state"] == "skipped"
