"""Poll results on PostgreSQL: the newest document per server, raw samples and rollups in
time partitions, and retention by dropping whole partitions."""
from __future__ import annotations

import json
import math
import time
from typing import Sequence

import asyncpg

from ...model import PollOutcome
from .. import history, polls
from ..interface import TIER_HOUR, TIER_MINUTE
from .base import (
    COLUMNS, INTEGER_COLUMNS, ROLLUP_COLUMNS, SAMPLE_COLUMNS, PostgresBase, compact, deleted, executemany,
    json_rows, partition_start,
)
from .containers import INSERT_SAMPLES as INSERT_CONTAINER_SAMPLES
from .containers import ROLLUP_MIN as CONTAINER_ROLLUP_MIN
from .containers import ROLLUP_RAW as CONTAINER_ROLLUP_RAW
from .containers import TIER_PARENT as CONTAINER_TIER_PARENT
from .containers import check_container_integers
from .containers import sample_rows as container_rows
from .schema import PARTITIONS

# what the success and failure updates (central.storage.polls) call a row's values
_PARAMS = ("$1", "$2", "$3", "$4", "$5")
_FAILURE_PARAMS = ("$1", "$2", "$3", "$4", "$5", "$6::boolean", "$7", "$8::boolean")
# What the database (or asyncpg encoding an argument) refuses as data: a value out of range, a
# NUL in text, a lone surrogate, a constraint. A fault of one outcome, never of storage.
_DATA_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, OverflowError, ValueError, TypeError)
_TIER_PARENT = {TIER_MINUTE: "rollups_60", TIER_HOUR: "rollups_3600"}


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def _params(n: int, first: int = 1) -> str:
    return ", ".join(f"${i}" for i in range(first, first + n))


def _check_integers(sample: dict) -> None:
    """OverflowError for an integer key figure PostgreSQL's bigint cannot hold (asyncpg's own
    message would not say which)."""
    for m in INTEGER_COLUMNS:
        v = sample.get(m)
        if isinstance(v, int) and not -2 ** 63 <= v < 2 ** 63:
            raise OverflowError(f"{m} = {v} is beyond a 64-bit integer")


def _rollup_select(source_min: str, source_avg: str, source_max: str, weight: str) -> str:
    cols = []
    for m in COLUMNS:
        avg = source_avg.format(m=m)
        cols.append(f"min({source_min.format(m=m)})")
        cols.append(f"sum({avg}::float8 * {weight}) / nullif(sum(CASE WHEN {avg} IS NOT NULL THEN {weight} END), 0)")
        cols.append(f"max({source_max.format(m=m)})")
    return ", ".join(cols)


_UPSERT_ROLLUP = (" ON CONFLICT (server_id, tier, ts) DO UPDATE SET n = excluded.n, "
                  + ", ".join(f"{c} = excluded.{c}" for c in ROLLUP_COLUMNS.split(", ")))
_UPSERT_SAMPLE = (" ON CONFLICT (server_id, ts) DO UPDATE SET "
                  + ", ".join(f"{c} = excluded.{c}" for c in (*COLUMNS, "top")))
_INSERT_SAMPLE = (f"INSERT INTO samples (server_id, ts, {SAMPLE_COLUMNS}, top) VALUES ({_params(len(COLUMNS) + 3)})"
                  + _UPSERT_SAMPLE)
# 1-minute buckets from raw samples; 1-hour buckets from 1-minute ones (weighted by count).
_ROLLUP_RAW = (
    f"INSERT INTO rollups (server_id, tier, ts, n, {ROLLUP_COLUMNS}) "
    f"SELECT server_id, {TIER_MINUTE}, floor(ts / {TIER_MINUTE}) * {TIER_MINUTE} AS b, count(*), "
    + _rollup_select("{m}", "{m}", "{m}", "1")
    + " FROM samples WHERE ts >= $1 AND ts < $2 GROUP BY server_id, b" + _UPSERT_ROLLUP
)
_ROLLUP_MIN = (
    f"INSERT INTO rollups (server_id, tier, ts, n, {ROLLUP_COLUMNS}) "
    f"SELECT server_id, {TIER_HOUR}, floor(ts / {TIER_HOUR}) * {TIER_HOUR} AS b, sum(n), "
    + _rollup_select("{m}_min", "{m}_avg", "{m}_max", "n")
    + f" FROM rollups WHERE tier = {TIER_MINUTE} AND ts >= $1 AND ts < $2 GROUP BY server_id, b" + _UPSERT_ROLLUP
)


