"""Deploy with --terminal-user against real sshd test hosts: `central deploy` and
scripts/deploy-agent.sh install the terminal key (restrict,pty) for the named account only,
the central records the account, and the polling key still opens no shell."""
from __future__ import annotations

import json
import subprocess

import pytest

from central.config import load_config
from tests import hostfarm
from tests.test_deploy import add, deploy, forget_central_key, make_hosts, operator, operator_key, run  # noqa: F401
from tests.test_deploy_script import deploy as deploy_script, known_hosts_for
from tests.test_terminal_hosts import add_account, shell_attempt

pytestmark = pytest.mark.hosts


def key_lines(host, path, blob):
    text = host.run(["cat", path], check=False).stdout
    return [line for line in text.splitlines() if blob in line]


def test_central_deploy_installs_the_terminal_key_for_the_named_account_only(
        run, operator, test_host, operator_key, client_key):  # noqa: F811
    [host] = make_hosts(test_host, operator_key, client_key, 1)
    add(run, "web0", host)
    forget_central_key(host, operator_key)
    add_account(host, "ops", None)
    operator.trust([host])

    result, rows = deploy(run, operator, "web0", "--terminal-user", "ops")
    assert result.exit_code == 0 and rows["web0"]["state"] == "ok", result.output
    cfg = load_config()
    public = (cfg.terminal_key_path.with_name("terminal_ed25519.pub")).read_text().split()
    blob = public[1]
    assert key_lines(host, "/var/lib/ops/.ssh/authorized_keys", blob) == [f"restrict,pty {public[0]} {blob} central-terminal"]
    assert key_lines(host, "/root/.ssh/authorized_keys", blob) == []  # not root's: root was not named
    mode = host.run(["stat", "-c", "%U %a", "/var/lib/ops/.ssh/authorized_keys"]).stdout.split()
    assert mode == ["ops", "600"]
    assert json.loads(run("terminal", "servers", "--json").output)["web0"]["account"] == "ops"

    # the polling key: still no shell, as root or as ops; the terminal key: a shell as ops only
    for user in ("root", "ops"):
        attempt = shell_attempt(host, client_key.path, user)
        assert "SHELL-OPENED" not in attempt.stdout and attempt.returncode != 0, (user, attempt)
    assert "SHELL-OPENED" in shell_attempt(host, cfg.terminal_key_path, "ops").stdout
    assert "SHELL-OPENED" not in shell_attempt(host, cfg.terminal_key_path, "root").stdout

    # again: one line, not two
    result, rows = deploy(run, operator, "web0", "--terminal-user", "ops")
    assert rows["web0"]["state"] == "ok"
    assert len(key_lines(host, "/var/lib/ops/.ssh/authorized_keys", blob)) == 1

    # an account that does not exist, one without a shell: clear failures, nothing recorded
    result, rows = deploy(run, operator, "web0", "--terminal-user", "nosuch")
    assert result.exit_code == 1
    assert (rows["web0"]["step"], rows["web0"]["message"]) == ("terminal-account", "there is no account nosuch on this host")
    host.run(["useradd", "--no-create-home", "--home-dir", "/var/lib", "--shell", "/usr/sbin/nologin", "svc"])
    result, rows = deploy(run, operator, "web0", "--terminal-user", "svc")
    assert "has no login shell" in rows["web0"]["message"]
    assert {k: v["account"] for k, v in json.loads(run("terminal", "servers", "--json").output).items()} == {"web0": "ops"}
    bad = run("deploy", *operator.options, "web0", "--terminal-user", "-rf")
    assert bad.exit_code == 1 and "invalid terminal account" in bad.output


def test_deploy_agent_script_installs_the_terminal_key(test_host, operator_key, client_key, tmp_path):  # noqa: F811
    host = test_host(agent=False, authorized_keys=[operator_key.with_suffix(".pub").read_text()])
    add_account(host, "ops", None)
    kh = known_hosts_for([host], tmp_path / "known_hosts")
    terminal_key = tmp_path / "terminal_ed25519"
    line = hostfarm.generate_key(terminal_key, "central-terminal")
    res = deploy_script(["root@" + host.address], operator_key, kh, "--terminal-user", "ops",
                        "--terminal-key", str(terminal_key) + ".pub", central_key=client_key.public_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "central terminal enable SERVER --user ops" in res.stdout
    blob = line.split()[1]
    assert key_lines(host, "/var/lib/ops/.ssh/authorized_keys", blob) == [
        f"restrict,pty {line.split()[0]} {blob} central-terminal"]
    assert "SHELL-OPENED" in shell_attempt(host, terminal_key, "ops").stdout
    assert "SHELL-OPENED" not in shell_attempt(host, client_key.path, "root").stdout
    # the polling key is never accepted as the terminal key
    res = deploy_script(["root@" + host.address], operator_key, kh, "--terminal-user", "ops",
                        "--terminal-key", str(client_key.public_path), central_key=client_key.public_path)
    assert res.returncode == 2 and "is the polling key" in res.stderr
    res = deploy_script(["root@" + host.address], operator_key, kh, "--terminal-user", "nosuch",
                        "--terminal-key", str(terminal_key) + ".pub", central_key=client_key.public_path)
    assert res.returncode == 1 and "there is no account nosuch on this host" in res.stdout + res.stderr
    assert subprocess.run(["shellcheck", str(hostfarm.REPO_DIR / "scripts" / "terminal-key-install.sh")]).returncode == 0
