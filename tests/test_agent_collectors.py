"""Collectors against captured and hand-made /proc + /sys trees (tests/data)."""

import collections
import json
import os
import pwd
import shutil
import time

import pytest

from tests.agentutil import DATA

GIB = 1 << 30


def tree(name):
    root = os.path.join(DATA, name)
    return root + "/proc", root + "/sys"


# ----------------------------------------------------------------------- captured host

def test_captured_host_memory_uses_proc(agent):
    proc, sys = tree("host")
    cg = agent.detect_cgroup(proc, sys)
    mem = agent.collect_memory(proc, cg)
    meminfo = agent._kv_file(proc + "/meminfo", 1024)
    assert mem["source"] == "proc"
    assert mem["total"] == meminfo["MemTotal"]
    assert mem["used"] == meminfo["MemTotal"] - meminfo["MemAvailable"]
    assert 0.0 <= mem["percent"] <= 100.0


def test_captured_host_cpu_count_and_load(agent):
    proc, sys = tree("host")
    sample = agent.read_cpu_sample(proc, agent.detect_cgroup(proc, sys))
    with open(proc + "/stat") as f:
        cores = [l for l in f if l.startswith("cpu") and not l.startswith("cpu ")]
    assert sample["source"] == "proc"
    assert sample["count"] == len(cores)
    load = agent.collect_load(proc)
    assert set(load) == {"load1", "load5", "load15"}
    assert agent.collect_uptime(proc) > 0


def test_captured_host_processes(agent):
    proc, _ = tree("host")
    table = agent.scan_processes(proc)
    pids = sorted(int(d) for d in os.listdir(proc) if d.isdigit())
    assert sorted(k[0] for k in table) == pids
    ticks, rss, name = table[[k for k in table if k[0] == 1][0]]
    assert rss > 0 and ticks >= 0 and name


def test_captured_host_filesystems_and_net(agent):
    proc, sys = tree("host")
    fss = agent.list_filesystems(proc)
    assert ("/dev/vda", "/", "ext4") in fss
    # /dev/vda is also bind-mounted on /run/netns: reported once, at the shortest path.
    assert [f for f in fss if f[0] == "/dev/vda"] == [("/dev/vda", "/", "ext4")]
    net = agent.read_net_sample(proc)
    assert "lo" not in net["ifaces"] and "eth0" in net["ifaces"]
    disks = agent.read_disk_sample(proc, sys)
    assert "vda" in disks["devices"] and not any(d.startswith("loop") for d in disks["devices"])


def test_captured_host_inventory_is_stable(agent):
    proc, sys = tree("host")
    etc = os.path.join(DATA, "host", "etc")
    cg = agent.detect_cgroup(proc, sys)
    a = agent.collect_inventory(proc, sys, etc, cg, live=False)
    b = agent.collect_inventory(proc, sys, etc, cg, live=False)
    assert agent.inventory_hash(a) == agent.inventory_hash(b)
    assert a["os"]["id"] == "debian"
    assert a["cpu"]["count"] and a["cpu"]["model"]
    assert "eth0" in [i["name"] for i in a["interfaces"]]


# ----------------------------------------------------------------------- containers

