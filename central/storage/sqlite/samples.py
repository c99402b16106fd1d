"""Poll results: the newest document per server, raw samples, rollups, and retention."""
from __future__ import annotations

import json
import math
import sqlite3
import time
from functools import partial
from typing import Sequence

from ...model import PollOutcome
from .. import history, polls
from ..interface import TIER_HOUR, TIER_MINUTE
from .base import (
    COLUMNS, ROLLUP_COLUMNS, SAMPLE_COLUMNS, SQLiteBase, compact, json_rows, rows_per_statement,
    update_rows,
)
from .containers import INSERT_HEAD as CONTAINER_SAMPLES_HEAD
from .containers import PRUNE as PRUNE_CONTAINERS
from .containers import ROLLUP_MIN as CONTAINER_ROLLUP_MIN
from .containers import ROLLUP_RAW as CONTAINER_ROLLUP_RAW
from .containers import sample_rows as container_rows

# What the database raises for a value it cannot hold (an integer beyond 64 bits, a lone
# surrogate, a type it cannot bind, a constraint): a fault of one outcome, never of storage.
_DATA_ERRORS = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.DataError, OverflowError,
                ValueError, TypeError)


# Rollup and prune work on this many servers per transaction.
MAINTENANCE_CHUNK = 250


def _chunks(ids: Sequence[int]):
    """(chunk, is_last) over ids in MAINTENANCE_CHUNK slices; one (empty, True) for none."""
    if not ids:
        yield [], True
    for k in range(0, len(ids), MAINTENANCE_CHUNK):
        yield ids[k:k + MAINTENANCE_CHUNK], k + MAINTENANCE_CHUNK >= len(ids)


def _rollup_chunk(conn, *, sqls: Sequence[str], chunk: Sequence[int], tier: int, begin: float, until: float,
                  last: bool) -> None:
    """One transaction of rollup(): the buckets from begin to until of a chunk of servers, with
    each of sqls (the host's, the containers'); the last chunk moves the tier's progress mark."""
    for sql in sqls:
        conn.executemany(sql, [(sid, begin, until) for sid in chunk])
    if last:
        conn.execute("INSERT INTO rollup_progress (tier, done_until) VALUES (?, ?)"
                     " ON CONFLICT (tier) DO UPDATE SET done_until = excluded.done_until", (tier, until))


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def _rollup_select(source_min: str, source_avg: str, source_max: str, weight: str) -> str:
    cols = []
    for m in COLUMNS:
        cols.append(f"min({source_min.format(m=m)})")
        cols.append(f"sum({source_avg.format(m=m)} * {weight}) / nullif(sum(CASE WHEN {source_avg.format(m=m)} IS NOT NULL THEN {weight} END), 0)")
        cols.append(f"max({source_max.format(m=m)})")
    return ", ".join(cols)


# 1-minute buckets from raw samples.
_ROLLUP_RAW = (
    f"INSERT OR REPLACE INTO rollups (server_id, tier, ts, n, {ROLLUP_COLUMNS}) "
    f"SELECT server_id, {TIER_MINUTE}, CAST(ts / {TIER_MINUTE} AS INTEGER) * {TIER_MINUTE} AS b, count(*), "
    + _rollup_select("{m}", "{m}", "{m}", "1")
    + " FROM samples WHERE server_id = ? AND ts >= ? AND ts < ? GROUP BY b"
)
# 1-hour buckets from 1-minute ones (weighted by sample count).
_ROLLUP_MIN = (
    f"INSERT OR REPLACE INTO rollups (server_id, tier, ts, n, {ROLLUP_COLUMNS}) "
    f"SELECT server_id, {TIER_HOUR}, CAST(ts / {TIER_HOUR} AS INTEGER) * {TIER_HOUR} AS b, sum(n), "
    + _rollup_select("{m}_min", "{m}_avg", "{m}_max", "n")
    + f" FROM rollups WHERE server_id = ? AND tier = {TIER_MINUTE} AND ts >= ? AND ts < ? GROUP BY b"
)



