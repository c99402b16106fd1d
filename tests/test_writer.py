"""The poll writer: fault-isolated batches, cancellation-safe transactions, and the outage buffer
against a real second process holding the database's write lock."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import subprocess
import sys

import pytest

from central.model import METRICS, PollOutcome, StorageUnavailable
from central.service import Central
from central.writer import Writer
from tests.helpers import wait_for


def sample(cpu: float = 1.0) -> dict:
    d = {m: None for m in METRICS}
    d.update(cpu=cpu, mem=50.0, procs=10, top=[])
    return d


def ok(server_id: int, ts: float, doc: str | None = '{"hostname":"h"}') -> PollOutcome:
    return PollOutcome(server_id=server_id, ts=ts, duration=0.01, ok=True, doc_text=doc, sample=sample(),
                       hostname="h")


class LockHolder:
    """A real second process holding BEGIN EXCLUSIVE on the database until release()."""

    def __init__(self, path):
        code = ("import sqlite3, sys\n"
                f"c = sqlite3.connect({str(path)!r}, isolation_level=None, timeout=30)\n"
                "c.execute('BEGIN EXCLUSIVE')\n"
                "print('locked', flush=True)\n"
                "sys.stdin.read()\n"
                "c.execute('ROLLBACK')\n")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout.readline().strip() == "locked"

    def release(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(10)
            self.proc.stdout.close()


@pytest.fixture
async def serving(config):
    """A Central opened as `central serve` opens it (short lock wait), the local server not polled."""
    cfg = dataclasses.replace(config, poll=dataclasses.replace(config.poll, local=False),
                              database=dataclasses.replace(config.database, lock_timeout=0.2))
    c = await Central.open(cfg, serving=True)
    yield c
    await c.close()


async def servers(central, n):
    return [await central.storage.add_server(f"s{i}", f"10.0.0.{i + 1}") for i in range(n)]


async def stored_ts(central, server_id):
    return [s["ts"] for s in await central.storage.samples(server_id, 0, 1e12)]


async def test_an_unstorable_outcome_becomes_its_own_servers_failure(serving):
    a, b, c = await servers(serving, 3)
    bad = ok(b.id, 100.0)
    bad.sample["procs"] = 10**19
    await serving.poller.store([ok(a.id, 100.0), bad, ok(c.id, 100.0)])
    assert await stored_ts(serving, a.id) == [100.0] and await stored_ts(serving, c.id) == [100.0]
    server = await serving.storage.get_server("s1")
    assert (server.status, server.status_reason) == ("error", "bad_payload")
    assert "could not store this poll" in server.last_error and "OverflowError" in server.last_error


async def test_a_cancelled_write_leaves_no_transaction_open(serving):
    (a,) = await servers(serving, 1)
    for steps in range(12):  # cancel at every await point of a batch write in turn
        task = asyncio.create_task(serving.storage.write_polls([ok(a.id, float(steps))], 3))
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert await serving.storage.write_polls([ok(a.id, 1000.0 + steps)], 3) == []
    assert 1011.0 in await stored_ts(serving, a.id)


async def test_outcomes_wait_while_another_process_holds_the_lock(serving, caplog):
    caplog.set_level(logging.INFO, logger="central")
    (a,) = await servers(serving, 1)
    writer = serving.poller.writer
    task = asyncio.create_task(writer.run())
    holder = LockHolder(serving.storage.location)
    try:
        for i in range(5):
            writer.put(ok(a.id, float(i)))
        await wait_for(lambda: not writer.health.ok, what="storage failing")
        assert "database is locked" in writer.health.reason
        for i in range(5, 10):
            writer.put(ok(a.id, float(i)))
        assert writer.buffered == 10 and writer.dropped == 0
        # reads do not wait for the lock: the API's data is there while writes fail
        assert (await serving.storage.get_server("s0")).name == "s0"
        await wait_for(lambda: writer.health.failed_writes >= 2, what="a retry")
    finally:
        holder.release()
    await wait_for(lambda: writer.health.ok and writer.buffered == 0, timeout=30, what="drained")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert await stored_ts(serving, a.id) == [float(i) for i in range(10)]
    lines = [r.getMessage() for r in caplog.records if r.name == "central.writer"]
    assert len(lines) == 2, lines  # one line when it starts failing, one when it recovers
    assert lines[0].startswith("storage failing: database is locked; poll outcomes wait in memory")
    assert lines[1].startswith("storage recovered after ") and "10 buffered poll outcomes written" in lines[1]
    assert not any(r.exc_info for r in caplog.records), "a traceback was logged"


async def test_a_full_buffer_drops_the_oldest_and_counts_them(serving):
    (a,) = await servers(serving, 1)
    writer = Writer(serving.poller.store, capacity=4)
    task = asyncio.create_task(writer.run())
    holder = LockHolder(serving.storage.location)
    try:
        writer.put(ok(a.id, 0.0))
        await wait_for(lambda: not writer.health.ok, what="storage failing")
        for i in range(1, 10):
            writer.put(ok(a.id, float(i)))
        assert writer.buffered == 4 and writer.dropped == 6
        assert writer.status()["dropped"] == 6
    finally:
        holder.release()
    await wait_for(lambda: writer.health.ok and writer.buffered == 0, timeout=30, what="drained")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert await stored_ts(serving, a.id) == [6.0, 7.0, 8.0, 9.0]  # the newest four


async def test_a_writer_behind_a_working_storage_says_when_it_drops_and_when_it_caught_up(serving, caplog):
    # no outage, only a writer slower than the polls (a central saturated while a fleet
    # connects): the drops were counted but never logged
    (a,) = await servers(serving, 1)
    release = asyncio.Event()
    calls = []

    async def slow_store(batch):
        calls.append(len(batch))
        await release.wait()
        await serving.poller.store(batch)

    writer = Writer(slow_store, capacity=4)
    task = asyncio.create_task(writer.run())
    try:
        with caplog.at_level(logging.WARNING, logger="central.writer"):
            writer.put(ok(a.id, 0.0))
            await wait_for(lambda: calls, what="a batch being written")
            for i in range(1, 10):
                writer.put(ok(a.id, float(i)))
            assert writer.dropped == 6 and writer.health.ok
            behind = [r.getMessage() for r in caplog.records if "behind" in r.getMessage()]
            assert behind == ["the poll writer is behind: its buffer is full (4 outcomes), the oldest are dropped "
                              "until it catches up"]
            release.set()
            await wait_for(lambda: writer.buffered == 0, what="drained")
        caught = [r.getMessage() for r in caplog.records if "caught up" in r.getMessage()]
        assert caught == ["the poll writer caught up: 6 poll outcomes were dropped while it was behind"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_only_the_newest_buffered_outcome_keeps_its_document(serving):
    a, b = await servers(serving, 2)
    writer = Writer(serving.poller.store, capacity=100)
    first, second, other = ok(a.id, 1.0, '{"n":1}'), ok(a.id, 2.0, '{"n":2}'), ok(b.id, 1.5, '{"n":3}')
    for o in (first, second, other):
        writer.put(o)
    assert (first.doc_text, second.doc_text, other.doc_text) == (None, '{"n":2}', '{"n":3}')
    await writer.flush()
    assert (await serving.storage.latest_document(a.id)) == (2.0, {"n": 2})
    assert await stored_ts(serving, a.id) == [1.0, 2.0]


async def test_flush_at_shutdown_says_what_it_could_not_write(serving, caplog):
    (a,) = await servers(serving, 1)
    writer = Writer(serving.poller.store, capacity=100)
    holder = LockHolder(serving.storage.location)
    try:
        writer.put(ok(a.id, 1.0))
        await writer.flush()
    finally:
        holder.release()
    assert "1 poll outcomes could not be written before shutdown" in caplog.text


async def test_check_writable_refuses_a_locked_database(serving):
    holder = LockHolder(serving.storage.location)
    try:
        with pytest.raises(StorageUnavailable, match="database is locked"):
            await serving.storage.check_writable()
    finally:
        holder.release()
    await serving.storage.check_writable()


class StoreClock:
    """A clock that advances one second per batch stored: the stop's deadline falls after a known
    number of batches, whatever this machine's speed (no timed assertion)."""

    def __init__(self, store, per_outcome: float = 0.0):
        self.now = 0.0
        self.batches: list[int] = []
        self._store = store
        self.per_outcome = per_outcome  # else one second per batch, whatever its size

    async def store(self, batch):
        await self._store(batch)
        self.batches.append(len(batch))
        self.now += self.per_outcome * len(batch) if self.per_outcome else 1.0

    def __call__(self):
        return self.now


