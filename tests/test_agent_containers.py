"""The agent's container collector on a cgroup v2 host tree and a Docker Engine over a real unix socket.

This machine's cgroups are v1 (the real LXC host test, tests/test_containers_lxc.py, reads
them); the v2 tree here is written in the kernel's file formats (Documentation/admin-guide/
cgroup-v2.rst: cpu.stat, memory.current, memory.stat, memory.max, cpu.max, pids.current,
io.stat, cgroup.events), laid out as Docker's systemd driver (system.slice/docker-ID.scope),
Podman (machine.slice/libpod-ID.scope) and LXC 4+ (lxc.payload.NAME) lay them out. No Docker
engine runs here: the Engine API is served by an HTTP server on a real unix socket with the
answers' shape from the Engine API reference (GET /containers/json, GET /containers/ID/json;
Status texts as dockerd writes them, e.g. "Up 2 hours (healthy)").
"""
from __future__ import annotations

import json
import os
import socketserver
import threading
from http.server import BaseHTTPRequestHandler

import pytest

pytestmark = pytest.mark.unit

WEB = "a" * 64
DB = "b" * 64
OLD = "c" * 64
POD = "d" * 64


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)


def proc_stat(pid, start):
    return "%d (init) S 0 %d %d 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 %d 1000000 100 0\n" % (pid, pid, pid, start)


NET_DEV = ("Inter-|   Receive                                                |  Transmit\n"
           " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n"
           "    lo: 5000 50 0 0 0 0 0 0 5000 50 0 0 0 0 0 0\n"
           "  eth0: {rx} 10 0 0 0 0 0 0 {tx} 10 0 0 0 0 0 0\n")


def container_cgroup(cg, rel, *, usage_usec, current, inactive, limit, cpu_max, pids, rbytes, wbytes, procs,
                     frozen=False):
    d = os.path.join(cg, rel)
    write(d + "/cpu.stat", "usage_usec %d\nuser_usec 1\nsystem_usec 1\n" % usage_usec)
    write(d + "/memory.current", "%d\n" % current)
    write(d + "/memory.stat", "anon 1000\nfile 2000\ninactive_file %d\nactive_file 0\n" % inactive)
    write(d + "/memory.max", limit + "\n")
    write(d + "/cpu.max", cpu_max + "\n")
    write(d + "/pids.current", "%d\n" % pids)
    write(d + "/io.stat", "8:0 rbytes=%d wbytes=%d rios=1 wios=1 dbytes=0 dios=0\n"
                          "8:16 rbytes=%d wbytes=%d rios=1 wios=1 dbytes=0 dios=0\n" % (rbytes, wbytes, rbytes, wbytes))
    write(d + "/cgroup.events", "populated 1\nfrozen %d\n" % int(frozen))
    write(d + "/cgroup.procs", "".join("%d\n" % p for p in procs))


def v2_host(root):
    """A cgroup v2 host: Docker web (running, healthy) and db, Podman pod, LXC ct1 (its init in a
    nested init.scope, as systemd inside a container puts it) and a stopped LXC ct2."""
    proc, sys, lxc = str(root / "proc"), str(root / "sys"), str(root / "lxc")
    write(proc + "/self/mounts", "sysfs /sys sysfs rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n"
                                 "proc /proc proc rw 0 0\n")
    write(proc + "/uptime", "1000.00 100.00\n")
    cg = sys + "/fs/cgroup"
    write(cg + "/cgroup.controllers", "cpuset cpu io memory pids\n")
    container_cgroup(cg, "system.slice/docker-%s.scope" % WEB, usage_usec=1000000, current=300 << 20,
                     inactive=100 << 20, limit=str(512 << 20), cpu_max="150000 100000", pids=7,
                     rbytes=1000, wbytes=2000, procs=[101, 102])
    container_cgroup(cg, "system.slice/docker-%s.scope" % DB, usage_usec=5, current=1 << 20, inactive=0,
                     limit="max", cpu_max="max 100000", pids=1, rbytes=0, wbytes=0, procs=[201])
    container_cgroup(cg, "machine.slice/libpod-%s.scope" % POD, usage_usec=5, current=1 << 20, inactive=0,
                     limit="max", cpu_max="max 100000", pids=1, rbytes=0, wbytes=0, procs=[301])
    container_cgroup(cg, "lxc.payload.ct1", usage_usec=2000000, current=64 << 20, inactive=0,
                     limit=str(256 << 20), cpu_max="max 100000", pids=12, rbytes=0, wbytes=0, procs=[],
                     frozen=True)
    write(cg + "/lxc.payload.ct1/init.scope/cgroup.procs", "401\n402\n")
    write(cg + "/system.slice/cron.service/cgroup.procs", "9\n")  # not a container
    for pid, start in ((101, 50000), (102, 60000), (201, 70000), (301, 80000), (401, 20000), (402, 90000)):
        write("%s/%d/stat" % (proc, pid), proc_stat(pid, start))
        write("%s/%d/net/dev" % (proc, pid), NET_DEV.format(rx=1000 * pid, tx=2000 * pid))
    write(lxc + "/ct1/config", "# Template used to create this container: /usr/share/lxc/templates/lxc-debian\n")
    write(lxc + "/ct2/config", "lxc.include = /usr/share/lxc/config/alpine.common.conf\n")
    write(lxc + "/not a name/config", "")
    return proc, sys, lxc


