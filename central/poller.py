"""The poll schedule: every server at its own phase of the interval, results stored in batches.

Each server gets a small task that sleeps until its slot (offset = hash(id) mod interval, so
a fleet's polls spread evenly instead of bursting), polls, and queues the outcome. One writer
task stores queued outcomes in one transaction per batch and then runs the hooks (alert
evaluation) on the batch.
"""
from __future__ import annotations

import asyncio
import bisect
import dataclasses
import hashlib
import logging
import os
import time
from typing import Awaitable, Callable, Sequence

from . import inventory
from .config import Config
from .hosttext import clean
from .model import (
    BAD_PAYLOAD, BLOCKING_REASONS, CENTRAL_ERROR, ERROR, ONLINE, PollError, PollOutcome, Server, StorageUnavailable,
)
from .sample import agent_identity, extract_facts, extract_sample, inventory_hash
from .serverlog import server_log
from .sshpool import retrieve_result
from .storage import Storage
from .transport import Transport, Transports
from .writer import STOP_BUDGET, Writer

log = logging.getLogger(__name__)

Hook = Callable[[Sequence[PollOutcome], dict], Awaitable[None]]


# Phases are rounded down to this many seconds, so servers that share a slot are polled in
# one wake-up of the event loop: on a VM each idle -> busy transition of the loop costs about
# as much CPU as the poll itself (bench/bench_core.py). Slots still spread evenly over the
# interval (40 per 10 s): a slot holds 1/40 of the fleet, not a burst of all of it.
PHASE_QUANTUM = 0.25
# A clean stop takes about STOP_BUDGET (central.writer) whatever the fleet and the backlog: the
# servers' cancelled loops get at most CANCEL_WAIT to unwind (10,000 of them took 2.5 s on a
# saturated loop, BENCHMARKS.md), the flush what is left of the budget, never under half of it.
CANCEL_WAIT = 1.0
# The writer's own loop, cancelled, ends with the transaction it was in (rolled back). One that
# has not ended after MAIN_WAIT is stuck in the storage (a driver that lost the cancel: asyncpg
# did, BENCHMARKS.md): the stop gives up what is queued rather than wait for good, and writes
# nothing beside it (never two writers).
MAIN_WAIT = STOP_BUDGET / 2
# A fleet this big polled in-process on a machine of several cores is told of poll.workers at
# start: one core carried about 4,000-10,000 hosts at 10 s on the 2-vCPU VMs of BENCHMARKS.md.
WORKERS_HINT_AT = 3000
MAX_ERROR_CHARS = 500  # a failed poll's stored message (it may quote the host: cleaned)


class Histogram:
    """Cumulative-bucket counts of observed values (Prometheus style); O(log buckets) per observation."""

    BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

    def __init__(self, buckets: Sequence[float] = BUCKETS):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count one value into its bucket."""
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, count of values <= it) per bucket, ending with (inf, count)."""
        out, total = [], 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts):
            total += n
            out.append((bound, total))
        return out


def phase(server_id: int, interval: float) -> float:
    """The server's fixed offset within the interval, from a stable hash of its id."""
    h = int.from_bytes(hashlib.sha1(str(server_id).encode()).digest()[:8], "big")
    offset = (h / 2**64) * interval
    if PHASE_QUANTUM and interval >= 4 * PHASE_QUANTUM:
        offset -= offset % PHASE_QUANTUM
    return offset