def test_lxc_cgroup_v1_limits(agent):
    proc, sys = tree("lxc-v1")
    cg = agent.detect_cgroup(proc, sys)
    assert cg["version"] == 1
    mem = agent.collect_memory(proc, cg)
    assert mem["source"] == "cgroup-v1"
    assert mem["total"] == 2 * GIB                 # not the host's 64 GiB
    assert mem["used"] == GIB - GIB // 4           # usage minus total_inactive_file
    assert mem["available"] == 2 * GIB - mem["used"]
    assert mem["percent"] == 37.5
    assert (mem["swap_total"], mem["swap_used"]) == (GIB, GIB // 2)
    sample = agent.read_cpu_sample(proc, cg)
    assert sample["source"] == "cgroup-v1"
    assert sample["limit"] == 1.5                  # quota beats the 4-CPU cpuset
    assert sample["usage"][0] == 5000000000


def test_lxc_cgroup_v2_limits_behind_a_namespace(agent):
    proc, sys = tree("lxc-v2")
    cg = agent.detect_cgroup(proc, sys)
    assert cg["version"] == 2
    mem = agent.collect_memory(proc, cg)
    assert mem["source"] == "cgroup-v2"
    assert mem["total"] == GIB
    assert mem["used"] == GIB // 2 - GIB // 8
    assert (mem["swap_total"], mem["swap_used"]) == (GIB // 2, GIB // 16)
    sample = agent.read_cpu_sample(proc, cg)
    assert sample["source"] == "cgroup-v2" and sample["limit"] == 2.0


def test_cgroup_cpu_percent_follows_the_limit(agent):
    proc, sys = tree("lxc-v2")
    cur = agent.read_cpu_sample(proc, agent.detect_cgroup(proc, sys))
    # One second earlier the cgroup had used 1.5 s less CPU (1.0 user, 0.5 system).
    prev = dict(cur, t=cur["t"] - 1.0,
                usage=(cur["usage"][0] - 1.5e9, cur["usage"][1] - 1.0e9,
                       cur["usage"][2] - 0.5e9))
    rates = agent.cpu_rates(prev, cur)
    assert rates["count"] == 2 and rates["limit"] == 2.0
    assert rates["percent"] == 75.0                # 1.5 CPU-seconds of 2 allowed
    assert (rates["user"], rates["system"]) == (50.0, 25.0)
    assert rates["per_core"] is None and rates["iowait"] is None
    assert rates["source"] == "cgroup-v2"


def test_lxcfs_means_proc_is_already_right(agent):
    proc, sys = tree("lxcfs")
    cg = agent.detect_cgroup(proc, sys)
    assert "/proc/meminfo" in cg["lxcfs"]
    mem = agent.collect_memory(proc, cg)
    assert mem["source"] == "lxcfs" and mem["total"] == 4 * GIB
    assert mem["used"] == 4 * GIB - 3670016 * 1024
    sample = agent.read_cpu_sample(proc, cg)
    assert sample["source"] == "lxcfs" and sample["count"] == 2 and sample["limit"] is None


def test_collector_all_in_an_lxc_container(agent):
    proc, sys = tree("lxc-v1")
    c = agent.Collector(proc=proc, sys=sys, docker_socket=None, live=False)
    doc = c.all()
    assert doc["memory"]["source"] == "cgroup-v1" and doc["memory"]["total"] == 2 * GIB
    assert doc["cpu"]["source"] == "cgroup-v1" and doc["cpu"]["count"] == 2
    assert doc["hostname"] == "web1"
    assert doc["processes"]["count"] == 1
    assert doc["errors"] == {}


# ----------------------------------------------------------------------- odd trees

def copy_tree(tmp_path, name="lxc-v2"):
    root = tmp_path / name
    shutil.copytree(os.path.join(DATA, name), str(root))
    return str(root / "proc"), str(root / "sys")


def fake_stat(pid, name, ticks=0, rss_pages=100, start=1000, ppid=1, flags=4194560):
    return ("%d (%s) S %d %d %d 0 -1 %d 0 0 0 0 %d %d 0 0 20 0 1 0 %d 1000000 %d 0\n"
            % (pid, name, ppid, pid, pid, flags, ticks, ticks, start, rss_pages))


def test_vanishing_and_garbage_processes_are_skipped(agent, tmp_path):
    proc, sys = copy_tree(tmp_path)
    os.makedirs(proc + "/100")                      # vanished: directory left, no stat
    os.makedirs(proc + "/101/stat")                 # unreadable: stat is a directory
    os.makedirs(proc + "/102")
    with open(proc + "/102/stat", "w") as f:
        f.write("garbage")
    os.makedirs(proc + "/103")
    with open(proc + "/103/stat", "w") as f:         # a name with spaces and parens
        f.write(fake_stat(103, "we (ird) name", ticks=7))
    table = agent.scan_processes(proc)
    assert sorted(k[0] for k in table) == [1, 103]
    assert table[(103, 1000)][2] == b"we (ird) name"
    assert table[(103, 1000)][0] == 14
    # Vanishing between the scan and the detail read: fields become null, no exception.
    assert agent.process_details(proc, 999) == (None, None)
    # the directory's owner is whoever runs the tests (root in CI, a contributor in --unit)
    assert agent.process_details(proc, 100) == (pwd.getpwuid(os.getuid()).pw_name, None)


def test_one_broken_collector_does_not_fail_all(agent, tmp_path):
    proc, sys = copy_tree(tmp_path)
    c = agent.Collector(proc=proc, sys=sys, docker_socket=None, live=False)
    os.remove(proc + "/loadavg")
    with open(proc + "/meminfo", "w") as f:
        f.write("")                                  # empty: no figures at all
    doc = c.all()
    assert doc["load"] is None and "load" in doc["errors"]
    assert "FileNotFoundError" in doc["errors"]["load"]
    assert doc["cpu"] is not None and doc["processes"] is not None
    json.dumps(doc, allow_nan=False)


def test_docker_section_without_a_socket(agent, tmp_path):
    assert agent.collect_docker(str(tmp_path / "nope.sock")) == {"available": False,
                                                                 "containers": []}


def test_docker_section_with_a_dead_socket_is_an_error_entry(agent, tmp_path):
    proc, sys = copy_tree(tmp_path)
    dead = tmp_path / "docker.sock"
    dead.write_text("")                              # exists, but nobody listens
    c = agent.Collector(proc=proc, sys=sys, docker_socket=str(dead), live=False)
    doc = c.all()
    assert doc["docker"] is None and "docker" in doc["errors"]


def test_systemd_without_systemctl(agent, tmp_path):
    out = agent.collect_systemd(["nginx.service"], systemctl=str(tmp_path / "nope"))
    assert out == {"available": False, "failed": [], "watched": {"nginx.service": None}}


@pytest.fixture
def many_processes(agent, tmp_path):
    proc, sys = copy_tree(tmp_path)
    for pid in range(2, 5002):
        d = "%s/%d" % (proc, pid)
        os.mkdir(d)
        with open(d + "/stat", "w") as f:
            f.write(fake_stat(pid, "worker-%d" % pid, ticks=pid % 97, rss_pages=pid))
        with open(d + "/cmdline", "w") as f:
            f.write("worker\0--id\0%d\0" % pid)
    return proc, sys


def test_five_thousand_processes(agent, many_processes):
    proc, sys = many_processes
    c = agent.Collector(proc=proc, sys=sys, docker_socket=None, live=False)
    # Simulate CPU use since the baseline: pid 4242 used 500 ticks more.
    with open(proc + "/4242/stat", "w") as f:
        f.write(fake_stat(4242, "busy", ticks=4242 % 97 + 250, rss_pages=4242))
    started = time.process_time()
    doc = c.all()
    elapsed = time.process_time() - started
    procs = doc["processes"]
    assert procs["count"] == 5001
    assert len(procs["top_cpu"]) == 10 and len(procs["top_memory"]) == 10
    assert procs["top_cpu"][0]["pid"] == 4242 and procs["top_cpu"][0]["cpu_percent"] > 0
    assert procs["top_cpu"][0]["cmdline"] == "worker --id 4242"
    assert procs["top_memory"][0]["pid"] == 5001
    assert procs["top_memory"][0]["rss"] == 5001 * agent._PAGE_SIZE
    size = len(json.dumps(doc, separators=(",", ":")))
    assert size < 20000, size                         # top-N, not the table
    assert elapsed < 1.0, elapsed


def test_processes_endpoint_sorts_and_limits(agent, many_processes):
    proc, sys = many_processes
    c = agent.Collector(proc=proc, sys=sys, docker_socket=None, live=False)
    doc = agent.endpoint(c, "/api/processes", {"sort": ["memory"], "limit": ["5"]})
    assert [p["pid"] for p in doc["processes"]] == [5001, 5000, 4999, 4998, 4997]
    assert doc["count"] == 5001
    doc = agent.endpoint(c, "/api/processes", {"sort": ["pid"], "limit": ["3"]})
    assert [p["pid"] for p in doc["processes"]] == [1, 2, 3]
    with pytest.raises(ValueError, match="sort"):
        agent.endpoint(c, "/api/processes", {"sort": ["bogus"]})
    with pytest.raises(ValueError, match="limit"):
        agent.endpoint(c, "/api/processes", {"limit": ["-1"]})


def test_watched_processes_are_counted(agent, many_processes):
    proc, sys = many_processes
    c = agent.Collector(proc=proc, sys=sys, docker_socket=None, live=False,
                        policy={"watched_processes": ["worker-7", "absent"]})
    procs = c.all()["processes"]
    assert procs["watched"] == {"worker-7": 1, "absent": 0}


# ----------------------------------------------------------------------- live host

def test_live_all_document_matches_the_contract(agent):
    c = agent.Collector()
    doc = c.all()
    for key in ("agent", "timestamp", "hostname", "uptime", "cpu", "load", "memory",
                "filesystems", "disk_io", "network", "processes", "systemd", "docker",
                "inventory_hash", "errors"):
        assert key in doc, key
    assert doc["errors"] == {}
    assert doc["agent"]["version"] == agent.VERSION
    assert doc["agent"]["sha256"] == agent.agent_sha256() and len(doc["agent"]["sha256"]) == 64
    assert doc["processes"]["top_cpu"][0]["start_time"] >= 0
    me = [p for p in doc["processes"]["top_memory"] if p["pid"] == os.getpid()]
    assert not me or me[0]["user"] == pwd.getpwuid(os.getuid()).pw_name
    size = len(json.dumps(doc, separators=(",", ":")))
    assert 2000 < size < 20000, size


def test_inventory_hash_changes_exactly_with_stable_fields(agent, tmp_path):
    proc, sys = copy_tree(tmp_path, "lxc-v1")
    c = agent.Collector(proc=proc, sys=sys, etc=str(tmp_path / "lxc-v1" / "etc"),
                        docker_socket=None, live=False)
    first = c.all()["inventory_hash"]
    # Volatile things change: uptime, memory use, load. The hash must not.
    with open(proc + "/uptime", "w") as f:
        f.write("99999.0 1.0\n")
    with open(proc + "/loadavg", "w") as f:
        f.write("9.0 9.0 9.0 1/1 1\n")
    c.INVENTORY_TTL = 0
    assert c.all()["inventory_hash"] == first
    # A stable thing changes: the kernel. The hash must change.
    with open(proc + "/sys/kernel/osrelease", "w") as f:
        f.write("6.2.0-new\n")
    second = c.all()["inventory_hash"]
    assert second != first
    assert c.inventory()["kernel"] == "6.2.0-new"
    assert agent.inventory_hash(c.inventory()) == second


def test_import_has_no_side_effects():
    import subprocess
    import sys
    from tests.agentutil import AGENT_PATH
    code = ("import importlib.util, threading, signal, sys\n"
            "before = signal.getsignal(signal.SIGTERM)\n"
            "s = importlib.util.spec_from_file_location('a', %r)\n"
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m)\n"
            "assert threading.active_count() == 1\n"
            "assert signal.getsignal(signal.SIGTERM) is before\n"
            "assert 'http.client' not in sys.modules and 'hashlib' not in sys.modules\n"
            "print(m.VERSION)\n" % AGENT_PATH)
    out = subprocess.check_output([sys.executable, "-c", code, "--port", "1"])
    assert out.decode().strip().count(".") == 2


def test_inventory_leaves_out_interfaces_of_containers_and_vms(agent, tmp_path):
    net = tmp_path / "sys" / "class" / "net"
    for name in ("lo", "eth0", "br0", "veth1a2b3c", "vnet0", "tap101i0", "cali123", "fwpr101p0"):
        (net / name).mkdir(parents=True)
        (net / name / "address").write_text("52:54:00:00:00:01\n")
        (net / name / "mtu").write_text("1500\n")
    inv = agent.collect_inventory(proc=str(tmp_path / "proc"), sys=str(tmp_path / "sys"),
                                  etc=str(tmp_path / "etc"), live=False)
    assert [i["name"] for i in inv["interfaces"]] == ["br0", "eth0"]


# ------------------------------------------------------- root filesystems of every kind

def mounts_tree(tmp_path, name):
    """A /proc whose self/mounts is the captured table tests/data/mounts/NAME."""
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    shutil.copy(os.path.join(DATA, "mounts", name), str(proc / "self" / "mounts"))
    return str(proc)


@pytest.mark.parametrize("name, expected", [
    # the root is reported whatever its type; a container's single-file binds are not
    ("docker-overlay", [("overlay", "/", "overlay"), ("/dev/sdb1", "/data", "ext4")]),
    # captured in a clone tests/lxc.py made: the overlay's "device" is the base's rootfs path
    ("lxc-overlay-clone", [("/var/lib/lxc/central-test-base/rootfs", "/", "overlay")]),
    ("proxmox-zfs", [("rpool/data/subvol-101-disk-0", "/", "zfs"),
                     ("rpool/data/subvol-101-disk-1", "/srv", "zfs")]),
    # one btrfs device, two subvolumes: reported once, at /
    ("lxd-btrfs", [("/dev/sda2", "/", "btrfs")]),
    ("lxc-bind-rootfs", [("/dev/mapper/vg0-root", "/", "ext4")]),
    # the last mount on / is the one in use (rootfs underneath is covered)
    ("live-tmpfs", [("tmpfs", "/", "tmpfs")]),
    ("gvisor-9p", [("none", "/", "9p")]),
    ("pseudo-root", []),
])
def test_the_root_filesystem_is_listed_whatever_its_type(agent, tmp_path, name, expected):
    assert agent.list_filesystems(mounts_tree(tmp_path, name)) == expected


def test_an_overlay_root_is_measured_and_inventoried_without_a_moving_total(agent, tmp_path):
    proc = mounts_tree(tmp_path, "docker-overlay")
    fss = agent.collect_filesystems(proc)  # live statvfs: "/" and "/data" are stat'ed here
    root = [f for f in fss if f["mountpoint"] == "/"][0]
    st = os.statvfs("/")
    assert root["fstype"] == "overlay" and root["total"] == st.f_blocks * st.f_frsize
    assert 0.0 <= root["percent"] <= 100.0
    inv = agent.collect_inventory(proc=proc, sys=str(tmp_path / "sys"), etc=str(tmp_path / "etc"))
    by_mp = {f["mountpoint"]: f for f in inv["filesystems"]}
    # an overlay's (or a zfs dataset's) size follows its backing store, so the inventory,
    # whose every change is recorded and alerted, leaves it out
    assert by_mp["/"]["fstype"] == "overlay" and by_mp["/"]["total"] is None


def _iface(net, name, device=False, **links):
    d = net / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "address").write_text("52:54:00:00:00:01\n")
    (d / "mtu").write_text("1500\n")
    if device:
        os.symlink("../../../devices/pci0000:00/0000:00:03.0", str(d / "device"))
    for kind, targets in links.items():
        for t in targets:
            if kind == "lower":
                os.symlink("../" + t, str(d / ("lower_" + t)))
            elif kind == "ports":
                (d / "bridge").mkdir(exist_ok=True)
                (d / "brif").mkdir(exist_ok=True)
                os.symlink("../../" + t + "/brport", str(d / "brif" / t))
            elif kind == "brport":
                (d / "brport").mkdir()
            elif kind == "tun":
                (d / "tun_flags").write_text("0x1002\n")


