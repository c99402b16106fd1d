"""Benchmark of the central's core: CPU per poll, poll latency, database size per host.

One run measures, against the REAL central code path (bench/central_driver.py runs Central ->
Poller -> SSHPool -> AgentClient -> Storage in its own process, so only its CPU is counted):

- a loopback farm (bench/loopfarm.py: one asyncssh server process for N hosts, answering with
  a real agent's answers) at 100, 500 and 1,000 hosts with aes128-gcm, and at 1,000 hosts with
  chacha20-poly1305 for the cipher comparison;
- the same loopback farm at 20 hosts, next to 20 REAL hosts (tests/hostfarm.py: network
  namespaces with OpenSSH sshd and the real agent), both ciphers, as the reality check;
- database size per host at steady state with the default interval and retention, built with
  the real storage code (write_polls, rollup, prune) from a real agent document.

Usage (root for the real hosts; 2 cores are enough):
    cd /work/wt/benchcore && PYTHONPATH=$PWD python3 bench/bench_core.py [--quick] [--skip-real]
Raw JSON goes to bench/results/core-<time>.json; a markdown table is printed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import asyncssh

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "bench"))
SECRET: list[str] = []  # the agent secret of the bench's real agent and loopback farm

from central.model import PollOutcome  # noqa: E402
from procstat import CLK_TCK, family, proc_cpu  # noqa: E402 (proc_cpu: the other benches import it from here)
from central.sample import extract_sample, parse_document  # noqa: E402
from central.service import ensure_key_pair  # noqa: E402
from central.sshpool import public_key_line  # noqa: E402
from central.storage import Storage  # noqa: E402

AES = ["aes128-gcm@openssh.com"]
CHACHA = ["chacha20-poly1305@openssh.com"]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + parts[4]
    total = sum(parts[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def start_agent(workdir: Path) -> tuple[subprocess.Popen, int]:
    """A real agent process on a free loopback port, once it answers (secret: workdir/agent-secret)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / "agent" / "agent.py"), "--port", str(port),
                             "--policy", str(workdir / "no-policy.json"), "--secret-file", str(workdir / "agent-secret"),
                             "--syslog-socket", ""],
                            stdout=subprocess.DEVNULL, stderr=open(workdir / f"agent-{port}.log", "w"))
    deadline = time.time() + 15
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("the agent did not start")


