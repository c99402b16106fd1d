"""The PostgreSQL backend's shared part: one asyncpg pool per process, the versioned
migrations (under an advisory lock), the time partitions of samples and rollups, the mapping
of the server's trouble to StorageUnavailable, and the transaction helpers every concept
module writes through.

Unlike SQLite there is no process-wide write lock: PostgreSQL serialises conflicting writes
itself, and a write that waits longer than lock_timeout for a lock another session holds
fails (as "database is locked", like SQLite's) instead of stalling the poller.
"""
from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Iterable, Sequence
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from ...model import METRICS, StorageUnavailable
from ..sqlite.base import compact, json_rows  # noqa: F401 - the same JSON helpers on both backends
from .schema import (
    MIGRATION_LOCK, MIGRATIONS, PARTITION_LOCK, PARTITIONS, SCHEMA_VERSION, container_columns, metric_columns,
)

log = logging.getLogger(__name__)

COLUMNS = tuple(METRICS)
SAMPLE_COLUMNS = ", ".join(COLUMNS)
ROLLUP_COLUMNS = ", ".join(f"{m}_min, {m}_avg, {m}_max" for m in COLUMNS)
INTEGER_COLUMNS = tuple(m.column for m in METRICS.values() if m.integer)

# SQLSTATE classes and codes that are the database's trouble, never the caller's data:
# connection (08), insufficient resources such as a full disk (53), operator intervention
# (57: shutdown, statement timeout), system / I/O errors (58), a read-only transaction or
# server (25006), a lock not granted in lock_timeout (55P03), serialization and deadlocks (40).
_UNAVAILABLE_CLASSES = ("08", "53", "57", "58", "40")
_UNAVAILABLE_CODES = {"25006", "55P03"}

# what the driver and the connection raise (the rest: the caller's own errors, passed through)
_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError,
                  asyncio.TimeoutError)

_PARTITION_NAME = re.compile(rf"^({'|'.join(sorted(PARTITIONS, key=len, reverse=True))})_(n?)(\d+)$")


def unavailable(exc: BaseException) -> StorageUnavailable | None:
    """The StorageUnavailable that exc means, or None when it is not the database's trouble."""
    if isinstance(exc, asyncpg.PostgresError):
        code = exc.sqlstate or ""
        if code == "55P03":
            return StorageUnavailable(f"the database cannot be written: database is locked ({exc})")
        if code in _UNAVAILABLE_CODES or code[:2] in _UNAVAILABLE_CLASSES:
            return StorageUnavailable(f"the database cannot be written: {exc}")
        return None
    # a connection the server ended shows as one of these when next used (the pool replaces it)
    if isinstance(exc, (OSError, asyncio.TimeoutError, asyncpg.InterfaceError, asyncpg.InternalClientError)) \
            and not isinstance(exc, ValueError):
        return StorageUnavailable(f"the database cannot be reached: {type(exc).__name__}: {exc}")
    return None


def partition_name(parent: str, start: int) -> str:
    return f"{parent}_{'n' if start < 0 else ''}{abs(start)}"


def partition_start(ts: float, width: int) -> int:
    """The start of the partition of width seconds that holds ts (OverflowError/ValueError for inf, NaN)."""
    return math.floor(ts / width) * width


def safe_url(url: str) -> str:
    """The URL without its password (for status pages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc[-1]))


def deleted(status: str) -> int:
    """Rows a DELETE's command status reports ("DELETE 12")."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except (ValueError, AttributeError):
        return 0


async def executemany(con: asyncpg.Connection, sql: str, rows) -> None:
    """con.executemany(sql, rows), safe to cancel.

    asyncpg (0.32) loses a cancel that comes while a large executemany waits to send more rows
    (the socket's buffer full): it then waits for an answer that PostgreSQL, waiting for the
    rest of the rows, never sends. A central on PostgreSQL stopped with a backlog hung there
    for good (bench/bench_core.py --centrals 2 at 10,000 hosts: the writer cancelled mid-batch,
    the backend in ClientRead for 20 minutes). Here the call runs shielded; a cancel terminates
    the connection (PostgreSQL rolls the transaction back), ends the call and goes on to the
    caller."""
    task = asyncio.ensure_future(con.executemany(sql, rows))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            con.terminate()  # fails the answer it waits for (or will, once it stops sending) ...
            task.cancel()  # ... and stops its wait to send more, which the lost connection never ends
            await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved: the cancel is what the caller gets
        raise


