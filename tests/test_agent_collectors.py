"""Collectors against captured and hand-made /proc + /sys trees (tests/data)."""

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
