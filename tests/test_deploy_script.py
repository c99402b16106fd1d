"""scripts/deploy-agent.sh against real sshd test hosts (no systemd: the fallback path) and,
marked lxc, a real Debian container with systemd."""
import asyncio
import subprocess
import time

import asyncssh
import pytest

from tests import hostfarm, tools

SCRIPT = hostfarm.REPO_DIR / "scripts" / "deploy-agent.sh"
AGENT = hostfarm.default_agent_path()


@pytest.fixture(scope="module")
def operator_key(tmp_path_factory):
    """The operator's own key (deploys), distinct from the central's key (polls)."""
    path = tmp_path_factory.mktemp("operator") / "id_ed25519"
    hostfarm.generate_key(path, "operator")
    return path


def deploy(targets, operator_key, known_hosts, *options, central_key=None, agent=AGENT):
    argv = ["bash", str(SCRIPT), "--agent", str(agent), "--identity", str(operator_key),
            "--ssh-opt", "UserKnownHostsFile=%s" % known_hosts,
            "--ssh-opt", "StrictHostKeyChecking=yes",
            "--ssh-opt", "GlobalKnownHostsFile=/dev/null", "--ssh-opt", "ConnectTimeout=5"]
    if central_key is not None:
        argv += ["--central-key", str(central_key)]
    res = subprocess.run(argv + list(options) + list(targets), capture_output=True, text=True,
                         timeout=180)
    return res


def known_hosts_for(hosts, path):
    path.write_text("".join(h.known_hosts_line() + "\n" for h in hosts))
    return path


async def probe_with_central_key(host, key, known_hosts):
    """(health status line, shell exit status, whether port 22 forwarding was refused)."""
    async with asyncssh.connect(host.address, username="root", client_keys=[str(key.path)],
                                known_hosts=str(known_hosts), config=[]) as conn:
        reader, writer = await conn.open_connection("127.0.0.1", hostfarm.AGENT_PORT)
        writer.write(b"GET /api/health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
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
    return [line.split()[0] for line in ps if "/opt/central-agent/agent.py" in line
            and "run-agent" not in line]


def test_help_and_shellcheck():
    res = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "Examples:" in res.stdout and "--full-access" in res.stdout
    res = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True)
    assert res.returncode == 2
    shellcheck = tools.require("shellcheck", "the Debian package shellcheck")
    for script in (SCRIPT, SCRIPT.with_name("agent-install.sh")):
        res = subprocess.run([shellcheck, str(script)], capture_output=True, text=True)
        assert res.returncode == 0, res.stdout


def test_deploy_three_hosts_with_restricted_central_key(test_host, operator_key, client_key,
                                                         tmp_path):
    hosts = test_host.many(3, agent=False, authorized_keys=[
        operator_key.with_suffix(".pub").read_text()])
    kh = known_hosts_for(hosts, tmp_path / "known_hosts")
    started = time.monotonic()
    res = deploy(["root@" + h.address for h in hosts], operator_key, kh, "-j", "3",
                 central_key=client_key.public_path)
    elapsed = time.monotonic() - started
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count(" ok ") == 3 and "3 of 3 hosts deployed" in res.stdout
    assert "fallback" in res.stdout
    for host in hosts:
        lines = host.run(["cat", "/root/.ssh/authorized_keys"]).stdout.splitlines()
        assert len(lines) == 1
        assert lines[0].startswith('restrict,port-forwarding,permitopen="127.0.0.1:8083",'
                                   'command="/bin/false" ssh-ed25519 ')
        status, shell, refused = asyncio.run(probe_with_central_key(host, client_key, kh))
        assert status == b"HTTP/1.1 200 OK"
        assert shell.exit_status != 0 and "shell-works" not in (shell.stdout or "")
        assert host.run(["ls", "/tmp/pwned"], check=False).returncode != 0
        assert refused
        assert len(agent_processes(host)) == 1
    assert elapsed < 60


def test_second_run_upgrades_in_place(test_host, operator_key, client_key, tmp_path):
    host = test_host(agent=False, authorized_keys=[operator_key.with_suffix(".pub").read_text()])
    kh = known_hosts_for([host], tmp_path / "known_hosts")
    target = "root@" + host.address
    assert deploy([target], operator_key, kh, central_key=client_key.public_path).returncode == 0
    first_pids = agent_processes(host)
    newer = tmp_path / "agent.py"
    newer.write_text(AGENT.read_text() + "\n# upgraded\n")
    new_sha = hostfarm.hashlib.sha256(newer.read_bytes()).hexdigest()
    res = deploy([target], operator_key, kh, central_key=client_key.public_path, agent=newer)
    assert res.returncode == 0, res.stdout + res.stderr
    assert new_sha[:12] in res.stdout
    assert host.run(["sha256sum", "/opt/central-agent/agent.py"]).stdout.split()[0] == new_sha
    assert len(host.run(["cat", "/root/.ssh/authorized_keys"]).stdout.splitlines()) == 1
    pids = agent_processes(host)
    assert len(pids) == 1 and pids != first_pids
    assert host.run(["grep", "-c", "run-agent.sh", "/etc/rc.local"]).stdout.strip() == "1"
    assert '"kill": true' in host.run(["cat", "/etc/central-agent.json"]).stdout


def test_policy_options_are_written(test_host, operator_key, tmp_path):
    host = test_host(agent=False, authorized_keys=[operator_key.with_suffix(".pub").read_text()])
    kh = known_hosts_for([host], tmp_path / "known_hosts")
    res = deploy(["root@" + host.address], operator_key, kh, "--no-central-key",
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
    good, nopython = test_host.many(2, agent=False, authorized_keys=[
        operator_key.with_suffix(".pub").read_text()])
    nopython.hide_path("/usr/bin/python3")
    kh = known_hosts_for([good, nopython], tmp_path / "known_hosts")
    dead = "root@" + host_farm.unused_address()
    res = deploy(["root@" + good.address, "root@" + nopython.address, dead], operator_key, kh,
                 central_key=client_key.public_path)
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


@pytest.mark.lxc
def test_deploy_to_container_with_systemd(lxc_container, operator_key, client_key, tmp_path):
    container = lxc_container("deploy-sd", authorized_keys=[
        operator_key.with_suffix(".pub").read_text()])
    kh = container.write_known_hosts(tmp_path / "known_hosts")
    res = deploy(["root@" + container.address], operator_key, kh,
                 central_key=client_key.public_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "systemd" in res.stdout
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