def test_inventory_keeps_the_hosts_network_and_leaves_out_workload_links(agent, tmp_path):
    """A Proxmox-like host: vmbr0 over bond0 over two NICs is the host's own network; a
    bridge of veths, a tap and a tun with names no list knows are workloads'."""
    net = tmp_path / "sys" / "class" / "net"
    _iface(net, "eno1", device=True, brport=[1])      # a NIC enslaved to a bridge stays
    _iface(net, "enp2s0", device=True)
    _iface(net, "enp3s0", device=True)
    _iface(net, "bond0", lower=["enp2s0", "enp3s0"], brport=[1])
    _iface(net, "vmbr0", ports=["bond0"])
    _iface(net, "vmbr1", ports=["eno1"])
    _iface(net, "bond0.100", lower=["bond0"])
    _iface(net, "hfv3-12", brport=[1])                # the host side of a test host's veth
    _iface(net, "hfb-3", ports=["hfv3-12"])           # a bridge of veths only
    _iface(net, "lxb-7")                              # a bridge with no port at all
    (net / "lxb-7" / "bridge").mkdir()
    _iface(net, "vm101nic", tun=[1])                  # a tap, named by some VM manager
    _iface(net, "myvpn", tun=[1])
    _iface(net, "eth0")                               # a container's own veth: stays
    inv = agent.collect_inventory(proc=str(tmp_path / "proc"), sys=str(tmp_path / "sys"),
                                  etc=str(tmp_path / "etc"), live=False)
    assert [i["name"] for i in inv["interfaces"]] == [
        "bond0", "bond0.100", "eno1", "enp2s0", "enp3s0", "eth0", "vmbr0", "vmbr1"]


