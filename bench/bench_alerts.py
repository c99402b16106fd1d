"""Cost of alert evaluation per poll, next to the cost of parsing the agent document once.

Run: PYTHONPATH=. python3 bench/bench_alerts.py [servers] [rounds]
2000 servers, the built-in rules plus four threshold rules, a real agent document from
this machine (the bundled agent's collector), a real SQLite file; every poll healthy except
a 5% that fail (so some state changes are written each round).
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

from central.alerts import AlertEngine
from central.bundled import agent_module
from central.config import AlertRule, AlertsConfig, load_config
from central.model import PollOutcome
from central.sample import extract_facts, extract_sample
from central.storage import Storage


async def main(n: int, rounds: int) -> None:
    doc = agent_module().Collector().all()
    text = json.dumps(doc, separators=(",", ":"))
    with tempfile.TemporaryDirectory() as tmp:
        storage = await Storage.open(Path(tmp) / "bench.db")
        cfg = load_config(env={"CENTRAL_DATA_DIR": tmp})
        rules = (AlertRule("cpu", "cpu.percent", ">", 95.0, 300.0), AlertRule("mem", "memory.percent", ">", 95.0),
                 AlertRule("inodes", "inode.percent", ">", 95.0), AlertRule("nic", "network.errors", ">", 10.0))
        cfg = dataclasses.replace(cfg, alerts=dataclasses.replace(AlertsConfig(), rules=rules, unreachable_after=1))
        servers = {}
        for i in range(n):
            s = await storage.add_server(f"s{i}", "10.0.0.1", tags=("prod",))
            servers[s.id] = s
        clock = [1_800_000_000.0]
        engine = AlertEngine(cfg, storage, None, clock=lambda: clock[0])
        await engine.start(run_timer=False)
        sample, facts = extract_sample(doc), extract_facts(doc)
        total = 0.0
        for r in range(rounds):
            clock[0] += 10
            batch = []
            for sid in servers:
                if (sid + r) % 20 == 0:
                    batch.append(PollOutcome(sid, clock[0], 0.01, False, reason="unreachable", error="x"))
                else:
                    batch.append(PollOutcome(sid, clock[0], 0.01, True, doc_text=text, sample=sample,
                                             extra={"facts": facts}))
            t0 = time.perf_counter()
            await engine.on_batch(batch, servers)
            total += time.perf_counter() - t0
        per_poll = total / (n * rounds) * 1e6
        t0 = time.perf_counter()
        for _ in range(2000):
            json.loads(text)
        parse = (time.perf_counter() - t0) / 2000 * 1e6
        print(f"alert evaluation: {per_poll:.1f} us per poll ({n} servers x {rounds} rounds, "
              f"{len(engine.rules)} rules, state changes written each round)")
        print(f"json.loads of the same {len(text)}-byte agent document: {parse:.1f} us")
        print(f"ratio evaluation / one document parse: {per_poll / parse:.2f}")
        await storage.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000, int(sys.argv[2]) if len(sys.argv) > 2 else 20))
