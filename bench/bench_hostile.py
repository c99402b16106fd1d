"""What a hostile agent document costs the central: CPU and peak memory per kind of document
(issue 13), the normaliser's cost on a real document, the page and API for the largest document
the caps let through, and the memory of a buffered poll outcome.

Run: .venv/bin/python bench/bench_hostile.py [--rounds N]
Prints a markdown table; CPU is process time (best of the rounds: the machine is shared).
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from central import document  # noqa: E402
from central.bundled import agent_module  # noqa: E402
from central.model import PollError, PollOutcome  # noqa: E402
from central.sample import extract_facts, extract_sample, parse_document  # noqa: E402
from central.writer import Writer  # noqa: E402


def real_document() -> dict:
    c = agent_module().Collector()
    c.all()
    time.sleep(0.2)
    return json.loads(json.dumps(c.all()))


def patched(doc: dict, section: str, **fields) -> dict:
    doc = json.loads(json.dumps(doc))
    doc[section] = dict(doc.get(section) or {}, **fields)
    return doc


def kinds(base: dict) -> dict[str, bytes]:
    """Issue 13's documents, as bodies."""
    def body(doc):
        return json.dumps(doc, separators=(",", ":")).encode()
    out = {
        "real document (accepted)": body(base),
        "count 1e300": body(patched(base, "processes", count=1e300)),
        "count 10**19": body(patched(base, "processes", count=10**19)),
        "NaN": body(patched(base, "cpu", percent=0.5)).replace(b'"percent":0.5', b'"percent":NaN', 1),
        "Infinity": body(patched(base, "load", load1=0.5)).replace(b'"load1":0.5', b'"load1":Infinity', 1),
        "1e308 rate": body(patched(base, "network", rx_rate=1e308)),
        "negative memory": body(patched(base, "memory", used=-1)),
        "200,000 top processes (2.8 MB)": body(patched(base, "processes", top_cpu=[{"pid": i + 1} for i in range(200_000)])),
        "1 MB hostname": body(dict(base, hostname="h" * 10**6)),
        "300 KB hostname (accepted, cut)": body(dict(base, hostname="h" * 300_000)),
        "control characters (accepted, cleaned)": body(dict(base, hostname="a\x00\x1b[31mb\r\n" * 20,
                                                            errors={"x\x00": "y\x1b" * 100})),
        "largest within the caps (accepted)": body(largest(base)),
    }
    return out


def largest(base: dict) -> dict:
    """A document that fills every cap with long names, just under the document cap."""
    n = "n" * 255
    proc = {"pid": 1, "start_time": 1, "user": n, "name": n, "cmdline": "c" * 200, "cpu_percent": 1.0, "rss": 1}
    doc = dict(base)
    doc["processes"] = {"count": 1, "top_cpu": [proc] * 10, "top_memory": [proc] * 10,
                        "watched": {f"{i:03d}" + n[:250]: 1 for i in range(60)}}
    doc["filesystems"] = [{"device": n, "mountpoint": f"/{i}" + n[:250], "fstype": "ext4", "total": 1, "used": 1,
                           "free": 1, "percent": 1.0} for i in range(64)]
    doc["network"] = {"rx_rate": 1.0, "tx_rate": 1.0, "interfaces": [{"name": f"{i}" + n[:250]} for i in range(128)]}
    doc["docker"] = {"available": True, "containers": [{"name": n, "id": "a" * 12, "image": n, "state": "running",
                                                        "status": n} for _ in range(200)]}
    doc["systemd"] = {"available": True, "failed": [n] * 100, "watched": {}}
    return doc


