"""Benchmark of several centrals on one PostgreSQL: CPU per poll per central, polls/s, takeover.

One run starts, all on this machine and only on loopback:

- one real PostgreSQL 15 from Debian's packages in a temporary directory (tests/pgserver.py,
  fsync on, unix socket only);
- one loopback farm of N hosts (bench/loopfarm.py: one asyncssh server answering with a real
  agent's answers, the same farm bench/bench_core.py uses), all N servers stored in the database;
- then 1, 2 and 3 real `central serve` processes (cluster.enabled, the same database, the same
  SSH key, as tests/test_cluster_hosts.py starts them), adding one at a time.

For each member count, once the leases match the rendezvous split and every server has been
polled since, plus one interval, it measures over a window: each central's CPU seconds
(/proc/PID/stat utime + stime, every thread) and its successful polls (`central_polls_total` of
its /metrics), so CPU ms per poll per central; total polls/s (and the samples the database
got in the window, as a cross-check); the servers each one leases; its RSS; PostgreSQL's, the
farm's and the whole machine's CPU over the same window.

Then the takeover: with 3 centrals, `kill -9` of one (by its PID) and the time until every one
of its servers has a sample from another central: per host, kill -> first new sample and the
gap between its last sample before and first after, p50 and max, against cluster.ttl +
poll.interval + poll.reload_interval; and the closest two samples of any host (never polled
by two centrals at once: at least half an interval apart).

Usage (root or not; PostgreSQL 15 from Debian's packages):
    PYTHONPATH=$PWD .venv/bin/python bench/bench_cluster.py [--servers 300] [--interval 10] [--window 60]
Raw JSON goes to bench/results/cluster-<time>.json; a markdown table is printed.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "bench"))

from bench_core import fmt, free_port, machine_busy, proc_cpu, save_results, start_agent, start_farm, stop  # noqa: E402
from central.cluster import share  # noqa: E402
from central.service import ensure_key_pair  # noqa: E402
from central.storage import Storage  # noqa: E402
from tests.pgserver import PGServer, missing  # noqa: E402


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def metric(port: int, name: str) -> float:
    """One unlabelled value of a central's /metrics (http.metrics_auth is off in this bench)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise RuntimeError(f"{name} missing from :{port}/metrics")