async def backlog(serving, n_servers, rounds):
    """A real backlog: rounds of one outcome per server (round r at ts 100 + r), oldest first."""
    ss = await servers(serving, n_servers)
    outcomes = [ok(s.id, 100.0 + r, f'{{"round":{r}}}') for r in range(rounds) for s in ss]
    return ss, outcomes


async def test_a_stop_writes_the_oldest_then_each_servers_newest_and_counts_the_rest(serving, caplog):
    ss, outcomes = await backlog(serving, 20, 10)  # 200 queued outcomes
    clock = StoreClock(serving.poller.store)
    writer = Writer(clock.store, capacity=1000, monotonic=clock)
    for o in outcomes:
        writer.put(o)
    # budget 10 "seconds": the oldest for 6 batches of 10 (rounds 0-2), then the 20 newest
    unwritten = await writer.flush(budget=10, batch=10)
    assert clock.batches == [10] * 8
    assert unwritten == writer.unwritten_at_stop == 200 - 60 - 20
    for s in ss:
        assert await stored_ts(serving, s.id) == [100.0, 101.0, 102.0, 109.0]
        server = await serving.storage.get_server(s.name)
        assert (server.status, server.last_seen) == ("online", 109.0)
        assert await serving.storage.latest_document(s.id) == (109.0, {"round": 9})
    assert "120 of 200 queued poll outcomes not written" in caplog.text
    assert writer.buffered == 0


