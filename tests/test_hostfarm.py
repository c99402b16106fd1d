"""The netns test-host farm itself: real sshd, pinned keys, agent over direct-tcpip, teardown."""
import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import asyncssh
import pytest

from tests import hostfarm

pytestmark = pytest.mark.hosts


def ssh(host, key, *command, known_hosts=None, check=True):
    """Run a command on host with OpenSSH, its key pinned; CompletedProcess."""
    argv = host.ssh_argv(key.path, known_hosts) + list(command)
    res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check:
        assert res.returncode == 0, res.stderr
    return res


def http_get(sock, path):
    """One HTTP/1.1 GET over a connected socket (closed afterwards); returns (status line, body bytes)."""
    with sock:
        return _http_get(sock, path)


def _http_get(sock, path):
    sock.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n"
                  % (path, hostfarm.AGENT_PORT)).encode())
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode("latin-1"), body


def test_hosts_come_up_isolated(test_host):
    hosts = test_host.many(3)
    names = [h.run(["hostname"]).stdout.strip() for h in hosts]
    assert names == [h.name for h in hosts]
    assert len({h.fingerprint for h in hosts}) == 3
    assert len({h.address for h in hosts}) == 3
    hosts[0].run(["touch", "/tmp/only-here", "/root/only-here", "/opt/only-here"])
    assert hosts[1].run(["ls", "-A", "/tmp", "/root", "/opt"]).stdout.count("only-here") == 0
    assert not os.path.exists("/tmp/only-here")
    # own PID namespace: the host sees only its own few processes, init is its pid 1
    ps = hosts[0].run(["ps", "-eo", "pid=,comm="]).stdout.split("\n")
    assert ps[0].split() == ["1", "python3"]
    assert len([line for line in ps if line.strip()]) < 10


def test_host_has_no_route_off_the_machine(test_host, host_farm):
    host = test_host()
    routes = host.run(["ip", "-4", "route"]).stdout.strip().splitlines()
    assert routes == ["%s dev eth0 proto kernel scope link src %s" % (host_farm.subnet,
                                                                     host.address)]


def test_ssh_with_pinned_host_key(test_host, client_key, tmp_path):
    host, other = test_host.many(2)
    assert ssh(host, client_key, "hostname").stdout.strip() == host.name
    # ssh-keygen agrees with the fingerprint the farm reports
    printed = subprocess.run(["ssh-keygen", "-lf", str(host.host_key_path) + ".pub"],
                             capture_output=True, text=True, check=True).stdout.split()[1]
    assert printed == host.fingerprint
    # pinned to another host's key: refused
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text("%s %s\n" % (host.address, " ".join(other.host_public_key.split()[:2])))
    res = ssh(host, client_key, "hostname", known_hosts=wrong, check=False)
    assert res.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in res.stderr