def test_inventory_leaves_out_ipv6_addresses_that_rotate(agent, tmp_path):
    net = tmp_path / "sys" / "class" / "net"
    _iface(net, "eth0", device=True)
    (tmp_path / "proc" / "net").mkdir(parents=True)
    (tmp_path / "proc" / "net" / "if_inet6").write_text(
        "20010db8000000000000000000000001 02 40 00 80     eth0\n"   # stable global
        "20010db80000000011223344556677aa 02 40 00 01     eth0\n"   # privacy (temporary)
        "20010db80000000099887766554433bb 02 40 00 21     eth0\n"   # temporary, deprecated
        "fe800000000000000000000000000001 02 40 20 c0     eth0\n")  # link-local, DAD still running
    inv = agent.collect_inventory(proc=str(tmp_path / "proc"), sys=str(tmp_path / "sys"),
                                  etc=str(tmp_path / "etc"), live=False)
    # the tentative one stays: it is there from link up, and hiding it until DAD ends would
    # make every boot an inventory change
    assert inv["interfaces"][0]["addresses"] == ["2001:db8::1/64", "fe80::1/64"]


# ------------------------------------------------------------- what the page may offer

def test_kill_is_offered_only_where_the_agent_would_send_it(agent, tmp_path):
    proc, sys = copy_tree(tmp_path, "host")  # pid 1 and kernel threads, as captured
    for pid, name in ((500, "worker"), (501, "sshd"), (os.getpid(), "agent")):
        os.makedirs("%s/%d" % (proc, pid), exist_ok=True)
        with open("%s/%d/stat" % (proc, pid), "w") as f:
            f.write(fake_stat(pid, name, ticks=10, rss_pages=10 ** 6))
        with open("%s/%d/cmdline" % (proc, pid), "w") as f:
            f.write(name + "\0")
    c = agent.Collector(proc=proc, sys=sys, docker_socket=None, live=False)
    procs = c.all()["processes"]
    offered = {p["pid"]: p["kill"] for p in procs["top_cpu"] + procs["top_memory"]}
    assert offered[500] is True
    assert offered[1] is False and offered[os.getpid()] is False
    assert offered[501] is False                      # sshd: protected by the default policy
    kthreads = [p for p in offered if 2 <= p <= 13]
    assert kthreads and not any(offered[p] for p in kthreads)
    # and nothing at all where the policy disables kills
    closed = agent.Collector(proc=proc, sys=sys, docker_socket=None, live=False,
                             policy={"actions": {"kill": False}})
    assert not any(p["kill"] for p in closed.all()["processes"]["top_memory"])


