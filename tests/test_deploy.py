"""`central deploy` against real sshd test hosts: the operator's access deploys, the central
logs in as its own restricted user and authenticates to the agent with the host's secret."""
from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from central.bundled import agent_sha256
from central.cli import cli
from central.service import restricted_key_line
from central.storage import Storage
from tests import hostfarm

pytestmark = pytest.mark.hosts

SCRIPT = hostfarm.REPO_DIR / "scripts" / "deploy-agent.sh"
CENTRAL_CLI = Path(sys.executable).parent / "central"  # this environment's `central` command


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

    def invoke(*args, input=None):
        return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)

    assert invoke("init").exit_code == 0
    invoke.db = tmp_path / "data" / "central.db"
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


def legacy_hosts(test_host, operator_key, client_key, n):
    """Hosts as the old deploy left them: the central's key restricted in root's own
    authorized_keys, no login user, no secret (and no agent yet)."""
    hosts = test_host.many(n, agent=False, login_user=False,
                           authorized_keys=[operator_key.with_suffix(".pub").read_text()])
    for host in hosts:
        host.run(["sh", "-c", "mkdir -p /root/.ssh && cat > /root/.ssh/authorized_keys"],
                 input=restricted_key_line(client_key.public_key) + " central\n")
    return hosts


def add_as_root(run, name, host):
    result = run("server", "add", name, host.address, "--user", "root", "--host-key-fingerprint", host.fingerprint)
    assert result.exit_code == 0, result.output
    return result


def deploy(run, operator, *args):
    result = run("deploy", *operator.options, "--json", *args)
    return result, {r["server"]: r for r in json.loads(result.stdout)}


def agent_processes(host):
    ps = host.run(["ps", "-eo", "pid=,args="]).stdout.splitlines()
    return [line.split()[0] for line in ps if " -m agent " in line and "run-agent" not in line]


def root_central_lines(host, client_key):
    lines = host.run(["cat", "/root/.ssh/authorized_keys"], check=False).stdout.splitlines()
    return [line for line in lines if client_key.public_key.split()[1] in line]


def host_secret(host):
    return host.run(["cat", "/etc/central-agent/secret"]).stdout.strip()


def stored(run, name):
    """(user, agent secret) the central keeps for a server."""
    async def read():
        storage = await Storage.open(run.db)
        try:
            server = await storage.get_server(name)
            return server.user, await storage.agent_secret(server.id)
        finally:
            await storage.close()
    return asyncio.run(read())