def measure(body: bytes, rounds: int) -> dict:
    """Best CPU per parse (decode + normalise + stored text) and the peak memory of one parse."""
    calls = max(1, min(200, 2_000_000 // max(len(body), 1)))
    best = float("inf")
    result = None
    for _ in range(rounds):
        t = time.process_time()
        for _ in range(calls):
            try:
                result = parse_document(body)
            except PollError as err:
                result = err
        best = min(best, (time.process_time() - t) / calls)
    tracemalloc.start()
    try:
        parse_document(body)
    except PollError:
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    if isinstance(result, PollError):
        verdict, stored = f"refused: {result.message[:70]}", 0
    else:
        verdict, stored = "accepted", len(result[1].encode())
    return {"body": len(body), "cpu_us": best * 1e6, "peak": peak, "stored": stored, "verdict": verdict}


async def page_and_api(doc: dict) -> dict:
    """CPU and bytes of the server page and GET /api/v1/servers/NAME with this document stored."""
    from aiohttp.test_utils import TestClient, TestServer

    from central.auth import hash_password
    from central.config import load_config
    from central.service import ensure_key_pair
    from central.web.app import create_app
    from central.web.keys import CENTRAL

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(env={"CENTRAL_DATA_DIR": tmp})
        cfg = dataclasses.replace(cfg, poll=dataclasses.replace(cfg.poll, local=False, interval=3600.0))
        ensure_key_pair(cfg.key_path)
        client = TestClient(TestServer(create_app(cfg)))
        await client.start_server()
        try:
            central = client.server.app[CENTRAL]
            server = await central.storage.add_server("big", "10.0.0.1", host_key="x", host_key_fingerprint="y")
            d, text = document.normalise(doc), None
            text = document.dumps(d)
            await central.storage.write_polls([PollOutcome(server.id, time.time(), 0.01, True, doc_text=text,
                                                           sample=extract_sample(d), hostname=d["hostname"])], 3)
            await central.storage.add_user("v", "viewer", hash_password("pw-for-the-bench"))
            async with client.post("/api/v1/login", json={"username": "v", "password": "pw-for-the-bench"}) as r:
                assert r.status == 200
            out = {}
            for what, path in (("page", "/servers/big"), ("api", "/api/v1/servers/big")):
                best, size = float("inf"), 0
                for _ in range(5):
                    t = time.process_time()
                    async with client.get(path) as r:
                        size = len(await r.read())
                        assert r.status == 200, r.status
                    best = min(best, time.process_time() - t)
                out[what] = (size, best * 1000)
            return out
        finally:
            await client.close()


def buffered_outcome_bytes(base: dict, n: int = 5000) -> float:
    """Memory per outcome held in the outage buffer (only each server's newest keeps its document)."""
    doc, text = parse_document(json.dumps(base).encode())
    writer = Writer(lambda batch: None, capacity=n + 1)
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    for i in range(n):
        o = PollOutcome(server_id=i % 100, ts=float(i), duration=0.01, ok=True, doc_text=str(text),
                        sample=extract_sample(doc), hostname="h")
        o.extra["facts"] = extract_facts(doc)
        writer.put(o)
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return (after - before) / n


async def reads_while_locked(seconds: float = 10.0) -> tuple[float, float, int]:
    """Wall-clock latency of reads (p50, max in ms) while a second process holds BEGIN EXCLUSIVE
    and the writer keeps trying to store a poll outcome every 0.5 s; and its failed writes."""
    import subprocess

    from central.storage import Storage

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.db"
        storage = await Storage.open(path, lock_timeout=1.0)
        server = await storage.add_server("s", "10.0.0.1")

        async def store(batch):
            await storage.write_polls(batch, 3)
        writer = Writer(store, capacity=10_000)
        task = asyncio.create_task(writer.run())
        holder = subprocess.Popen([sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], "
                                   "isolation_level=None); c.execute('BEGIN EXCLUSIVE'); print('x', flush=True); "
                                   "sys.stdin.read()", str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        holder.stdout.readline()
        lat = []
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            if i % 10 == 0:
                writer.put(PollOutcome(server.id, time.time(), 0.01, False, reason="timeout", error="x"))
            t = time.perf_counter()
            await storage.list_servers()
            lat.append((time.perf_counter() - t) * 1000)
            await asyncio.sleep(0.05)
            i += 1
        holder.stdin.close()
        holder.wait()
        holder.stdout.close()
        await asyncio.sleep(1.5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await storage.close()
        lat.sort()
        return lat[len(lat) // 2], lat[-1], writer.failed_writes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    base = real_document()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; real document {len(json.dumps(base))} bytes")
    print()
    print("| document | body bytes | CPU per parse | peak memory | stored bytes | verdict |")
    print("|---|---:|---:|---:|---:|---|")
    for name, body in kinds(base).items():
        m = measure(body, args.rounds)
        print(f"| {name} | {m['body']:,} | {m['cpu_us']:,.0f} µs | {m['peak'] / 1024:,.0f} KiB | {m['stored']:,} | {m['verdict']} |")
    print()
    text = json.dumps(base)
    loads = min(_time(lambda: json.loads(text), 2000) for _ in range(args.rounds))
    norm = min(_time(lambda: document.normalise(base), 2000) for _ in range(args.rounds))
    print(f"real document: json.loads {loads:.0f} µs, normalise {norm:.0f} µs per poll")
    figures = asyncio.run(page_and_api(largest(base)))
    for what, (size, ms) in figures.items():
        print(f"largest document within the caps: {what} {size:,} bytes, {ms:.1f} ms CPU (client and server)")
    print(f"outage buffer: {buffered_outcome_bytes(base):,.0f} bytes per buffered outcome (100 servers)")
    p50, worst, failed = asyncio.run(reads_while_locked())
    print(f"reads while another process holds the lock 10 s (lock_timeout 1 s): p50 {p50:.1f} ms, "
          f"max {worst:.0f} ms wall; {failed} failed write attempts")


def _time(fn, n: int) -> float:
    t = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t) / n * 1e6


if __name__ == "__main__":
    main()