LIST_UNITS = """\
proc-sys-fs-binfmt_misc.automount loaded    active   waiting   Arbitrary Executable File Formats File System Automount Point
-.mount                         loaded    active   mounted   Root Mount
srv.mount                       loaded    failed   failed    /srv
cron.service                    loaded    active   running   Regular background program processing daemon
\u25cf nginx.service                  loaded    failed   failed    A high performance web server and a reverse proxy server
ssh.service                     loaded    active   running   OpenBSD Secure Shell server
systemd-journald.service        loaded    active   running   Journal Service
apache2.service                 not-found inactive dead      apache2.service
rsyslog.service                 loaded    active   running   System Logging Service
backup.timer                    loaded    active   waiting   Nightly backup
"""


@pytest.fixture
def fake_systemctl(tmp_path):
    """A systemctl that prints LIST_UNITS and logs its argv, one line per run."""
    listing = tmp_path / "units.txt"
    listing.write_text(LIST_UNITS)
    log = tmp_path / "systemctl.log"
    exe = tmp_path / "systemctl"
    exe.write_text("#!/bin/sh\necho \"$*\" >> %s\ncase \"$1\" in list-units) cat %s;; show) echo Id=$5;; esac\n"
                   % (log, listing))
    exe.chmod(0o755)
    return collections.namedtuple("FakeSystemctl", "path runs")(
        str(exe), lambda: log.read_text().splitlines() if log.exists() else [])


