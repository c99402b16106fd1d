"""The single writer of poll outcomes, and the state of the database as it sees it.

Polls put their outcomes here; one task stores them in batches (one transaction each). While
the database cannot be written (locked by another process, read-only, disk full) outcomes wait
in a bounded buffer, oldest first, and are written when it recovers; only when the buffer is
full is the oldest outcome dropped, and counted. Storage health is a state, not a stream of
tracebacks: one log line when writes start failing, one when they work again (with counts);
the readiness probe, /api/v1/status, the page's banner, /metrics and a built-in critical alert
read it.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

from .model import PollOutcome, StorageUnavailable

log = logging.getLogger(__name__)

BATCH = 2000  # outcomes per transaction
GATHER = 0.2  # seconds: what arrives within this window goes into one transaction
RETRY_INITIAL, RETRY_MAX = 0.5, 10.0  # seconds between write attempts while failing
# A clean stop writes what is queued in batches of STOP_BATCH for at most STOP_BUDGET seconds
# (whatever the backlog: an outage's 10,000 buffered outcomes, or a poller that fell behind).
# The first STOP_OLDEST_SHARE of it goes to the oldest outcomes, in order; then only each
# server's newest outcome is kept (its status, latest document and newest figures: what the
# outage buffer exists for) and written; the older ones skipped then, and anything left at the
# deadline, are counted (unwritten_at_stop) and said in one log line.
STOP_BUDGET = 4.0
STOP_BATCH = 500
STOP_OLDEST_SHARE = 0.6


@dataclass
class StorageHealth:
    """Whether poll outcomes can be written, and since when they cannot."""

    ok: bool = True
    reason: str | None = None  # why the last write failed
    since: float | None = None  # when writes started failing (Unix time)
    failed_writes: int = 0  # failed attempts in this outage

    def to_dict(self, buffered: int, dropped: int, capacity: int) -> dict:
        """The JSON form (readiness, status, page)."""
        return {"ok": self.ok, "reason": self.reason, "since": self.since, "failed_writes": self.failed_writes,
                "buffered": buffered, "buffer_capacity": capacity, "dropped": dropped}


Store = Callable[[Sequence[PollOutcome]], Awaitable[None]]
Listener = Callable[[StorageHealth], Awaitable[None]]


class Writer:
    """Stores queued outcomes in batches through store(batch); buffers them while it fails."""

    def __init__(self, store: Store, capacity: int, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic):
        self._store = store
        self.capacity = capacity
        self.clock = clock
        self.monotonic = monotonic  # the stop's deadline
        self._pending: deque[PollOutcome] = deque()
        self._inflight: list[PollOutcome] = []
        # Per server, the pending outcome that carries its agent document: only the newest is
        # ever stored (the latest table keeps one per server), so an older one drops its text
        # and a buffered outcome costs ~4 KB (its figures and alert facts), not the document's size.
        self._document_of: dict[int, PollOutcome] = {}
        self._wake = asyncio.Event()
        self._delay = RETRY_INITIAL
        self._retry_at = 0.0
        self.health = StorageHealth()
        self.listeners: list[Listener] = []
        self.stored = 0  # outcomes written
        self.dropped = 0  # outcomes dropped from a full buffer, since start
        self.failed_writes = 0  # failed write attempts, since start
        self._outage_dropped = 0
        self._behind_dropped: int | None = None  # dropped while the storage works but the writer is behind
        self.unwritten_at_stop = 0  # outcomes the last flush() did not write (skipped or left)
        self._told = False  # listeners hear the health once the first write succeeded, then on changes

    @property
    def buffered(self) -> int:
        """Outcomes waiting to be written (the one batch being written included)."""
        return len(self._pending) + len(self._inflight)

    def status(self) -> dict:
        """Health with the buffer's counts."""
        return self.health.to_dict(self.buffered, self.dropped, self.capacity)

    def put(self, outcome: PollOutcome) -> None:
        """Queue one outcome for the next batch (never blocks; a full buffer drops its oldest)."""
        if outcome.ok and outcome.doc_text is not None:
            older = self._document_of.get(outcome.server_id)
            if older is not None:
                older.doc_text = None
            self._document_of[outcome.server_id] = outcome
        self._pending.append(outcome)
        self._trim()
        self._wake.set()

    def _trim(self) -> None:
        while self.buffered > self.capacity and self._pending:
            old = self._pending.popleft()
            if self._document_of.get(old.server_id) is old:
                del self._document_of[old.server_id]
            self.dropped += 1
            self._outage_dropped += 1
            if self.health.ok:
                # the storage works, the writer is behind (a saturated central): said once when it
                # starts and once when it has caught up, not per outcome
                if self._behind_dropped is None:
                    self._behind_dropped = 0
                    log.warning("the poll writer is behind: its buffer is full (%d outcomes), the oldest are "
                                "dropped until it catches up", self.capacity)
                self._behind_dropped += 1

    async def run(self) -> None:
        """Write batches as outcomes arrive, forever (cancel to stop, then flush())."""
        while True:
            await self._wake.wait()
            if len(self._pending) < BATCH:
                await asyncio.sleep(GATHER)
            if not self.health.ok:
                await asyncio.sleep(max(0.0, self._retry_at - time.monotonic()))
            await self._write_batch()
            if not self._pending:
                self._wake.clear()

    async def flush(self, budget: float = STOP_BUDGET, batch: int = STOP_BATCH) -> int:
        """Write what is pending (at shutdown) within about budget seconds (batches sized to the pace
        of those before, so the last one ends about on time); returns how many outcomes were not
        written (also in unwritten_at_stop)."""
        start = self.monotonic()
        deadline = start + budget
        total = self.buffered
        pace = [0.0, 0]  # seconds and outcomes of the batches written so far

        async def write() -> bool:
            # a batch no larger than what the pace so far writes before the deadline (a saturated
            # event loop took 1-2.5 s for one of 500 at 10,000 hosts, past the budget)
            t0 = self.monotonic()
            size = batch if pace[0] <= 0 else max(1, min(batch, int((deadline - t0) * pace[1] / pace[0])))
            pace[1] += min(size, len(self._pending))
            ok = await self._write_batch(size)
            pace[0] += self.monotonic() - t0
            return ok

        # 1. the oldest outcomes, in the order they came
        while self._pending and self.monotonic() < start + budget * STOP_OLDEST_SHARE:
            if not await write():
                return self._lost_at_stop()
        if not self._pending:
            self.unwritten_at_stop = 0
            return 0
        # 2. the time is short: only each server's newest outcome (its status, latest document,
        # newest figures); the older ones are skipped (its consecutive-failure count misses them)
        newest = {o.server_id: o for o in self._pending}
        keep = {id(o) for o in newest.values()}
        skipped = len(self._pending) - len(keep)
        self._pending = deque(o for o in self._pending if id(o) in keep)
        while self._pending and self.monotonic() < deadline:
            if not await write():
                return self._lost_at_stop(skipped)
        left = len(self._pending)
        self._pending.clear()
        self._document_of.clear()
        self.unwritten_at_stop = skipped + left
        log.warning("stopping: %d of %d queued poll outcomes not written within %.1fs: %d older ones of servers "
                    "whose newest outcome was written, %d newest ones left at the deadline", self.unwritten_at_stop,
                    total, budget, skipped, left)
        return self.unwritten_at_stop

    def give_up(self, why: str) -> int:
        """At a stop that cannot write (its writer stuck in the storage): count what is queued as
        unwritten, say why in one log line, keep nothing."""
        self.unwritten_at_stop = self.buffered
        self._pending.clear()
        self._document_of.clear()
        log.error("stopping: %d queued poll outcomes not written: %s", self.unwritten_at_stop, why)
        return self.unwritten_at_stop

    def _lost_at_stop(self, skipped: int = 0) -> int:
        self.unwritten_at_stop = skipped + self.buffered
        log.error("%d poll outcomes could not be written before shutdown: %s", self.unwritten_at_stop,
                  self.health.reason)
        return self.unwritten_at_stop

    async def _write_batch(self, size: int = BATCH) -> bool:
        batch = [self._pending.popleft() for _ in range(min(size, len(self._pending)))]
        if not batch:
            return True
        self._inflight = batch
        try:
            await self._store(batch)
        except BaseException as exc:
            self._inflight = []
            self._pending.extendleft(reversed(batch))
            self._trim()
            if isinstance(exc, Exception):
                await self._failed(exc)
                return False
            raise
        self._inflight = []
        for o in batch:
            if self._document_of.get(o.server_id) is o:
                del self._document_of[o.server_id]
        self.stored += len(batch)
        if self._behind_dropped is not None and self.buffered <= self.capacity // 2:
            log.warning("the poll writer caught up: %d poll outcomes were dropped while it was behind",
                        self._behind_dropped)
            self._behind_dropped = None
        if not self.health.ok:
            await self._recovered(len(batch))
        elif not self._told:
            await self._tell()  # healthy from the start: an alert left open by a previous run resolves
        self._delay = RETRY_INITIAL
        return True

    async def _failed(self, exc: Exception) -> None:
        self.failed_writes += 1
        health = self.health
        # the database's own words ("database is locked"), without our wrapper's prefix
        reason = str(exc.__cause__ or exc) if isinstance(exc, StorageUnavailable) else f"{type(exc).__name__}: {exc}"
        health.reason = reason[:500]
        health.failed_writes += 1
        self._retry_at = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, RETRY_MAX)
        if health.ok:
            health.ok, health.since = False, self.clock()
            self._outage_dropped = 0
            # One line per outage (not one per batch); a traceback only for what is not a
            # known storage failure, since that is a bug.
            log.error("storage failing: %s; poll outcomes wait in memory (%d now, at most %d) until it "
                      "recovers", health.reason, self.buffered, self.capacity,
                      exc_info=None if isinstance(exc, StorageUnavailable) else exc)
            await self._tell()

    async def _recovered(self, written: int) -> None:
        health = self.health
        log.warning("storage recovered after %.1fs (%d failed writes): %d buffered poll outcomes written "
                    "now or next, %d dropped while the buffer was full", self.clock() - (health.since or self.clock()),
                    health.failed_writes, written + self.buffered, self._outage_dropped)
        self.health = StorageHealth()
        await self._tell()

    async def _tell(self) -> None:
        self._told = True
        for listener in self.listeners:
            try:
                await listener(self.health)
            except Exception:  # noqa: BLE001 - a broken listener must not stop the writer
                log.exception("storage health listener %r failed", listener)