class PostgresBase:
    """The pool, its setup and the helpers the concept modules share."""

    def __init__(self, pool: asyncpg.Pool, url: str, lock_timeout: float = 10.0):
        self.pool = pool
        self.url = url
        self.lock_timeout = lock_timeout
        # as on SQLite: the newest sample per server, kept in memory once read (this process
        # is the one that writes samples, through write_polls)
        self._latest: dict[int, dict] | None = None
        self.latest_changes = 0  # bumped whenever that copy changes (for caches of answers built on it)

    @classmethod
    async def open(cls, url: str, lock_timeout: float = 10.0, *, max_size: int = 10):
        """Connect a pool to the database at url (postgresql://...) and bring its schema up to date.

        lock_timeout: how long a statement waits for a lock another session holds (the
        server's lock_timeout setting on every connection of the pool)."""
        settings = {"lock_timeout": str(max(int(lock_timeout * 1000), 1)), "application_name": "central"}
        try:
            pool = await asyncpg.create_pool(url, min_size=1, max_size=max_size, server_settings=settings,
                                             timeout=max(lock_timeout, 10.0))
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StorageUnavailable(f"cannot connect to {safe_url(url)}: {type(exc).__name__}: {exc}") from None
        self = cls(pool, url, lock_timeout)
        try:
            await self._setup()
        except BaseException:
            await pool.close()
            raise
        return self

    async def _setup(self) -> None:
        async with self.pool.acquire() as con:
            # Migrations may take long (a new metric's columns wait for readers): not under lock_timeout.
            await con.execute("SET lock_timeout = 0")
            await con.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
            try:
                await con.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY,"
                                  " applied_at double precision NOT NULL)")
                version = await con.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
                if version > SCHEMA_VERSION:
                    raise RuntimeError(f"{self.location}: database schema version {version} is newer than this"
                                       f" central ({SCHEMA_VERSION}); upgrade central")
                for target, statements in MIGRATIONS:
                    if version < target:
                        async with con.transaction():
                            for stmt in statements:
                                await con.execute(stmt)
                            await con.execute("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)"
                                              " ON CONFLICT (version) DO NOTHING", target, time.time())
                        log.info("%s: schema migrated to version %d", self.location, target)
                await self._add_metric_columns(con)
            finally:
                await con.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
                await con.execute("RESET lock_timeout")

    async def _add_metric_columns(self, con: asyncpg.Connection) -> None:
        """Give an existing database the columns of key figures added to central.model.METRICS
        since it was created (ALTER only when one is missing: it takes the table's lock)."""
        for table, columns in {**metric_columns(), **container_columns()}.items():
            have = {r[0] for r in await con.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
                " AND table_name = $1", table)}
            for column, type_ in columns:
                if column not in have:
                    await con.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {type_}")

    @property
    def location(self) -> str:
        """The database URL without its password."""
        return safe_url(self.url)

    async def servers_marker(self) -> int:
        """The servers table's change counter (markers, bumped by a trigger at every statement
        that writes servers, here or in another process, except poll batches): equal while
        nothing but poll batches wrote."""
        return int(await self._val("SELECT n FROM markers WHERE name = 'servers'"))

    async def change_marker(self) -> tuple[str, int]:
        """(the database's current snapshot, latest_changes): the snapshot (xmin:xmax:in-progress
        transactions) changes with every transaction that writes and every commit, of any
        session; latest_changes with every change of the in-memory latest samples."""
        # txid_current_snapshot: pg_current_snapshot's older name, there from PostgreSQL 12 on too
        return str(await self._val("SELECT txid_current_snapshot()::text")), self.latest_changes

    async def database_size(self) -> int:
        """Bytes the database takes (pg_database_size)."""
        return int(await self._val("SELECT pg_database_size(current_database())"))

    async def close(self) -> None:
        """Close the pool."""
        try:
            await asyncio.wait_for(self.pool.close(), 10)
        except (asyncio.TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("closing the database pool failed (%s); terminating it", exc)
            self.pool.terminate()

    # reading and writing

    async def _one(self, sql: str, args: Sequence = ()):
        try:
            return await self.pool.fetchrow(sql, *args)
        except _DRIVER_ERRORS as exc:
            raise unavailable(exc) or exc

    async def _all(self, sql: str, args: Sequence = ()) -> list:
        try:
            return await self.pool.fetch(sql, *args)
        except _DRIVER_ERRORS as exc:
            raise unavailable(exc) or exc

    async def _val(self, sql: str, args: Sequence = ()):
        try:
            return await self.pool.fetchval(sql, *args)
        except _DRIVER_ERRORS as exc:
            raise unavailable(exc) or exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection of the pool inside one transaction: committed when the block ends,
        rolled back when it raises or the task is cancelled. The server's trouble (down,
        read-only, disk full, a lock not granted in time) raises StorageUnavailable."""
        cancelled = False
        try:
            async with self.pool.acquire() as con, con.transaction():
                try:
                    yield con
                except asyncio.CancelledError:
                    cancelled = True
                    raise
        except _DRIVER_ERRORS as exc:
            if cancelled:  # the rollback of a connection executemany() terminated: still a cancel
                raise asyncio.CancelledError from exc
            mapped = unavailable(exc)
            if mapped is not None:
                raise mapped from exc
            raise

    async def check_writable(self) -> None:
        """Commit a small write (the time of this check); raises StorageUnavailable when the
        database cannot be written (down, read-only, disk full, locked past lock_timeout)."""
        async with self.transaction() as con:
            await con.execute("INSERT INTO meta (key, value) VALUES ('writable_checked_at', $1)"
                              " ON CONFLICT (key) DO UPDATE SET value = excluded.value", str(time.time()))

    async def _write(self, statements: Iterable[tuple[str, Sequence]]) -> list:
        """Run statements in one transaction; each one's first value (RETURNING id) or None."""
        out = []
        async with self.transaction() as con:
            for sql, args in statements:
                out.append(await con.fetchval(sql, *args))
        return out

    async def _write_many(self, batches: Sequence[tuple[str, list]], quiet: bool = False) -> None:
        """Run each statement over its rows (executemany), all in one transaction. quiet: it
        changes no setting the poller reads from the servers table (the servers marker stays)."""
        async with self.transaction() as con:
            if quiet:
                await con.execute("SET LOCAL central.poll_batch = 'on'")
            for sql, rows in batches:
                if rows:
                    await executemany(con, sql, rows)

    # partitions

    async def ensure_partitions(self, parent: str, timestamps: Iterable[float]) -> None:
        """Create the partitions of parent (samples, rollups_60, rollups_3600) that rows at these
        times go into, each in a short transaction of its own (creating one locks the parent)."""
        width = PARTITIONS[parent]
        starts = {partition_start(ts, width) for ts in timestamps}
        if not starts:
            return
        names = {partition_name(parent, s): s for s in starts}
        have = {r[0] for r in await self._all("SELECT relname FROM pg_class WHERE relname = ANY($1::text[])",
                                              (list(names),))}
        for name, start in sorted(names.items(), key=lambda kv: kv[1]):
            if name in have:
                continue
            async with self.transaction() as con:
                await con.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
                await con.execute(f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {parent}"
                                  f" FOR VALUES FROM ({start}) TO ({start + width})")

    async def partitions(self, parent: str) -> list[tuple[str, int, int]]:
        """(name, start, end) of parent's partitions, oldest first."""
        rows = await self._all(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = $1", (parent,))
        width = PARTITIONS[parent]
        out = []
        for (name,) in rows:
            m = _PARTITION_NAME.match(name)
            if m:
                start = int(m.group(3)) * (-1 if m.group(2) else 1)
                out.append((name, start, start + width))
        return sorted(out, key=lambda p: p[1])

    async def drop_partitions_before(self, parent: str, cut: float) -> int:
        """Drop every partition of parent that ends at or before cut; the rows they held."""
        dropped = 0
        for name, _start, end in await self.partitions(parent):
            if end > cut:
                break
            async with self.transaction() as con:
                dropped += await con.fetchval(f"SELECT count(*) FROM {name}")
                await con.execute(f"DROP TABLE {name}")
        return dropped