def test_units_are_listed_once_per_ttl_with_the_verbs_the_policy_allows(agent, tmp_path, fake_systemctl):
    proc, sys = copy_tree(tmp_path)
    policy = {"watched_units": ["nginx", "backup.timer", "gone.service"],
              "service_patterns": ["nginx.service", "cron.service", "ssh.service", "systemd-journald.service"]}
    c = agent.Collector(proc=proc, sys=sys, docker_socket=None, live=False, policy=policy,
                        systemctl=fake_systemctl.path)
    docs = [c.all() for _ in range(5)]
    assert fake_systemctl.runs() == ["list-units --all --plain --no-legend --no-pager --full"]
    sd = docs[-1]["systemd"]
    assert sd == {"available": True, "failed": ["srv.mount", "nginx.service"],
                  "watched": {"nginx": "failed", "backup.timer": "active", "gone.service": "inactive"}}
    services = c.services()
    # the same listing, and one `systemctl show` for the units' details (cached for UNITS_TTL)
    assert [r.split()[0] for r in fake_systemctl.runs()] == ["list-units", "show"]
    assert fake_systemctl.runs()[1].endswith(" -- cron.service nginx.service ssh.service systemd-journald.service"
                                             " rsyslog.service backup.timer")
    c.services()
    assert len(fake_systemctl.runs()) == 2
    units = {u["unit"]: u for u in services["units"]}
    # apache2.service is only referenced (not-found): left out
    assert sorted(units) == ["backup.timer", "cron.service", "nginx.service", "rsyslog.service",
                             "ssh.service", "systemd-journald.service"]
    assert units["rsyslog.service"]["actions"] == []         # matches no service_patterns
    assert units["nginx.service"] == {"unit": "nginx.service", "load": "loaded", "active": "failed",
                                      "sub": "failed", "watched": True, "actions": ["start", "stop", "restart"],
                                      "description": "A high performance web server and a reverse proxy server",
                                      "type": "service", "since": None, "main_pid": None, "restarts": None,
                                      "memory": None, "cpu_percent": None, "last_trigger": None,
                                      "next_elapse": None}
    assert units["cron.service"]["actions"] == ["start", "stop", "restart"]
    assert units["ssh.service"]["actions"] == []             # protected by the default policy
    assert units["systemd-journald.service"]["actions"] == []  # protected, though in the patterns
    assert units["backup.timer"]["actions"] == [] and units["backup.timer"]["watched"] is True
    # a service action makes the next poll list the units again
    c.action("service", {"unit": "cron.service", "verb": "restart"})
    c.all()
    assert [r.split()[0] for r in fake_systemctl.runs()] == ["list-units", "show", "show", "restart", "list-units"]
    c.SYSTEMD_TTL = 0.0
    c.all()
    assert len(fake_systemctl.runs()) == 6


