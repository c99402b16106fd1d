"""CPU cost of the central's per-poll code that does not touch the network: turning an agent
document into a sample, the alert values of a poll, and storing a batch of outcomes.

Run: .venv/bin/python bench/bench_poll_path.py [--rounds N]
(PYTHONPATH=<another checkout> runs the same against that checkout, to compare.)
Prints CPU microseconds per outcome (process time, best of the rounds: the machine is shared).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from central import alerts, sample
from central.bundled import agent_module
from central.model import PollOutcome
from central.storage import Storage


def best(fn, n: int, rounds: int) -> float:
    """Best per-call CPU microseconds of fn over rounds of n calls."""
    out = []
    for _ in range(rounds):
        t = time.process_time()
        for _ in range(n):
            fn()
        out.append((time.process_time() - t) / n * 1e6)
    return min(out)


async def store_cost(doc: dict, text: str, rounds: int, servers: int = 500) -> float:
    """CPU microseconds per outcome of write_polls in batches of `servers` outcomes."""
    with tempfile.TemporaryDirectory() as tmp:
        storage = await Storage.open(Path(tmp) / "bench.db")
        try:
            ids = [(await storage.add_server(f"s{i}", "10.0.0.1")).id for i in range(servers)]
            s = sample.extract_sample(doc)
            results, ts = [], 1_800_000_000.0
            for _ in range(rounds):
                batch = [PollOutcome(server_id=i, ts=ts, duration=0.01, ok=True, doc_text=text, sample=s,
                                     hostname="h") for i in ids]
                t = time.process_time()
                await storage.write_polls(batch, offline_after=3)
                results.append((time.process_time() - t) / servers * 1e6)
                ts += 10
            return min(results)
        finally:
            await storage.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    collector = agent_module().Collector()
    collector.all()
    time.sleep(0.3)
    doc = collector.all()
    text = json.dumps(doc, separators=(",", ":"))
    facts = sample.extract_facts(doc)
    s = sample.extract_sample(doc)
    print(f"central from {Path(sample.__file__).parent.parent}", file=sys.stderr)
    print(f"extract_sample        {best(lambda: sample.extract_sample(doc), 2000, args.rounds):7.2f} us")
    print(f"alert simple values   {best(lambda: alerts._simple_values(s, facts), 5000, args.rounds):7.2f} us")
    print(f"write_polls (per ok)  {asyncio.run(store_cost(doc, text, args.rounds)):7.2f} us")


if __name__ == "__main__":
    main()