class Engine:
    """An Engine API on a real unix socket: GET /containers/json?all=1 and /containers/ID/json."""

    def __init__(self, path, listing, inspect):
        self.listing, self.inspect, self.requests = listing, inspect, []
        engine = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                engine.requests.append(self.path)
                if self.path == "/containers/json?all=1":
                    body, status = engine.listing, 200
                elif self.path.startswith("/containers/") and self.path.endswith("/json"):
                    cid = self.path.split("/")[2]
                    body, status = (engine.inspect[cid], 200) if cid in engine.inspect else ({"message": "no"}, 404)
                else:
                    body, status = {"message": "page not found"}, 404
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

            def address_string(self):
                return "unix"

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.server = Server(path, Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def summary(cid, name, image, state, status):
    return {"Id": cid, "Names": ["/" + name], "Image": image, "ImageID": "sha256:" + "e" * 64, "Command": "run",
            "Created": 1700000000, "State": state, "Status": status, "Ports": [], "Labels": {},
            "HostConfig": {"NetworkMode": "default"}, "Mounts": []}


@pytest.fixture
def engine(tmp_path):
    path = str(tmp_path / "docker.sock")
    e = Engine(path, [summary(WEB, "web", "nginx:1.25", "running", "Up 2 hours (healthy)"),
                      summary(DB, "db", "postgres:16", "running", "Up 5 minutes (unhealthy)"),
                      summary(OLD, "old", "busybox", "exited", "Exited (1) 3 days ago")],
               {WEB: {"Id": WEB, "RestartCount": 0}, DB: {"Id": DB, "RestartCount": 4},
                OLD: {"Id": OLD, "RestartCount": 2}})
    yield e
    e.close()


def by_name(doc):
    return {c["name"]: c for c in doc["containers"]}


class Clock:
    """The agent's time module with a monotonic clock the test moves (rates over a known interval)."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now

    def time(self):
        return 1.7e9 + self.now


def test_cgroup_v2_host_with_docker_podman_and_lxc(agent, tmp_path, engine, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(agent, "time", clock)
    proc, sys, lxc = v2_host(tmp_path)
    cc = agent.ContainerCollector(proc, sys, lxc, (engine.server.server_address, None))
    listing = agent.docker_list(engine.server.server_address)
    first = cc.collect(listing)
    assert first["available"] is True and first["reason"] is None and first["cgroup"] == 2
    got = by_name(first)
    assert sorted(got) == ["ct1", "ct2", "db", "dddddddddddd", "old", "web"]
    web = got["web"]
    assert web["engine"] == "docker" and web["id"] == WEB[:12] and web["image"] == "nginx:1.25"
    assert web["health"] == "healthy" and web["restarts"] == 0 and web["state"] == "running"
    assert web["memory_used"] == 200 << 20 and web["memory_limit"] == 512 << 20 and web["memory_percent"] == 39.1
    assert web["cpu_limit"] == 1.5 and web["pids"] == 7
    assert web["cpu_percent"] is None and web["rx_rate"] is None  # no previous sample yet
    assert web["uptime"] == pytest.approx(1000 - 50000 / agent._CLK_TCK, abs=0.1)  # its oldest process
    assert got["db"]["health"] == "unhealthy" and got["db"]["restarts"] == 4 and got["db"]["memory_limit"] is None
    assert got["old"]["state"] == "exited" and got["old"]["memory_used"] is None and got["old"]["restarts"] == 2
    pod = got["dddddddddddd"]
    assert pod["engine"] == "podman" and pod["memory_used"] == 1 << 20  # no podman socket: named by id
    ct1 = got["ct1"]
    assert ct1["engine"] == "lxc" and ct1["image"] == "debian" and ct1["state"] == "frozen"
    assert ct1["uptime"] == pytest.approx(1000 - 20000 / agent._CLK_TCK, abs=0.1)  # init in init.scope
    assert got["ct2"]["state"] == "stopped" and got["ct2"]["image"] == "alpine" and got["ct2"]["pids"] is None
    # running first, then by name
    assert [c["name"] for c in first["containers"]][:2] == ["db", "dddddddddddd"]
    assert first["count"] == 6

    # a second poll: rates from the counters' increase
    web_dir = sys + "/fs/cgroup/system.slice/docker-%s.scope" % WEB
    write(web_dir + "/cpu.stat", "usage_usec %d\n" % (1000000 + 500000))
    write(web_dir + "/io.stat", "8:0 rbytes=1000 wbytes=%d\n8:16 rbytes=1000 wbytes=2000\n" % (2000 + 4096))
    write(proc + "/101/net/dev", NET_DEV.format(rx=101000 + 1000, tx=202000))
    clock.now += 2.0
    second = by_name(cc.collect(agent.docker_list(engine.server.server_address)))
    web = second["web"]
    assert web["cpu_percent"] == 25.0  # 0.5 s of CPU in 2 s: a quarter of one core
    assert web["write_rate"] == 2048.0 and web["read_rate"] == 0.0
    assert web["rx_rate"] == 500.0 and web["tx_rate"] == 0.0
    # restart counts are cached: one inspect per container in the first poll only
    assert sum(1 for r in engine.requests if r.endswith("/json") and r != "/containers/json?all=1") == 3


def test_counter_resets_and_vanished_cgroups(agent, tmp_path):
    proc, sys, lxc = v2_host(tmp_path)
    cc = agent.ContainerCollector(proc, sys, lxc, (None, None))
    cc.collect()
    web_dir = sys + "/fs/cgroup/system.slice/docker-%s.scope" % WEB
    write(web_dir + "/cpu.stat", "usage_usec 10\n")  # restarted: the counter went back
    import shutil
    shutil.rmtree(sys + "/fs/cgroup/lxc.payload.ct1")  # stopped between the listing and the read
    doc = by_name(cc.collect())
    assert doc[WEB[:12]]["cpu_percent"] is None  # never a negative rate
    assert doc["ct1"]["state"] == "stopped"


def test_a_host_without_cgroups_or_engines_says_why(agent, tmp_path):
    write(str(tmp_path / "proc/self/mounts"), "proc /proc proc rw 0 0\n")
    write(str(tmp_path / "proc/uptime"), "5.0 1.0\n")
    cc = agent.ContainerCollector(str(tmp_path / "proc"), str(tmp_path / "sys"), str(tmp_path / "none"), (None, None))
    doc = cc.collect()
    assert doc == {"available": False, "reason": doc["reason"], "cgroup": None, "count": 0, "containers": []}
    assert "cgroup" in doc["reason"]


def test_the_collector_shares_one_engine_listing_between_docker_and_containers(agent, tmp_path, engine, caplog):
    proc, sys, lxc = v2_host(tmp_path)
    c = agent.Collector(proc=proc, sys=sys, docker_socket=engine.server.server_address, live=False, lxc_path=lxc)
    engine.requests.clear()
    doc = c.all()
    assert "docker" not in doc["errors"] and "containers" not in doc["errors"]  # (the tree has no /proc/stat...)
    assert [x["name"] for x in doc["docker"]["containers"]] == ["db", "old", "web"]
    assert by_name(doc["containers"])["web"]["health"] == "healthy"
    assert engine.requests.count("/containers/json?all=1") == 1


# --- units (systemctl show, captured from a real Debian 12 container: tests/data/systemd/README.md)

def test_systemctl_show_output_of_a_real_debian_12_container(agent):
    from tests.agentutil import DATA

    with open(os.path.join(DATA, "systemd", "show-debian12.txt")) as fh:
        units = agent.parse_unit_show(fh.read())
    assert sorted(units) == ["apt-daily.timer", "cron.service", "nonexist.service", "ssh.service"]
    assert units["cron.service"]["MainPID"] == "52" and units["cron.service"]["ControlGroup"] == "/system.slice/cron.service"
    assert agent._utc_time(units["apt-daily.timer"]["NextElapseUSecRealtime"]) == 1796263312.0  # 2026-12-03 02:01:52Z
    assert agent._usec_int(units["apt-daily.timer"]["LastTriggerUSecMonotonic"]) is None  # 0: never
    assert agent._usec_int(units["nonexist.service"]["MainPID"]) is None
    assert agent._utc_time("Thu 2026-12-03 02:01:52 CET") is None  # only what TZ=UTC prints


def test_unit_cgroup_usage_on_v2_and_refused_paths(agent, tmp_path):
    proc, sys, lxc = v2_host(tmp_path)
    roots = agent.cgroup_roots(proc, sys)
    cg = sys + "/fs/cgroup/system.slice/cron.service"
    write(cg + "/memory.current", "4096\n")
    write(cg + "/cpu.stat", "usage_usec 7\n")
    assert agent.unit_cgroup_usage(roots, "/system.slice/cron.service") == (4096, 7000)
    assert agent.unit_cgroup_usage(roots, "/../../etc") == (None, None)
    assert agent.unit_cgroup_usage(roots, "") == (None, None)