def test_without_systemd_a_poll_spawns_nothing(agent, tmp_path, monkeypatch):
    proc, sys = copy_tree(tmp_path)
    runs = []
    monkeypatch.setattr(agent, "_run", lambda argv, timeout: runs.append(argv) or (0, ""))
    c = agent.Collector(proc=proc, sys=sys, docker_socket=None, live=False,
                        systemctl=str(tmp_path / "no-systemctl"), policy={"watched_units": ["a.service"]})
    c.SYSTEMD_TTL = 0.0
    for _ in range(3):
        assert c.all()["systemd"] == {"available": False, "failed": [], "watched": {"a.service": None}}
    assert c.services() == {"available": False, "failed": [], "watched": {"a.service": None}, "units": [],
                            "details_at": None}
    assert runs == []


def test_a_failing_systemctl_is_an_error_entry_not_rerun_every_poll(agent, tmp_path):
    proc, sys = copy_tree(tmp_path)
    log = tmp_path / "runs"
    exe = tmp_path / "systemctl"
    exe.write_text("#!/bin/sh\necho x >> %s\necho 'Failed to connect to bus' >&2\nexit 1\n" % log)
    exe.chmod(0o755)
    c = agent.Collector(proc=proc, sys=sys, docker_socket=None, live=False, systemctl=str(exe))
    docs = [c.all() for _ in range(3)]
    assert all(d["systemd"] is None and "Failed to connect to bus" in d["errors"]["systemd"] for d in docs)
    assert log.read_text().count("x") == 1