def start_farm(workdir: Path, pub: Path, agent_ports: list[int], ttl: float, live_inventory: bool = False) -> tuple[subprocess.Popen, int, str]:
    """The loopback farm process; returns (process, port, its host key line)."""
    host_key = workdir / "farm_host_key"
    if not host_key.exists():
        key = asyncssh.generate_private_key("ssh-ed25519")
        host_key.write_bytes(key.export_private_key())
    line = public_key_line(asyncssh.read_private_key(str(host_key)))
    argv = [sys.executable, str(REPO / "bench" / "loopfarm.py"), "--host-key", str(host_key),
            "--authorized-keys", str(pub), "--cache-ttl", str(ttl), "--secret-file", str(workdir / "agent-secret")] + (
        ["--live-inventory"] if live_inventory else [])
    for p in agent_ports:
        argv += ["--agent", f"127.0.0.1:{p}"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=open(workdir / "farm.log", "w"), text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    first = json.loads(proc.stdout.readline())
    return proc, first["port"], line


def save_results(prefix: str, results: dict) -> Path:
    """Write a run's raw results to bench/results/PREFIX-<time>.json; returns the file."""
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    return out


def fmt(value, digits: int = 3) -> str:
    """A figure for a markdown table: fixed digits, "-" when not measured."""
    return "-" if value is None else f"{value:.{digits}f}"


def stop(proc: subprocess.Popen) -> None:
    """End a process this bench started, by its PID."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


STOP_BACKLOG: list[int] = []  # --stop-backlog: outcomes queued just before the clean stop is timed
CODE: list[str] = []  # --code: the central the driver runs (a checkout's root), for before/after runs
PHASE_QUANTUM = None  # --phase-quantum: override central.poller.PHASE_QUANTUM in the driver
MAX_CONNECTS: list[int] = []  # --max-connects: ssh.max_concurrent_connects in the driver
RESTART: list[bool] = []  # --restart: the measured serve is a restart on a database of the fleet
GC_WALKS: list[bool] = []  # --gc-walks: count the objects each collection walks (costs the central CPU)
WORKERS: list[int] = []  # --workers N: poll.workers in the driver
PROFILE_CONNECT: list[int] = []  # --profile-connect S: py-spy over the first S seconds of the serve instead


def run_driver(workdir: Path, name: str, servers: list[dict], ciphers: list[str], key: Path,
               other_pids, interval: float, measure_intervals: int, profile: str | None = None) -> dict:
    """Run the central driver on these servers; returns its result plus the others' CPU."""
    data_dir = workdir / name
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    spec = {"data_dir": str(data_dir), "key_path": str(key), "interval": interval, "ciphers": ciphers,
            "servers": servers, "warmup_timeout": 120, "measure_intervals": measure_intervals,
            "profile": profile if profile == "cprofile" else None, "phase_quantum": PHASE_QUANTUM,
            "stop_backlog": STOP_BACKLOG[0] if STOP_BACKLOG else 0,
            "max_connects": MAX_CONNECTS[0] if MAX_CONNECTS else None, "restart": bool(RESTART),
            "gc_walks": bool(GC_WALKS), "workers": WORKERS[0] if WORKERS else 0}
    spec_path = data_dir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONPATH=CODE[0] if CODE else str(REPO))
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "central_driver.py"), str(spec_path)],
                            stdout=subprocess.PIPE, stderr=open(data_dir / "driver.log", "w"), text=True, env=env)
    result, o0, m0 = None, None, None
    pids = other_pids() if callable(other_pids) else other_pids
    # the start up to the window (connect phase plus the warm-up's last interval): who had the cores
    s0, sc0, sm0, st0 = proc_cpu(pids), 0.0, machine_busy(), time.time()  # the driver and its workers start at 0
    if profile == "py-spy" and PROFILE_CONNECT:
        # the connect phase: from the driver's start (its serve starts within a second)
        spy = subprocess.Popen(["py-spy", "record", "-p", str(proc.pid), "-d", str(PROFILE_CONNECT[0]),
                                "-t", *(["-s"] if WORKERS else []), "-r", "200", "-f", "raw", "-o", str(data_dir / "py-spy.txt")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for line in proc.stdout:
        msg = json.loads(line)
        if msg["event"] == "window_start":
            o0, m0 = proc_cpu(pids), machine_busy()
            took = time.time() - st0
            start_phase = {"start_phase_s": took, "start_phase_central_cores": (proc_cpu(family(proc.pid)) - sc0) / took,
                           "start_phase_others_cores": (o0 - s0) / took,
                           "start_phase_machine_cores": (m0[0] - sm0[0]) / (m0[1] - sm0[1]) * os.cpu_count()}
            if profile == "py-spy" and not PROFILE_CONNECT:
                spy = subprocess.Popen(["py-spy", "record", "-p", str(proc.pid), "-d", str(int(interval * measure_intervals)),
                                        "-t", *(["-s"] if WORKERS else []), "-r", "200", "-f", "raw", "-o", str(data_dir / "py-spy.txt")],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        elif msg["event"] == "window_end":
            o1, m1 = proc_cpu(pids), machine_busy()
        elif msg["event"] == "result":
            result = msg
    proc.wait()
    if profile == "py-spy":
        spy.wait()
    # the driver's log (the central's own: errors, tracebacks) outlives the work dir
    shutil.copy(data_dir / "driver.log", REPO / "bench" / "results" / f"core-{name}-driver.log")
    if result is None:
        raise RuntimeError(f"{name}: the driver failed; see {data_dir / 'driver.log'}")
    win = result["window_s"]
    result.update(start_phase)
    result.update(
        name=name,
        others_cpu_s=o1 - o0, others_core_fraction=(o1 - o0) / win,
        machine_busy_cores=(m1[0] - m0[0]) / (m1[1] - m0[1]) * os.cpu_count(),
        others_ms_per_poll=(o1 - o0) / result["polls_stored"] * 1000 if result["polls_stored"] else None,
    )
    result = _nan_for_none(result)
    report(result)
    return result



def _longest(longest: dict | None) -> str:
    """', gen 1 of 23,456 objects, 12,345 freed': the longest collection's generation, the objects
    it walked and those it freed."""
    if not longest:
        return ""
    walked = f" of {longest['walked']:,} objects" if longest.get("walked") else ""
    return f", gen {longest['generation']}{walked}, {longest['collected']:,} freed"

def report(result: dict) -> None:
    """The two lines of one driver's result."""
    print(f"  {result['name']}: {result['cpu_ms_per_poll']:.3f} ms CPU/poll, {result['polls_stored']} polls, "
          f"cipher {result['cipher']}, farm+agents {result['others_core_fraction']:.2f} core, "
          f"machine {result['machine_busy_cores']:.2f} cores busy; back-to-back {result['b2b_total_ms']:.3f} ms/poll "
          f"(request {result['b2b_request_ms']:.3f}, parse {result['b2b_parse_ms']:.3f}, poll {result['b2b_poll_ms']:.3f}, "
          f"store {result['b2b_store_ms']:.3f})", flush=True)
    if result.get("warmup_polls_failed") is not None:
        wlag = result.get("warmup_lag_ms_p99")
        print(f"    while connecting: {result['warmup_polls_failed']} polls failed "
              f"{result.get('warmup_failed_reasons') or ''}, {result.get('warmup_hosts_offline', '-')} hosts failed "
              f"poll.offline_after times in a row (a false 'offline'), lag p99 of the polls of hosts "
              f"connected {'-' if wlag is None else f'{wlag:.0f} ms'}", flush=True)
    if result.get("restart"):
        first = result.get("first_contact_s")
        print(f"    restart: the first serve polled every host after {'-' if first is None else f'{first:.0f} s'}; "
              "the figures are those of the serve started again on its database", flush=True)
    if result.get("start_phase_s"):
        print(f"    from the start to the window ({result['start_phase_s']:.0f} s): central {result['start_phase_central_cores']:.2f} "
              f"core, farm+agents {result['start_phase_others_cores']:.2f}, machine {result['start_phase_machine_cores']:.2f} "
              "cores busy", flush=True)
    print(f"    connected after {result['connected_after_s']:.0f} s, lag p99 {result['lag_ms_p99']:.0f} ms, start->stored "
          f"p99 {result['start_to_stored_ms_p99']:.0f} ms, {result['polls_failed']} failed; GC: {result['gc_collections']} "
          f"collections, longest {result['gc_pause_ms_max']:.0f} ms ({result.get('gc_pause_cpu_ms_max', float('nan')):.0f} ms "
          f"of CPU{_longest(result.get('gc_longest'))}), gen 2: {result['gc_gen2_collections']} longest "
          f"{result['gc_gen2_pause_ms_max']:.0f} ms, {result['gc_pauses_over_100ms']} over 100 ms; a full collection "
          f"after the window {result.get('gc_full_ms', float('nan')):.0f} ms ({result.get('gc_full_objects', 0):,} "
          f"objects, {result.get('gc_full_freed', 0):,} freed; counting the allocated blocks "
          f"{result.get('gc_count_ms', float('nan')):.1f} ms, the frozen objects "
          f"{result.get('gc_freeze_count_ms', float('nan')):.0f} ms); maxrss "
          f"{result['maxrss_kb'] / 1024:.0f} MB; stop {result['stop_s']:.2f} s with {result['backlog_at_stop']} queued, "
          f"{result['stop_unwritten']} not written; writer dropped {result.get('writer_dropped', '-')} outcomes since start",
          flush=True)
    if result.get("workers"):
        print(f"    poll workers: {result['workers']}, their CPU {result['workers_cpu_s']:.1f} s of the window's "
              f"{result['cpu_s']:.1f} s, peak RSS {', '.join(f'{k / 1024:.0f}' for k in result['workers_maxrss_kb'])} MB, "
              f"longest GC pause in a worker since its start {result['workers_gc_pause_ms_max']:.0f} ms "
              f"(the most CPU one took {result.get('workers_gc_pause_cpu_ms_max', float('nan')):.0f} ms), "
              f"in the window {result.get('workers_gc_long_pauses', '-')} over 100 ms "
              f"({result.get('workers_gc_long_pauses_cpu', '-')} of CPU)", flush=True)


def _nan_for_none(result: dict) -> dict:
    """A run without a successful poll still prints."""
    return {k: (float("nan") if v is None and k.endswith(("_ms", "_ms_p50", "_ms_p99", "_ms_per_poll")) else v)
            for k, v in result.items()}


class ClusterRun:
    """--centrals K: K drivers, each one member of a cluster on one real PostgreSQL (started here,
    tests/pgserver.py), sharing the fleet as several `central serve` processes do (central/cluster.py):
    the design that puts a fleet one process cannot carry on several cores or machines."""

    def __init__(self):
        from tests.pgserver import PGServer, missing

        why = missing()
        if why:
            sys.exit(f"bench_core --centrals: {why}")
        self.root = Path(tempfile.mkdtemp(prefix="bench-core-pg-"))
        self.pg = PGServer(self.root)
        self.pg.start(durable=True)
        self.runs = 0

    def database(self, servers: list[dict]) -> str:
        """A new database holding these servers, as `central server add` stores them."""
        self.runs += 1
        name = f"core{self.runs}"
        self.pg.psql(f"CREATE DATABASE {name}")
        url = self.pg.url(name)

        async def add():
            storage = await Storage.open(url)
            for s in servers:
                await storage.add_server(s["name"], s["host"], port=s["port"], host_key=s["host_key"],
                                         agent_secret=s["agent_secret"])
            await storage.close()
        asyncio.run(add())
        return url

    def close(self) -> None:
        self.pg.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def run_cluster(cluster: ClusterRun, workdir: Path, name: str, servers: list[dict], ciphers: list[str], key: Path,
                other_pids, interval: float, measure_intervals: int, members: int) -> list[dict]:
    """K drivers, one member each, measured over the same window once every member's share has
    been polled; returns their results (each with the farm's, the agent's and PostgreSQL's CPU)."""
    url = cluster.database(servers)
    procs = []
    for i in range(members):
        data_dir = workdir / f"{name}-c{i}"
        shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.mkdir(parents=True)
        spec = {"data_dir": str(data_dir), "key_path": str(key), "interval": interval, "ciphers": ciphers,
                "servers": servers[:1], "warmup_timeout": 180, "measure_intervals": measure_intervals,
                "profile": None, "phase_quantum": PHASE_QUANTUM, "stop_backlog": 0,
                "max_connects": MAX_CONNECTS[0] if MAX_CONNECTS else None,
                "storage_url": url, "member": f"c{i}", "members": members, "sync": True}
        (data_dir / "spec.json").write_text(json.dumps(spec))
        env = dict(os.environ, PYTHONPATH=CODE[0] if CODE else str(REPO))
        procs.append(subprocess.Popen([sys.executable, str(REPO / "bench" / "central_driver.py"), str(data_dir / "spec.json")],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=open(data_dir / "driver.log", "w"), text=True, env=env))
    events: queue.Queue = queue.Queue()

    def reader(i, proc):
        for line in proc.stdout:
            events.put((i, json.loads(line)))
        events.put((i, None))
    threads = [threading.Thread(target=reader, args=(i, p), daemon=True) for i, p in enumerate(procs)]
    for t in threads:
        t.start()
    pids = lambda: (other_pids() if callable(other_pids) else list(other_pids)) + cluster.pg.pids()  # noqa: E731
    ready, started, ended, done, results = set(), set(), set(), set(), {}
    o0 = m0 = o1 = m1 = None
    while len(done) < members:
        i, msg = events.get()
        if msg is None:
            done.add(i)
            continue
        if msg["event"] == "ready":
            ready.add(i)
            print(f"    c{i}: its share polled {msg['connected_after_s']:.0f} s after start", flush=True)
            if len(ready) == members:
                for p in procs:
                    p.stdin.write("go\n")
                    p.stdin.flush()
        elif msg["event"] == "window_start":
            started.add(i)
            if len(started) == 1:
                o0, m0 = proc_cpu(pids()), machine_busy()
        elif msg["event"] == "window_end":
            ended.add(i)
            if len(ended) == members:
                o1, m1 = proc_cpu(pids()), machine_busy()
        elif msg["event"] == "result":
            results[i] = msg
    for p in procs:
        p.wait()
    if len(results) < members or o1 is None:
        raise RuntimeError(f"{name}: a driver failed; see {workdir}/{name}-c*/driver.log")
    out = []
    span = max(r["window_s"] for r in results.values())
    stored = sum(r["polls_stored"] for r in results.values())
    for i in range(members):
        r = results[i]
        r.update(name=f"{name}-c{i}", others_cpu_s=o1 - o0, others_core_fraction=(o1 - o0) / span,
                 machine_busy_cores=(m1[0] - m0[0]) / (m1[1] - m0[1]) * os.cpu_count(),
                 others_ms_per_poll=(o1 - o0) / stored * 1000 if stored else None, members=members)
        r = _nan_for_none(r)
        report(r)
        out.append(r)
    print(f"  {name}: {members} centrals stored {stored} polls in the window ({stored / span:.0f}/s), "
          f"farm+agent+PostgreSQL {out[0]['others_core_fraction']:.2f} core", flush=True)
    return out


def loop_servers(n: int, port: int, host_key: str, prefix: str = "h") -> list[dict]:
    """n servers that all point at the loopback farm (one pinned host key)."""
    return [{"name": f"{prefix}{i:05d}", "host": "127.0.0.1", "port": port, "host_key": host_key,
             "agent_secret": SECRET[0]} for i in range(n)]


def real_hosts(n: int, pub_line: str):
    """A HostFarm with n real sshd + agent hosts; returns (farm, servers)."""
    from tests import hostfarm
    reason = hostfarm.missing_requirements()
    if reason:
        return None, reason
    farm = hostfarm.HostFarm()
    hosts = farm.add_hosts(n, authorized_keys=[pub_line])
    servers = [{"name": h.name, "host": h.address, "port": 22, "agent_secret": h.agent_secret,
                "host_key": " ".join(h.host_public_key.split()[:2]), "fingerprint": h.fingerprint}
               for h in hosts]
    return farm, servers


# database size

def agent_document(port: int, secret: str) -> bytes:
    """A real /api/all body from the real agent (an authenticated request)."""
    from loopfarm import authed_get
    return asyncio.run(authed_get("127.0.0.1", port, secret, "/api/all"))[1]


def _jitter(sample: dict, rng: random.Random) -> dict:
    out = {}
    for k, v in sample.items():
        if k == "top":
            out[k] = [[pid, name, round(max(0.0, (cpu or 0) * rng.uniform(0.5, 1.5)), 1),
                       float(int((rss or 0) * rng.uniform(0.95, 1.05)))] for pid, name, cpu, rss in v]
        elif k == "procs":
            out[k] = v + rng.randint(-3, 3) if v is not None else None
        elif v is not None:
            out[k] = round(v * rng.uniform(0.7, 1.3) + rng.random(), 2)
        else:
            out[k] = None
    return out


async def db_size(workdir: Path, body: bytes, hosts: int = 5) -> dict:
    """Database bytes per host at steady state (default interval and retention), real storage code.

    Simulated time runs 400 days; samples are written at 10 s for the last 48 h (raw tier),
    at 1 per minute from 14 days back (enough to make every 1-minute rollup the real code
    keeps), and at 1 per hour before that (every 1-hour rollup). rollup() and prune() run each
    simulated hour with the default retention, as the maintenance loop would. Row counts per
    tier are therefore exactly those of a steady state; only n in the old rollups is smaller.
    """
    from central.config import PollConfig, RetentionConfig
    path = workdir / "dbsize" / "central.db"
    shutil.rmtree(path.parent, ignore_errors=True)
    r = RetentionConfig()
    interval = PollConfig().interval
    storage = await Storage.open(path)
    doc, text = parse_document(body)
    base = extract_sample(doc)
    ids = [(await storage.add_server(f"s{i}", f"10.0.0.{i + 1}", host_key="x")).id for i in range(hosts)]
    rng = random.Random(1)
    now = time.time()
    start = now - r.hour
    t0 = time.perf_counter()
    t = start
    next_maint = start + 3600
    batch: list[PollOutcome] = []

    async def flush():
        # only the last outcome per server carries the document (the latest table keeps one)
        last = {}
        for o in batch:
            last[o.server_id] = o
        for o in last.values():
            o.doc_text = text
        await storage.write_polls(batch, 3)
        batch.clear()

    while t < now:
        age = now - t
        step = interval if age <= r.raw + 3600 else (60.0 if age <= r.minute + 3600 else 3600.0)
        for sid in ids:
            batch.append(PollOutcome(server_id=sid, ts=t + rng.random() * 0.01, duration=0.002, ok=True,
                                     doc_text=None, sample=_jitter(base, rng), agent_version="x", agent_sha256="y",
                                     hostname="h", inventory_hash=None))
        if len(batch) >= 2000:
            await flush()
        t += step
        if t >= next_maint:
            if batch:
                await flush()
            await storage.rollup(now=t)
            await storage.prune(raw=r.raw, minute=r.minute, hour=r.hour, events=r.events, now=t)
            next_maint += 3600
    if batch:
        await flush()
    await storage.rollup(now=now)
    await storage.prune(raw=r.raw, minute=r.minute, hour=r.hour, events=r.events, now=now)
    build_s = time.perf_counter() - t0
    await storage.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = (await storage._one("PRAGMA page_size"))[0]
    page_count = (await storage._one("PRAGMA page_count"))[0]
    freelist = (await storage._one("PRAGMA freelist_count"))[0]
    rows = {}
    for table, where in (("samples", ""), ("rollups", " WHERE tier = 60"), ("rollups", " WHERE tier = 3600"),
                         ("latest", "")):
        key = table if not where else f"rollups_{where.split('= ')[1]}"
        rows[key] = (await storage._one(f"SELECT count(*) FROM {table}{where}"))[0]
    by_table = {}
    try:
        for name, size in await storage._all("SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC"):
            by_table[name] = size
    except Exception as exc:  # noqa: BLE001 - dbstat is optional in SQLite builds
        by_table = {"unavailable": str(exc)}
    top_bytes = (await storage._one("SELECT avg(length(top)) FROM samples"))[0]
    await storage.close()
    file_size = path.stat().st_size
    used = (page_count - freelist) * page_size
    return {
        "hosts": hosts, "build_s": build_s, "file_bytes": file_size, "used_bytes": used,
        "page_size": page_size, "page_count": page_count, "freelist_count": freelist,
        "file_bytes_per_host": file_size / hosts, "used_bytes_per_host": used / hosts,
        "rows": rows, "rows_per_host": {k: v / hosts for k, v in rows.items()},
        "table_bytes": by_table, "table_bytes_per_host": {k: v / hosts for k, v in by_table.items() if isinstance(v, int)},
        "avg_top_bytes": top_bytes, "document_bytes": len(body),
    }


# report

def ms(v) -> str:
    return "-" if v is None else f"{v:.3f}" if v < 10 else f"{v:.0f}"


def markdown(results: dict) -> str:
    out = ["## Central core", ""]
    m = results["machine"]
    out.append(f"Run {results['started']} on {m['cpus']} cores ({m['cpu_model']}), Python {m['python']}, "
               f"asyncssh {m['asyncssh']}, SQLite {m['sqlite']}. Interval {results['interval']:g} s; each scale warmed up "
               f"until every host had been polled, plus one interval, then measured over {results['measure_intervals']} intervals. "
               "`bench/bench_core.py`.")
    out.append("")
    out.append("| run | hosts | interval s | cipher | polls | central CPU ms/poll | user / sys ms | central core share | "
               "poll p50 / p99 ms | sched lag p50 / p99 ms | start→stored p50 / p99 ms | farm+agents core share | "
               "machine busy cores | back-to-back ms/poll (request / parse / store) |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results["runs"]:
        cipher = (r["cipher"] or "?").split("@")[0]
        out.append(
            f"| {r['name']} | {r['hosts']} | {r['interval']:g} | {cipher} | {r['polls_stored']} | **{ms(r['cpu_ms_per_poll'])}** | "
            f"{ms(r['user_s'] / max(1, r['polls_stored']) * 1000)} / {ms(r['sys_s'] / max(1, r['polls_stored']) * 1000)} | "
            f"{r['cpu_core_fraction']:.3f} | {ms(r['duration_ms_p50'])} / {ms(r['duration_ms_p99'])} | "
            f"{ms(r['lag_ms_p50'])} / {ms(r['lag_ms_p99'])} | {ms(r['start_to_stored_ms_p50'])} / {ms(r['start_to_stored_ms_p99'])} | "
            f"{r['others_core_fraction']:.3f} | {r['machine_busy_cores']:.2f} | "
            f"{ms(r['b2b_total_ms'])} ({ms(r['b2b_request_ms'])} / {ms(r['b2b_parse_ms'])} / {ms(r['b2b_store_ms'])}) |")
    out.append("")
    ratios = results.get("ratios", {})
    for k, v in ratios.items():
        out.append(f"- {k}: {v:.2f}")
    d = results.get("db")
    if d:
        out.append("")
        out.append(f"Database size at steady state, default interval (10 s) and retention (raw 48 h, 1-minute 14 d, "
                   f"1-hour 400 d), {d['hosts']} hosts, built with the real write_polls/rollup/prune in {d['build_s']:.0f} s "
                   f"(agent document {d['document_bytes']} bytes, top-5 list {d['avg_top_bytes']:.0f} bytes on average):")
        out.append("")
        out.append("| measure | per host |")
        out.append("|---|---|")
        out.append(f"| file after checkpoint | **{d['file_bytes_per_host'] / 1e6:.2f} MB** |")
        out.append(f"| (page_count - freelist_count) x page_size | {d['used_bytes_per_host'] / 1e6:.2f} MB |")
        for k, v in d["rows_per_host"].items():
            out.append(f"| rows {k} | {v:.0f} |")
        for k, v in d["table_bytes_per_host"].items():
            if v >= 5000:
                out.append(f"| dbstat {k} | {v / 1e6:.2f} MB |")
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small scales, short windows (a smoke run)")
    p.add_argument("--skip-real", action="store_true", help="no real sshd hosts")
    p.add_argument("--skip-db", action="store_true")
    p.add_argument("--only-db", action="store_true")
    p.add_argument("--scales", default="100,500,1000")
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--measure-intervals", type=int, default=3)
    p.add_argument("--real-hosts", type=int, default=20)
    p.add_argument("--rate-interval", type=float, default=1.0,
                   help="also run the largest scale at this interval (0: skip)")
    p.add_argument("--cache-ttl", type=float, default=1.0)
    p.add_argument("--live-inventory", action="store_true", help="farm passes the agent's changing inventory_hash through")
    p.add_argument("--profile", choices=["cprofile", "py-spy"], default=None, help="profile the central at the largest scale")
    p.add_argument("--phase-quantum", type=float, default=None, help="override the poller's phase quantum (0: off)")
    p.add_argument("--skip-chacha", action="store_true")
    p.add_argument("--stop-backlog", type=int, default=0,
                   help="queue this many extra outcomes (copies of a real one) just before the timed clean stop")
    p.add_argument("--code", help="the central the driver runs (a checkout's root; default this one)")
    p.add_argument("--centrals", type=int, default=0,
                   help="also run each scale as this many centrals sharing the fleet (cluster.enabled on one"
                        " PostgreSQL this bench starts), measured over one window")
    p.add_argument("--only-centrals", action="store_true", help="with --centrals: not the one-central runs")
    p.add_argument("--max-connects", type=int, default=None,
                   help="ssh.max_concurrent_connects of the central (default: the config's default)")
    p.add_argument("--gc-walks", action="store_true",
                   help="count the objects each GC collection walks and what kinds the biggest walk held (about 2 %% "
                        "of the central's CPU samples at 10,000 hosts: off for the CPU figures)")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="poll.workers: the central polls its SSH servers in N worker processes")
    p.add_argument("--profile-connect", type=int, default=0, metavar="S",
                   help="with --profile py-spy: profile the first S seconds of the serve (the connect phase), not the window")
    p.add_argument("--restart", action="store_true",
                   help="one central: a first serve polls every host once and stops, the measured one restarts on "
                        "that database (its connect time is a restart's, without the first contact's inventories)")
    args = p.parse_args()
    if args.restart:
        RESTART.append(True)
    if args.gc_walks:
        GC_WALKS.append(True)
    if args.profile_connect:
        PROFILE_CONNECT.append(args.profile_connect)
    if args.max_connects:
        MAX_CONNECTS.append(args.max_connects)
    if args.workers:
        WORKERS.append(args.workers)
    if args.code:
        CODE.append(args.code)
    STOP_BACKLOG.append(args.stop_backlog)
    global PHASE_QUANTUM
    PHASE_QUANTUM = args.phase_quantum
    if args.quick:
        args.scales, args.measure_intervals, args.real_hosts, args.rate_interval = "20,100", 1, 5, 0
    import sqlite3
    import platform
    cpu_model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), "?")
    results = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "interval": args.interval,
               "phase_quantum": args.phase_quantum,
               "measure_intervals": args.measure_intervals, "cache_ttl": args.cache_ttl,
               "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model, "python": platform.python_version(),
                           "asyncssh": asyncssh.__version__, "sqlite": sqlite3.sqlite_version},
               "runs": []}
    workdir = Path(tempfile.mkdtemp(prefix="bench-core-"))
    (workdir / "no-policy.json").write_text('{"actions": {"kill": false, "service": false, "docker": false}}')
    key = workdir / "central_key"
    pub_line, _ = ensure_key_pair(key)
    pub = Path(str(key) + ".pub")
    SECRET.append(os.urandom(32).hex())
    fd = os.open(str(workdir / "agent-secret"), os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, (SECRET[0] + "\n").encode())
    os.close(fd)
    agent, agent_port = start_agent(workdir)
    farm = None
    try:
        body = agent_document(agent_port, SECRET[0])
        if not args.only_db:
            farm, farm_port, farm_key = start_farm(workdir, pub, [agent_port], args.cache_ttl, args.live_inventory)
            others = [farm.pid, agent.pid]
            scales = [int(s) for s in args.scales.split(",")]
            small = args.real_hosts
            if not args.skip_real:
                print(f"real sshd hosts: {small}", flush=True)
                hfarm, servers = real_hosts(small, pub_line)
                if hfarm is None:
                    results["real_skipped"] = servers
                else:
                    try:
                        pids = lambda: [pid for h in hfarm.hosts.values() for pid in h.host_pids()]  # noqa: E731
                        for name, ciphers in (("sshd-aes", AES), ("sshd-chacha", CHACHA)):
                            results["runs"].append(run_driver(workdir, name, servers, ciphers, key, pids,
                                                              args.interval, args.measure_intervals))
                    finally:
                        hfarm.close()
                for name, ciphers in (("loop-aes", AES), ("loop-chacha", CHACHA)):
                    results["runs"].append(run_driver(workdir, f"{name}-{small}", loop_servers(small, farm_port, farm_key),
                                                      ciphers, key, others, args.interval, args.measure_intervals))
            cluster = ClusterRun() if args.centrals else None
            try:
                for n in scales:
                    print(f"loopback farm: {n} hosts", flush=True)
                    profile = args.profile if n == max(scales) else None
                    if not args.only_centrals:
                        results["runs"].append(run_driver(workdir, f"loop-aes-{n}", loop_servers(n, farm_port, farm_key),
                                                          AES, key, others, args.interval, args.measure_intervals, profile))
                    if cluster is not None:
                        print(f"loopback farm: {n} hosts, {args.centrals} centrals on PostgreSQL", flush=True)
                        results["runs"] += run_cluster(cluster, workdir, f"loop-aes-{n}-{args.centrals}centrals",
                                                       loop_servers(n, farm_port, farm_key), AES, key, others,
                                                       args.interval, args.measure_intervals, args.centrals)
            finally:
                if cluster is not None:
                    cluster.close()
            if args.only_centrals:
                args.rate_interval, args.skip_chacha = 0, True
            big = max(scales)
            if args.rate_interval:
                # The poll rate of 10x the hosts at the default interval: what "one core carries
                # 10,000 hosts at 10 s" means for the event loop.
                results["runs"].append(run_driver(
                    workdir, f"loop-aes-{big}-at-{args.rate_interval:g}s", loop_servers(big, farm_port, farm_key), AES, key,
                    others, args.rate_interval, int(args.interval * args.measure_intervals / args.rate_interval)))
            if not args.skip_chacha:
                results["runs"].append(run_driver(workdir, f"loop-chacha-{big}", loop_servers(big, farm_port, farm_key), CHACHA,
                                                  key, others, args.interval, args.measure_intervals))
            by = {r["name"]: r for r in results["runs"]}
            ratios = {}
            if f"loop-chacha-{big}" in by:
                ratios[f"aes128-gcm / chacha20-poly1305 CPU per poll, loopback {big}"] = (
                    by[f"loop-aes-{big}"]["cpu_ms_per_poll"] / by[f"loop-chacha-{big}"]["cpu_ms_per_poll"])
            if "sshd-aes" in by:
                ratios[f"aes128-gcm / chacha20-poly1305 CPU per poll, real sshd {small}"] = (
                    by["sshd-aes"]["cpu_ms_per_poll"] / by["sshd-chacha"]["cpu_ms_per_poll"])
                ratios[f"real sshd / loopback CPU per poll, {small} hosts, aes128-gcm"] = (
                    by["sshd-aes"]["cpu_ms_per_poll"] / by[f"loop-aes-{small}"]["cpu_ms_per_poll"])
            if f"loop-aes-{big}" in by and by[f"loop-aes-{big}"]["polls_stored"]:
                ratios["0.5 ms target / measured at the largest scale (aes)"] = 0.5 / by[f"loop-aes-{big}"]["cpu_ms_per_poll"]
            results["ratios"] = ratios
        if not args.skip_db:
            print("database size", flush=True)
            results["db"] = asyncio.run(db_size(workdir, body))
    finally:
        if farm is not None:
            stop(farm)
        stop(agent)
    out = save_results("core", results)
    print(f"\nraw results: {out}  (work dir {workdir})\n")
    print(markdown(results))
    shutil.rmtree(workdir, ignore_errors=True) if not args.profile else None


if __name__ == "__main__":
    main()
