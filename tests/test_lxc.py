"""Real Debian 12 LXC containers (tests/lxc.py): clones boot systemd and serve pinned SSH."""
import subprocess
import time

import pytest

from tests import lxc

pytestmark = pytest.mark.lxc


def ssh(container, key, *command):
    argv = container.ssh_argv(key.path) + list(command)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_two_clones_with_pinned_keys_and_systemd(lxc_container, client_key):
    started = time.monotonic()
    first, second = lxc_container("lxc-one"), lxc_container("lxc-two")
    elapsed = time.monotonic() - started
    assert first.fingerprint != second.fingerprint
    for c in (first, second):
        res = ssh(c, client_key, "hostname")
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == c.name
    # systemd is PID 1 and the test service runs under it
    assert first.wait_system_running() in ("running", "degraded")
    assert first.attach(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
    pid = first.attach(["systemctl", "show", "-p", "MainPID", "--value",
                        lxc.ECHO_UNIT]).stdout.strip()
    assert int(pid) > 1
    assert elapsed < 60, "two clones took %.1fs" % elapsed


def test_clone_has_memory_limit_and_private_network(lxc_container, lxc_farm):
    c = lxc_container()
    limit = c.attach(["cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"], check=False)
    if limit.returncode != 0:  # cgroup v2 machine
        limit = c.attach(["cat", "/sys/fs/cgroup/memory.max"])
    assert int(limit.stdout) == 256 * 1024 * 1024
    routes = c.attach(["ip", "-4", "route"]).stdout.strip().splitlines()
    assert routes == ["%s dev eth0 proto kernel scope link src %s" % (lxc_farm.subnet,
                                                                     c.address)]


def test_stop_and_start_keeps_identity(lxc_container, client_key):
    c = lxc_container()
    fp = c.fingerprint
    c.stop()
    assert c.state() == "STOPPED"
    assert ssh(c, client_key, "true").returncode == 255
    c.start()
    res = ssh(c, client_key, "hostname")
    assert res.returncode == 0 and res.stdout.strip() == c.name
    assert c.fingerprint == fp