# ----------------------------------------------------------------------- the real /proc, kept stat fds

def _fd_targets() -> dict:
    """This process's open fds and what each one is open on. Other threads open and close fds
    meanwhile (an fd listed can be gone when it is read), so a vanished one is left out."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink("/proc/self/fd/" + name)
        except OSError:
            pass
    return out


def test_real_proc_scan_keeps_stat_fds_and_follows_processes_coming_and_going(agent):
    import subprocess

    first = subprocess.Popen(["sleep", "300"])
    second = None
    try:
        table = agent.scan_processes("/proc")
        keys = {k[0]: k for k in table}
        assert first.pid in keys and os.getpid() in keys
        assert table[keys[first.pid]][2] == b"sleep"
        kept = dict(agent._STAT_FDS)
        assert str(first.pid) in kept and len(kept) <= agent._stat_fds_max()
        # the second scan reads through the kept fds: same processes, fresh figures
        again = agent.scan_processes("/proc")
        assert keys[first.pid] in again and agent._STAT_FDS[str(first.pid)] == kept[str(first.pid)]
        second = subprocess.Popen(["sleep", "300"])
        first.kill()
        first.wait()  # reaped: its pid is gone from /proc
        fd = kept[str(first.pid)]
        table = agent.scan_processes("/proc")
        pids = {k[0] for k in table}
        assert second.pid in pids and first.pid not in pids
        assert str(first.pid) not in agent._STAT_FDS  # its fd was closed...
        assert _fd_targets().get(fd) != "/proc/%d/stat" % first.pid
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def test_a_kept_stat_fd_of_a_dead_process_is_not_read_as_a_new_one(agent):
    """A pid reused between two scans: the kept fd fails (ESRCH) and the pid's new stat is read."""
    import subprocess

    p = subprocess.Popen(["sleep", "300"])
    agent.scan_processes("/proc")
    entry = str(p.pid)
    fd = agent._STAT_FDS[entry]
    p.kill()
    p.wait()
    # as if the pid were in /proc again (reused): the kept fd is tried, fails, and is dropped
    with pytest.raises(OSError):
        agent._read_stat("/proc/", entry, agent._STAT_FDS)
    assert entry not in agent._STAT_FDS
    assert "/proc/%s/stat" % entry not in _fd_targets().values() or fd not in agent._STAT_FDS.values()