class Poller:
    """Schedules polls, stores their outcomes, and runs hooks on each stored batch."""

    def __init__(self, config: Config, storage: Storage, transports: Transports):
        self.config = config
        self.storage = storage
        self.transports = transports
        self.hooks: list[Hook] = []
        self.writer = Writer(self.store, config.database.outage_buffer)
        self._state: dict[int, tuple[bool, str | None, float | None]] = {}  # server id -> (ok, reason, failing since)
        # Run with each round of rollup and pruning (the terminal prunes its recordings here).
        self.maintenance_hooks: list[Callable[[], Awaitable[object]]] = []
        # Several centrals (central.cluster): which of the listed servers this central polls;
        # None: all of them.
        self.ownership: Callable[[dict[int, Server]], Awaitable[set[int]]] | None = None
        # Called after each load of the server list (the serving process freezes what survived
        # for the garbage collector then: central/gcpolicy.py).
        self.reload_hooks: list[Callable[[], object]] = []
        self._tasks: dict[int, asyncio.Task] = {}
        self._servers: dict[int, Server] = {}
        self._servers_marker: object = None  # storage.servers_marker() at the last load
        self._listed: dict[int, Server] = {}  # every stored server at the last load (a cluster's share of it polled)
        self._main: list[asyncio.Task] = []
        self._flushed = asyncio.Event()
        self.lag: float = 0.0  # how late the last poll started, seconds
        self.polls = 0  # successful polls
        self.errors_by_reason: dict[str, int] = {}
        self.durations = Histogram()  # every poll's duration, failed ones included
        self.started_at = time.time()

    @property
    def scheduled(self) -> int:
        """How many servers have a poll schedule."""
        return len(self._tasks)

    # lifecycle

    async def start(self) -> None:
        """Load the server list and start the schedule and the writer."""
        await self.reload()
        await self.transports.prepare(self._servers.values())
        self._hint_workers()
        self._main = [
            asyncio.create_task(self._reload_loop(), name="poller-reload"),
            asyncio.create_task(self.writer.run(), name="poller-writer"),
            asyncio.create_task(self._maintenance_loop(), name="poller-maintenance"),
        ]

    def _hint_workers(self) -> None:
        """Say once, at start, when a fleet this big is polled by this one process on a machine
        with cores to spare (poll.workers, docs/scaling.md)."""
        ssh = self.transports.ssh
        polled = sum(1 for s in self._servers.values() if self.transports.of(s) is ssh)
        cores = os.cpu_count() or 1
        if ssh.workers is None and cores > 1 and polled >= WORKERS_HINT_AT:
            log.warning("%d SSH servers are polled by this one process, on one of the machine's %d cores: "
                        "poll.workers spreads them over more (docs/scaling.md, \"Poll workers\")", polled, cores)

    async def stop(self) -> None:
        """Cancel every task and store what is still queued, in about STOP_BUDGET seconds."""
        start = self.writer.monotonic()
        loops = list(self._tasks.values())
        for t in loops + self._main:
            t.cancel()
        # the connects under way are shielded from the polls that wait for them: give them up, or
        # they go on (with those waiting for a slot) and take the loop from the flush
        await self.transports.stop_connecting()
        # the writer's own loop must have ended before the flush writes (never two writers)
        done, stuck = await asyncio.wait(self._main, timeout=MAIN_WAIT) if self._main else (set(), set())
        for t in done:
            retrieve_result(t)
        for t in stuck:
            t.add_done_callback(retrieve_result)
        if stuck:
            self.writer.give_up("the storage did not answer the cancel of %s within %.1fs"
                                % (", ".join(sorted(t.get_name() for t in stuck)), MAIN_WAIT))
        if loops:
            done, unwinding = await asyncio.wait(loops, timeout=CANCEL_WAIT)
            for t in done:
                retrieve_result(t)
            for t in unwinding:  # cancelled, still unwinding: they end with the event loop
                t.add_done_callback(retrieve_result)
        self._tasks.clear()
        if stuck:
            return
        spent = self.writer.monotonic() - start
        await self.writer.flush(budget=max(STOP_BUDGET / 2, STOP_BUDGET - spent))

    async def reload(self, force: bool = True) -> None:
        """Pick up added, removed and changed servers (force False: only when something but poll
        batches wrote since the last load; poll batches change no setting the poller reads).
        In a cluster (ownership set) the leases are renewed at every call all the same, and the
        list is read again when they changed or the servers did."""
        marker = await self.storage.servers_marker()
        unchanged = not force and marker == self._servers_marker
        if unchanged and self.ownership is None:
            for hook in self.reload_hooks:
                hook()
            return
        listed = self._listed if unchanged else {s.id: s for s in await self.storage.list_servers()}
        if self.ownership is None:
            servers = listed
        else:
            # a local server is this central's own host only under its own name; the rest are leased
            local = {sid for sid, s in listed.items() if self.transports.of(s).own_host}
            owned = await self.ownership({sid: s for sid, s in listed.items() if sid not in local})

            def mine(candidates: dict[int, Server]) -> dict[int, Server]:
                return {sid: s for sid, s in candidates.items()
                        if sid in owned or (sid in local and s.name == self.config.poll.local_name)}

            servers = mine(listed)
            if unchanged:
                if servers.keys() == self._servers.keys():
                    for hook in self.reload_hooks:
                        hook()
                    return
                # servers handed over: their status as stored now (another central polled them)
                listed = {s.id: s for s in await self.storage.list_servers()}
                servers = mine(listed)
        self._listed = listed
        self._servers_marker = marker
        for sid in list(self._tasks):
            if sid not in servers:
                self._tasks.pop(sid).cancel()
                self.transports.forget(sid)
        for sid, server in servers.items():
            old = self._servers.get(sid)
            if old is not None and old.connection_key != server.connection_key:
                self.transports.forget(sid)
            if old is not None and old.status_reason in BLOCKING_REASONS and server.status_reason not in BLOCKING_REASONS:
                self.transports.reset_backoff(sid)
            self._servers[sid] = server
            if sid not in self._tasks:
                self._tasks[sid] = asyncio.create_task(self._server_loop(sid), name=f"poll-{server.name}")
        for sid in list(self._servers):
            if sid not in servers:
                del self._servers[sid]
        for hook in self.reload_hooks:
            hook()

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll.reload_interval)
            try:
                await self.reload(force=False)
            except Exception:  # noqa: BLE001 - a failed reload must not stop polling
                log.exception("reloading the server list failed")

    # scheduling

    def interval_of(self, server: Server) -> float:
        """The server's poll interval."""
        return server.interval_s or self.config.poll.interval

    async def _server_loop(self, sid: int) -> None:
        server = self._servers[sid]
        interval = self.interval_of(server)
        now = time.time()
        slot = (now // interval) * interval + phase(sid, interval)
        if slot < now:
            slot += interval
        while True:
            await asyncio.sleep(max(0.0, slot - time.time()))
            server = self._servers.get(sid)
            if server is None:
                return
            started = time.time()
            self.lag = started - slot
            # A reason that blocks polling (central.model.REASONS) waits for an operator.
            if server.status_reason not in BLOCKING_REASONS:
                outcome = await self._poll_surviving(server)
                self.writer.put(outcome)
                self._note_state(server, outcome)
                if outcome.reason in BLOCKING_REASONS:
                    # Remember at once, before the writer and the next reload catch up.
                    self._servers[sid] = _with(server, status=ERROR, status_reason=outcome.reason)
            new_interval = self.interval_of(self._servers.get(sid, server))
            if new_interval != interval:
                interval = new_interval
                slot = (time.time() // interval) * interval + phase(sid, interval)
            slot += interval
            if slot < time.time():  # overran: skip missed slots rather than burst
                slot += ((time.time() - slot) // interval + 1) * interval

    async def _poll_surviving(self, server: Server) -> PollOutcome:
        """poll(), but a bug in the central (any exception but a cancel) fails this one poll as
        central_error instead of ending the server's loop for good; the traceback is logged
        when the server starts failing this way, not at every interval."""
        started = time.time()
        try:
            return await self.poll(server)
        except Exception as exc:  # noqa: BLE001 - one server's bad poll must not stop its polling
            self.errors_by_reason[CENTRAL_ERROR] = self.errors_by_reason.get(CENTRAL_ERROR, 0) + 1
            was = self._state.get(server.id)
            # raised in a poll worker (central.pollworker.RemoteError): its own type and message
            # as the text, its traceback in the logged one
            remote = getattr(exc, "remote_text", None)
            if was is None or was[0] or was[1] != CENTRAL_ERROR:
                server_log(log, server.name).exception("poll failed inside %s", "the central" if remote is None
                                                       else "a poll worker")
            text = remote if remote is not None else f"{type(exc).__name__}: {exc}"
            return PollOutcome(server_id=server.id, ts=started, duration=time.time() - started, ok=False,
                               reason=CENTRAL_ERROR, error=clean(text, MAX_ERROR_CHARS))

    async def poll(self, server: Server) -> PollOutcome:
        """Poll one server now; never raises for a failed poll (the outcome says why). A server
        whose transport has poll workers (poll.workers) is polled in one of those processes."""
        transport = self.transports.of(server)
        workers = transport.workers
        outcome = await (workers.poll(server) if workers is not None else poll_once(transport, server))
        if outcome.ok:
            self.polls += 1
        else:
            self.errors_by_reason[outcome.reason] = self.errors_by_reason.get(outcome.reason, 0) + 1
        self.durations.observe(outcome.duration)
        return outcome

    def _note_state(self, server: Server, outcome: PollOutcome) -> None:
        """Log a server's state change once, at the default level (WARNING), not each failed poll:
        failing (with its reason), failing for another reason, online again."""
        was = self._state.get(server.id)
        if was is None:  # first poll since start: what the database says it was
            was = (True, None, None) if server.status == ONLINE else (False, server.status_reason, None)
        now = (outcome.ok, outcome.reason, was[2] if not outcome.ok and not was[0] else outcome.ts)
        self._state[server.id] = now
        slog = server_log(log, server.name)
        if outcome.ok and not was[0]:
            if was[1] is None:
                slog.info("online")
            else:
                since = f" after {outcome.ts - was[2]:.0f}s" if was[2] is not None else ""
                slog.warning("online again%s (was %s)", since, was[1])
        elif not outcome.ok and (was[0] or was[1] != outcome.reason):
            slog.warning("polls failing: %s: %s", outcome.reason, outcome.error)

    # writing

    async def store(self, batch: Sequence[PollOutcome]) -> None:
        """Write a batch of outcomes, record inventory changes, run hooks. Raises (nothing of the
        batch stored) when the database cannot be written; the writer then keeps the batch."""
        refused = await self.storage.write_polls(batch, self.config.poll.offline_after)
        if refused:
            batch = await self._store_refused(batch, refused)
        inventories = [(o, o.extra["inventory"]) for o in batch if o.extra.get("inventory") is not None]
        if inventories:
            await self._store_inventories(inventories)
        by_id = {o.server_id: self._servers.get(o.server_id) for o in batch}
        for hook in self.hooks:
            try:
                await hook(batch, by_id)
            except Exception:  # noqa: BLE001 - a broken hook must not stop storage
                log.exception("poll hook %r failed", hook)
        self._flushed.set()
        self._flushed = asyncio.Event()

    async def _store_refused(self, batch: Sequence[PollOutcome], refused: list) -> list[PollOutcome]:
        """Outcomes the database refused as data become failed polls of their own servers
        (BAD_PAYLOAD with the reason), so each such host shows why and no other is touched."""
        instead = {}
        for o, why in refused:
            server_log(log, self._name(o.server_id)).warning("poll outcome refused by the database: %s", why)
            instead[id(o)] = PollOutcome(server_id=o.server_id, ts=o.ts, duration=o.duration, ok=False,
                                         reason=BAD_PAYLOAD, error=f"the central could not store this poll: {why}")
        still = await self.storage.write_polls(list(instead.values()), self.config.poll.offline_after)
        for o, why in still:  # only our own text is left in these; should never happen
            log.error("poll failure of server %d could not be stored either: %s", o.server_id, why)
        return [instead.get(id(o), o) for o in batch]

    def _name(self, server_id: int) -> str:
        server = self._servers.get(server_id)
        return server.name if server is not None else f"#{server_id}"

    async def _store_inventories(self, items: list[tuple[PollOutcome, dict]]) -> None:
        """The batch's new inventories: one read of the servers' current ones, one transaction for
        those that changed (a fleet's first contact brings one per server: one at a time, two
        round trips each, the writer fell behind on a busy event loop). Should that transaction
        fail, each is stored on its own, so one that cannot be stored loses no other."""
        try:
            current = await self.storage.inventories_latest([o.server_id for o, _ in items])
            rows = []
            for o, inv in items:
                row = self._inventory_row(o, inv, current.get(o.server_id))
                if row is not None:
                    rows.append(row)
                    current[o.server_id] = {"hash": row[2], "doc": inv}  # a later poll of it compares with this
            await self.storage.write_inventories(rows)
        except StorageUnavailable as exc:  # the polls are stored; the next poll fetches them again
            log.warning("%d inventories not stored: %s", len(items), exc)
            return
        except Exception:  # noqa: BLE001 - one of them, alone below
            for o, inv in items:
                try:
                    row = self._inventory_row(o, inv, await self.storage.inventory_latest(o.server_id))
                    if row is not None:
                        await self.storage.write_inventories([row])
                        self._stored_inventory(row)
                except Exception as exc:  # noqa: BLE001 - the polls are stored; the next poll fetches it again
                    server_log(log, self._name(o.server_id)).warning("inventory not stored: %s", exc)
            return
        for row in rows:
            self._stored_inventory(row)

    @staticmethod
    def _inventory_row(outcome: PollOutcome, inv: dict, old: dict | None) -> tuple | None:
        """The write_inventories row of a fetched inventory, None when it is no change."""
        # The hash of what was fetched, not the one the poll carried: the agent reuses an
        # inventory up to 25 s old for that one, so the two can differ, and the same document
        # stored under a second hash would count as a change ("no visible change").
        new_hash = inventory.digest(inv)
        if old is not None and (old["hash"] == new_hash or old["doc"] == inv):
            return None
        change_type, summary = inventory.classify_change(old["doc"] if old else None, inv)
        return (outcome.server_id, outcome.ts, new_hash, inv, change_type, summary)

    def _stored_inventory(self, row: tuple) -> None:
        server = self._servers.get(row[0])
        if server is not None:
            self._servers[row[0]] = _with(server, inventory_hash=row[2])

    async def wait_flushed(self) -> None:
        """Wait until the writer has stored the next batch (for callers that need the data)."""
        await self._flushed.wait()

    # retention

    async def _maintenance_loop(self) -> None:
        while True:
            r = self.config.retention  # read each round: a SIGHUP reload may change it
            try:
                await self.storage.rollup()
                await self.storage.prune(raw=r.raw, minute=r.minute, hour=r.hour, events=r.events)
                for hook in self.maintenance_hooks:
                    await hook()
            except Exception:  # noqa: BLE001 - retry next round
                log.exception("rollup/prune failed")
            await asyncio.sleep(r.maintenance_interval)


def _with(server: Server, **changes) -> Server:
    return dataclasses.replace(server, **changes)


async def poll_once(transport: Transport, server: Server) -> PollOutcome:
    """Ask one server's agent for its document (and its inventory when that changed) through
    its transport; never raises for a failed poll (the outcome says why). The Poller runs it
    in-process, a poll worker (central.pollworker) in its own."""
    started = time.time()
    t0 = time.perf_counter()
    try:
        doc, text = await transport.document(server)
        inv = None
        if inventory_hash(doc) and inventory_hash(doc) != server.inventory_hash:
            inv = await transport.inventory(server)
    except PollError as err:
        server_log(log, server.name).debug("poll failed: %s", err)  # changes are logged once (_note_state)
        return failed_outcome(server, started, t0, err)
    version, sha = agent_identity(doc)
    outcome = PollOutcome(
        server_id=server.id, ts=started, duration=time.perf_counter() - t0, ok=True,
        doc_text=text, sample=extract_sample(doc), agent_version=version, agent_sha256=sha,
        hostname=doc["hostname"], inventory_hash=inventory_hash(doc),
    )
    if inv is not None:
        outcome.extra["inventory"] = inv
    outcome.extra["facts"] = extract_facts(doc)  # for alert rules, without a second parse
    return outcome


def failed_outcome(server: Server, started: float, t0: float, err: PollError) -> PollOutcome:
    """A poll failed with err: started (time.time) and t0 (time.perf_counter) when it began."""
    return PollOutcome(server_id=server.id, ts=started, duration=time.perf_counter() - t0,
                       ok=False, reason=err.reason, error=clean(err.message, MAX_ERROR_CHARS))
