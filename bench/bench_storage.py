"""PostgreSQL against SQLite: what writing a poll's sample costs on each backend (issue 19).

The central's real write path (Storage.write_polls: each server's status row, its newest
document and its raw sample, one transaction per batch) for a fleet of N servers, one batch
per poll round as the poller writes them, with a real /api/all document of this machine.
PostgreSQL runs from Debian's packages in a temporary directory (tests/pgserver.py) with its
defaults (fsync on, synchronous_commit on) over the unix socket; SQLite is WAL with
synchronous=NORMAL, as central runs it. CPU is the central process's time plus, for
PostgreSQL, its server processes' (from /proc); wall is per round. Also: what retention of one
day of raw samples costs (SQLite DELETE against PostgreSQL dropping the day's partition).

Run: PYTHONPATH=$PWD .venv/bin/python bench/bench_storage.py [--servers 100 1000] [--rounds 30]
(as root PostgreSQL runs as the postgres user). Prints a markdown table and the machine's load.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from central.bundled import agent_module  # noqa: E402
from central.model import METRICS, PollOutcome  # noqa: E402
from central.sample import extract_sample, parse_document  # noqa: E402
from central.storage import Storage  # noqa: E402
from tests.pgserver import PGServer, missing  # noqa: E402

DAY = 86400.0


def machine_busy() -> tuple[float, float]:
    with open("/proc/stat") as fh:
        v = [float(x) for x in fh.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def proc_cpu(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / tick
        except OSError:
            pass
    return total


def document() -> tuple[str, dict]:
    c = agent_module().Collector()
    c.all()
    time.sleep(0.2)
    text = json.dumps(c.all(), separators=(",", ":"))
    doc, stored = parse_document(text.encode())
    return stored, extract_sample(doc)


async def write_rounds(storage, ids: list[int], rounds: int, text: str, sample: dict, pg_pids) -> dict:
    t0 = time.time() - rounds * 10
    # a warm-up round (partitions, caches), not measured
    await storage.write_polls([PollOutcome(server_id=i, ts=t0 - 10, duration=0.01, ok=True, doc_text=text,
                                           sample=sample) for i in ids], offline_after=3)
    walls = []
    c0, s0, m0 = time.process_time(), proc_cpu(pg_pids()), machine_busy()
    for r in range(rounds):
        batch = [PollOutcome(server_id=i, ts=t0 + 10 * r, duration=0.01, ok=True, doc_text=text, sample=sample)
                 for i in ids]
        w = time.perf_counter()
        await storage.write_polls(batch, offline_after=3)
        walls.append(time.perf_counter() - w)
    c1, s1, m1 = time.process_time(), proc_cpu(pg_pids()), machine_busy()
    n = rounds * len(ids)
    walls.sort()
    return {"client_us": (c1 - c0) / n * 1e6, "server_us": (s1 - s0) / n * 1e6,
            "total_us": ((c1 - c0) + (s1 - s0)) / n * 1e6, "wall_round_ms": walls[len(walls) // 2] * 1e3,
            "wall_us": sum(walls) / n * 1e6,
            "busy_cores": (m1[0] - m0[0]) / (m1[1] - m0[1]) * os.cpu_count()}


async def retention(storage, pg_pids, servers: int) -> dict:
    """One day of raw samples every 60 s for `servers` servers, rolled up, then pruned away."""
    ids = [(await storage.add_server(f"r{i}", "10.0.0.1")).id for i in range(servers)]
    start = 1_800_000_000.0 - 3 * DAY
    start -= start % DAY
    rows = [(sid, start + k * 60.0, *[1.0] * len(METRICS), "[]") for sid in ids for k in range(1440)]
    await storage.import_samples(rows)
    await storage.rollup(now=start + 2 * DAY, lag=0)
    c0, s0, w0 = time.process_time(), proc_cpu(pg_pids()), time.perf_counter()
    counts = await storage.prune(raw=DAY - 1, minute=14 * DAY, hour=400 * DAY, events=365 * DAY,
                                 now=start + 2 * DAY)
    c1, s1, w1 = time.process_time(), proc_cpu(pg_pids()), time.perf_counter()
    return {"rows": counts["samples"], "wall_ms": (w1 - w0) * 1e3, "cpu_ms": ((c1 - c0) + (s1 - s0)) * 1e3}


async def run_backend(name: str, target, sizes: list[int], rounds: int, text: str, sample: dict, pg_pids) -> list:
    out = []
    for n in sizes:
        storage = await Storage.open(target() if callable(target) else target)
        try:
            ids = [(await storage.add_server(f"s{i}", "10.0.0.1")).id for i in range(n)]
            r = await write_rounds(storage, ids, rounds, text, sample, pg_pids)
            out.append({"backend": name, "servers": n, **r})
            print(f"{name} {n}: {r}", file=sys.stderr)
        finally:
            await storage.close()
    storage = await Storage.open(target() if callable(target) else target)
    try:
        ret = await retention(storage, pg_pids, 100)
    finally:
        await storage.close()
    return out, ret


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--servers", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    why = missing()
    if why:
        sys.exit(why)
    text, sample = document()
    root = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    pg = PGServer(Path(tempfile.mkdtemp(prefix="bench-storage-pg-")))
    pg.start(durable=True)
    try:
        sqlite_n = iter(range(1000))
        load0 = os.getloadavg()
        rows, ret = {}, {}
        rows["sqlite"], ret["sqlite"] = await run_backend(
            "SQLite", lambda: root / f"s{next(sqlite_n)}.db", args.servers, args.rounds, text, sample, list)
        rows["pg"], ret["pg"] = await run_backend(
            "PostgreSQL", pg.new_database, args.servers, args.rounds, text, sample, pg.pids)
        load1 = os.getloadavg()
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(pg.root, ignore_errors=True)
    print(f"\nload average {load0[0]:.2f} before, {load1[0]:.2f} after, on {os.cpu_count()} cores; "
          f"document {len(text)} bytes; {args.rounds} rounds\n")
    print("| backend | servers | CPU per sample (central + database server) | wall per sample | "
          "median round (one batch) | machine busy cores |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows["sqlite"] + rows["pg"]:
        print(f"| {r['backend']} | {r['servers']:,} | {r['total_us']:.0f} µs ({r['client_us']:.0f} + "
              f"{r['server_us']:.0f}) | {r['wall_us']:.0f} µs | {r['wall_round_ms']:.1f} ms | {r['busy_cores']:.2f} |")
    print("\n| backend | retention of one day (100 servers, every 60 s) | rows | wall | CPU |")
    print("|---|---|---:|---:|---:|")
    for name, how in (("sqlite", "DELETE"), ("pg", "DROP of the day's partition")):
        r = ret[name]
        print(f"| {'SQLite' if name == 'sqlite' else 'PostgreSQL'} | {how} | {r['rows']:,} | {r['wall_ms']:.0f} ms |"
              f" {r['cpu_ms']:.0f} ms |")
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "bench_storage.json").write_text(json.dumps({"rows": rows, "retention": ret}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