async def test_a_stop_that_runs_out_of_time_counts_the_newest_left(serving, caplog):
    ss, outcomes = await backlog(serving, 20, 5)  # 100 queued
    clock = StoreClock(serving.poller.store)
    writer = Writer(clock.store, capacity=1000, monotonic=clock)
    for o in outcomes:
        writer.put(o)
    # budget 3: the oldest for 2 batches (round 0), then one batch of newest (10 of the 20 servers)
    assert await writer.flush(budget=3, batch=10) == 100 - 20 - 10
    assert clock.batches == [10, 10, 10]
    newest_written = [s for s in ss if (await stored_ts(serving, s.id))[-1] == 104.0]
    assert len(newest_written) == 10
    assert "60 older ones of servers whose newest outcome was written, 10 newest ones left" in caplog.text


async def test_a_stop_with_time_enough_writes_everything_in_order(serving):
    ss, outcomes = await backlog(serving, 5, 4)
    clock = StoreClock(serving.poller.store)
    writer = Writer(clock.store, capacity=1000, monotonic=clock)
    for o in outcomes:
        writer.put(o)
    assert await writer.flush(budget=100, batch=3) == 0
    assert sum(clock.batches) == 20 and max(clock.batches) == 3  # bounded batches
    for s in ss:
        assert await stored_ts(serving, s.id) == [100.0, 101.0, 102.0, 103.0]


async def test_a_stop_does_not_wait_for_loops_slow_to_unwind(serving, monkeypatch):
    # a server's loop that takes its time to end once cancelled (10,000 of them unwinding on a
    # saturated event loop took 2.5 s): the stop gives them CANCEL_WAIT, then writes the backlog
    # in what is left of the writer's budget
    from central import poller as poller_module
    from central.writer import STOP_BUDGET

    monkeypatch.setattr(poller_module, "CANCEL_WAIT", 0.05)
    release = asyncio.Event()

    async def stubborn():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await release.wait()
            raise

    ss, outcomes = await backlog(serving, 3, 2)
    poller = serving.poller
    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)  # it is waiting in its sleep
    poller._tasks[ss[0].id] = task
    for o in outcomes:
        poller.writer.put(o)
    budgets = []
    flush = poller.writer.flush

    async def flush_recorded(budget, batch=500):
        budgets.append(budget)
        return await flush(budget, batch)

    monkeypatch.setattr(poller.writer, "flush", flush_recorded)
    await poller.stop()
    assert not task.done()  # the stop did not wait for it
    assert len(budgets) == 1 and STOP_BUDGET / 2 <= budgets[0] <= STOP_BUDGET - 0.05
    for s in ss:
        assert await stored_ts(serving, s.id) == [100.0, 101.0]
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_stop_whose_writer_is_stuck_in_the_storage_gives_up_its_queue_and_ends(serving, monkeypatch, caplog):
    # a storage call that does not end when cancelled (asyncpg 0.32 lost a cancel mid
    # executemany and waited for good): the stop waits MAIN_WAIT for the writer's loop, then
    # counts what is queued as unwritten and ends, writing nothing beside the stuck writer
    from central import poller as poller_module

    monkeypatch.setattr(poller_module, "MAIN_WAIT", 0.1)
    poller = serving.poller
    writing, release = asyncio.Event(), asyncio.Event()

    async def stuck_store(batch):
        writing.set()
        cancelled = False
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                cancelled = True  # not answered until released
        if cancelled:
            raise asyncio.CancelledError

    monkeypatch.setattr(poller.writer, "_store", stuck_store)
    ss, outcomes = await backlog(serving, 3, 2)
    poller._main = [asyncio.create_task(poller.writer.run(), name="poller-writer")]
    for o in outcomes:
        poller.writer.put(o)
    await writing.wait()
    with caplog.at_level(logging.ERROR, logger="central.writer"):
        await asyncio.wait_for(poller.stop(), 5)
    assert poller.writer.unwritten_at_stop == len(outcomes)
    assert "6 queued poll outcomes not written: the storage did not answer the cancel of poller-writer" in caplog.text
    for s in ss:
        assert await stored_ts(serving, s.id) == []
    release.set()
    await asyncio.wait(poller._main, timeout=5)
    assert all(t.done() for t in poller._main)


async def test_a_stop_sizes_its_last_batches_to_end_about_on_time(serving):
    # on a saturated event loop one batch of 500 took 1-2.5 s: past a 4 s budget by that much.
    # Each outcome here costs 0.3 "seconds": after the first batch (3 s) the writer knows the
    # pace and sizes the next ones to what fits before the deadline
    ss, outcomes = await backlog(serving, 20, 5)
    clock = StoreClock(serving.poller.store, per_outcome=0.3)
    writer = Writer(clock.store, capacity=1000, monotonic=clock)
    for o in outcomes:
        writer.put(o)
    await writer.flush(budget=4, batch=10)
    assert clock.batches == [10, 3, 1]  # not [10, 10]: that one would have ended at 6 s
    assert clock.now <= 4 + 0.3  # past the budget by at most one outcome
