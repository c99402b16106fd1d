"""Benchmark: GET /api/v1/servers and GET /api/v1/fleet with 1,000 servers and a week of samples,
under concurrent load from a second process (wrk), while the poller runs.

    python3 bench/bench_api.py [--servers 1000] [--db-dir /tmp/central-bench] [--duration 15]

The database is generated once through Storage methods (servers, 48 h of raw samples at the
10 s poll interval = the raw retention window, 1-minute rollups for 7 days, 1-hour rollups for
7 days) and reused by later runs. The 1,000 fake servers point at 127.0.0.2-127.0.4.x on a port
nobody listens on, so the poller really connects (and is refused) without any traffic leaving
the machine; the `local` server is polled in-process.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from central.sample import METRICS  # noqa: E402
from central.storage import TIER_HOUR, TIER_MINUTE, Storage  # noqa: E402

INTERVAL = 10
RAW_HOURS = 48
DAYS = 7


def refused_port() -> int:
    """A loopback port with no listener on any address (connects to 127.x.y.z:port are refused)."""
    listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout
    used = {int(m) for m in re.findall(r":(\d+)\s", listening + " ")}
    for port in range(47001, 48000):
        if port not in used:
            return port
    raise RuntimeError("no free port")


async def generate(db_path: Path, servers: int, port: int, host_key: str, fp: str, raw_hours: float = RAW_HOURS,
                   minute_days: float = DAYS, hour_days: float = DAYS) -> dict:
    """Fill the database (raw_hours of raw samples, minute_days of 1-minute and hour_days of 1-hour
    rollups per server); returns counts."""
    st = await Storage.open(db_path)
    now = time.time()
    rng = random.Random(1)
    t0 = time.perf_counter()
    ids = []
    for i in range(servers):
        host = f"127.0.{2 + i // 250}.{1 + i % 250}"
        s = await st.add_server(f"fake{i:04d}", host, port=port, tags=(f"rack{i % 20}", "bench"),
                                host_key=host_key, host_key_fingerprint=fp)
        ids.append(s.id)
    top = json.dumps([[1, "systemd", 0.1, 12_000_000], [812, "nginx", 3.2, 40_000_000]], separators=(",", ":"))
    counts = {"samples": 0, "rollups_minute": 0, "rollups_hour": 0}
    start_raw = now - raw_hours * 3600
    steps = int(raw_hours * 3600 / INTERVAL)
    # server-major: each server's rows go in key order, so SQLite appends instead of splitting
    # pages all over the (server_id, ts) b-tree (3-4x faster to generate; same resulting tables)
    batch = []
    for sid in ids:
        for k in range(steps):
            batch.append((sid, start_raw + k * INTERVAL + (sid % INTERVAL), rng.random() * 100, 40 + rng.random() * 20,
                          1.0, 0.5, 0.6, 0.7, 55.0, 1e5, 2e5, 1e4, 2e4, 150, top))
        if len(batch) >= 200_000:
            await st.import_samples(batch)
            counts["samples"] += len(batch)
            batch = []
    if batch:
        await st.import_samples(batch)
        counts["samples"] += len(batch)
    print(f"  raw samples: {counts['samples']:,} in {time.perf_counter() - t0:.0f} s", flush=True)
    vals = [v for _ in METRICS for v in (10.0, 20.0, 30.0)]
    for tier, count, key in ((TIER_MINUTE, int(minute_days * 1440), "rollups_minute"),
                             (TIER_HOUR, int(hour_days * 24), "rollups_hour")):
        first = (int(now / tier) - count) * tier
        batch = []
        for sid in ids:
            for k in range(count):
                batch.append((sid, first + k * tier, tier // INTERVAL, *vals))
            if len(batch) >= 100_000:
                await st.import_rollups(tier, batch)
                counts[key] += len(batch)
                batch = []
        if batch:
            await st.import_rollups(tier, batch)
            counts[key] += len(batch)
        print(f"  {key}: {counts[key]:,} ({time.perf_counter() - t0:.0f} s)", flush=True)
    # what rollup() would record, so the running central does not redo a week of buckets
    await st._write([("INSERT OR REPLACE INTO rollup_progress (tier, done_until) VALUES (?, ?)",  # noqa: SLF001
                      (tier, int(now / tier) * tier)) for tier in (TIER_MINUTE, TIER_HOUR)])
    await st.close()
    return counts


def run(argv, **kw):
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)


def wrk(url: str, token: str, duration: int, connections: int, workdir: Path) -> dict:
    """p50/p90/p99 and requests/s from wrk --latency."""
    lua = workdir / "auth.lua"
    lua.write_text(f'wrk.headers["Authorization"] = "Bearer {token}"\n')
    out = run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(lua), url]).stdout
    def ms(label):
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"p50": ms("50"), "p90": ms("90"), "p99": ms("99"),
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "errors": int(non2xx.group(1)) if non2xx else 0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--servers", type=int, default=1000)
    p.add_argument("--db-dir", default="/tmp/central-bench")
    p.add_argument("--duration", type=int, default=15)
    p.add_argument("--raw-hours", type=float, default=RAW_HOURS, help="raw samples per server (default: the raw retention)")
    p.add_argument("--minute-days", type=float, default=DAYS, help="1-minute rollups per server")
    p.add_argument("--hour-days", type=float, default=DAYS, help="1-hour rollups per server")
    p.add_argument("--backoff-max", default="10s",
                   help="ssh.backoff_max of the served central (without --farm its servers are refused)")
    p.add_argument("--connections", default="1,4,16")
    p.add_argument("--farm", action="store_true",
                   help="point the servers at a loopback host farm (bench/loopfarm.py with a real agent)"
                        " so the poller does real, successful polls instead of refused connects")
    p.add_argument("--paths", default="/api/v1/servers,/api/v1/servers?limit=1000,/api/v1/fleet",
                   help="comma-separated endpoints to load")
    p.add_argument("--code", default=str(ROOT),
                   help="the central to serve (a checkout's root; default this one): for before/after runs")
    p.add_argument("--stallwatch", metavar="OUT.jsonl",
                   help="serve under bench/stallwatch.py: every event-loop stall over 40 ms, its length,"
                        " GC or not, and its stack, one JSON line each")
    args = p.parse_args()
    data = Path(args.db_dir)
    data.mkdir(parents=True, exist_ok=True)
    db = data / "central.db"
    port = refused_port()
    sys.path.insert(0, str(ROOT))
    from central.service import ensure_key_pair

    ensure_key_pair(data / "id_ed25519")
    if not (data / "generated").exists():
        import asyncssh

        key = asyncssh.generate_private_key("ssh-ed25519")
        line = key.export_public_key().decode().strip()
        fp = "SHA256:" + __import__("base64").b64encode(__import__("hashlib").sha256(key.public_data).digest()).decode().rstrip("=")
        if db.exists():
            for suffix in ("", "-wal", "-shm"):
                Path(str(db) + suffix).unlink(missing_ok=True)
        print(f"generating {args.servers} servers, {args.raw_hours:g} h of raw samples, {args.minute_days:g} days of "
              f"minute and {args.hour_days:g} of hour rollups in {db} ...", flush=True)
        counts = asyncio.run(generate(db, args.servers, port, line, fp, args.raw_hours, args.minute_days, args.hour_days))
        counts.update(raw_hours=args.raw_hours, minute_days=args.minute_days, hour_days=args.hour_days)
        (data / "generated").write_text(json.dumps({**counts, "port": port}))
    meta = json.loads((data / "generated").read_text())
    farm_procs = []
    if args.farm:
        sys.path.insert(0, str(ROOT / "bench"))
        import bench_core

        workdir = Path(tempfile.mkdtemp(prefix="bench-api-farm-"))
        # the agent, the farm and every server share one agent secret (agents authenticate)
        secret = os.urandom(32).hex()
        fd = os.open(str(workdir / "agent-secret"), os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, (secret + "\n").encode())
        os.close(fd)
        (workdir / "no-policy.json").write_text('{"actions": {"kill": false, "service": false, "docker": false}}')
        agent_proc, agent_port = bench_core.start_agent(workdir)
        farm_proc, farm_port, farm_key = bench_core.start_farm(workdir, data / "id_ed25519.pub", [agent_port], 1.0)
        farm_procs = [farm_proc, agent_proc]
        fp = "SHA256:" + __import__("base64").b64encode(__import__("hashlib").sha256(
            __import__("base64").b64decode(farm_key.split()[1])).digest()).decode().rstrip("=")
        subprocess.run(["sqlite3", str(db), f"UPDATE servers SET host = '127.0.0.1', port = {farm_port},"
                        f" host_key = '{farm_key}', host_key_fingerprint = '{fp}', status = 'unknown',"
                        " status_reason = NULL WHERE kind = 'ssh';"
                        " INSERT OR REPLACE INTO agent_secrets (server_id, secret, updated_at)"
                        f" SELECT id, '{secret}', 0 FROM servers WHERE kind = 'ssh'"], check=True)
        print(f"servers point at the loopback farm on 127.0.0.1:{farm_port}", flush=True)
    else:
        # keep the generated servers pointing at a refused port (they may point at a farm from an earlier run)
        subprocess.run(["sqlite3", str(db), f"UPDATE servers SET port = {port},"
                        " host = '127.0.' || (2 + (id - 2) / 250) || '.' || (1 + (id - 2) % 250)"
                        " WHERE kind = 'ssh' AND host = '127.0.0.1'"], check=True)
        subprocess.run(["sqlite3", str(db), f"UPDATE servers SET port = {port} WHERE kind = 'ssh'"], check=True)
    size = sum(p.stat().st_size for p in data.glob("central.db*"))
    print(f"database: {size / 1e9:.2f} GB ({meta['samples']:,} raw samples, {meta['rollups_minute']:,} minute "
          f"and {meta['rollups_hour']:,} hour rollups)", flush=True)

    env = {**os.environ, "CENTRAL_DATA_DIR": str(data), "CENTRAL_CONFIG": "", "PYTHONPATH": args.code,
           "CENTRAL_SSH_BACKOFF_MAX": args.backoff_max, "CENTRAL_SSH_CONNECT_TIMEOUT": "3s"}
    token = json.loads(run([sys.executable, "-m", "central", "token", "create", "bench", "--user", "admin", "--json"],
                           env=env).stdout)["token"] if _has_admin(env) else _make_admin_token(env)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        http_port = s.getsockname()[1]
    command = [sys.executable, "-m", "central"]
    if args.stallwatch:
        Path(args.stallwatch).unlink(missing_ok=True)
        command = [sys.executable, str(ROOT / "bench" / "stallwatch.py"), args.stallwatch]
    print(f"load average before: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    # cwd: `-m central` puts the working directory first on sys.path, ahead of PYTHONPATH (--code)
    server = subprocess.Popen([*command, "serve", "--port", str(http_port)], env=env, cwd=args.code,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = []
    try:
        base = f"http://127.0.0.1:{http_port}"
        _wait_ready(base)
        time.sleep(12)  # let every server's first poll (phase-spread over 10 s) happen
        if args.farm:
            # Measure the steady state: every server connected and polled, not the first
            # minute's burst of 1,000 SSH handshakes.
            deadline = time.time() + 180
            while time.time() < deadline:
                st = json.loads(run(["curl", "-sf", "-H", f"Authorization: Bearer {token}",
                                     base + "/api/v1/status"]).stdout)["poller"]
                if st["polls"] >= 2 * args.servers:
                    break
                time.sleep(2)
            time.sleep(INTERVAL)
        status = json.loads(run(["curl", "-sf", "-H", f"Authorization: Bearer {token}", base + "/api/v1/status"]).stdout)
        print(f"poller: {status['poller']}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            if args.stallwatch:  # only the stalls while measuring
                Path(args.stallwatch).write_text("")
            for path in args.paths.split(","):
                for c in (int(x) for x in args.connections.split(",")):
                    r = wrk(base + path, token, args.duration, c, Path(tmp))
                    results.append((path, c, r))
                    print(f"{path:32s} c={c:<3d} p50 {r['p50']:7.2f} ms  p90 {r['p90']:7.2f} ms  p99 {r['p99']:7.2f} ms"
                          f"  {r['rps']:7.1f} req/s  non-2xx {r['errors']}", flush=True)
        status = json.loads(run(["curl", "-sf", "-H", f"Authorization: Bearer {token}", base + "/api/v1/status"]).stdout)
        print(f"poller after: {status['poller']}  lag {status['poller']['lag']:.3f} s", flush=True)
        print(f"load average after: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            print("central did not stop within 30 s of SIGTERM; killing it", flush=True)
            server.kill()
            server.wait()
        for proc in farm_procs:
            bench_core.stop(proc)
    if args.stallwatch:
        summarise_stalls(Path(args.stallwatch))
    print("\n| endpoint | connections | p50 ms | p90 ms | p99 ms | req/s |")
    print("|---|---|---|---|---|---|")
    for path, c, r in results:
        print(f"| `GET {path}` | {c} | {r['p50']:.1f} | {r['p90']:.1f} | {r['p99']:.1f} | {r['rps']:.0f} |")


def summarise_stalls(path: Path) -> None:
    """Stalls over 40 ms while measuring: count, total, GC's share, and the commonest places."""
    import collections

    stalls = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not stalls:
        print("stalls over 40 ms: none", flush=True)
        return
    gc_ones = [s for s in stalls if s["gc"]]
    print(f"stalls over 40 ms: {len(stalls)}, {sum(s['stall_s'] for s in stalls):.2f} s in all, longest "
          f"{max(s['stall_s'] for s in stalls) * 1000:.0f} ms; in GC: {len(gc_ones)} "
          f"(longest {max((s['stall_s'] for s in gc_ones), default=0) * 1000:.0f} ms)", flush=True)
    places: collections.Counter = collections.Counter()
    worst: dict = {}
    for s in stalls:
        where = "GC" if s["gc"] else " <- ".join(reversed([f for f in s["stack"] if "central/" in f][-3:])) or \
            (s["stack"][-1] if s["stack"] else "?")
        places[where] += s["stall_s"]
        worst[where] = max(worst.get(where, 0), s["stall_s"])
    for where, total in places.most_common(8):
        print(f"  {total:6.2f} s (longest {worst[where] * 1000:4.0f} ms)  {where}", flush=True)


def _has_admin(env) -> bool:
    out = run([sys.executable, "-m", "central", "user", "list", "--json"], env=env).stdout
    return any(u["name"] == "admin" for u in json.loads(out))


def _make_admin_token(env) -> str:
    run([sys.executable, "-m", "central", "init"], env=env)
    return json.loads(run([sys.executable, "-m", "central", "token", "create", "bench", "--user", "admin", "--json"],
                          env=env).stdout)["token"]


def _wait_ready(base: str) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        if subprocess.run(["curl", "-sf", base + "/readiness"], capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError("central did not become ready")


if __name__ == "__main__":
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install -y wrk")
    main()
