"""All of central's SQL: one aiosqlite connection per process, WAL mode, batched writes.

The serving process is the single writer for poll data (the poller hands it batches); the
CLI opens its own short-lived connection for administrative changes, which WAL and a busy
timeout make safe alongside it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from pathlib import Path
from typing import Iterable, Sequence

import aiosqlite

from .bundled import schema_text
from .model import Conflict, NotFound, PollOutcome, Server
from .sample import METRICS

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
TIER_MINUTE, TIER_HOUR = 60, 3600
# Migrations from version N-1 to N: (N, [statements]). Each must be idempotent.
MIGRATIONS: list[tuple[int, list[str]]] = []

_SAMPLE_COLS = ", ".join(METRICS)
_SERVER_UPDATABLE = {
    "host", "port", "user", "key_path", "agent_port", "tags", "interval_s",
    "host_key", "host_key_fingerprint", "status", "status_reason", "last_error",
    "consecutive_failures", "agent_version", "agent_sha256", "hostname", "inventory_hash",
}


def _rollup_select(source_min: str, source_avg: str, source_max: str, weight: str) -> str:
    cols = []
    for m in METRICS:
        cols.append(f"min({source_min.format(m=m)})")
        cols.append(f"sum({source_avg.format(m=m)} * {weight}) / nullif(sum(CASE WHEN {source_avg.format(m=m)} IS NOT NULL THEN {weight} END), 0)")
        cols.append(f"max({source_max.format(m=m)})")
    return ", ".join(cols)


_ROLLUP_COLS = ", ".join(f"{m}_min, {m}_avg, {m}_max" for m in METRICS)
# 1-minute buckets from raw samples.
_ROLLUP_RAW = (
    f"INSERT OR REPLACE INTO rollups (server_id, tier, ts, n, {_ROLLUP_COLS}) "
    f"SELECT server_id, {TIER_MINUTE}, CAST(ts / {TIER_MINUTE} AS INTEGER) * {TIER_MINUTE} AS b, count(*), "
    + _rollup_select("{m}", "{m}", "{m}", "1")
    + " FROM samples WHERE server_id = ? AND ts >= ? AND ts < ? GROUP BY b"
)
# 1-hour buckets from 1-minute ones (weighted by sample count).
_ROLLUP_MIN = (
    f"INSERT OR REPLACE INTO rollups (server_id, tier, ts, n, {_ROLLUP_COLS}) "
    f"SELECT server_id, {TIER_HOUR}, CAST(ts / {TIER_HOUR} AS INTEGER) * {TIER_HOUR} AS b, sum(n), "
    + _rollup_select("{m}_min", "{m}_avg", "{m}_max", "n")
    + f" FROM rollups WHERE server_id = ? AND tier = {TIER_MINUTE} AND ts >= ? AND ts < ? GROUP BY b"
)


async def _pragma(db: aiosqlite.Connection, setting: str) -> None:
    """Run a PRAGMA and close its cursor at once: some PRAGMAs answer with a row, and a cursor
    left open keeps a read transaction, so that connection would go on seeing an old snapshot."""
    async with db.execute("PRAGMA " + setting):
        pass


class Storage:
    """The database: open with `await Storage.open(path)`, close with `await storage.close()`."""

    def __init__(self, db: aiosqlite.Connection, path: Path):
        self.db = db
        self.path = path
        # One transaction at a time on the shared connection: without it a second
        # coroutine's BEGIN fails ("cannot start a transaction within a transaction")
        # while the first one awaits inside its transaction (an action's audit row
        # written during a poll batch, say).
        self._write_lock = asyncio.Lock()
        # The newest sample per server, kept in memory once read: this process is the only one
        # that writes samples (the poller, through write_polls), so it stays exact, and lists
        # and /metrics need no query over the samples table (BENCHMARKS.md, HTTP API).
        self._latest: dict[int, dict] | None = None

    @classmethod
    async def open(cls, path: str | Path) -> "Storage":
        """Open (creating if needed) the database and bring its schema up to date."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(str(path), isolation_level=None)
        db.row_factory = aiosqlite.Row
        self = cls(db, path)
        try:
            await self._setup()
        except Exception:
            await db.close()
            raise
        return self

    async def _setup(self) -> None:
        await _pragma(self.db, "busy_timeout = 10000")
        # journal_mode answers with a row: close the cursor, or the unfinished statement makes
        # the checkpoint in close() fail with "database table is locked" until it is collected.
        async with self.db.execute("PRAGMA journal_mode = WAL"):
            pass
        # NORMAL in WAL mode: a committed transaction survives a process crash (SIGKILL);
        # only a power loss can take the last few commits back.
        await _pragma(self.db, "synchronous = NORMAL")
        await _pragma(self.db, "foreign_keys = ON")
        async with self.db.execute("PRAGMA user_version") as cur:
            (version,) = await cur.fetchone()
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path}: database schema version {version} is newer than this central "
                f"({SCHEMA_VERSION}); upgrade central"
            )
        await self.db.executescript(schema_text())
        for target, statements in MIGRATIONS:
            if version < target:
                await self.db.execute("BEGIN IMMEDIATE")
                for stmt in statements:
                    await self.db.execute(stmt)
                await self.db.execute(f"PRAGMA user_version = {target}")
                await self.db.execute("COMMIT")
        if version < SCHEMA_VERSION:
            await self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    async def close(self) -> None:
        """Close the connection (a checkpoint keeps the WAL file small)."""
        try:
            async with self.db.execute("PRAGMA wal_checkpoint(PASSIVE)"):
                pass
        except aiosqlite.OperationalError as exc:  # only housekeeping: never fail a shutdown on it
            log.warning("WAL checkpoint on close failed: %s", exc)
        finally:
            await self.db.close()

    async def _one(self, sql: str, args: Sequence = ()):
        async with self.db.execute(sql, args) as cur:
            return await cur.fetchone()

    async def _all(self, sql: str, args: Sequence = ()) -> list:
        async with self.db.execute(sql, args) as cur:
            return list(await cur.fetchall())

    async def _write(self, statements: Iterable[tuple[str, Sequence]]) -> list[int]:
        """Run statements in one transaction; returns each statement's lastrowid."""
        ids = []
        async with self._write_lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    ids.append((await self.db.execute(sql, args)).lastrowid)
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
            await self.db.execute("COMMIT")
        return ids

    # servers

    async def add_server(
        self,
        name: str,
        host: str,
        *,
        kind: str = "ssh",
        port: int = 22,
        user: str = "root",
        key_path: str | None = None,
        agent_port: int = 8083,
        tags: Sequence[str] = (),
        interval_s: float | None = None,
        host_key: str | None = None,
        host_key_fingerprint: str | None = None,
    ) -> Server:
        """Insert a server; Conflict if the name is taken."""
        try:
            await self._write([(
                "INSERT INTO servers (name, kind, host, port, user, key_path, agent_port, tags,"
                " interval_s, host_key, host_key_fingerprint, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, kind, host, port, user, key_path, agent_port, json.dumps(list(tags)),
                 interval_s, host_key, host_key_fingerprint, time.time()),
            )])
        except aiosqlite.IntegrityError:
            raise Conflict(f"a server named {name!r} already exists") from None
        return await self.get_server(name)

    async def get_server(self, name: str) -> Server:
        """The server called name; NotFound otherwise."""
        row = await self._one("SELECT * FROM servers WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"no server named {name!r}")
        return Server.from_row(row)

    async def find_server(self, name: str) -> Server | None:
        """The server called name, or None."""
        row = await self._one("SELECT * FROM servers WHERE name = ?", (name,))
        return Server.from_row(row) if row else None

    async def get_server_by_id(self, server_id: int) -> Server | None:
        """The server with this id, or None."""
        row = await self._one("SELECT * FROM servers WHERE id = ?", (server_id,))
        return Server.from_row(row) if row else None

    async def list_servers(self) -> list[Server]:
        """Every server, by name."""
        return [Server.from_row(r) for r in await self._all("SELECT * FROM servers ORDER BY name")]

    async def server_dicts(self) -> list[dict]:
        """Every server as a plain dict (tags decoded), by name: for lists, without building a
        frozen Server per row (that cost ~40 us a row, 40 ms for a 1,000-server page)."""
        out = []
        for r in await self._all("SELECT * FROM servers ORDER BY name"):
            d = dict(r)
            d["tags"] = json.loads(d["tags"] or "[]")
            out.append(d)
        return out

    async def server_page(self, *, tag: str | None = None, status: str | None = None, name: str | None = None,
                          limit: int = 100, offset: int = 0) -> tuple[list[dict], int]:
        """One page of servers by name as plain dicts, filtered by tag, status and a name
        substring (case-insensitive), and how many match in all."""
        where, args = [], []
        if tag:
            where.append("EXISTS (SELECT 1 FROM json_each(servers.tags) WHERE value = ?)")
            args.append(tag)
        if status:
            where.append("status = ?")
            args.append(status)
        if name:
            where.append("instr(lower(name), ?) > 0")
            args.append(name.lower())
        cond = (" WHERE " + " AND ".join(where)) if where else ""
        total = (await self._one(f"SELECT count(*) FROM servers{cond}", args))[0]
        rows = await self._all(f"SELECT * FROM servers{cond} ORDER BY name LIMIT ? OFFSET ?", (*args, limit, offset))
        out = []
        for r in rows:
            d = dict(r)
            d["tags"] = json.loads(d["tags"] or "[]")
            out.append(d)
        return out, total

    async def status_counts(self) -> dict[str, int]:
        """How many servers are in each status."""
        return {r[0]: r[1] for r in await self._all("SELECT status, count(*) FROM servers GROUP BY status")}

    async def online_ids(self) -> set[int]:
        """Ids of the servers whose last poll succeeded."""
        return {r[0] for r in await self._all("SELECT id FROM servers WHERE status = 'online'")}

    async def update_server(self, name: str, **fields) -> Server:
        """Change stored fields of a server (only known columns)."""
        bad = set(fields) - _SERVER_UPDATABLE
        if bad:
            raise ValueError(f"not updatable: {sorted(bad)}")
        if "tags" in fields:
            fields["tags"] = json.dumps(list(fields["tags"]))
        if fields:
            sets = ", ".join(f"{k} = ?" for k in fields)
            await self._write([(f"UPDATE servers SET {sets} WHERE name = ?", (*fields.values(), name))])
        return await self.get_server(name)

    async def remove_server(self, name: str) -> None:
        """Delete a server and everything stored about it."""
        server = await self.get_server(name)
        await self._write([("DELETE FROM servers WHERE id = ?", (server.id,))])
        if self._latest is not None:
            self._latest.pop(server.id, None)

    async def pin_host_key(self, name: str, host_key: str, fingerprint: str) -> Server:
        """Pin a (new) host key and clear a host-key-mismatch status."""
        await self._write([(
            "UPDATE servers SET host_key = ?, host_key_fingerprint = ?, consecutive_failures = 0,"
            " status = CASE WHEN status_reason IN ('host_key_mismatch', 'host_key_unknown') THEN 'unknown' ELSE status END,"
            " status_reason = CASE WHEN status_reason IN ('host_key_mismatch', 'host_key_unknown') THEN NULL ELSE status_reason END"
            " WHERE name = ?",
            (host_key, fingerprint, name),
        )])
        return await self.get_server(name)

    # polls

    async def write_polls(self, outcomes: Sequence[PollOutcome], offline_after: int) -> None:
        """Store one batch of poll outcomes in a single transaction."""
        if not outcomes:
            return
        async with self._write_lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                # A server removed while its poll was queued: drop that outcome, not the batch
                # (its samples would break the foreign key and roll back everyone's).
                async with self.db.execute("SELECT id FROM servers") as cur:
                    existing = {r[0] for r in await cur.fetchall()}
                ok = [o for o in outcomes if o.ok and o.server_id in existing]
                failed = [o for o in outcomes if not o.ok and o.server_id in existing]
                if ok:
                    await self.db.executemany(
                        "UPDATE servers SET status = 'online', status_reason = NULL, last_error = NULL,"
                        " consecutive_failures = 0, last_seen = ?, last_poll = ?, poll_duration = ?,"
                        " agent_version = coalesce(?, agent_version), agent_sha256 = coalesce(?, agent_sha256),"
                        " hostname = coalesce(?, hostname) WHERE id = ?",
                        [(o.ts, o.ts, o.duration, o.agent_version, o.agent_sha256, o.hostname, o.server_id) for o in ok],
                    )
                    await self.db.executemany(
                        "INSERT INTO latest (server_id, ts, doc) VALUES (?, ?, ?)"
                        " ON CONFLICT (server_id) DO UPDATE SET ts = excluded.ts, doc = excluded.doc",
                        [(o.server_id, o.ts, o.doc_text) for o in ok if o.doc_text is not None],
                    )
                    await self.db.executemany(
                        f"INSERT OR REPLACE INTO samples (server_id, ts, {_SAMPLE_COLS}, top)"
                        f" VALUES (?, ?, {', '.join('?' * len(METRICS))}, ?)",
                        [
                            (o.server_id, o.ts, *(o.sample.get(m) for m in METRICS),
                             json.dumps(o.sample.get("top") or [], separators=(",", ":")))
                            for o in ok if o.sample is not None
                        ],
                    )
                if failed:
                    # offline after N consecutive failures; a host-key mismatch or an agent-side
                    # problem is 'error' at once (SSH works, so the host itself is not offline).
                    await self.db.executemany(
                        "UPDATE servers SET consecutive_failures = consecutive_failures + 1,"
                        " last_poll = ?, poll_duration = ?, last_error = ?, status_reason = ?,"
                        " status = CASE"
                        "   WHEN ? IN ('host_key_mismatch', 'host_key_unknown', 'auth_failed', 'agent_down', 'agent_error', 'bad_payload') THEN 'error'"
                        "   WHEN consecutive_failures + 1 >= ? THEN 'offline'"
                        "   ELSE status END"
                        " WHERE id = ?",
                        [(o.ts, o.duration, o.error, o.reason, o.reason, offline_after, o.server_id) for o in failed],
                    )
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
            await self.db.execute("COMMIT")
            if self._latest is not None:
                for o in ok:
                    if o.sample is not None:
                        self._latest[o.server_id] = {"ts": o.ts, **{m: o.sample.get(m) for m in METRICS},
                                                     "top": list(o.sample.get("top") or [])}

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
            f"SELECT s.server_id, s.ts, {', '.join('s.' + m for m in METRICS)}, s.top FROM"
            " (SELECT v.id AS sid, (SELECT max(ts) FROM samples WHERE server_id = v.id) AS mts FROM servers v) m"
            " CROSS JOIN samples s ON s.server_id = m.sid AND s.ts = m.mts"
        )
        out = {}
        for r in rows:
            d = dict(r)
            d["top"] = json.loads(d["top"] or "[]")
            out[d.pop("server_id")] = d
        return out

    async def samples(self, server_id: int, start: float, end: float) -> list[dict]:
        """Raw samples of a server in [start, end), oldest first."""
        rows = await self._all(
            f"SELECT ts, {_SAMPLE_COLS}, top FROM samples WHERE server_id = ? AND ts >= ? AND ts < ? ORDER BY ts",
            (server_id, start, end),
        )
        out = []
        for r in rows:
            d = dict(r)
            d["top"] = json.loads(d["top"] or "[]")
            out.append(d)
        return out

    async def history(
        self, server_id: int, start: float, end: float, *, max_points: int = 500,
        retention_raw: float, retention_minute: float, now: float | None = None,
        metrics: Sequence[str] = METRICS,
    ) -> dict:
        """Key figures over [start, end) in at most max_points buckets, from the finest tier that covers the range."""
        now = time.time() if now is None else now
        bad = set(metrics) - set(METRICS)
        if bad:
            raise ValueError(f"unknown metrics: {sorted(bad)}")
        span = max(end - start, 1.0)
        # Buckets are aligned to multiples of step, so a range can touch one more than span/step.
        step = span / max(max_points - 1, 1)
        if start >= now - retention_raw and step < TIER_MINUTE:
            source, resolution = "raw", 0
        elif start >= now - retention_minute and step < TIER_HOUR:
            source, resolution = "minute", TIER_MINUTE
        else:
            source, resolution = "hour", TIER_HOUR
        step = math.ceil(max(step, float(resolution), 1.0))
        # Each tier answers for the time it has rolled up; what is newer comes from the next
        # finer tier, so a range never misses its newest minutes (or a new server's data).
        minute_done = await self._progress(TIER_MINUTE) or 0.0
        hour_done = await self._progress(TIER_HOUR) or 0.0
        parts, args = [], []
        if source == "hour":
            parts.append(self._history_part("rollups", metrics, step, f"tier = {TIER_HOUR}"))
            args += [server_id, start, min(end, hour_done)]
        if source in ("hour", "minute"):
            lo = max(start, hour_done) if source == "hour" else start
            parts.append(self._history_part("rollups", metrics, step, f"tier = {TIER_MINUTE}"))
            args += [server_id, lo, min(end, minute_done)]
            start_raw = max(start, minute_done, hour_done if source == "hour" else 0.0)
        else:
            start_raw = start
        parts.append(self._history_part("samples", metrics, step))
        args += [server_id, start_raw, end]
        cols = ", ".join(f"sum({m}_avg * n) / nullif(sum(CASE WHEN {m}_avg IS NOT NULL THEN n END), 0),"
                         f" min({m}_min), max({m}_max)" for m in metrics)
        sql = f"SELECT b, {cols} FROM ({' UNION ALL '.join(parts)}) GROUP BY b ORDER BY b"
        rows = await self._all(sql, args)
        series: dict = {"ts": [r[0] for r in rows]}
        for i, m in enumerate(metrics):
            series[m] = [r[1 + 3 * i] for r in rows]
            series[m + "_min"] = [r[2 + 3 * i] for r in rows]
            series[m + "_max"] = [r[3 + 3 * i] for r in rows]
        return {"source": source, "step": step, "start": start, "end": end, "series": series}

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

    # inventory

    async def inventory_latest(self, server_id: int) -> dict | None:
        """{ts, hash, doc} of the server's current inventory."""
        row = await self._one("SELECT ts, hash, doc FROM inventory_latest WHERE server_id = ?", (server_id,))
        return {"ts": row["ts"], "hash": row["hash"], "doc": json.loads(row["doc"])} if row else None

    async def write_inventory(self, server_id: int, ts: float, hash_: str, doc: dict,
                              change_type: str, summary: str) -> None:
        """Store a new inventory as latest and add it to the history."""
        text = json.dumps(doc, separators=(",", ":"), sort_keys=True)
        await self._write([
            ("INSERT INTO inventory_latest (server_id, ts, hash, doc) VALUES (?, ?, ?, ?)"
             " ON CONFLICT (server_id) DO UPDATE SET ts = excluded.ts, hash = excluded.hash, doc = excluded.doc",
             (server_id, ts, hash_, text)),
            ("INSERT INTO inventory_history (server_id, ts, change_type, change_summary, hash, doc)"
             " VALUES (?, ?, ?, ?, ?, ?)", (server_id, ts, change_type, summary, hash_, text)),
            ("UPDATE servers SET inventory_hash = ? WHERE id = ?", (hash_, server_id)),
        ])

    async def inventory_history(self, server_id: int, limit: int = 100) -> list[dict]:
        """Inventory changes of a server, newest first (without the documents)."""
        rows = await self._all(
            "SELECT id, ts, change_type, change_summary, hash FROM inventory_history"
            " WHERE server_id = ? ORDER BY ts DESC, id DESC LIMIT ?", (server_id, limit))
        return [dict(r) for r in rows]

    # retention

    async def _progress(self, tier: int) -> float | None:
        row = await self._one("SELECT done_until FROM rollup_progress WHERE tier = ?", (tier,))
        return row[0] if row else None

    async def rollup(self, now: float | None = None, lag: float = 120.0) -> dict:
        """Roll complete buckets of raw samples into 1-minute and 1-minute into 1-hour rollups."""
        now = time.time() if now is None else now
        ids = [r[0] for r in await self._all("SELECT id FROM servers")]
        done = {}
        for tier, sql, source_start in (
            (TIER_MINUTE, _ROLLUP_RAW, "SELECT min(ts) FROM samples"),
            (TIER_HOUR, _ROLLUP_MIN, f"SELECT min(ts) FROM rollups WHERE tier = {TIER_MINUTE}"),
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
            async with self._write_lock:
                await self.db.execute("BEGIN IMMEDIATE")
                try:
                    await self.db.executemany(sql, [(sid, begin, until) for sid in ids])
                    await self.db.execute(
                        "INSERT INTO rollup_progress (tier, done_until) VALUES (?, ?)"
                        " ON CONFLICT (tier) DO UPDATE SET done_until = excluded.done_until", (tier, until))
                except BaseException:
                    await self.db.execute("ROLLBACK")
                    raise
                await self.db.execute("COMMIT")
            done[tier] = (begin, until)
        return done

    async def prune(self, *, raw: float, minute: float, hour: float, events: float,
                    now: float | None = None) -> dict:
        """Delete what has passed each tier's retention; returns rows deleted per table."""
        now = time.time() if now is None else now
        ids = [(r[0],) for r in await self._all("SELECT id FROM servers")]
        counts = {}
        # Never delete raw samples that have not been rolled up yet.
        rolled = await self._progress(TIER_MINUTE) or 0.0
        raw_cut = min(now - raw, rolled)
        minute_cut = min(now - minute, await self._progress(TIER_HOUR) or 0.0)
        before = self.db.total_changes
        await self._write_many([
            ("DELETE FROM samples WHERE server_id = ? AND ts < ?", [(i, raw_cut) for (i,) in ids]),
        ])
        counts["samples"] = self.db.total_changes - before
        before = self.db.total_changes
        await self._write_many([
            (f"DELETE FROM rollups WHERE server_id = ? AND tier = {TIER_MINUTE} AND ts < ?", [(i, minute_cut) for (i,) in ids]),
            (f"DELETE FROM rollups WHERE server_id = ? AND tier = {TIER_HOUR} AND ts < ?", [(i, now - hour) for (i,) in ids]),
        ])
        counts["rollups"] = self.db.total_changes - before
        before = self.db.total_changes
        await self._write_many([
            ("DELETE FROM inventory_history WHERE ts < ? AND id NOT IN"
             " (SELECT max(id) FROM inventory_history GROUP BY server_id)", [(now - events,)]),
            ("DELETE FROM audit WHERE ts < ?", [(now - events,)]),
            ("DELETE FROM notifications WHERE ts < ?", [(now - events,)]),
            ("DELETE FROM alerts WHERE state = 'resolved' AND resolved_at < ?", [(now - events,)]),
        ])
        counts["events"] = self.db.total_changes - before
        return counts

    async def _write_many(self, batches: Sequence[tuple[str, list]]) -> None:
        async with self._write_lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                for sql, rows in batches:
                    await self.db.executemany(sql, rows)
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
            await self.db.execute("COMMIT")

    # audit

    async def add_audit(
        self, *, actor: str, role: str, server_id: int | None, server_name: str, action: str,
        arguments: dict, result: str, exit_status: int | None = None, output: str = "",
        duration_ms: float | None = None, ts: float | None = None,
    ) -> int:
        """Record one action request and its outcome; returns the row id."""
        (audit_id,) = await self._write([(
            "INSERT INTO audit (ts, actor, role, server_id, server_name, action, arguments, result,"
            " exit_status, output, duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (time.time() if ts is None else ts, actor, role, server_id, server_name, action,
             json.dumps(arguments, separators=(",", ":"), sort_keys=True), result, exit_status,
             output, duration_ms),
        )])
        return audit_id

    async def audit_log(self, server_name: str | None = None, limit: int = 100,
                        before_id: int | None = None) -> list[dict]:
        """Audit rows, newest first: optionally one server's, and older than before_id (paging)."""
        where, args = [], []
        if server_name is not None:
            where.append("server_name = ?")
            args.append(server_name)
        if before_id is not None:
            where.append("id < ?")
            args.append(before_id)
        sql = "SELECT * FROM audit" + (" WHERE " + " AND ".join(where) if where else "")
        rows = await self._all(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        out = []
        for r in rows:
            d = dict(r)
            d["arguments"] = json.loads(d["arguments"])
            out.append(d)
        return out

    async def import_samples(self, rows: Sequence[tuple]) -> None:
        """Bulk-insert raw samples (server_id, ts, *METRICS, top_json): imports, benchmarks, tests."""
        self._latest = None  # re-read on next use
        await self._write_many([(
            f"INSERT OR REPLACE INTO samples (server_id, ts, {_SAMPLE_COLS}, top)"
            f" VALUES (?, ?, {', '.join('?' * len(METRICS))}, ?)", list(rows))])

    async def import_rollups(self, tier: int, rows: Sequence[tuple]) -> None:
        """Bulk-insert rollup buckets (server_id, ts, n, then min/avg/max per metric); the tier
        then counts as rolled up to the end of the newest imported bucket."""
        rows = list(rows)
        if not rows:
            return
        until = max(r[1] for r in rows) + tier
        await self._write_many([
            (f"INSERT OR REPLACE INTO rollups (server_id, tier, ts, n, {_ROLLUP_COLS})"
             f" VALUES (?, {int(tier)}, ?, ?, {', '.join('?' * (3 * len(METRICS)))})", rows),
            ("INSERT INTO rollup_progress (tier, done_until) VALUES (?, ?) ON CONFLICT (tier)"
             " DO UPDATE SET done_until = max(done_until, excluded.done_until)", [(int(tier), until)]),
        ])

    # users and API tokens

    async def add_user(self, name: str, role: str, password_hash: str) -> dict:
        """Insert a user; Conflict if the name is taken."""
        try:
            await self._write([("INSERT INTO users (name, role, password_hash, created_at) VALUES (?, ?, ?, ?)",
                                (name, role, password_hash, time.time()))])
        except aiosqlite.IntegrityError:
            raise Conflict(f"a user named {name!r} already exists") from None
        return await self.get_user(name)

    async def get_user(self, name: str) -> dict:
        """The user called name (with password_hash); NotFound otherwise."""
        row = await self._one("SELECT * FROM users WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"no user named {name!r}")
        return dict(row)

    async def find_user(self, name: str) -> dict | None:
        """The user called name, or None."""
        row = await self._one("SELECT * FROM users WHERE name = ?", (name,))
        return dict(row) if row else None

    async def get_user_by_id(self, user_id: int) -> dict | None:
        """The user with this id, or None."""
        row = await self._one("SELECT * FROM users WHERE id = ?", (user_id,))
        return dict(row) if row else None

    async def list_users(self) -> list[dict]:
        """Every user (without password hashes), by name."""
        return [dict(r) for r in await self._all("SELECT id, name, role, created_at FROM users ORDER BY name")]

    async def count_users(self, role: str | None = None) -> int:
        """How many users there are (with this role)."""
        if role is None:
            return (await self._one("SELECT count(*) FROM users"))[0]
        return (await self._one("SELECT count(*) FROM users WHERE role = ?", (role,)))[0]

    async def set_user_password(self, name: str, password_hash: str) -> None:
        """Replace a user's password hash."""
        await self.get_user(name)
        await self._write([("UPDATE users SET password_hash = ? WHERE name = ?", (password_hash, name))])

    async def set_user_role(self, name: str, role: str) -> None:
        """Change a user's role."""
        await self.get_user(name)
        await self._write([("UPDATE users SET role = ? WHERE name = ?", (role, name))])

    async def remove_user(self, name: str) -> None:
        """Delete a user and their API tokens."""
        user = await self.get_user(name)
        await self._write([("DELETE FROM users WHERE id = ?", (user["id"],))])

    async def add_token(self, user_id: int, name: str, token_hash: str) -> dict:
        """Store a new API token's hash; returns the token row."""
        now = time.time()
        await self._write([("INSERT INTO api_tokens (user_id, name, token_hash, created_at) VALUES (?, ?, ?, ?)",
                            (user_id, name, token_hash, now))])
        row = await self._one("SELECT id, user_id, name, created_at, last_used, revoked_at FROM api_tokens"
                              " WHERE token_hash = ?", (token_hash,))
        return dict(row)

    async def token_user(self, token_hash: str) -> dict | None:
        """The unrevoked token with this hash joined with its user, or None."""
        row = await self._one(
            "SELECT t.id AS token_id, t.name AS token_name, t.last_used, u.id AS user_id, u.name AS user,"
            " u.role FROM api_tokens t JOIN users u ON u.id = t.user_id"
            " WHERE t.token_hash = ? AND t.revoked_at IS NULL", (token_hash,))
        return dict(row) if row else None

    async def list_tokens(self, user: str | None = None) -> list[dict]:
        """API tokens (never their hashes), newest first; only one user's when named."""
        sql = ("SELECT t.id, t.name, u.name AS user, t.created_at, t.last_used, t.revoked_at FROM api_tokens t"
               " JOIN users u ON u.id = t.user_id")
        if user is None:
            return [dict(r) for r in await self._all(sql + " ORDER BY t.id DESC")]
        return [dict(r) for r in await self._all(sql + " WHERE u.name = ? ORDER BY t.id DESC", (user,))]

    async def revoke_token(self, token_id: int) -> dict:
        """Mark a token revoked (kept for the record); NotFound if there is no such token."""
        row = await self._one("SELECT id, revoked_at FROM api_tokens WHERE id = ?", (token_id,))
        if row is None:
            raise NotFound(f"no API token with id {token_id}")
        if row["revoked_at"] is None:
            await self._write([("UPDATE api_tokens SET revoked_at = ? WHERE id = ?", (time.time(), token_id))])
        return dict(await self._one("SELECT id, name, created_at, last_used, revoked_at FROM api_tokens WHERE id = ?",
                                    (token_id,)))

    async def touch_tokens(self, last_used: dict[int, float]) -> None:
        """Record when tokens were last used (batched by the caller)."""
        if last_used:
            await self._write_many([("UPDATE api_tokens SET last_used = ? WHERE id = ?",
                                     [(ts, tid) for tid, ts in last_used.items()])])

    # status

    async def alert_counts(self) -> dict[str, int]:
        """Open alerts by state (pending, firing), and firing_info: the firing ones of severity info."""
        rows = await self._all("SELECT state, severity = 'info', count(*) FROM alerts"
                               " WHERE state IN ('pending', 'firing') GROUP BY 1, 2")
        counts = {"pending": 0, "firing": 0, "firing_info": 0}
        for state, info, n in rows:
            counts[state] += n
            if state == "firing" and info:
                counts["firing_info"] += n
        return counts

    async def database_size(self) -> int:
        """Bytes on disk: the database file plus its WAL."""
        total = 0
        for suffix in ("", "-wal"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                total += p.stat().st_size
        return total

    async def meta_get(self, key: str) -> str | None:
        """A value from the meta table."""
        row = await self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return row[0] if row else None

    async def meta_set(self, key: str, value: str) -> None:
        """Store a value in the meta table."""
        await self._write([("INSERT INTO meta (key, value) VALUES (?, ?)"
                            " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))])

    # alerts

    _ALERT_COLUMNS = ("rule", "server_id", "label", "severity", "state", "summary", "value", "started_at",
                      "fired_at", "last_evaluated", "cleared_at", "resolved_at", "last_notified", "details")

    async def open_alerts(self) -> list[dict]:
        """Every pending or firing alert (the evaluator's state after a restart)."""
        rows = await self._all("SELECT * FROM alerts WHERE state IN ('pending', 'firing') ORDER BY id")
        return [_alert_dict(r) for r in rows]

    async def save_alerts(self, inserts: Sequence[dict], updates: Sequence[dict], deletes: Sequence[int]) -> list[int]:
        """Insert new alert rows, rewrite changed ones and delete aborted ones in one transaction; the new ids."""
        cols = self._ALERT_COLUMNS
        mutable = [c for c in cols if c not in ("rule", "server_id", "label")]
        insert = f"INSERT INTO alerts ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        update = f"UPDATE alerts SET {', '.join(f'{c} = ?' for c in mutable)} WHERE id = ?"
        statements = [(insert, [_alert_column(row, c) for c in cols]) for row in inserts]
        statements += [(update, [_alert_column(row, c) for c in mutable] + [row["id"]]) for row in updates]
        statements += [("DELETE FROM alerts WHERE id = ?", (i,)) for i in deletes]
        return (await self._write(statements))[:len(inserts)]

    async def list_alerts(self, *, firing_only: bool = False, open_only: bool = False, server_id: int | None = None,
                          limit: int = 100) -> list[dict]:
        """Alerts newest first, with the server's name; firing_only: firing ones, open_only: pending or firing."""
        where, args = [], []
        if firing_only:
            where.append("a.state = 'firing'")
        elif open_only:
            where.append("a.state IN ('pending', 'firing')")
        if server_id is not None:
            where.append("a.server_id = ?")
            args.append(server_id)
        sql = ("SELECT a.*, s.name AS server FROM alerts a LEFT JOIN servers s ON s.id = a.server_id"
               + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY CASE a.state WHEN 'firing' THEN 0 WHEN 'pending' THEN 1 ELSE 2 END, a.started_at DESC, a.id DESC"
               " LIMIT ?")
        return [_alert_dict(r) for r in await self._all(sql, (*args, limit))]

    async def get_alert(self, alert_id: int) -> dict:
        """One alert with its server's name; NotFound otherwise."""
        row = await self._one("SELECT a.*, s.name AS server FROM alerts a LEFT JOIN servers s ON s.id = a.server_id"
                              " WHERE a.id = ?", (alert_id,))
        if row is None:
            raise NotFound(f"no alert with id {alert_id}")
        return _alert_dict(row)

    async def ack_alert(self, alert_id: int, user: str, ts: float) -> None:
        """Record who acknowledged an alert and when."""
        await self._write([("UPDATE alerts SET acked_by = ?, acked_at = ? WHERE id = ?", (user, ts, alert_id))])

    async def acked_open_alerts(self) -> dict[int, str]:
        """{alert id: who} of open alerts someone acknowledged."""
        rows = await self._all("SELECT id, acked_by FROM alerts WHERE state IN ('pending', 'firing') AND acked_at IS NOT NULL")
        return {r[0]: r[1] for r in rows}

    async def inventory_changes_since(self, after_id: int) -> list[dict]:
        """Inventory changes (not first inventories) with an id above after_id, oldest first."""
        rows = await self._all(
            "SELECT id, server_id, ts, change_type, change_summary FROM inventory_history"
            " WHERE id > ? AND change_type != 'initial' ORDER BY id", (after_id,))
        return [dict(r) for r in rows]

    async def last_inventory_change_id(self) -> int:
        """The newest inventory_history id (0 when empty)."""
        return (await self._one("SELECT coalesce(max(id), 0) FROM inventory_history"))[0]

    # silences

    async def add_silence(self, matcher: dict, starts_at: float, ends_at: float, comment: str,
                          created_by: str, kind: str = "silence") -> int:
        """Store a silence (or maintenance window); its id."""
        [silence_id] = await self._write([(
            "INSERT INTO silences (matcher, starts_at, ends_at, comment, created_by, created_at, kind)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (json.dumps(matcher, sort_keys=True), starts_at, ends_at, comment, created_by, starts_at, kind))])
        return silence_id

    async def get_silence(self, silence_id: int) -> dict:
        """One silence; NotFound otherwise."""
        row = await self._one("SELECT * FROM silences WHERE id = ?", (silence_id,))
        if row is None:
            raise NotFound(f"no silence with id {silence_id}")
        return _silence_dict(row)

    async def end_silence(self, silence_id: int, ts: float) -> None:
        """End a silence now (the record stays, for the history)."""
        await self._write([("UPDATE silences SET ends_at = min(ends_at, ?) WHERE id = ?", (ts, silence_id))])

    async def list_silences(self, *, active_at: float | None = None, limit: int = 100) -> list[dict]:
        """Silences newest first; active_at: only those in force (or still to come) at that time."""
        if active_at is None:
            rows = await self._all("SELECT * FROM silences ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = await self._all("SELECT * FROM silences WHERE ends_at > ? ORDER BY id DESC LIMIT ?",
                                   (active_at, limit))
        return [_silence_dict(r) for r in rows]

    # notifications

    async def log_notification(self, alert_id: int | None, channel: str, event: str, ts: float,
                               attempt: int, ok: bool, detail: str) -> None:
        """Record one delivery attempt."""
        await self._write([(
            "INSERT INTO notifications (alert_id, channel, event, ts, attempt, ok, detail)"
            " SELECT ?, ?, ?, ?, ?, ?, ? WHERE ? IS NULL OR EXISTS (SELECT 1 FROM alerts WHERE id = ?)",
            (alert_id, channel, event, ts, attempt, int(ok), detail[:2000], alert_id, alert_id))])

    async def notifications(self, alert_id: int | None = None, limit: int = 100) -> list[dict]:
        """Delivery attempts newest first, of one alert or all."""
        if alert_id is None:
            rows = await self._all("SELECT * FROM notifications ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = await self._all("SELECT * FROM notifications WHERE alert_id = ? ORDER BY id DESC LIMIT ?",
                                   (alert_id, limit))
        return [dict(r) | {"ok": bool(r["ok"])} for r in rows]

    async def last_sent(self) -> dict[tuple[int, str], float]:
        """{(alert id, channel): time} of the last delivered firing/repeat of each open alert."""
        rows = await self._all(
            "SELECT n.alert_id, n.channel, max(n.ts) FROM notifications n JOIN alerts a ON a.id = n.alert_id"
            " WHERE a.state = 'firing' AND n.ok = 1 AND n.event IN ('firing', 'repeat')"
            " GROUP BY n.alert_id, n.channel")
        return {(r[0], r[1]): r[2] for r in rows}


def _alert_column(row: dict, column: str) -> object:
    value = row.get(column)
    if column == "details":
        return json.dumps(value or {}, separators=(",", ":"), sort_keys=True)
    return value


def _alert_dict(row) -> dict:
    d = dict(row)
    d["details"] = json.loads(d.get("details") or "{}")
    return d


def _silence_dict(row) -> dict:
    d = dict(row)
    d["matcher"] = json.loads(d["matcher"])
    return d
