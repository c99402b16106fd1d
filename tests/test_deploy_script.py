"""scripts/deploy-agent.sh against real sshd test hosts (no systemd: the fallback path) and,
marked lxc, a real Debian container with systemd."""
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import asyncssh
import pytest

from tests import hostfarm, tools
from tests.helpers import wait_for_sync

SCRIPT = hostfarm.REPO_DIR / "scripts" / "deploy-agent.sh"
AGENT = hostfarm.default_agent_path()


@pytest.fixture(scope="module")
def operator_key(tmp_path_factory):
    """The operator's own key (deploys), distinct from the central's key (polls)."""
    path = tmp_path_factory.mktemp("operator") / "id_ed25519"
    hostfarm.generate_key(path, "operator")
    return path


CENTRAL_CLI = Path(sys.executable).parent / "central"  # this environment's `central` command


@pytest.fixture
def central_env(tmp_path, client_key):
    """A central of its own (data dir, the session's central key) for the script to hand
    secrets to; .run(*args, input=None) runs its CLI."""
    env = dict(os.environ, CENTRAL_DATA_DIR=str(tmp_path / "data"), CENTRAL_SSH_KEY_PATH=str(client_key.path))
    env.pop("CENTRAL_CONFIG", None)
    env.pop("SSH_AUTH_SOCK", None)

    class Env(dict):
        def run(self, *args, input=None):
            return subprocess.run([str(CENTRAL_CLI)] + list(args), env=self, input=input, capture_output=True,
                                  text=True, timeout=120)

    central = Env(env)
    assert central.run("init").returncode == 0
    return central


def deploy(targets, operator_key, known_hosts, *options, central_key=None, agent=AGENT, env=None):
    argv = ["bash", str(SCRIPT), "--agent", str(agent), "--identity", str(operator_key),
            "--ssh-opt", "UserKnownHostsFile=%s" % known_hosts,
            "--ssh-opt", "StrictHostKeyChecking=yes",
            "--ssh-opt", "GlobalKnownHostsFile=/dev/null", "--ssh-opt", "ConnectTimeout=5"]
    if central_key is not None:
        argv += ["--central-key", str(central_key)]
    if env is not None:
        argv += ["--central", str(CENTRAL_CLI)]
    res = subprocess.run(argv + list(options) + list(targets), capture_output=True, text=True,
                         timeout=180, env=env)
    return res


def known_hosts_for(hosts, path):
    path.write_text("".join(h.known_hosts_line() + "\n" for h in hosts))
    return path


async def probe_with_central_key(host, key, known_hosts, user="central"):
    """(health status line, shell exit status, whether port 22 forwarding was refused)."""
    async with asyncssh.connect(host.address, username=user, client_keys=[str(key.path)],
                                known_hosts=str(known_hosts), config=[]) as conn:
        reader, writer = await conn.open_connection("127.0.0.1", hostfarm.AGENT_PORT)
        writer.write(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1:8083\r\nConnection: close\r\n\r\n")
        data = await reader.read()
        writer.close()
        shell = await conn.run("touch /tmp/pwned; echo shell-works", check=False)
        try:
            await conn.open_connection("127.0.0.1", 22)
            refused = False
        except asyncssh.ChannelOpenError:
            refused = True
    return data.split(b"\r\n")[0], shell, refused


def agent_processes(host):
    ps = host.run(["ps", "-eo", "pid=,args="]).stdout.splitlines()
    return [line.split()[0] for line in ps if " -m agent " in line
            and "run-agent" not in line]


def fresh_hosts(test_host, operator_key, n, **kwargs):
    """Hosts as before any deploy: the operator's key for root, nothing of the central's."""
    return test_host.many(n, agent=False, login_user=False,
                          authorized_keys=[operator_key.with_suffix(".pub").read_text()], **kwargs)


def test_help_and_shellcheck():
    res = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "Examples:" in res.stdout and "--full-access" in res.stdout
    assert "--central-user" in res.stdout and "--secret-dir" in res.stdout
    res = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True)
    assert res.returncode == 2
    shellcheck = tools.require("shellcheck", "the Debian package shellcheck")
    for script in (SCRIPT, SCRIPT.with_name("agent-install.sh")):
        res = subprocess.run([shellcheck, str(script)], capture_output=True, text=True)
        assert res.returncode == 0, res.stdout