def test_legacy_servers_need_a_redeploy_and_deploy_upgrades_them_in_place(
        run, operator, test_host, operator_key, client_key):
    hosts = legacy_hosts(test_host, operator_key, client_key, 2)
    for i, host in enumerate(hosts):
        added = add_as_root(run, f"web{i}", host)
        assert "agent_needs_redeploy" in added.output and "central deploy" in added.output, added.output
        polled = json.loads(run("poll", f"web{i}", "--json").output)
        assert polled["ok"] is False and polled["reason"] == "agent_needs_redeploy"
    operator.trust(hosts)

    result, rows = deploy(run, operator, "web0", "web1", "--service-pattern", "nginx*",
                          "--watch-unit", "nginx.service")
    assert result.exit_code == 0, result.output
    for i, host in enumerate(hosts):
        row = rows[f"web{i}"]
        assert row["state"] == "ok" and row["sha256"] == agent_sha256() and row["mode"] == "fallback", row
        assert row["target"] == f"root@{host.address}:22"
        # the central's key left root's file; it lives, restricted, for the login user only
        assert root_central_lines(host, client_key) == []
        assert host.run(["cat", "/etc/central-agent/authorized_keys"]).stdout.splitlines() == [
            restricted_key_line(" ".join(client_key.public_key.split()[:2])) + " central"]
        assert host.run(["stat", "-c", "%U %a", "/etc/central-agent/secret"]).stdout.split() == ["root", "600"]
        user, secret = stored(run, f"web{i}")
        assert user == "central" and secret == host_secret(host)
        assert secret not in result.output  # never printed, not even in --json
        tested = run("server", "test", f"web{i}")
        assert tested.exit_code == 0 and tested.output.startswith(f"web{i}: ok"), tested.output
        polled = json.loads(run("poll", f"web{i}", "--json").output)
        assert polled["ok"] and polled["document"]["hostname"] == host.name
        assert secret not in json.dumps(json.loads(run("server", "show", f"web{i}", "--json").output))
        policy = json.loads(host.run(["cat", "/etc/central-agent.json"]).stdout)
        assert policy == {"actions": {"kill": True, "service": True, "docker": True},
                          "service_patterns": ["nginx*"], "container_patterns": ["*"],
                          "watched_units": ["nginx.service"]}
    first_pids = [agent_processes(h) for h in hosts]
    first_secrets = [host_secret(h) for h in hosts]
    assert all(len(p) == 1 for p in first_pids)

    # again: in place, the same secret, one key line, one Match block; the deploy login is
    # now the operator's own (the server's user is the central's)
    result, rows = deploy(run, operator, "--all", "--no-actions")
    assert result.exit_code == 0, result.output
    assert set(rows) == {"web0", "web1"}  # --all leaves out the central's own host
    for i, host in enumerate(hosts):
        assert rows[f"web{i}"]["state"] == "ok" and rows[f"web{i}"]["target"] == f"root@{host.address}:22"
        assert len(host.run(["cat", "/etc/central-agent/authorized_keys"]).stdout.splitlines()) == 1
        assert host.run(["grep", "-c", "^Match User central", "/etc/ssh/sshd_config.d/central-agent.conf"]
                        ).stdout.strip() == "1"
        assert "central-agent" not in host.run(["cat", "/etc/ssh/sshd_config"]).stdout
        assert host_secret(host) == first_secrets[i] == stored(run, f"web{i}")[1]
        pids = agent_processes(host)
        assert len(pids) == 1 and pids != first_pids[i]
        assert host.run(["grep", "-c", "run-agent.sh", "/etc/rc.local"]).stdout.strip() == "1"
        assert json.loads(host.run(["cat", "/etc/central-agent.json"]).stdout)["actions"] == {
            "kill": False, "service": False, "docker": False}
        assert run("server", "test", f"web{i}").exit_code == 0

    # --rotate-secret: a new secret on the host and in the central, and polling goes on
    result, rows = deploy(run, operator, "web0", "--rotate-secret")
    assert result.exit_code == 0 and rows["web0"]["state"] == "ok", result.output
    assert host_secret(hosts[0]) != first_secrets[0] and host_secret(hosts[0]) == stored(run, "web0")[1]
    assert json.loads(run("poll", "web0", "--json").output)["ok"]


