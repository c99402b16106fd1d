"""`central migrate --to postgresql://...`: copy a SQLite database of central into PostgreSQL.

Every table is copied (servers, agent secrets, users, tokens, page sessions, terminal rights,
accounts and sessions, alerts, silences, notifications, audit, inventory, samples, rollups,
container samples and rollups, rollup progress, meta), with its ids (not the cluster's members and leases: they are the
running centrals' state, made again by the centrals on the destination), so every reference stays valid
(a server's bastion, servers.via, is set once every server is there: it may name a later one). Rows are read in one
read transaction of the source (one consistent snapshot, even while a central still writes
it) and written in batches as upserts on each table's primary key: running it again brings
the destination up to the source's newest state, copying nothing twice. At the end the row
count of every table is compared between the two; a difference fails the run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import aiosqlite

from .model import CentralError
from .storage.postgres import PostgresStorage, is_postgres_url
from .storage.postgres.schema import IDENTITY_TABLES, PARTITIONS
from .storage.sqlite import SQLiteStorage

# Parents before children (foreign keys), each with its primary key (the upsert's conflict target).
TABLES: list[tuple[str, tuple[str, ...]]] = [
    ("servers", ("id",)),
    ("users", ("id",)),
    ("agent_secrets", ("server_id",)),
    ("pending_agent_secrets", ("host", "port")),
    ("api_tokens", ("id",)),
    ("sessions", ("id",)),
    ("user_rights", ("user_id", "name")),
    ("terminal_accounts", ("server_id",)),
    ("terminal_sessions", ("id",)),
    ("latest", ("server_id",)),
    ("inventory_latest", ("server_id",)),
    ("inventory_history", ("id",)),
    ("alerts", ("id",)),
    ("silences", ("id",)),
    ("notifications", ("id",)),
    ("audit", ("id",)),
    ("meta", ("key",)),
    ("samples", ("server_id", "ts")),
    ("rollups", ("server_id", "tier", "ts")),
    ("container_samples", ("server_id", "name", "ts")),
    ("container_rollups", ("server_id", "name", "tier", "ts")),
    ("rollup_progress", ("tier",)),
]
# Time-partitioned tables (PostgreSQL): the parent of a row's partition, by tier where there are tiers.
_PARTITIONED = {"samples": "samples", "rollups": "rollups", "container_samples": "container_samples",
                "container_rollups": "container_rollups"}
# Columns that reference a row of their own table, possibly a later one: copied as NULL first,
# then set once the whole table is there.
_SELF_REFERENCES = {"servers": ("via",)}


class MigrateError(CentralError):
    """The copy cannot start or did not end equal."""

    status, code = 400, "migrate_failed"


@dataclass
class TableCount:
    table: str
    source: int
    destination: int = 0
    copied: int = 0

    @property
    def ok(self) -> bool:
        return self.source == self.destination


@dataclass
class Report:
    source: str
    destination: str
    tables: list[TableCount] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tables)

    def as_dict(self) -> dict:
        return {"source": self.source, "destination": self.destination, "ok": self.ok,
                "tables": [{"table": t.table, "source": t.source, "destination": t.destination,
                            "copied": t.copied, "ok": t.ok} for t in self.tables]}


Progress = Callable[[str, int, int], None]  # (table, rows copied so far, rows in all)


def _q(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


async def migrate(source: Path, url: str, *, batch: int = 5000, progress: Progress | None = None) -> Report:
    """Copy the SQLite database at source into the PostgreSQL database at url; the counts."""
    if not is_postgres_url(url):
        raise MigrateError(f"--to: expected a postgresql:// URL, got {url[:100]!r}")
    if not source.is_file():
        raise MigrateError(f"{source}: no such database file")
    # the source's own schema brought up to date first (as starting the central would)
    await (await SQLiteStorage.open(source)).close()
    dest = await PostgresStorage.open(url)
    report = Report(str(source), dest.location)
    try:
        src = await aiosqlite.connect(f"file:{source}?mode=ro", uri=True, isolation_level=None)
        try:
            await src.execute("BEGIN")  # one snapshot of the whole source
            for table, key in TABLES:
                report.tables.append(await _copy(src, dest, table, key, batch, progress))
            await src.execute("COMMIT")
        finally:
            await src.close()
        async with dest.transaction() as con:
            for table in IDENTITY_TABLES:  # new rows get ids after the copied ones
                await con.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                                  f" greatest((SELECT max(id) FROM {table}), 1))")
        for t in report.tables:
            t.destination = await dest._val(f"SELECT count(*) FROM {t.table}")
    finally:
        await dest.close()
    return report


async def _copy(src: aiosqlite.Connection, dest: PostgresStorage, table: str, key: tuple[str, ...], batch: int,
                progress: Progress | None) -> TableCount:
    async with src.execute(f"SELECT count(*) FROM {table}") as cur:
        (total,) = await cur.fetchone()
    count = TableCount(table, total)
    async with src.execute(f"PRAGMA table_info({table})") as cur:
        src_columns = [r[1] for r in await cur.fetchall()]
    types = {r[0]: r[1] for r in await dest._all(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND table_name = $1", (table,))}
    missing = [c for c in src_columns if c not in types]
    if missing:
        raise MigrateError(f"{table}: the destination has no column {', '.join(missing)} (is it an older central's?)")
    columns = src_columns
    convert = [_converter(types[c]) for c in columns]
    names = ", ".join(_q(c) for c in columns)
    params = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    rest = [c for c in columns if c not in key]
    conflict = (f"DO UPDATE SET {', '.join(f'{_q(c)} = excluded.{_q(c)}' for c in rest)}" if rest else "DO NOTHING")
    sql = f"INSERT INTO {table} ({names}) VALUES ({params}) ON CONFLICT ({', '.join(_q(k) for k in key)}) {conflict}"
    ts_at = columns.index("ts") if table in _PARTITIONED else None
    tier_at = columns.index("tier") if ts_at is not None and "tier" in columns else None
    later = [columns.index(c) for c in _SELF_REFERENCES.get(table, ()) if c in columns]
    deferred: list[tuple] = []  # (key..., value) per self-reference column
    if later:  # the upsert leaves them alone; set below, after every row is in
        rest = [c for c in rest if c not in _SELF_REFERENCES[table]]
        conflict = (f"DO UPDATE SET {', '.join(f'{_q(c)} = excluded.{_q(c)}' for c in rest)}" if rest
                    else "DO NOTHING")
        sql = f"INSERT INTO {table} ({names}) VALUES ({params}) ON CONFLICT ({', '.join(_q(k) for k in key)}) {conflict}"
    key_at = [columns.index(k) for k in key]
    order = ", ".join(key)
    if progress:
        progress(table, 0, total)
    async with src.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}") as cur:
        while True:
            rows = await cur.fetchmany(batch)
            if not rows:
                break
            out = [tuple(f(v) for f, v in zip(convert, r)) for r in rows]
            if later:
                for i in later:
                    deferred += [(i, *(r[k] for k in key_at), r[i]) for r in out]
                out = [tuple(None if i in later else v for i, v in enumerate(r)) for r in out]
            if ts_at is not None:
                if tier_at is None:
                    await dest.ensure_partitions(_PARTITIONED[table], (r[ts_at] for r in out))
                else:
                    for tier in {r[tier_at] for r in out}:
                        parent = f"{_PARTITIONED[table]}_{tier}"
                        if parent not in PARTITIONS:
                            raise MigrateError(f"{table}: unknown tier {tier}")
                        await dest.ensure_partitions(parent, (r[ts_at] for r in out if r[tier_at] == tier))
            try:
                await dest._write_many([(sql, out)])
            except (ValueError, TypeError) as exc:
                raise MigrateError(f"{table}: a row the destination refuses: {exc}") from None
            count.copied += len(out)
            if progress:
                progress(table, count.copied, total)
    for i in later:
        where = " AND ".join(f"{_q(k)} = ${n}" for n, k in enumerate(key, 2))
        await dest._write_many([(
            f"UPDATE {table} SET {_q(columns[i])} = $1 WHERE {where} AND {_q(columns[i])} IS DISTINCT FROM $1",
            [(row[-1], *row[1:-1]) for row in deferred if row[0] == i])])
    return count


def _converter(pg_type: str) -> Callable[[object], object]:
    """SQLite keeps a value's own type whatever the column says; PostgreSQL's columns take one."""
    if pg_type in ("bigint", "integer"):
        return lambda v: int(v) if isinstance(v, float) and v.is_integer() else v
    if pg_type == "double precision":
        return lambda v: float(v) if isinstance(v, int) else v
    if pg_type == "text":
        return lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else v
    return lambda v: v


__all__ = ["TABLES", "MigrateError", "Report", "migrate"]