def test_the_farm_match_block_is_the_installers():
    """tests/hostfarm.py gives deployed-looking hosts the same Match block the installer writes."""
    text = SCRIPT.with_name("agent-install.sh").read_text()
    block = text.split('block="', 1)[1].split('"\n', 1)[0]
    block = block.replace("$login", "central").replace("$etc", "/etc/central-agent").replace("$port", "8083")
    assert block + "\n" == hostfarm.central_match_block()


def test_walkthrough_deploy_then_add_picks_up_the_secret(test_host, operator_key, client_key, central_env,
                                                          tmp_path):
    """README steps 2 and 3 on three hosts: the script deploys and hands each secret to the
    central, `server add` picks it up, and the central polls as its restricted login user."""
    hosts = fresh_hosts(test_host, operator_key, 3)
    kh = known_hosts_for(hosts, tmp_path / "known_hosts")
    started = time.monotonic()
    res = deploy(["root@" + h.address for h in hosts], operator_key, kh, "-j", "3",
                 central_key=client_key.public_path, env=central_env)
    elapsed = time.monotonic() - started
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count(" ok ") == 3 and "3 of 3 hosts deployed" in res.stdout
    assert "fallback" in res.stdout and "login central" in res.stdout
    for i, host in enumerate(hosts):
        secret = host.run(["cat", "/etc/central-agent/secret"]).stdout.strip()
        assert secret not in res.stdout + res.stderr  # handed over, never shown
        assert "secret kept for %s:22" % host.address in res.stdout
        assert host.run(["stat", "-c", "%U %a", "/etc/central-agent/secret"]).stdout.split() == ["root", "600"]
        passwd = host.run(["getent", "passwd", "central"]).stdout.strip().split(":")
        assert passwd[5:] == ["/nonexistent", "/usr/sbin/nologin"] and int(passwd[2]) < 1000
        assert host.run(["cat", "/root/.ssh/authorized_keys"], check=False).stdout == ""
        lines = host.run(["cat", "/etc/central-agent/authorized_keys"]).stdout.splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            'restrict,port-forwarding,permitopen="127.0.0.1:8083",command="/bin/false" ssh-ed25519 ')
        status, shell, refused = asyncio.run(probe_with_central_key(host, client_key, kh))
        assert status == b"HTTP/1.1 200 OK"
        assert shell.exit_status != 0 and "shell-works" not in (shell.stdout or "")
        assert host.run(["ls", "/tmp/pwned"], check=False).returncode != 0
        assert refused
        assert len(agent_processes(host)) == 1
        added = central_env.run("server", "add", "h%d" % i, host.address, "--host-key-fingerprint", host.fingerprint)
        assert added.returncode == 0 and "agent 1.2.1 answers" in added.stdout, added.stdout + added.stderr
        assert "(central@%s:22)" % host.address in added.stdout
        polled = json.loads(central_env.run("poll", "h%d" % i, "--json").stdout)
        assert polled["ok"] and polled["document"]["hostname"] == host.name
    assert elapsed < 60


