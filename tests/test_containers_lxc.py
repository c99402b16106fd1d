"""Per-container figures on a real LXC host: this machine, with real Debian LXC containers
(tests/lxc.py) under a real cgroup memory limit (256M) and a CPU quota written into their
cgroup. The agent's figures are checked against the cgroup files and /proc, and against load
generated inside a container (a busy loop held to half a CPU by the quota, 100 MiB held in
memory, UDP sent to the bridge); then the same figures through the central (the host's own
`local` server polls this machine in-process), stored, listed, charted, and alerted on once the
container is killed.
"""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from central.bundled import agent_module
from tests.apiclient import start_api, wait_online
from tests.test_pages_browser import browser  # noqa: F401  (fixture)

pytestmark = pytest.mark.lxc

MIB = 1 << 20
LIMIT = 256 * MIB


def cgroup_roots():
    return agent_module().cgroup_roots()


def cgroup_file(roots, controller, container, name):
    """A container's cgroup file (v1: under the controller's mount; v2: the unified one)."""
    base = roots["v2"] if roots["version"] == 2 else roots["v1"][controller]
    with open(os.path.join(base, "lxc.payload." + container.lxc_name, name)) as fh:
        return fh.read()


def memory_from_files(roots, c):
    """What the cgroup files say the container uses: usage minus inactive file cache."""
    if roots["version"] == 2:
        current = int(cgroup_file(roots, "memory", c, "memory.current"))
        stat = dict(line.split() for line in cgroup_file(roots, "memory", c, "memory.stat").splitlines())
        return current - int(stat["inactive_file"])
    usage = int(cgroup_file(roots, "memory", c, "memory.usage_in_bytes"))
    stat = dict(line.split() for line in cgroup_file(roots, "memory", c, "memory.stat").splitlines())
    return usage - int(stat["total_inactive_file"])


def cpu_ns_from_files(roots, c):
    if roots["version"] == 2:
        stat = dict(line.split() for line in cgroup_file(roots, "cpu", c, "cpu.stat").splitlines())
        return int(stat["usage_usec"]) * 1000
    return int(cgroup_file(roots, "cpuacct", c, "cpuacct.usage"))


def set_cpu_quota(roots, c, cpus):
    """A real CPU limit on the running container's cgroup (what lxc.cgroup.cpu.* would set)."""
    if roots["version"] == 2:
        path = os.path.join(roots["v2"], "lxc.payload." + c.lxc_name, "cpu.max")
        value = "%d 100000" % int(cpus * 100000)
    else:
        path = os.path.join(roots["v1"]["cpu"], "lxc.payload." + c.lxc_name, "cpu.cfs_quota_us")
        with open(os.path.join(os.path.dirname(path), "cpu.cfs_period_us")) as fh:
            assert int(fh.read()) == 100000
        value = str(int(cpus * 100000))
    with open(path, "w") as fh:
        fh.write(value)


def entry(doc, c):
    found = [e for e in doc["containers"]["containers"] if e["name"] == c.lxc_name]
    assert len(found) == 1, [e["name"] for e in doc["containers"]["containers"]]
    return found[0]


def init_pid(c):
    return int(subprocess.run(["lxc-info", "-n", c.lxc_name, "-p", "-H"], capture_output=True, text=True,
                              check=True).stdout)


@pytest.fixture
def busy(lxc_container):
    """A running container with a 0.5-CPU quota and a 256M memory limit."""
    c = lxc_container("ct-figures", memory="256M")
    roots = cgroup_roots()
    set_cpu_quota(roots, c, 0.5)
    return c, roots