def test_upgrade_outdated_skips_current_and_upgrades_old(run, operator, test_host, operator_key, client_key,
                                                         tmp_path):
    old, current = legacy_hosts(test_host, operator_key, client_key, 2)
    add_as_root(run, "old", old)
    add_as_root(run, "current", current)
    operator.trust([old, current])
    result, rows = deploy(run, operator, "old", "current")
    assert result.exit_code == 0, result.output
    older = tmp_path / "agent.py"
    older.write_text(hostfarm.default_agent_path().read_text() + "\n# an older release\n")
    older_sha = hashlib.sha256(older.read_bytes()).hexdigest()
    # the older agent goes out with the script (one installer for both tools); the secret it
    # keeps goes to the same central, which has a server with that address
    res = subprocess.run(["bash", str(SCRIPT), "--agent", str(older), "--no-central-key",
                          "--central", str(CENTRAL_CLI),
                          "--identity", str(operator_key), "--ssh-opt", f"UserKnownHostsFile={tmp_path}/known_hosts",
                          "--ssh-opt", "StrictHostKeyChecking=yes", "root@" + old.address],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"secret kept for {old.address}:22" in res.stdout
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
    good, dead, stranger = legacy_hosts(test_host, operator_key, client_key, 3)
    for name, host in (("good", good), ("dead", dead), ("stranger", stranger)):
        add_as_root(run, name, host)
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


def test_an_operator_who_would_be_locked_out_is_rolled_back(run, operator, test_host, client_key, tmp_path):
    """The operator logs in as root with the central's own key (in root's authorized_keys only):
    moving that key to the login user would lock them out, so deploy undoes its changes."""
    host = test_host(agent=False, login_user=False, authorized_keys=[])
    host.run(["sh", "-c", "mkdir -p /root/.ssh && cat > /root/.ssh/authorized_keys"],
             input=client_key.public_key + "\n")
    add_as_root(run, "shared", host)
    operator.trust([host])
    options = [o if o != operator.options[1] else str(client_key.path) for o in operator.options]
    before = host.run(["cat", "/root/.ssh/authorized_keys"]).stdout
    result = run("deploy", *options, "--json", "shared")
    rows = {r["server"]: r for r in json.loads(result.stdout)}
    assert result.exit_code == 1
    assert rows["shared"]["step"] == "operator-access", rows
    assert "could no longer log in" in rows["shared"]["message"] and "rolled back" in rows["shared"]["message"]
    assert host.run(["cat", "/root/.ssh/authorized_keys"]).stdout == before
    assert host.run(["test", "-e", "/etc/ssh/sshd_config.d/central-agent.conf"], check=False).returncode != 0
    ssh = subprocess.run(host.ssh_argv(client_key.path) + ["hostname"], capture_output=True, text=True, timeout=30)
    assert ssh.returncode == 0 and ssh.stdout.strip() == host.name  # still in
    assert stored(run, "shared") == ("root", None)  # nothing stored for a failed deploy


def test_bad_options_are_one_line_errors(run, operator):
    result = run("deploy", "nope")
    assert result.exit_code == 1 and result.output.strip() == "Error: no server named 'nope'"
    result = run("deploy", "--all")
    assert result.exit_code == 1 and "no servers to deploy to" in result.output
    result = run("deploy", "local", "--service-pattern", "a;b")
    assert result.exit_code == 1 and "service pattern 'a;b'" in result.output
    result = run("deploy", "local", "--allow-actions", "reboot")
    assert result.exit_code == 1 and "unknown action kind 'reboot'" in result.output
    result = run("deploy", "local", "--central-user", "root")
    assert result.exit_code == 1 and "invalid central user 'root'" in result.output
    result, rows = deploy(run, operator, "local")
    assert result.exit_code == 0 and rows["local"]["state"] == "skipped"


def test_a_host_without_python_is_checked_first_and_left_as_it_was(run, operator, test_host, operator_key,
                                                                   client_key):
    host, = legacy_hosts(test_host, operator_key, client_key, 1)
    host.hide_path("/usr/bin/python3")
    add_as_root(run, "nopy", host)
    operator.trust([host])
    result, rows = deploy(run, operator, "nopy")
    assert result.exit_code == 1
    assert (rows["nopy"]["state"], rows["nopy"]["step"]) == ("failed", "python"), rows
    assert rows["nopy"]["message"] == "python3 not found on the host (or it does not run)"
    assert "apt-get install python3" in rows["nopy"]["hint"]
    assert host.run(["test", "-e", "/opt/central-agent"], check=False).returncode != 0
    assert host.run(["getent", "passwd", "central"], check=False).returncode != 0


@pytest.mark.slow  # a deploy, two undeploys and a failing server test: about a minute
def test_undeploy_removes_what_deploy_installed_and_remove_forgets_the_server(
        run, operator, test_host, operator_key, client_key):
    from tests.test_deploy_script import host_state

    host, = test_host.many(1, agent=False, login_user=False,
                           authorized_keys=[operator_key.with_suffix(".pub").read_text()])
    host.run(["sh", "-c", "mkdir -p /root/.ssh && touch /root/.ssh/authorized_keys"])
    before = host_state(host)
    host.run(["sh", "-c", "cat >> /root/.ssh/authorized_keys"],
             input=restricted_key_line(client_key.public_key) + " central\n")
    add_as_root(run, "web", host)
    operator.trust([host])
    result, rows = deploy(run, operator, "web")
    assert result.exit_code == 0 and rows["web"]["state"] == "ok", result.output
    assert stored(run, "web")[0] == "central" and host.port_open()

    assert run("undeploy", *operator.options, "web").exit_code == 1  # no terminal, no --yes
    result = run("undeploy", *operator.options, "--json", "--yes", "web")
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert row["state"] == "ok" and row["removed_from_central"] is False, row
    for what in ("/opt/central-agent", "/etc/central-agent.json", "/etc/central-agent", "user central",
                 "/etc/ssh/sshd_config.d/central-agent.conf"):
        assert what in row["message"], row
    assert not host.port_open()
    assert host_state(host) == before
    # the server stays until asked; polling it now fails
    assert run("server", "test", "web").exit_code == 1
    result = run("undeploy", *operator.options, "--remove", "--yes", "web")
    assert result.exit_code == 0, result.output
    assert "1 undeployed, 0 failed; removed from central" in result.output
    assert "web" not in [r["name"] for r in json.loads(run("server", "list", "--json").output)]