def test_second_run_upgrades_in_place_and_keeps_the_secret(test_host, operator_key, client_key, tmp_path):
    host, = fresh_hosts(test_host, operator_key, 1)
    kh = known_hosts_for([host], tmp_path / "known_hosts")
    target = "root@" + host.address
    secrets = tmp_path / "secrets"
    res = deploy([target], operator_key, kh, "--secret-dir", str(secrets), central_key=client_key.public_path)
    assert res.returncode == 0, res.stdout + res.stderr
    first_pids = agent_processes(host)
    first_secret = host.run(["cat", "/etc/central-agent/secret"]).stdout.strip()
    kept = secrets / (host.address + ".secret")
    assert kept.read_text().strip() == first_secret and oct(kept.stat().st_mode & 0o777) == "0o600"
    newer = tmp_path / "agent.py"
    newer.write_text(AGENT.read_text() + "\n# upgraded\n")
    new_sha = hostfarm.hashlib.sha256(newer.read_bytes()).hexdigest()
    res = deploy([target], operator_key, kh, "--secret-dir", str(secrets), central_key=client_key.public_path,
                 agent=newer)
    assert res.returncode == 0, res.stdout + res.stderr
    assert new_sha[:12] in res.stdout
    assert host.run(["sha256sum", "/opt/central-agent/agent.py"]).stdout.split()[0] == new_sha
    assert host.run(["cat", "/etc/central-agent/secret"]).stdout.strip() == first_secret
    assert len(host.run(["cat", "/etc/central-agent/authorized_keys"]).stdout.splitlines()) == 1
    pids = agent_processes(host)
    assert len(pids) == 1 and pids != first_pids
    assert host.run(["grep", "-c", "run-agent.sh", "/etc/rc.local"]).stdout.strip() == "1"
    assert '"kill": true' in host.run(["cat", "/etc/central-agent.json"]).stdout
    res = deploy([target], operator_key, kh, "--secret-dir", str(secrets), "--rotate-secret",
                 central_key=client_key.public_path)
    assert res.returncode == 0, res.stdout + res.stderr
    rotated = host.run(["cat", "/etc/central-agent/secret"]).stdout.strip()
    assert rotated != first_secret and kept.read_text().strip() == rotated


def test_a_host_whose_sshd_config_includes_no_drop_ins_gets_a_marked_block(test_host, operator_key, client_key,
                                                                             tmp_path):
    host, = fresh_hosts(test_host, operator_key, 1, sshd_include=False)
    kh = known_hosts_for([host], tmp_path / "known_hosts")
    for _ in range(2):  # and a second run replaces the block rather than adding one
        res = deploy(["root@" + host.address], operator_key, kh, "--secret-dir", str(tmp_path / "s"),
                     central_key=client_key.public_path)
        assert res.returncode == 0, res.stdout + res.stderr
        config = host.run(["cat", "/etc/ssh/sshd_config"]).stdout
        assert config.count("# BEGIN central-agent") == 1 and config.count("Match User central") == 1
        assert host.run(["test", "-e", "/etc/ssh/sshd_config.d/central-agent.conf"], check=False).returncode != 0
        status, shell, refused = asyncio.run(probe_with_central_key(host, client_key, kh))
        assert status == b"HTTP/1.1 200 OK" and shell.exit_status != 0 and refused


def test_an_sshd_config_that_would_override_the_block_is_left_untouched(test_host, operator_key, client_key,
                                                                         tmp_path):
    """A Match block earlier in sshd_config wins over the one deploy appends: deploy sees with
    sshd -T that its rules would not apply, fails, and leaves sshd exactly as it was."""
    host, = fresh_hosts(test_host, operator_key, 1, sshd_include=False)
    host.run(["sh", "-c", "printf 'Match User central\\n    ForceCommand /bin/sh\\n' >> /etc/ssh/sshd_config"])
    before = host.run(["cat", "/etc/ssh/sshd_config"]).stdout
    kh = known_hosts_for([host], tmp_path / "known_hosts")
    res = deploy(["root@" + host.address], operator_key, kh, "--secret-dir", str(tmp_path / "s"),
                 central_key=client_key.public_path)
    assert res.returncode == 1
    assert "FAILED at sshd-config: sshd does not apply the Match block for central" in res.stderr, res.stderr
    assert host.run(["cat", "/etc/ssh/sshd_config"]).stdout == before
    assert host.run(["test", "-e", "/etc/ssh/sshd_config.d/central-agent.conf"], check=False).returncode != 0
    ssh = subprocess.run(host.ssh_argv(operator_key) + ["true"], capture_output=True, timeout=30)
    assert ssh.returncode == 0  # the operator's access is intact