class PostgresSamples(PostgresBase):
    """central.storage.interface.Samples on PostgreSQL."""

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
        # servers in id order: two batches touching the same rows lock them in one order (no deadlock)
        outcomes = sorted(outcomes, key=lambda o: (o.server_id, o.ts))
        sampled = [o for o in outcomes if o.ok and o.sample is not None]
        crows = {}
        for o in sampled:
            _check_integers(o.sample)
            crows[id(o)] = rows = container_rows(o.server_id, o.ts, o.sample.get("containers"))
            check_container_integers(rows)
        await self.ensure_partitions("samples", (o.ts for o in sampled))
        await self.ensure_partitions("container_samples", (o.ts for o in sampled if crows[id(o)]))
        async with self.transaction() as con:
            # not a change of the servers' settings: the servers marker stays (schema.py, version 3)
            await con.execute("SET LOCAL central.poll_batch = 'on'")
            existing = {r[0] for r in await con.fetch("SELECT id FROM servers WHERE id = ANY($1::bigint[])",
                                                      list({o.server_id for o in outcomes}))}
            ok = [o for o in outcomes if o.ok and o.server_id in existing]
            # one row update per server: its newest success, then its failures after that
            # (central.storage.polls); updating one row many times in a transaction makes each
            # update walk the row's versions
            newest, failures = polls.fold(o for o in outcomes if o.server_id in existing)
            if newest:
                await executemany(con, f"UPDATE servers SET {polls.success_set(_PARAMS)} WHERE id = $6",
                                  [polls.success_row(o) for o in newest])
            docs = list({o.server_id: (o.server_id, o.ts, o.doc_text) for o in ok if o.doc_text is not None}.values())
            if docs:
                await executemany(
                    con,
                    "INSERT INTO latest (server_id, ts, doc) VALUES ($1, $2, $3)"
                    " ON CONFLICT (server_id) DO UPDATE SET ts = excluded.ts, doc = excluded.doc", docs)
            rows = [(o.server_id, o.ts, *(o.sample.get(m) for m in COLUMNS), compact(o.sample.get("top") or []))
                    for o in ok if o.sample is not None]
            if rows:
                await executemany(con, _INSERT_SAMPLE, rows)
            container = [row for o in ok if o.sample is not None for row in crows[id(o)]]
            if container:
                await executemany(con, INSERT_CONTAINER_SAMPLES, container)
            if failures:
                # The reason says the status (central.model.REASONS): 'error' at once, or
                # 'offline' after offline_after consecutive failures.
                await executemany(
                    con, f"UPDATE servers SET {polls.failure_set(_FAILURE_PARAMS)} WHERE id = $9",
                    [polls.failure_row(f, offline_after) for f in failures])
        if self._latest is not None:
            for o in ok:
                if o.sample is not None:
                    self._latest[o.server_id] = {"ts": o.ts, **{m: o.sample.get(m) for m in COLUMNS},
                                                 "top": list(o.sample.get("top") or [])}
            self.latest_changes += 1

    async def latest_document(self, server_id: int) -> tuple[float, dict] | None:
        """(ts, /api/all document) of the server's newest successful poll."""
        row = await self._one("SELECT ts, doc FROM latest WHERE server_id = $1", (server_id,))
        return (row["ts"], json.loads(row["doc"])) if row else None

    async def latest_samples(self) -> dict[int, dict]:
        """The newest sample of every server, by server id (treat the sample dicts as read-only)."""
        if self._latest is None:
            self._latest = await self._read_latest_samples()
        return dict(self._latest)

    async def _read_latest_samples(self) -> dict[int, dict]:
        # one index seek per server (newest ts of its key), each partition's index from the newest
        rows = await self._all(
            f"SELECT v.id AS server_id, s.ts, {', '.join('s.' + m for m in COLUMNS)}, s.top FROM servers v"
            " CROSS JOIN LATERAL (SELECT * FROM samples WHERE server_id = v.id ORDER BY ts DESC LIMIT 1) s")
        return {d.pop("server_id"): d for d in json_rows(rows, top="[]")}

    async def samples(self, server_id: int, start: float, end: float) -> list[dict]:
        """Raw samples of a server in [start, end), oldest first."""
        rows = await self._all(
            f"SELECT ts, {SAMPLE_COLUMNS}, top FROM samples WHERE server_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts",
            (server_id, start, end))
        return json_rows(rows, top="[]")

    async def rollups(self, server_id: int, tier: int, start: float, end: float) -> list[dict]:
        """Rollup buckets of one tier starting in [start, end), oldest first."""
        rows = await self._all(
            f"SELECT ts, n, {ROLLUP_COLUMNS} FROM rollups WHERE server_id = $1 AND tier = $2 AND ts >= $3 AND ts < $4"
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
            table, where = ("samples", "true") if span.tier is None else ("rollups", f"tier = {span.tier}")
            args.extend((server_id, span.lo, span.hi))
            n = len(args)
            parts.append(self._history_part(table, metrics, step, where, (n - 2, n - 1, n)))
        sql = f"SELECT b, {history.bucket_columns(metrics)} FROM ({' UNION ALL '.join(parts)}) u GROUP BY b ORDER BY b"
        return history.answer(source, step, start, end, await self._all(sql, args), metrics)

    @staticmethod
    def _history_part(table: str, metrics: Sequence[str], step: int, where: str, p: tuple[int, int, int]) -> str:
        """One source of history() as rows (bucket, n, then avg/min/max per metric)."""
        if table == "samples":
            cols = ", ".join(f"{m}::float8 AS {m}_avg, {m}::float8 AS {m}_min, {m}::float8 AS {m}_max"
                             for m in metrics)
            n = "1::bigint AS n"
        else:
            cols = ", ".join(f"{m}_avg, {m}_min, {m}_max" for m in metrics)
            n = "n"
        return (f"SELECT floor(ts / {step})::bigint * {step} AS b, {n}, {cols} FROM {table}"
                f" WHERE server_id = ${p[0]} AND {where} AND ts >= ${p[1]} AND ts < ${p[2]}")

    async def _progress(self, tier: int) -> float | None:
        return await self._val("SELECT done_until FROM rollup_progress WHERE tier = $1", (tier,))

    async def rollup(self, now: float | None = None, lag: float = 120.0) -> dict:
        """Roll complete buckets of raw samples into 1-minute and 1-minute into 1-hour rollups."""
        now = time.time() if now is None else now
        done = {}
        for tier, sql, csql, source_start in (
            (TIER_MINUTE, _ROLLUP_RAW, CONTAINER_ROLLUP_RAW, "SELECT min(ts) FROM samples"),
            (TIER_HOUR, _ROLLUP_MIN, CONTAINER_ROLLUP_MIN, f"SELECT min(ts) FROM rollups WHERE tier = {TIER_MINUTE}"),
        ):
            until = math.floor((now - lag) / tier) * tier
            begin = await self._progress(tier)
            if begin is None:
                first = await self._val(source_start)
                if first is None:
                    continue
                begin = math.floor(first / tier) * tier
            if until <= begin:
                continue
            width = PARTITIONS[_TIER_PARENT[tier]]
            starts = range(partition_start(begin, width), until, width)
            await self.ensure_partitions(_TIER_PARENT[tier], starts)
            await self.ensure_partitions(CONTAINER_TIER_PARENT[tier], starts)
            async with self.transaction() as con:
                await con.execute(sql, float(begin), float(until))
                # containers roll up in the same pass, so one progress mark covers both
                await con.execute(csql, float(begin), float(until))
                await con.execute(
                    "INSERT INTO rollup_progress (tier, done_until) VALUES ($1, $2)"
                    " ON CONFLICT (tier) DO UPDATE SET done_until = excluded.done_until", tier, float(until))
            done[tier] = (begin, until)
        return done

    async def prune(self, *, raw: float, minute: float, hour: float, events: float,
                    now: float | None = None) -> dict:
        """Delete what has passed each tier's retention: whole partitions below the cut are
        dropped, the rows before it in the partition the cut falls in deleted."""
        now = time.time() if now is None else now
        counts = {}
        raw_cut = min(now - raw, await self._progress(TIER_MINUTE) or 0.0)  # never what is not rolled up
        minute_cut = min(now - minute, await self._progress(TIER_HOUR) or 0.0)
        hour_cut = now - hour
        counts["samples"] = await self._cut("samples", "samples", raw_cut)
        counts["rollups"] = (await self._cut("rollups_60", "rollups_60", minute_cut)
                             + await self._cut("rollups_3600", "rollups_3600", hour_cut))
        counts["containers"] = (await self._cut("container_samples", "container_samples", raw_cut)
                                + await self._cut("container_rollups_60", "container_rollups_60", minute_cut)
                                + await self._cut("container_rollups_3600", "container_rollups_3600", hour_cut))
        events_cut = now - events
        async with self.transaction() as con:
            n = 0
            for sql in ("DELETE FROM inventory_history WHERE ts < $1 AND id NOT IN"
                        " (SELECT max(id) FROM inventory_history GROUP BY server_id)",
                        "DELETE FROM audit WHERE ts < $1",
                        "DELETE FROM notifications WHERE ts < $1",
                        "DELETE FROM alerts WHERE state = 'resolved' AND resolved_at < $1"):
                n += deleted(await con.execute(sql, events_cut))
        counts["events"] = n
        return counts

    async def _cut(self, parent: str, table: str, cut: float) -> int:
        n = await self.drop_partitions_before(parent, cut)
        async with self.transaction() as con:
            n += deleted(await con.execute(f"DELETE FROM {table} WHERE ts < $1", cut))
        return n

    async def import_samples(self, rows: Sequence[tuple]) -> None:
        """Bulk-insert raw samples (server_id, ts, one value per key figure, top_json): imports, benchmarks, tests."""
        rows = list(rows)
        self._latest = None  # re-read on next use
        self.latest_changes += 1
        await self.ensure_partitions("samples", (r[1] for r in rows))
        await self._write_many([(_INSERT_SAMPLE, rows)])

    async def import_rollups(self, tier: int, rows: Sequence[tuple]) -> None:
        """Bulk-insert rollup buckets (server_id, ts, n, then min/avg/max per metric); the tier
        then counts as rolled up to the end of the newest imported bucket."""
        if tier not in _TIER_PARENT:
            raise ValueError(f"no rollup tier {tier} (tiers: {sorted(_TIER_PARENT)})")
        rows = list(rows)
        if not rows:
            return
        until = max(r[1] for r in rows) + tier
        await self.ensure_partitions(_TIER_PARENT[tier], (r[1] for r in rows))
        await self._write_many([
            (f"INSERT INTO rollups (server_id, tier, ts, n, {ROLLUP_COLUMNS}) VALUES ($1, {int(tier)}, "
             f"{_params(2 + 3 * len(COLUMNS), 2)})" + _UPSERT_ROLLUP, rows),
            ("INSERT INTO rollup_progress (tier, done_until) VALUES ($1, $2) ON CONFLICT (tier)"
             " DO UPDATE SET done_until = greatest(rollup_progress.done_until, excluded.done_until)",
             [(int(tier), float(until))]),
        ])
