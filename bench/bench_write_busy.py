"""write_polls of 2,000 outcomes (successes, then failures), write_inventories of 2,000 and
save_alerts of 2,000 new alerts on SQLite with the event loop idle, busy (a task that computes
1 ms between syscalls, as a saturated central does between its socket calls) and crowded (40
such tasks: each turn of the loop runs 40 ms of callbacks, as while 10,000 hosts connect, when
the lag of polls was 200-300 ms).

    PYTHONPATH=$PWD python3 bench/bench_write_busy.py CHECKOUT   # e.g. . or a worktree of another commit

The database thread gives up the GIL around every SQLite step and gets it back when the loop's
thread releases it: one step per row (executemany) made the writer fall behind while a fleet
connected (BENCHMARKS.md, "Stop 26"). And every call to that thread hands its answer back
through the loop, one turn each: a dozen statements a batch were most of a second on a crowded
loop ("Stop 28").
"""
import asyncio
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.abspath(sys.argv[1]))
from central.storage import Storage  # noqa: E402
from tests.test_storage_contract import alert_row, failed, ok  # noqa: E402


async def main():
    d = tempfile.mkdtemp()
    s = await Storage.open(os.path.join(d, "c.db"))
    servers = [await s.add_server(f"s{i}", f"10.0.{i // 250}.{i % 250 + 1}") for i in range(2000)]
    stop = False
    async def spin():
        while not stop:
            t = time.perf_counter()
            while time.perf_counter() - t < 0.001:
                pass
            time.sleep(0)  # a syscall: the GIL released, as a real loop does for its socket I/O
            await asyncio.sleep(0)
    n = [0]

    def ts():
        n[0] += 1
        return 1000.0 + n[0]

    kinds = {  # what a batch of 2,000 can be
        "write_polls, successes": lambda: s.write_polls([ok(x.id, ts()) for x in servers], 3),
        "write_polls, failures": lambda: s.write_polls([failed(x.id, ts()) for x in servers], 3),
        "write_inventories (first contact)": lambda: s.write_inventories(
            [(x.id, ts(), f"h{n[0]}", {"kernel": f"6.{n[0]}", "packages": ["a"] * 50}, "initial", "first")
             for x in servers]),
    }
    if hasattr(s, "save_alerts"):
        kinds["save_alerts, 2,000 new"] = lambda: s.save_alerts(
            [alert_row(x.id, f"r{ts()}", "pending") for x in servers], [], [])
    for busy in (0, 1, 40):
        for what, write in kinds.items():
            tasks = [asyncio.create_task(spin()) for _ in range(busy)]
            out = []
            for r in range(3):
                t0 = time.perf_counter()
                await write()
                out.append((time.perf_counter() - t0) * 1000)
            stop = True
            await asyncio.gather(*tasks)
            stop = False
            loop = {0: "idle", 1: "busy", 40: "crowded"}[busy]
            print(f"{sys.argv[1]}: loop {loop} ({busy} tasks): {what} of 2,000: " + ", ".join(f"{x:.0f}" for x in out) + " ms",
                  flush=True)
    await s.close()

asyncio.run(main())