def test_full_access_installs_the_key_for_the_login_user(test_host, operator_key, client_key, tmp_path):
    host, = fresh_hosts(test_host, operator_key, 1)
    kh = known_hosts_for([host], tmp_path / "known_hosts")
    res = deploy(["root@" + host.address], operator_key, kh, "--full-access", "--secret-dir", str(tmp_path / "s"),
                 central_key=client_key.public_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "login root" in res.stdout
    lines = host.run(["cat", "/root/.ssh/authorized_keys"]).stdout.splitlines()
    assert lines == [" ".join(client_key.public_key.split()[:2]) + " central"]
    ssh = subprocess.run(host.ssh_argv(client_key.path) + ["hostname"], capture_output=True, text=True, timeout=30)
    assert ssh.stdout.strip() == host.name  # a shell, as asked


def test_policy_options_are_written(test_host, operator_key, tmp_path):
    host, = fresh_hosts(test_host, operator_key, 1)
    kh = known_hosts_for([host], tmp_path / "known_hosts")
    res = deploy(["root@" + host.address], operator_key, kh, "--no-central-key", "--secret-dir", str(tmp_path / "s"),
                 "--allow-actions", "service", "--service-pattern", "nginx*",
                 "--service-pattern", "app@*.service", "--watch-unit", "nginx.service")
    assert res.returncode == 0, res.stdout + res.stderr
    policy = hostfarm.json.loads(host.run(["cat", "/etc/central-agent.json"]).stdout)
    assert policy["actions"] == {"kill": False, "service": True, "docker": False}
    assert policy["service_patterns"] == ["nginx*", "app@*.service"]
    assert policy["watched_units"] == ["nginx.service"]
    assert host.run(["stat", "-c", "%U %a", "/etc/central-agent.json"]).stdout.split() == [
        "root", "644"]


def test_missing_python_and_unreachable_host_fail_clearly(test_host, host_farm, operator_key,
                                                          client_key, tmp_path):
    good, nopython = fresh_hosts(test_host, operator_key, 2)
    nopython.hide_path("/usr/bin/python3")
    kh = known_hosts_for([good, nopython], tmp_path / "known_hosts")
    dead = "root@" + host_farm.unused_address()
    res = deploy(["root@" + good.address, "root@" + nopython.address, dead], operator_key, kh,
                 "--secret-dir", str(tmp_path / "s"), central_key=client_key.public_path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "[root@%s] FAILED at python: python3 not found" % nopython.address in res.stderr, \
        res.stderr
    assert "[%s] FAILED at connect: cannot log in over SSH" % dead in res.stderr
    rows = {line.split()[0]: line for line in res.stdout.splitlines() if line.startswith("root@")}
    assert " ok " in rows["root@" + good.address]
    assert "FAILED" in rows["root@" + nopython.address]
    assert "apt-get install python3" in rows["root@" + nopython.address]
    assert "FAILED" in rows[dead] and "ssh-copy-id" in rows[dead]
    assert "1 of 3 hosts deployed" in res.stdout
    # python3 is checked before anything is uploaded: nothing is left on that host
    # (hosts are deployed in parallel: only that host's own lines count)
    own = [line for line in res.stderr.splitlines() if line.startswith("[root@%s] " % nopython.address)]
    checked = [i for i, line in enumerate(own) if "checking python3" in line]
    failed = [i for i, line in enumerate(own) if "FAILED" in line]
    assert checked and failed and checked[0] < failed[0], own
    assert not any("uploading" in line for line in own[:failed[0]]), own
    assert nopython.run(["test", "-e", "/opt/central-agent"], check=False).returncode != 0


def test_an_unknown_host_key_is_explained_with_the_key_it_presents(test_host, operator_key, client_key, tmp_path):
    host, = fresh_hosts(test_host, operator_key, 1)
    kh = tmp_path / "known_hosts"
    kh.write_text("")  # the operator never logged in to it
    res = deploy(["root@" + host.address], operator_key, kh, "--secret-dir", str(tmp_path / "s"),
                 central_key=client_key.public_path)
    assert res.returncode == 1, res.stdout + res.stderr
    [line] = [line for line in res.stderr.splitlines() if "FAILED" in line]
    assert line.startswith(f"[root@{host.address}] FAILED at connect: the host key of {host.address} is not in "
                           "your known_hosts (ssh: Host key verification failed); it presents "), line
    assert host.fingerprint in line
    assert "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub" in line and f"ssh root@{host.address}" in line
    assert host.run(["test", "-e", "/opt/central-agent"], check=False).returncode != 0
    # once the key is known, the same command deploys
    known_hosts_for([host], kh)
    res = deploy(["root@" + host.address], operator_key, kh, "--secret-dir", str(tmp_path / "s"),
                 central_key=client_key.public_path)
    assert res.returncode == 0, res.stdout + res.stderr


def test_without_a_central_or_secret_dir_nothing_is_deployed(test_host, operator_key, client_key, tmp_path):
    host, = fresh_hosts(test_host, operator_key, 1)
    kh = known_hosts_for([host], tmp_path / "known_hosts")
    res = deploy(["root@" + host.address], operator_key, kh, "--central", str(tmp_path / "no-such-central"),
                 central_key=client_key.public_path)
    assert res.returncode == 2 and "the central CLI was not found" in res.stderr
    assert host.run(["test", "-e", "/opt/central-agent/agent.py"], check=False).returncode != 0


@pytest.mark.lxc
def test_deploy_to_container_with_systemd(lxc_container, operator_key, client_key, tmp_path):
    container = lxc_container("deploy-sd", authorized_keys=[
        operator_key.with_suffix(".pub").read_text()])
    kh = container.write_known_hosts(tmp_path / "known_hosts")
    res = deploy(["root@" + container.address], operator_key, kh, "--secret-dir", str(tmp_path / "s"),
                 central_key=client_key.public_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "systemd" in res.stdout and "login central" in res.stdout
    # sshd was reloaded through systemd: the central's login user is restricted now
    status, shell, refused = asyncio.run(probe_with_central_key(container, client_key, kh))
    assert status == b"HTTP/1.1 200 OK" and shell.exit_status != 0 and refused
    assert container.attach(["systemctl", "is-active", "central-agent"]).stdout.strip() == \
        "active"
    assert container.attach(["systemctl", "is-enabled", "central-agent"]).stdout.strip() == \
        "enabled"

    def main_pid():
        return int(container.attach(["systemctl", "show", "-p", "MainPID", "--value",
                                     "central-agent"]).stdout)

    before = main_pid()
    container.attach(["kill", "-9", str(before)])
    hostfarm._wait_for(lambda: main_pid() not in (0, before), 15, "systemd to restart the agent",
                       interval=0.2)
    health = container.attach(["python3", "-c", "import urllib.request; print(urllib.request."
                                "urlopen('http://127.0.0.1:8083/api/health', timeout=5)"
                                ".status)"], check=False)
    for _ in range(50):
        if health.stdout.strip() == "200":
            break
        time.sleep(0.2)
        health = container.attach(["python3", "-c", "import urllib.request; print(urllib."
                                   "request.urlopen('http://127.0.0.1:8083/api/health', "
                                   "timeout=5).status)"], check=False)
    assert health.stdout.strip() == "200"


def host_state(host):
    """What deploying touches on a host, as text: comparing it before a deploy and after an
    uninstall shows that the uninstall removed exactly what the deploy added."""
    run = host.attach if hasattr(host, "attach") else host.run
    script = ("ls -A /etc/ssh /etc/ssh/sshd_config.d /opt /etc | grep -i central; "
              "sha256sum /etc/ssh/sshd_config; cat /etc/ssh/sshd_config.d/* 2>/dev/null | sha256sum; "
              "getent passwd central; getent group central; crontab -l 2>/dev/null; cat /etc/rc.local 2>/dev/null; "
              "cat /root/.ssh/authorized_keys 2>/dev/null; ls -A /root/.ssh 2>/dev/null; "
              "ls /var/log | grep central; ls /etc/systemd/system | grep central; "
              "ls /etc/systemd/system/multi-user.target.wants 2>/dev/null | grep central; true")
    return run(["sh", "-c", script]).stdout


def test_uninstall_removes_exactly_what_deploy_installed(test_host, operator_key, client_key, tmp_path):
    host, = fresh_hosts(test_host, operator_key, 1)
    host.run(["sh", "-c", "mkdir -p /root/.ssh && touch /root/.ssh/authorized_keys"])
    before = host_state(host)
    # an older deploy left the central's key restricted in root's own authorized_keys too
    host.run(["sh", "-c", "cat >> /root/.ssh/authorized_keys"],
             input='restrict,port-forwarding,permitopen="127.0.0.1:8083",command="/bin/false" '
                   f"{client_key.public_key} central\n")
    kh = known_hosts_for([host], tmp_path / "known_hosts")
    target = "root@" + host.address
    res = deploy([target], operator_key, kh, "--secret-dir", str(tmp_path / "s"), central_key=client_key.public_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert host.port_open() and agent_processes(host)
    assert host_state(host) != before

    res = deploy([target], operator_key, kh, "--uninstall", central_key=client_key.public_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 of 1 hosts uninstalled" in res.stdout and " removed " in res.stdout
    for what in ("/opt/central-agent", "/etc/central-agent.json", "/etc/central-agent",
                 "/etc/ssh/sshd_config.d/central-agent.conf", "user central"):
        assert f"[{target}]  removed {what}" in res.stderr, res.stderr
    wait_for_sync(lambda: not host.port_open() and not agent_processes(host), 20, "the agent to stop")
    assert host_state(host) == before
    assert client_key.public_key.split()[1] not in host.run(["cat", "/root/.ssh/authorized_keys"]).stdout
    # the operator still logs in; the central's key opens nothing any more
    ssh = subprocess.run(["ssh", "-F", "/dev/null", "-i", str(operator_key), "-o", "BatchMode=yes",
                          "-o", f"UserKnownHostsFile={kh}", target, "hostname"], capture_output=True, text=True,
                         timeout=30)
    assert ssh.returncode == 0 and ssh.stdout.strip() == host.name
    with pytest.raises((asyncssh.PermissionDenied, asyncssh.DisconnectError)):
        asyncio.run(probe_with_central_key(host, client_key, kh))
    # a second run finds nothing to remove and says so
    res = deploy([target], operator_key, kh, "--uninstall", central_key=client_key.public_path)
    assert res.returncode == 0 and "(0 items removed)" in res.stderr, res.stdout + res.stderr


@pytest.mark.lxc
def test_uninstall_from_a_container_with_systemd(lxc_container, operator_key, client_key, tmp_path):
    container = lxc_container("undeploy-sd", authorized_keys=[operator_key.with_suffix(".pub").read_text()])
    kh = container.write_known_hosts(tmp_path / "known_hosts")
    target = "root@" + container.address
    container.attach(["sh", "-c", "mkdir -p /root/.ssh && touch /root/.ssh/authorized_keys"])
    before = host_state(container)
    res = deploy([target], operator_key, kh, "--secret-dir", str(tmp_path / "s"), central_key=client_key.public_path)
    assert res.returncode == 0 and "systemd" in res.stdout, res.stdout + res.stderr
    assert container.attach(["systemctl", "is-active", "central-agent"]).stdout.strip() == "active"
    res = deploy([target], operator_key, kh, "--uninstall", central_key=client_key.public_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"[{target}]  removed systemd unit central-agent.service" in res.stderr, res.stderr
    assert container.attach(["systemctl", "is-active", "central-agent"], check=False).stdout.strip() != "active"
    assert host_state(container) == before
    # sshd was reloaded through systemd without the block: the central's key opens nothing
    with pytest.raises((asyncssh.PermissionDenied, asyncssh.DisconnectError)):
        asyncio.run(probe_with_central_key(container, client_key, kh))
