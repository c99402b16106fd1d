"""What a fleet-wide outage costs the central: storing it, alerting on it, notifying it.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_outage.py [--servers 10000] [--storm-messages 10]

The real `Central` (Central.open: SQLite, the alert engine, the notification dispatcher) with
--servers servers and one webhook channel on the default route (each alert its own message) to a
real HTTP receiver on loopback. Rounds of one poll outcome per server, stored through the
poller's own store() in the writer's batches (2,000), as the writer stores them:

- 2 rounds healthy (a real agent document of this machine),
- 5 rounds all failing `unreachable` (alerts.unreachable_after = 3: the third round opens an
  alert per server, the one the notifier sends),
- 2 rounds healthy again (every alert resolves).

Per round: CPU ms per outcome of store() (storage, alert evaluation, routing); then the
messages the receiver got and how many alerts they carried, the channel's dropped and gathered
counts, with the storm limit (--storm-messages, per --storm-window) and without it (0). Prints
the machine's load with the table.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from central.bundled import agent_module  # noqa: E402
from central.config import NotifierConfig, RouteConfig, load_config  # noqa: E402
from central.model import PollOutcome  # noqa: E402
from central.sample import extract_facts, extract_sample  # noqa: E402
from central.service import Central  # noqa: E402
from tests.receivers import HTTPReceiver  # noqa: E402

BATCH = 2000  # the writer's batch (central.writer.BATCH)
PLAN = ["ok", "ok", "fail", "fail", "fail", "fail", "fail", "ok", "ok"]


async def run(servers: int, storm_messages: int, storm_window: float) -> dict:
    doc = agent_module().Collector().all()
    text = json.dumps(doc, separators=(",", ":"))
    sample, facts = extract_sample(doc), extract_facts(doc)
    receiver = await HTTPReceiver().start()
    with tempfile.TemporaryDirectory(prefix="bench-outage-") as tmp:
        cfg = load_config(env={"CENTRAL_DATA_DIR": tmp})
        hook = NotifierConfig(name="ops", type="webhook", url=receiver.url("/ops"), retries=0)
        cfg = dataclasses.replace(
            cfg, poll=dataclasses.replace(cfg.poll, local=False), notifiers=(hook,),
            alerts=dataclasses.replace(cfg.alerts, storm_messages=storm_messages, storm_window=storm_window,
                                       queue_size=1000, route=RouteConfig(channels=("ops",))))
        central = await Central.open(cfg, serving=True)
        try:
            ids = [(await central.storage.add_server(f"s{i:05d}", "10.0.0.1", tags=("bench",))).id
                   for i in range(servers)]
            central.poller._servers = {s.id: s for s in await central.storage.list_servers()}
            rounds = []
            ts = time.time()
            for kind in PLAN:
                ts += 10
                if kind == "ok":
                    batch = [PollOutcome(sid, ts, 0.01, True, doc_text=text, sample=sample, extra={"facts": facts})
                             for sid in ids]
                else:
                    batch = [PollOutcome(sid, ts, 0.01, False, reason="unreachable", error="connection refused")
                             for sid in ids]
                c0, w0 = time.process_time(), time.perf_counter()
                for k in range(0, len(batch), BATCH):
                    await central.poller.store(batch[k:k + BATCH])
                cpu, wall = time.process_time() - c0, time.perf_counter() - w0
                firing = sum(1 for st in central.alerts.states.values() if st.state == "firing")
                rounds.append({"kind": kind, "cpu_ms_per_outcome": cpu / len(batch) * 1e3,
                               "wall_s": wall, "alerts_firing": firing})
            t0 = time.perf_counter()
            await central.notifier.stop(drain=120.0)  # what the limit holds goes out at the stop
            drain = time.perf_counter() - t0
            health = central.notifier.health()[0]
        finally:
            await central.close()
    messages = receiver.at("/ops")
    await receiver.stop()
    events = [a["event"] for m in messages for a in m["json"]["alerts"]]
    return {"servers": servers, "storm_messages": storm_messages, "storm_window": storm_window, "rounds": rounds,
            "messages": len(messages), "alerts_in_messages": len(events),
            "firing_sent": events.count("firing"), "resolved_sent": events.count("resolved"),
            "largest_message": max((len(m["json"]["alerts"]) for m in messages), default=0),
            "largest_body_kb": max((len(m["raw"]) for m in messages), default=0) / 1e3,
            "dropped": health["dropped"], "gathered": health["gathered"], "drain_s": drain}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--servers", type=int, default=10000)
    p.add_argument("--storm-messages", type=int, default=10)
    p.add_argument("--storm-window", type=float, default=60.0)
    args = p.parse_args()
    load = Path("/proc/loadavg").read_text().split()[:3]
    results = [asyncio.run(run(args.servers, args.storm_messages, args.storm_window)),
               asyncio.run(run(args.servers, 0, args.storm_window))]
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    print(f"load average before {' '.join(load)}, after {' '.join(load_after)}; {os.cpu_count()} CPUs")
    print("\n| round | " + " | ".join(f"limit {r['storm_messages']}: CPU ms/outcome (wall s)" for r in results)
          + " | alerts firing |")
    print("|---|" + "---:|" * (len(results) + 1))
    for i, kind in enumerate(PLAN):
        cells = [f"{r['rounds'][i]['cpu_ms_per_outcome']:.3f} ({r['rounds'][i]['wall_s']:.2f})" for r in results]
        print(f"| {i + 1} {kind} | " + " | ".join(cells) + f" | {results[0]['rounds'][i]['alerts_firing']:,} |")
    print("\n| storm limit | messages | alerts carried (firing + resolved) | largest message | largest body |"
          " dropped | gathered | stop drained in |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        limit = f"{r['storm_messages']} per {r['storm_window']:g} s" if r["storm_messages"] else "none"
        print(f"| {limit} | {r['messages']:,} | {r['alerts_in_messages']:,} ({r['firing_sent']:,} + "
              f"{r['resolved_sent']:,}) | {r['largest_message']:,} alerts | {r['largest_body_kb']:,.0f} KB | "
              f"{r['dropped']:,} | {r['gathered']:,} | {r['drain_s']:.1f} s |")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"outage-{int(time.time())}.json").write_text(json.dumps({"load": [load, load_after], "runs": results},
                                                                      indent=1))


if __name__ == "__main__":
    main()