def test_agent_figures_match_the_cgroup_files_and_the_load_inside(busy):
    c, roots = busy
    agent = agent_module()
    collector = agent.Collector()
    first = entry(collector.all(), c)
    assert first["engine"] == "lxc" and first["state"] == "running" and first["image"] == "debian"
    assert first["memory_limit"] == LIMIT == int(cgroup_file(roots, "memory", c, "memory.limit_in_bytes"
                                                             if roots["version"] == 1 else "memory.max"))
    assert first["cpu_limit"] == 0.5
    # uptime: the container's init process (the host's view of its PID 1)
    etimes = int(subprocess.run(["ps", "-o", "etimes=", "-p", str(init_pid(c))], capture_output=True,
                                text=True).stdout)
    assert abs(first["uptime"] - etimes) <= 2, (first["uptime"], etimes)

    # CPU: a busy loop inside for 3 s, held to half a CPU by the quota
    before_ns, t0 = cpu_ns_from_files(roots, c), time.monotonic()
    collector.all()
    c.attach(["timeout", "3", "python3", "-c", "while True: pass"], check=False)
    doc = collector.all()
    after_ns, t1 = cpu_ns_from_files(roots, c), time.monotonic()
    fig = entry(doc, c)
    from_files = (after_ns - before_ns) / (t1 - t0) / 1e7
    assert 35.0 <= fig["cpu_percent"] <= 56.0, fig  # percent of one core, under a 0.5-CPU quota
    assert abs(fig["cpu_percent"] - from_files) <= 8.0, (fig["cpu_percent"], from_files)

    # memory: 100 MiB held by a process inside
    holder = subprocess.Popen(["lxc-attach", "-n", c.lxc_name, "--clear-env", "--", "python3", "-c",
                               "import sys; b = bytearray(100 << 20); b[::4096] = b'x' * len(b[::4096]);"
                               " print('ok', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        fig = entry(collector.all(), c)
        files = memory_from_files(roots, c)
        assert fig["memory_used"] >= first["memory_used"] + 95 * MIB, (fig["memory_used"], first["memory_used"])
        assert abs(fig["memory_used"] - files) <= 4 * MIB, (fig["memory_used"], files)
        assert fig["memory_percent"] == round(100.0 * fig["memory_used"] / LIMIT, 1)
        pids = int(cgroup_file(roots, "pids", c, "pids.current"))
        assert abs(fig["pids"] - pids) <= 2 and fig["pids"] >= 3
    finally:
        holder.stdin.close()
        holder.wait(30)
        holder.stdout.close()

    # network: 2 MB of UDP from the container to the bridge, the rate against eth0's counters
    def tx_bytes():
        with open("/proc/%d/net/dev" % init_pid(c)) as fh:
            return sum(int(line.split(":")[1].split()[8]) for line in fh if ":" in line
                       and line.split(":")[0].strip() != "lo")
    sent_before, t0 = tx_bytes(), time.monotonic()
    collector.all()
    t1 = time.monotonic()
    c.attach(["python3", "-c", "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              "for _ in range(2000): s.sendto(b'x' * 1000, (%r, 9))" % c.farm.gateway])
    t2 = time.monotonic()
    fig = entry(collector.all(), c)
    sent, t3 = tx_bytes() - sent_before, time.monotonic()
    assert sent >= 2000 * 1028  # payload and UDP/IP headers
    # the agent measured between its two reads, which lie within [t0, t3] and span [t1, t2]
    assert sent / (t3 - t0) * 0.95 <= fig["tx_rate"] <= sent / (t2 - t1) * 1.05, (fig["tx_rate"], sent)

    # restarted between two polls: a new cgroup of the same name. The agent keeps the cgroup
    # files and net/dev open between polls (agent.KeptFiles); the old cgroup's fail, are opened
    # again, and the figures, init and network namespace are the new container's
    kept = collector.containers._kept
    assert kept is not None and any("/lxc.payload.%s/" % c.lxc_name in p for p in kept.fds), sorted(kept.fds)
    assert "/proc/%d/net/dev" % init_pid(c) in kept.fds
    c.kill()
    c.start()
    again = entry(collector.all(), c)
    etimes = int(subprocess.run(["ps", "-o", "etimes=", "-p", str(init_pid(c))], capture_output=True,
                                text=True).stdout)
    assert again["state"] == "running" and abs(again["uptime"] - etimes) <= 2, (again["uptime"], etimes)
    assert "/proc/%d/net/dev" % init_pid(c) in kept.fds
    assert again["cpu_limit"] is None and again["memory_limit"] == LIMIT  # the quota was the old cgroup's
    assert abs(again["memory_used"] - memory_from_files(roots, c)) <= 8 * MIB, again  # (still booting)
    assert abs(again["pids"] - int(cgroup_file(roots, "pids", c, "pids.current"))) <= 2, again

    # a stopped container: listed from /var/lib/lxc, its figures null
    c.kill()
    gone = entry(collector.all(), c)
    assert gone["state"] == "stopped" and gone["memory_used"] is None and gone["cpu_percent"] is None
    assert gone["uptime"] is None


async def test_the_central_stores_lists_charts_and_alerts_on_a_real_container(config, busy):
    c, roots = busy
    api = await start_api(config)
    try:
        await wait_online(api, "local")
        await api.central.poller.wait_flushed()
        await api.central.poller.wait_flushed()  # two polls: rates have a baseline
        status, listed, _ = await api.get("/api/v1/servers/local/containers", role="viewer")
        assert status == 200 and listed["available"] is True and listed["cgroup"] == roots["version"]
        [mine] = [e for e in listed["containers"] if e["name"] == c.lxc_name]
        assert mine["memory_limit"] == LIMIT and mine["cpu_limit"] == 0.5 and mine["engine"] == "lxc"
        assert abs(mine["memory_used"] - memory_from_files(roots, c)) <= 8 * MIB
        assert mine["actions"] == []  # no action kind for LXC containers
        assert len(mine["spark"]["ts"]) >= 1 and mine["spark"]["mem_used"][-1] > 0

        status, detail, _ = await api.get(f"/api/v1/servers/local/containers/{c.lxc_name}?range=1h", role="viewer")
        assert status == 200 and detail["source"] == "raw" and detail["current"]["name"] == c.lxc_name
        assert detail["series"]["mem_used"] and detail["series"]["mem_used"][-1] > 0
        status, body, _ = await api.get("/api/v1/servers/local/containers/no-such-container", role="viewer")
        assert status == 404 and body["error"] == "not_found" and "no-such-container" in body["detail"]

        status, page, _ = await api.get("/servers/local", role="viewer")
        assert status == 200 and f'href="/servers/local/containers/{c.lxc_name}"' in page
        status, page, _ = await api.get(f"/servers/local/containers/{c.lxc_name}", role="viewer")
        assert status == 200 and 'id="chart-cpu"' in page and "256.0 MiB" in page

        # killed: the built-in container_stopped rule starts (pending for its 60 s)
        c.kill()

        async def stopped_pending():
            await api.central.poller.wait_flushed()
            return any(st.rule == "container_stopped" and st.label == c.lxc_name
                       for st in api.central.alerts.states.values())
        for _ in range(20):
            if await stopped_pending():
                break
        else:
            raise AssertionError("container_stopped did not start for the killed container")
        st = [s for s in api.central.alerts.states.values() if s.rule == "container_stopped"
              and s.label == c.lxc_name][0]
        assert st.state == "pending" and "stopped" in st.summary
    finally:
        await api.client.close()



def test_an_lxc_containers_own_journal_read_from_its_host(busy):
    c, roots = busy
    agent = agent_module()
    collector = agent.Collector()
    marker = "host-read-%d" % time.time_ns()
    # logger stays alive a second (stdin open) so journald files the line with its metadata
    c.attach(["sh", "-c", "{ echo '%s from inside'; sleep 1; } | logger -t central-inside" % marker])
    c.attach(["journalctl", "--sync"], check=False)
    doc = collector.logs({"container": [c.lxc_name], "lines": ["50"]})
    assert doc["source"] == "lxc-journal" and doc["name"] == c.lxc_name
    [line] = [x for x in doc["lines"] if marker in (x["message"] or "")]
    assert line["identifier"] == "central-inside" and line["message"] == marker + " from inside"
    assert 1 <= doc["count"] <= 50 and doc["truncated"] is False
    with pytest.raises(agent.ActionError) as err:
        collector.logs({"container": ["no-such-container"]})
    assert err.value.status == 404
    with pytest.raises(agent.ActionError) as err:
        collector.logs({"container": [c.lxc_name], "lines": ["5000"]})
    assert err.value.status == 400


@pytest.mark.browser
async def test_the_page_lists_the_container_and_its_page_charts_it(config, busy, browser):
    from tests.test_pages_browser import ARTIFACTS, base_url
    from tests.test_pages_look_browser import screenshot
    from tests.test_pages_lxc import logged_in, playwright_expect

    c, roots = busy
    api = await start_api(config)
    try:
        await wait_online(api, "local")
        for _ in range(3):
            await api.central.poller.wait_flushed()  # a few samples: sparklines and a chart line
        context, page = await logged_in(browser, api)
        try:
            await page.goto(base_url(api) + "/servers/local")
            row = page.locator(f'#containers tr[data-container-row="{c.lxc_name}"]')
            await playwright_expect(row).to_have_count(1)
            assert await row.locator("svg.spark polyline").count() >= 1  # memory, at least
            await page.fill("#ct-filter", "no-such-thing")
            await playwright_expect(row).to_be_hidden()
            await page.fill("#ct-filter", "")
            ARTIFACTS.mkdir(exist_ok=True)
            await row.screenshot(path=str(ARTIFACTS / "containers-row.png"))
            await row.locator("a").click()
            await page.wait_for_url(base_url(api) + f"/servers/local/containers/{c.lxc_name}")
            await playwright_expect(page.locator("#chart-mem")).not_to_have_attribute("data-points", "0")
            await playwright_expect(page.locator("#container-mem")).to_contain_text("256.0 MiB")
            await screenshot(page, "container-page")
        finally:
            await context.close()
    finally:
        await api.client.close()