class SQLiteSamples(SQLiteBase):
    """central.storage.interface.Samples on SQLite."""

    async def write_polls(self, outcomes: Sequence[PollOutcome], offline_after: int) -> list[tuple[PollOutcome, str]]:
        """Store one batch of poll outcomes in a single transaction; if the database refuses one
        as data, each outcome in a transaction of its own, so the others are stored all the same."""
        if not outcomes:
            return []
        try:
            await self._write_polls(outcomes, offline_after)
            return []
        except _DATA_ERRORS as exc:
            if len(outcomes) == 1:
                return [(outcomes[0], _why(exc))]
        refused = []
        for o in outcomes:
            try:
                await self._write_polls((o,), offline_after)
            except _DATA_ERRORS as exc:
                refused.append((o, _why(exc)))
        return refused

    async def _write_polls(self, outcomes: Sequence[PollOutcome], offline_after: int) -> None:
        # The ids are re-read only when something but quiet transactions committed since (a
        # server added or removed here or by another process): not 10,000 ids per batch.
        def work(conn) -> tuple[tuple[object, set[int]], list[PollOutcome]]:
            # (read here, under the write lock: every commit before this one is counted)
            marker = (conn.execute("PRAGMA data_version").fetchone()[0], self.commits - self.quiet_commits)
            known = self._server_ids
            ids = known if known is not None and known[0] == marker else (
                marker, {r[0] for r in conn.execute("SELECT id FROM servers")})
            # A server removed while its poll was queued: drop that outcome, not the batch
            # (its samples would break the foreign key and roll back everyone's).
            existing = ids[1]
            ok = [o for o in outcomes if o.ok and o.server_id in existing]
            # one row update per server: its newest success, then its failures after that
            # (central.storage.polls), many servers to a statement
            newest, failures = polls.fold(o for o in outcomes if o.server_id in existing)
            update_rows(conn, "servers", polls.success_set, [polls.success_row(o) for o in newest])
            rows_per_statement(
                conn, "INSERT INTO latest (server_id, ts, doc)",
                [(o.server_id, o.ts, o.doc_text) for o in ok if o.doc_text is not None],
                " ON CONFLICT (server_id) DO UPDATE SET ts = excluded.ts, doc = excluded.doc",
            )
            sampled = [o for o in ok if o.sample is not None]
            rows_per_statement(
                conn, f"INSERT OR REPLACE INTO samples (server_id, ts, {SAMPLE_COLUMNS}, top)",
                [(o.server_id, o.ts, *(o.sample.get(m) for m in COLUMNS), compact(o.sample.get("top") or []))
                 for o in sampled],
            )
            rows_per_statement(conn, CONTAINER_SAMPLES_HEAD,
                               [row for o in sampled for row in container_rows(o.server_id, o.ts, o.sample.get("containers"))])
            # The reason says the status (central.model.REASONS): 'error' at once, or
            # 'offline' after offline_after consecutive failures.
            update_rows(conn, "servers", polls.failure_set, [polls.failure_row(f, offline_after) for f in failures])
            return ids, ok

        # the whole batch in one call to the database's thread (in_transaction)
        self._server_ids, ok = await self.in_transaction(work, quiet=True)
        if self._latest is not None:
            for o in ok:
                if o.sample is not None:
                    self._latest[o.server_id] = {"ts": o.ts, **{m: o.sample.get(m) for m in COLUMNS},
                                                 "top": list(o.sample.get("top") or [])}
            self.latest_changes += 1

    async def latest_document(self, server_id: int) -> tuple[float, dict] | None:
        """(ts, /api/all document) of the server's newest successful poll."""
        row = await self._one("SELECT ts, doc FROM latest WHERE server_id = ?", (server_id,))
        return (row["ts"], json.loads(row["doc"])) if row else None

    async def latest_samples(self) -> dict[int, dict]:
        """The newest sample of every server, by server id (treat the sample dicts as read-only)."""
        if self._latest is None:
            self._latest = await self._read_latest_samples()
        return dict(self._latest)

    async def _read_latest_samples(self) -> dict[int, dict]:
        # Two primary-key seeks per server (samples is keyed (server_id, ts)). The former
        # GROUP BY over all samples scanned every raw row: 136 ms at 50 servers x 48 h, seconds
        # at 1,000. CROSS JOIN pins the join order, or the planner scans samples again.
        rows = await self._all(
            f"SELECT s.server_id, s.ts, {', '.join('s.' + m for m in COLUMNS)}, s.top FROM"
            " (SELECT v.id AS sid, (SELECT max(ts) FROM samples WHERE server_id = v.id) AS mts FROM servers v) m"
            " CROSS JOIN samples s ON s.server_id = m.sid AND s.ts = m.mts"
        )
        return {d.pop("server_id"): d for d in json_rows(rows, top="[]")}

    async def samples(self, server_id: int, start: float, end: float) -> list[dict]:
        """Raw samples of a server in [start, end), oldest first."""
        rows = await self._all(
            f"SELECT ts, {SAMPLE_COLUMNS}, top FROM samples WHERE server_id = ? AND ts >= ? AND ts < ? ORDER BY ts",
            (server_id, start, end),
        )
        return json_rows(rows, top="[]")

    async def rollups(self, server_id: int, tier: int, start: float, end: float) -> list[dict]:
        """Rollup buckets of one tier starting in [start, end), oldest first."""
        rows = await self._all(
            f"SELECT ts, n, {ROLLUP_COLUMNS} FROM rollups WHERE server_id = ? AND tier = ? AND ts >= ? AND ts < ?"
            " ORDER BY ts", (server_id, tier, start, end))
        return [dict(r) for r in rows]

    async def history(
        self, server_id: int, start: float, end: float, *, max_points: int = 500,
        retention_raw: float, retention_minute: float, now: float | None = None,
        metrics: Sequence[str] = COLUMNS,
    ) -> dict:
        """Key figures over [start, end) in at most max_points buckets, from the finest tier that covers the range."""
        now = time.time() if now is None else now
        history.check_metrics(metrics, COLUMNS)
        source, step, spans = history.plan(
            start, end, max_points=max_points, now=now, retention_raw=retention_raw,
            retention_minute=retention_minute, minute_done=await self._progress(TIER_MINUTE) or 0.0,
            hour_done=await self._progress(TIER_HOUR) or 0.0)
        parts, args = [], []
        for span in spans:
            table, where = ("samples", "1") if span.tier is None else ("rollups", f"tier = {span.tier}")
            parts.append(self._history_part(table, metrics, step, where))
            args += [server_id, span.lo, span.hi]
        sql = f"SELECT b, {history.bucket_columns(metrics)} FROM ({' UNION ALL '.join(parts)}) GROUP BY b ORDER BY b"
        return history.answer(source, step, start, end, await self._all(sql, args), metrics)

    @staticmethod
    def _history_part(table: str, metrics: Sequence[str], step: int, where: str = "1") -> str:
        """One source of history() as rows (bucket, n, then avg/min/max per metric)."""
        if table == "samples":
            cols = ", ".join(f"{m} AS {m}_avg, {m} AS {m}_min, {m} AS {m}_max" for m in metrics)
            n = "1 AS n"
        else:
            cols = ", ".join(f"{m}_avg, {m}_min, {m}_max" for m in metrics)
            n = "n"
        return (f"SELECT CAST(ts / {step} AS INTEGER) * {step} AS b, {n}, {cols} FROM {table}"
                f" WHERE server_id = ? AND {where} AND ts >= ? AND ts < ?")

    async def _progress(self, tier: int) -> float | None:
        row = await self._one("SELECT done_until FROM rollup_progress WHERE tier = ?", (tier,))
        return row[0] if row else None

    async def rollup(self, now: float | None = None, lag: float = 120.0) -> dict:
        """Roll complete buckets of raw samples into 1-minute and 1-minute into 1-hour rollups."""
        now = time.time() if now is None else now
        ids = [r[0] for r in await self._all("SELECT id FROM servers")]
        done = {}
        for tier, sql, csql, source_start in (
            (TIER_MINUTE, _ROLLUP_RAW, CONTAINER_ROLLUP_RAW, "SELECT min(ts) FROM samples"),
            (TIER_HOUR, _ROLLUP_MIN, CONTAINER_ROLLUP_MIN, f"SELECT min(ts) FROM rollups WHERE tier = {TIER_MINUTE}"),
        ):
            until = math.floor((now - lag) / tier) * tier
            begin = await self._progress(tier)
            if begin is None:
                first = (await self._one(source_start))[0]
                if first is None:
                    continue
                begin = math.floor(first / tier) * tier
            if until <= begin:
                continue
            # One transaction per MAINTENANCE_CHUNK servers, the progress mark in the last: poll
            # batches and reads run between them (one transaction for 10,000 servers held the
            # connection for seconds). A round cut short redoes the range; INSERT OR REPLACE makes
            # that harmless, and nothing trusts the rollups past the mark before it moves.
            # Each chunk is one call to the database's thread (in_transaction); containers roll up
            # in the same pass, so one progress mark covers both.
            for chunk, last in _chunks(ids):
                await self.in_transaction(partial(_rollup_chunk, sqls=(sql, csql), chunk=chunk, tier=tier,
                                                  begin=begin, until=until, last=last), quiet=True)
            done[tier] = (begin, until)
        return done

    async def prune(self, *, raw: float, minute: float, hour: float, events: float,
                    now: float | None = None) -> dict:
        """Delete what has passed each tier's retention; returns rows deleted per table."""
        now = time.time() if now is None else now
        ids = [r[0] for r in await self._all("SELECT id FROM servers")]
        # Never delete raw samples that have not been rolled up yet.
        rolled = await self._progress(TIER_MINUTE) or 0.0
        raw_cut = min(now - raw, rolled)
        minute_cut = min(now - minute, await self._progress(TIER_HOUR) or 0.0)
        per_server = (
            ("samples", "DELETE FROM samples WHERE server_id = ? AND ts < ?", raw_cut),
            ("rollups", f"DELETE FROM rollups WHERE server_id = ? AND tier = {TIER_MINUTE} AND ts < ?", minute_cut),
            ("rollups", f"DELETE FROM rollups WHERE server_id = ? AND tier = {TIER_HOUR} AND ts < ?", now - hour),
            ("containers", PRUNE_CONTAINERS[0], raw_cut),
            ("containers", PRUNE_CONTAINERS[1], minute_cut),
            ("containers", PRUNE_CONTAINERS[2], now - hour),
        )
        counts = dict.fromkeys(("samples", "rollups", "containers"), 0)
        # one transaction per MAINTENANCE_CHUNK servers (as rollup): poll batches and reads between them;
        # the counts are taken inside each, where no other write runs
        # (each one call to the database's thread: in_transaction)
        def work(conn, chunk: list[int]) -> None:
            for what, sql, cut in per_server:
                before = conn.total_changes
                conn.executemany(sql, [(i, cut) for i in chunk])
                counts[what] += conn.total_changes - before

        for chunk, _ in _chunks(ids):
            await self.in_transaction(partial(work, chunk=chunk), quiet=True)

        def events_work(conn) -> int:
            before = conn.total_changes
            for sql in ("DELETE FROM inventory_history WHERE ts < ? AND id NOT IN"
                        " (SELECT max(id) FROM inventory_history GROUP BY server_id)",
                        "DELETE FROM audit WHERE ts < ?", "DELETE FROM notifications WHERE ts < ?",
                        "DELETE FROM alerts WHERE state = 'resolved' AND resolved_at < ?"):
                conn.execute(sql, (now - events,))
            return conn.total_changes - before
        counts["events"] = await self.in_transaction(events_work, quiet=True)
        return counts

    async def import_samples(self, rows: Sequence[tuple]) -> None:
        """Bulk-insert raw samples (server_id, ts, one value per key figure, top_json): imports, benchmarks, tests."""
        self._latest = None  # re-read on next use
        self.latest_changes += 1
        await self._write_many([(
            f"INSERT OR REPLACE INTO samples (server_id, ts, {SAMPLE_COLUMNS}, top)"
            f" VALUES (?, ?, {', '.join('?' * len(COLUMNS))}, ?)", list(rows))])

    async def import_rollups(self, tier: int, rows: Sequence[tuple]) -> None:
        """Bulk-insert rollup buckets (server_id, ts, n, then min/avg/max per metric); the tier
        then counts as rolled up to the end of the newest imported bucket."""
        rows = list(rows)
        if not rows:
            return
        until = max(r[1] for r in rows) + tier
        await self._write_many([
            (f"INSERT OR REPLACE INTO rollups (server_id, tier, ts, n, {ROLLUP_COLUMNS})"
             f" VALUES (?, {int(tier)}, ?, ?, {', '.join('?' * (3 * len(COLUMNS)))})", rows),
            ("INSERT INTO rollup_progress (tier, done_until) VALUES (?, ?) ON CONFLICT (tier)"
             " DO UPDATE SET done_until = max(done_until, excluded.done_until)", [(int(tier), until)]),
        ])
