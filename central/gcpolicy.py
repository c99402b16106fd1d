"""How the serving process keeps Python's cyclic garbage collector from stalling its event loop.

A full collection walks every tracked object the process holds: with a thousand SSH
connections and their figures that took 150-200 ms, at 6,000 hosts 0.8 s and at 10,000 5 s,
with nothing served or polled meanwhile (BENCHMARKS.md, GC pauses). Most of those objects live
for the whole run (connections, servers, the latest figures), and a poll leaves no cyclic
garbage (measured: none in thousands of polls), so:

- after start-up everything is collected once and frozen (gc.freeze: out of the collector's
  reach); after each load of the server list (every poll.reload_interval) what is alive is
  frozen again, without walking it (freezing is O(1); collecting even the young generations
  walked ~100 ms of objects at 2,000 hosts: the poll outcomes waiting for the writer and the
  newest figures);
- the young generations are collected in small steps: at least every YOUNG_EVERY seconds
  (run(): gc.collect(1), what survived goes to the old generation), and by the thresholds
  (THRESHOLDS: gen 0 every 5,000 net allocations, gen 1 every 5 of those) in a burst. The
  thresholds alone came late: they count allocations minus deallocations, and at steady state
  objects that live one poll interval (each host's newest figures, its poll loop's timer) die
  about as fast as new ones are made, so a young collection walked seconds of survivors, 92,000
  to 155,000 objects at 10,000 hosts, 82-152 ms; every 0.25 s the longest was 18-57 ms
  (BENCHMARKS.md, "Stop 28"). The old generation is never collected automatically: what
  reaches it is frozen at the next settle anyway;
- everything is unfrozen and collected (cycles among old objects, a closed connection's, freed)
  only when the interpreter's allocated memory blocks (sys.getallocatedblocks) grew by
  FULL_GROWTH over the baseline, and at most once every FULL_EVERY seconds. The baseline is
  what the last such collection left allocated, and before the first one the count FULL_EVERY
  after start-up (the fleet loaded and connected by then). That collection is the one pause that
  grows with the fleet: 1.4-1.9 s for the 1.56 million tracked objects of 10,000 hosts, freeing
  nothing at steady state, even after a fleet's connect phase (BENCHMARKS.md, "Stop 29"); it ran
  every hour for nothing before. Uncollected cyclic garbage holds its blocks until it is freed,
  so it shows in the count: it is bounded to FULL_GROWTH of the baseline. The count is cheap
  (about 1 ms for 600 MB of objects: it adds up the pools' counters); counting the tracked
  objects instead (gc.get_freeze_count walks the frozen list) took 190-240 ms at 10,000 hosts.

Each collection's pause is measured (gc.callbacks) for the benches.
"""
from __future__ import annotations

import asyncio
import gc
import sys
import time

THRESHOLDS = (5_000, 5, 1_000_000)  # gen 0 allocations; gen 1 and gen 2 counts (defaults 700, 10, 10)
FULL_EVERY = 3600.0  # seconds: at most one collection of everything (frozen objects included) this often
FULL_GROWTH = 0.25  # ...and only once the allocated blocks grew this much over what the last one left
COUNT_EVERY = 60.0  # seconds between counts of the allocated blocks while a full collection may be due
LONG_PAUSE = 0.1  # seconds: a collection pausing longer is counted (the bound on any pause)
YOUNG_EVERY = 0.25  # seconds: the young generations are collected at least this often