def test_unauthorized_key_is_refused(test_host, tmp_path):
    host = test_host(authorized_keys=[], agent=False)
    key = tmp_path / "stranger"
    hostfarm.generate_key(key)
    argv = host.ssh_argv(key) + ["true"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert res.returncode == 255 and "Permission denied" in res.stderr


async def agent_health_over_ssh(host, key, user="central"):
    async with asyncssh.connect(host.address, port=host.port, username=user,
                                client_keys=[str(key.path)], known_hosts=str(
                                    host.write_known_hosts(host.state_dir / "kh")),
                                config=[]) as conn:
        reader, writer = await conn.open_connection("127.0.0.1", hostfarm.AGENT_PORT)
        writer.write(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1:8083\r\nConnection: close\r\n\r\n")
        data = await reader.read()
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], json.loads(body)


def test_agent_reachable_through_direct_tcpip(test_host, client_key):
    host = test_host()
    status, doc = asyncio.run(agent_health_over_ssh(host, client_key))
    assert status == b"HTTP/1.1 200 OK"
    assert doc["status"] == "ok" and doc["auth"] == "ready"  # the agent read the host's secret
    # the agent listens on the host's loopback only, not on its bridge address
    assert not host.port_open(hostfarm.AGENT_PORT, host.address)


def test_agent_reachable_through_ssh_port_forward(test_host, client_key):
    host = test_host()
    argv = host.ssh_argv(client_key.path, user="central") + [
        "-W", "127.0.0.1:%d" % hostfarm.AGENT_PORT]
    res = subprocess.run(argv, input=b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1:8083\r\n"
                         b"Connection: close\r\n\r\n", capture_output=True, timeout=30)
    assert res.stdout.startswith(b"HTTP/1.1 200"), res.stderr


def test_stop_and_start_sshd(test_host, client_key):
    host = test_host(agent=False)
    ssh(host, client_key, "true")
    key_before = host.host_public_key
    host.stop_sshd()
    res = ssh(host, client_key, "true", check=False)
    assert res.returncode == 255 and "refused" in res.stderr
    host.start_sshd()
    assert ssh(host, client_key, "hostname").stdout.strip() == host.name
    assert host.host_public_key == key_before


def test_stop_sshd_ends_open_sessions(test_host, client_key):
    host = test_host(agent=False)
    with subprocess.Popen(host.ssh_argv(client_key.path) + ["sleep", "600"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as session:
        hostfarm._wait_for(lambda: "sleep" in host.run(["ps", "-eo", "comm="]).stdout, 10,
                           "ssh session")
        host.stop_sshd()
        assert session.wait(10) == 255


def test_regenerate_host_key(test_host, client_key, tmp_path):
    host = test_host(agent=False)
    old_known = host.write_known_hosts(tmp_path / "old")
    old_fp = host.fingerprint
    host.regenerate_host_key()
    assert host.fingerprint != old_fp
    res = ssh(host, client_key, "true", known_hosts=old_known, check=False)
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in res.stderr
    assert ssh(host, client_key, "hostname").stdout.strip() == host.name


def test_stop_and_start_agent(test_host):
    host = test_host()
    first = host.agent_pid
    assert host.port_open()
    host.stop_agent()
    assert host.agent_pid is None and not host.port_open()
    host.start_agent()
    assert host.port_open() and host.agent_pid not in (None, first)
    status, body = http_get(host.connect(), "/api/health")
    assert status == "HTTP/1.1 200 OK" and json.loads(body)["status"] == "ok"


def test_agent_pid_is_the_hosts_view(test_host):
    host = test_host()
    ps = host.run(["ps", "-o", "args=", "-p", str(host.agent_pid)]).stdout
    assert str(host.farm.visible(host.farm.agent_path)) in ps


def test_start_process_and_kill_it_inside(test_host):
    host = test_host(agent=False)
    proc = host.start_process(["sleep", "1000"])
    assert proc.alive()
    # The pid exists from fork on; its name becomes "sleep" at exec.
    hostfarm._wait_for(lambda: host.run(["cat", "/proc/%d/comm" % proc.ns_pid]).stdout.strip() == "sleep",
                       10, "sleep to exec")
    host.run(["kill", "-TERM", str(proc.ns_pid)])
    assert proc.wait(10) == -signal.SIGTERM


def test_hide_path_only_on_that_host(test_host):
    host, other = test_host.many(2, agent=False)
    host.hide_path("/usr/bin/python3")
    assert host.run(["sh", "-c", "command -v python3"], check=False).returncode != 0
    assert other.run(["sh", "-c", "command -v python3"]).stdout.strip() == "/usr/bin/python3"


@pytest.mark.parametrize("mode,expect", [
    ("garbage", lambda status, body: not status.startswith("HTTP/")),
    ("badutf8", lambda status, body: status.endswith("200 OK") and b"\xff" in body),
    ("notjson", lambda status, body: body.startswith(b"<html>")),
    ("close", lambda status, body: status == "" and body == b""),
    ("error500", lambda status, body: status.startswith("HTTP/1.1 500")),
])
def test_fake_agent_modes(test_host, mode, expect):
    host = test_host()
    host.start_fake_agent(mode)
    status, body = http_get(host.connect(), "/api/health")
    assert expect(status, body), (status, body[:200])


def test_fake_agent_huge_and_trickle_and_hang(test_host):
    host = test_host()
    host.start_fake_agent("huge")
    sock = host.connect()
    sock.sendall(b"GET /api/all HTTP/1.1\r\nHost: a\r\n\r\n")
    head = sock.recv(4096)
    assert b"Content-Length: %d" % (100 * 1024 * 1024) in head
    sock.close()
    host.start_fake_agent("trickle")
    sock = host.connect()
    sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: a\r\n\r\n")
    started = time.monotonic()
    assert sock.recv(100) == b"H"
    assert sock.recv(100) == b"T" and time.monotonic() - started > 0.5
    sock.close()
    host.start_fake_agent("hang")
    sock = host.connect(timeout=0.5)
    sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: a\r\n\r\n")
    with pytest.raises(OSError):  # socket.timeout
        sock.recv(100)
    sock.close()


def test_many_hosts_quickly(host_farm, test_host):
    started = time.monotonic()
    hosts = test_host.many(10)
    elapsed = time.monotonic() - started
    assert all(h.sshd.alive() and h.agent.alive() for h in hosts)
    assert elapsed < 5, "10 hosts took %.1fs" % elapsed


def _leftovers(netnses, bridge, pids):
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    left = [n for n in netnses if n in listed.split()]
    left += [bridge] if (" %s:" % bridge) in links else []
    left += [p for p in pids if os.path.exists("/proc/%d" % p)]
    return left


def test_teardown_leaves_nothing_behind():
    farm = hostfarm.HostFarm()
    hosts = farm.add_hosts(2)
    extra = hosts[0].start_process(["sleep", "1000"])
    netnses = [h.netns for h in hosts]
    pids = [extra.host_pid] + [p for h in hosts for p in (h.init_pid, h.sshd.host_pid,
                                                           h.agent.host_pid)]
    base_dir = farm.base_dir
    farm.close()
    assert _leftovers(netnses, farm.bridge, pids) == []
    assert not base_dir.exists()
    assert not any(h.veth in subprocess.run(["ip", "-o", "link"], capture_output=True,
                                            text=True).stdout for h in hosts)


OWNER_SCRIPT = """
import json, sys, time
sys.path.insert(0, %r)
from tests.hostfarm import HostFarm
farm = HostFarm()
hosts = farm.add_hosts(2)
print(json.dumps({"netns": [h.netns for h in hosts], "bridge": farm.bridge,
                  "pids": [p for h in hosts for p in (h.init_pid, h.sshd.host_pid)]}), flush=True)
time.sleep(600)
"""


def test_reaper_cleans_up_after_owner_is_killed():
    with subprocess.Popen([sys.executable, "-c", OWNER_SCRIPT % str(hostfarm.REPO_DIR)],
                          stdout=subprocess.PIPE, text=True) as owner:
        try:
            info = json.loads(owner.stdout.readline())
        finally:
            owner.kill()  # SIGKILL: no close(), no atexit
            owner.wait()
    hostfarm._wait_for(lambda: not _leftovers(info["netns"], info["bridge"], info["pids"]),
                       10, "the reaper to clean up")


def test_etc_and_var_are_copy_on_write(test_host):
    host, other = test_host.many(2, agent=False)
    host.run(["sh", "-c", "echo mine > /etc/central-hostfarm-probe; "
              "mkdir -p /var/log && echo x > /var/log/central-hostfarm-probe"])
    assert host.run(["cat", "/etc/central-hostfarm-probe"]).stdout == "mine\n"
    assert not os.path.exists("/etc/central-hostfarm-probe")
    assert not os.path.exists("/var/log/central-hostfarm-probe")
    assert other.run(["ls", "/etc/central-hostfarm-probe"], check=False).returncode != 0
    with open("/etc/os-release") as fh:
        assert host.run(["cat", "/etc/os-release"]).stdout == fh.read()


def test_a_removed_hosts_address_serves_a_later_host_once_the_fresh_ones_are_used(client_key):
    farm = hostfarm.HostFarm()
    try:
        first = farm.add_host(name="reused-a", authorized_keys=[client_key.public_key])
        assert ssh(first, client_key, "hostname").stdout.strip() == "reused-a"  # the machine learns its MAC
        farm.remove_host(first.name)
        farm._next_index = 254  # as if the farm had made its 253 hosts
        later = farm.add_host(name="reused-b", authorized_keys=[client_key.public_key])
        assert later.address == first.address
        assert ssh(later, client_key, "hostname").stdout.strip() == "reused-b"
        with pytest.raises(hostfarm.HostFarmError, match="at most 253 hosts at once"):
            farm.add_host(name="one-too-many")
    finally:
        farm.close()