def wait_until(check, timeout: float, what: str, step: float = 0.5):
    """Poll check() until it returns something true; that value."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = check()
        if got:
            return got
        time.sleep(step)
    raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}
        self.logs = []
        self.pg: PGServer | None = None
        self.pg_root: Path | None = None
        self.agent = self.farm = None

    # -- set-up

    def psql(self, sql: str) -> list[list[str]]:
        return [line.split("|") for line in self.pg.psql(sql, "central").splitlines() if line]

    def setup(self) -> None:
        a = self.args
        (self.work / "no-policy.json").write_text('{"actions": {"kill": false, "service": false, "docker": false}}')
        self.key = self.work / "central_key"
        ensure_key_pair(self.key)
        self.secret = os.urandom(32).hex()
        fd = os.open(str(self.work / "agent-secret"), os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, (self.secret + "\n").encode())
        os.close(fd)
        self.agent, agent_port = start_agent(self.work)
        self.farm, self.farm_port, self.farm_key = start_farm(self.work, Path(str(self.key) + ".pub"), [agent_port],
                                                              a.cache_ttl)
        # a directory of its own: as root PostgreSQL runs as `postgres`, which cannot enter self.work
        self.pg_root = Path(tempfile.mkdtemp(prefix="bench-cluster-pg-"))
        self.pg = PGServer(self.pg_root)
        self.pg.start(durable=True)
        self.pg.psql("CREATE DATABASE central")
        self.url = self.pg.url("central")

        async def add():
            storage = await Storage.open(self.url)
            ids = []
            for i in range(a.servers):
                s = await storage.add_server(f"h{i:05d}", "127.0.0.1", port=self.farm_port, host_key=self.farm_key,
                                             agent_secret=self.secret)
                ids.append(s.id)
            await storage.close()
            return ids
        self.server_ids = asyncio.run(add())
        self.common = {"CENTRAL_STORAGE_URL": self.url, "CENTRAL_SSH_KEY_PATH": str(self.key),
                       "CENTRAL_POLL_INTERVAL": str(a.interval), "CENTRAL_POLL_RELOAD_INTERVAL": str(a.reload),
                       "CENTRAL_POLL_LOCAL": "false", "CENTRAL_HTTP_METRICS_AUTH": "false",
                       "CENTRAL_CLUSTER_ENABLED": "true", "CENTRAL_CLUSTER_TTL": str(a.ttl)}

    def start_central(self, m: str) -> None:
        self.ports[m] = free_port()
        env = {**os.environ, **self.common, "CENTRAL_DATA_DIR": str(self.work / m), "CENTRAL_CLUSTER_MEMBER": m,
               "CENTRAL_HTTP_PORT": str(self.ports[m]), "PYTHONPATH": str(REPO)}
        env.pop("CENTRAL_CONFIG", None)
        init = subprocess.run([sys.executable, "-m", "central", "init"], env=env, capture_output=True, text=True)
        if init.returncode:
            raise RuntimeError(f"central init for {m} failed: {init.stdout}{init.stderr}")
        self.logs.append(open(self.work / f"{m}.log", "wb"))
        self.procs[m] = subprocess.Popen([sys.executable, "-m", "central", "serve"], env=env,
                                         stdout=subprocess.DEVNULL, stderr=self.logs[-1])

    # -- measures

    def leases(self) -> dict[int, str]:
        return {int(sid): member for sid, member in self.psql(
            "SELECT server_id, member FROM leases WHERE expires_at > extract(epoch from now())")}

    def settle(self, members: list[str]) -> dict:
        """Wait for the rendezvous split, then for every server polled since, then one interval."""
        a = self.args
        t0 = time.time()
        want = {sid: m for m in members for sid in share(members, m, self.server_ids)}
        wait_until(lambda: self.leases() == want, 4 * a.ttl + 60, f"the leases split over {members}")
        split_s = time.time() - t0
        since = time.time()
        wait_until(lambda: int(self.psql(f"SELECT count(DISTINCT server_id) FROM samples WHERE ts > {since}")[0][0])
                   == a.servers, 4 * a.interval + 60, "every server polled after the split")
        time.sleep(a.interval)
        return {"split_s": split_s, "counts": {m: sum(1 for v in want.values() if v == m) for m in members}}

    def pg_cpu(self) -> dict[int, float]:
        return {pid: proc_cpu([pid]) for pid in self.pg.pids()}

    def window(self, members: list[str], settled: dict) -> dict:
        a = self.args
        pids = {m: self.procs[m].pid for m in members}
        others = [self.farm.pid, self.agent.pid]
        p0 = {m: metric(self.ports[m], "central_polls_total") for m in members}
        c0 = {m: proc_cpu([pid]) for m, pid in pids.items()}
        g0, o0, mb0, t0 = self.pg_cpu(), proc_cpu(others), machine_busy(), time.time()
        time.sleep(a.window)
        c1 = {m: proc_cpu([pid]) for m, pid in pids.items()}
        g1, o1, mb1, t1 = self.pg_cpu(), proc_cpu(others), machine_busy(), time.time()
        p1 = {m: metric(self.ports[m], "central_polls_total") for m in members}
        win = t1 - t0
        stored = int(self.psql(f"SELECT count(*) FROM samples WHERE ts >= {t0} AND ts < {t1}")[0][0])
        per = []
        for m in members:
            polls = p1[m] - p0[m]
            cpu = c1[m] - c0[m]
            per.append({"member": m, "servers": settled["counts"][m], "polls": polls, "cpu_s": cpu,
                        "cpu_ms_per_poll": cpu / polls * 1000 if polls else None, "core_share": cpu / win,
                        "polls_per_s": polls / win, "rss_mb": rss_mb(pids[m])})
        pg = sum(g1[p] - g0.get(p, 0.0) for p in g1)
        total_polls = sum(r["polls"] for r in per)
        return {"members": len(members), "window_s": win, "split_s": settled["split_s"], "centrals": per,
                "total_polls": total_polls, "polls_per_s": total_polls / win, "samples_stored": stored,
                "central_cpu_s": sum(r["cpu_s"] for r in per),
                "central_ms_per_poll": sum(r["cpu_s"] for r in per) / total_polls * 1000 if total_polls else None,
                "pg_cpu_s": pg, "pg_ms_per_poll": pg / total_polls * 1000 if total_polls else None,
                "farm_core_share": (o1 - o0) / win,
                "machine_busy_cores": (mb1[0] - mb0[0]) / (mb1[1] - mb0[1]) * os.cpu_count(),
                "loadavg": os.getloadavg()}

    def takeover(self, victim: str) -> dict:
        a = self.args
        dead = sorted(sid for sid, m in self.leases().items() if m == victim)
        killed_at = time.time()
        os.kill(self.procs[victim].pid, signal.SIGKILL)
        self.procs[victim].wait()
        ids = ",".join(map(str, dead))

        def all_back():
            n = int(self.psql(f"SELECT count(DISTINCT server_id) FROM samples WHERE ts > {killed_at}"
                              f" AND server_id IN ({ids})")[0][0])
            return n == len(dead)
        wait_until(all_back, 10 * a.ttl + 60, f"{victim}'s servers polled again", step=0.2)
        done_s = time.time() - killed_at
        rows = self.psql(
            f"SELECT x.id, (SELECT max(ts) FROM samples s WHERE s.server_id = x.id AND ts <= {killed_at}),"
            f" (SELECT min(ts) FROM samples s WHERE s.server_id = x.id AND ts > {killed_at})"
            f" FROM (SELECT unnest(ARRAY[{ids}]) AS id) x")
        after = [float(r[2]) - killed_at for r in rows]
        gaps = [float(r[2]) - float(r[1]) for r in rows]
        owners = self.leases()
        new_owners = {}
        for sid in dead:
            new_owners[owners.get(sid, "?")] = new_owners.get(owners.get(sid, "?"), 0) + 1
        closest = float(self.psql(
            "SELECT coalesce(min(d), 1e9) FROM (SELECT ts - lag(ts) OVER (PARTITION BY server_id ORDER BY ts)"
            " AS d FROM samples) x")[0][0])
        bound = a.ttl + a.interval + a.reload
        return {"victim": victim, "servers": len(dead), "all_back_s": done_s, "new_owners": new_owners,
                "kill_to_first_p50_s": pct(after, 0.5), "kill_to_first_max_s": max(after),
                "gap_p50_s": pct(gaps, 0.5), "gap_max_s": max(gaps), "bound_s": bound,
                "closest_samples_s": closest, "loadavg": os.getloadavg()}

    # -- tear-down

    def close(self) -> None:
        for p in self.procs.values():
            stop(p)
        for f in self.logs:
            f.close()
        for p in (self.farm, self.agent):
            if p is not None:
                stop(p)
        if self.pg is not None:
            self.pg.stop()
        if self.pg_root is not None:
            shutil.rmtree(self.pg_root, ignore_errors=True)


def markdown(res: dict) -> str:
    a = res["args"]
    out = [f"Run {res['started']} on {res['cpus']} cores, {a['servers']} loopback servers at {a['interval']:g} s, "
           f"cluster.ttl {a['ttl']:g} s, poll.reload_interval {a['reload']:g} s, window {a['window']:g} s per member "
           f"count; load average before {res['load_before'][0]:.2f} / {res['load_before'][1]:.2f} / "
           f"{res['load_before'][2]:.2f}, after {res['load_after'][0]:.2f} / {res['load_after'][1]:.2f} / "
           f"{res['load_after'][2]:.2f}. `bench/bench_cluster.py`.", "",
           "| centrals | central | servers leased | polls | polls/s | CPU ms/poll | core share | RSS MB |",
           "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for w in res["runs"]:
        for c in w["centrals"]:
            out.append(f"| {w['members']} | {c['member']} | {c['servers']} | {c['polls']:.0f} | {c['polls_per_s']:.1f} | "
                       f"**{fmt(c['cpu_ms_per_poll'])}** | {c['core_share']:.3f} | {c['rss_mb']:.0f} |")
    out += ["", "| centrals | total polls/s | samples stored in window | centrals' CPU ms/poll | centrals' core share |"
            " PostgreSQL CPU ms/poll |"
            " farm+agent core share | machine busy cores | load (1 min) at window end | split settled after s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for w in res["runs"]:
        out.append(f"| {w['members']} | **{w['polls_per_s']:.1f}** | {w['samples_stored']} | {fmt(w['central_ms_per_poll'])} | "
                   f"{w['central_cpu_s'] / w['window_s']:.3f} | {fmt(w['pg_ms_per_poll'])} | {w['farm_core_share']:.3f} | {w['machine_busy_cores']:.2f} | "
                   f"{w['loadavg'][0]:.2f} | {w['split_s']:.1f} |")
    t = res.get("takeover")
    if t:
        owners = ", ".join(f"{k} {v}" for k, v in sorted(t["new_owners"].items()))
        out += ["", f"Takeover: `kill -9` of {t['victim']} ({t['servers']} servers; taken by {owners}); "
                f"load (1 min) {t['loadavg'][0]:.2f}.", "",
                "| measure | p50 s | max s |", "|---|---:|---:|",
                f"| kill -> first sample from another central, per host | {t['kill_to_first_p50_s']:.1f} | "
                f"**{t['kill_to_first_max_s']:.1f}** |",
                f"| gap per host (last sample before -> first after) | {t['gap_p50_s']:.1f} | {t['gap_max_s']:.1f} |",
                f"| ttl + interval + reload (the expected bound) | | {t['bound_s']:.1f} |",
                "", f"Every one of its servers polled again {t['all_back_s']:.1f} s after the kill; the closest two "
                f"samples of any host in the whole run are {t['closest_samples_s']:.2f} s apart (interval {a['interval']:g} s)."]
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--servers", type=int, default=300)
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--window", type=float, default=60.0, help="measuring window per member count, seconds")
    p.add_argument("--ttl", type=float, default=15.0, help="cluster.ttl (the default)")
    p.add_argument("--reload", type=float, default=5.0, help="poll.reload_interval (the default)")
    p.add_argument("--centrals", type=int, default=3)
    p.add_argument("--cache-ttl", type=float, default=1.0)
    p.add_argument("--no-takeover", action="store_true")
    args = p.parse_args()
    why = missing()
    if why:
        sys.exit(f"bench_cluster: {why}")
    res = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpus": os.cpu_count(), "args": vars(args),
           "load_before": os.getloadavg(), "runs": []}
    bench = Bench(args)
    try:
        bench.setup()
        members: list[str] = []
        for i in range(args.centrals):
            m = f"c{i}"
            bench.start_central(m)
            members.append(m)
            print(f"{len(members)} central(s): waiting for the split", flush=True)
            settled = bench.settle(members)
            w = bench.window(members, settled)
            res["runs"].append(w)
            print(f"  {w['polls_per_s']:.1f} polls/s, " + ", ".join(
                f"{c['member']} {c['servers']} servers {fmt(c['cpu_ms_per_poll'])} ms/poll" for c in w["centrals"])
                + f", PostgreSQL {fmt(w['pg_ms_per_poll'])} ms/poll, machine {w['machine_busy_cores']:.2f} cores, "
                f"load {w['loadavg'][0]:.2f}", flush=True)
        if not args.no_takeover and len(members) > 1:
            print(f"takeover: kill -9 of {members[0]}", flush=True)
            res["takeover"] = bench.takeover(members[0])
    except Exception:
        print(f"(work dir kept: {bench.work})", file=sys.stderr)
        bench.close()
        raise
    bench.close()
    res["load_after"] = os.getloadavg()
    out = save_results("cluster", res)
    shutil.rmtree(bench.work, ignore_errors=True)
    print(f"\nraw results: {out}\n")
    print(markdown(res))


if __name__ == "__main__":
    main()