class GCPolicy:
    """Freezes survivors at start-up and after each server-list load; measures every pause."""

    def __init__(self, clock=time.monotonic, growth: float = FULL_GROWTH):
        self.clock = clock
        self.growth = growth
        self._old_thresholds: tuple[int, int, int] | None = None
        self._started_at: float | None = None
        self._last_full = 0.0
        self._last_count = float("-inf")
        self.baseline: int | None = None  # allocated blocks the last full collection left, or the first count
        self.blocks = 0  # allocated blocks at the last count
        self.full_collections = 0  # since start (start-up's not counted)
        self._t0 = 0.0
        self._cpu0 = 0.0
        self.pauses = [0, 0, 0]  # collections per generation
        self.pause_total = 0.0  # seconds paused in collections
        self.pause_max = [0.0, 0.0, 0.0]  # the longest pause per generation, seconds
        self.pause_cpu_max = [0.0, 0.0, 0.0]  # the most CPU one collection took per generation (the rest of
        # a pause: the process waiting for a core), seconds
        self.long_pauses = 0  # collections that paused over LONG_PAUSE
        self.long_pauses_cpu = 0  # ...and those that took over LONG_PAUSE of CPU
        self.settles = 0
        self.young_ticks = 0  # young collections run() made (none other came within YOUNG_EVERY)
        self._last_young = 0.0  # when the last collection ended (self.clock)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0, self._cpu0 = time.perf_counter(), time.thread_time()
            return
        took = time.perf_counter() - self._t0
        cpu = time.thread_time() - self._cpu0
        self._last_young = self.clock()  # any collection collects the young generations too
        gen = info.get("generation", 2)
        self.pauses[gen] += 1
        self.pause_total += took
        if took > self.pause_max[gen]:
            self.pause_max[gen] = took
        if cpu > self.pause_cpu_max[gen]:
            self.pause_cpu_max[gen] = cpu
        if took > LONG_PAUSE:
            self.long_pauses += 1
            self.long_pauses_cpu += cpu > LONG_PAUSE

    def start(self) -> None:
        """Take over the collector (after start-up: config, database, server list loaded)."""
        if self._started_at is not None:
            return
        self._old_thresholds = gc.get_threshold()
        gc.callbacks.append(self._callback)
        gc.set_threshold(*THRESHOLDS)
        self._started_at = self._last_full = self._last_young = self.clock()
        gc.collect()  # start-up's garbage, once
        gc.freeze()
        self.settles += 1

    def tick(self) -> bool:
        """Collect the young generations (gc.collect(1)) when no collection ran for YOUNG_EVERY
        seconds; True when it did. Each collection walks only what survived since the last one."""
        if self._started_at is None or self.clock() - self._last_young < YOUNG_EVERY:
            return False
        gc.collect(1)  # (its end, as every collection's, is _last_young: _callback)
        self.young_ticks += 1
        return True

    async def run(self, every: float = YOUNG_EVERY) -> None:
        """tick() every `every` seconds, until cancelled (the serving app runs it)."""
        while True:
            await asyncio.sleep(every)
            self.tick()

    def settle(self) -> None:
        """Freeze what is alive now (after a server-list load); then, when due, the collection of
        everything: FULL_EVERY since the last one, and the allocated blocks grown by FULL_GROWTH."""
        if self._started_at is None:
            return
        gc.freeze()
        self.settles += 1
        now = self.clock()
        if now - self._last_full < FULL_EVERY or now - self._last_count < COUNT_EVERY:
            return
        self._last_count = now
        self.blocks = sys.getallocatedblocks()
        if self.baseline is None:
            self.baseline = self.blocks  # the fleet's own objects
        elif self.blocks >= self.baseline * (1 + self.growth):
            self.full()

    def full(self) -> None:
        """Unfreeze and collect everything (the one long pause), then freeze what lives on."""
        self._last_full = self.clock()
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self.baseline = self.blocks = sys.getallocatedblocks()
        self.full_collections += 1

    def stop(self, unfreeze: bool = True) -> None:
        """Give the collector back its defaults and (unfreeze) its frozen objects. A process that
        ends next keeps them frozen: unfrozen, the collection at interpreter exit walked them all
        (2.8 s from the central closed to the process gone, at 10,000 servers)."""
        if self._started_at is None:
            return
        self._started_at = None
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
        if self._old_thresholds is not None:
            gc.set_threshold(*self._old_thresholds)
        if unfreeze:
            gc.unfreeze()

    def figures(self) -> dict:
        """Collections and pauses since start (pause seconds per generation: the longest)."""
        return {"collections": list(self.pauses), "pause_max_s": [round(p, 4) for p in self.pause_max],
                "pause_total_s": round(self.pause_total, 3), "settles": self.settles, "young_ticks": self.young_ticks,
                "full_collections": self.full_collections, "blocks_baseline": self.baseline, "blocks_at_count": self.blocks}
