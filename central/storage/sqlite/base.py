"""The SQLite backend's shared part: one aiosqlite connection per process, WAL mode, the schema
and its migrations, and the transaction helpers every concept module writes through
(transaction(): statement by statement from the event loop; in_transaction(): a whole
transaction in one call to the connection's thread, for the poll path's batches).

The serving process is the single writer for poll data (the poller hands it batches); the
CLI opens its own short-lived connection for administrative changes, which WAL and a busy
timeout make safe alongside it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Callable, Iterable, Sequence, TypeVar

import aiosqlite

from ... import files
from ...bundled import schema_text
from ...model import METRICS, StorageUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA_VERSION = 3
# Migrations from version N-1 to N: (N, [statements]). Each must be idempotent. (A key figure
# added to central.model.METRICS needs none: _add_metric_columns adds its columns.)
MIGRATIONS: list[tuple[int, list[str]]] = [
    # 2: agents authenticate (issue 11). The tables are in schema.sql too, which runs first;
    # servers added before keep their user (root): they show agent_needs_redeploy until
    # `central deploy` gives them the dedicated login user and a secret.
    (2, [
        "CREATE TABLE IF NOT EXISTS agent_secrets (server_id INTEGER PRIMARY KEY REFERENCES servers(id)"
        " ON DELETE CASCADE, secret TEXT NOT NULL, updated_at REAL NOT NULL)",
        "CREATE TABLE IF NOT EXISTS pending_agent_secrets (host TEXT NOT NULL, port INTEGER NOT NULL,"
        " secret TEXT NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (host, port))",
    ]),
    # 3: several centrals on one database (central.cluster, issue 19): members and server leases.
    (3, [
        "CREATE TABLE IF NOT EXISTS members (member TEXT PRIMARY KEY, address TEXT NOT NULL DEFAULT '',"
        " started_at REAL NOT NULL, heartbeat_at REAL NOT NULL)",
        "CREATE TABLE IF NOT EXISTS leases (server_id INTEGER PRIMARY KEY REFERENCES servers(id) ON DELETE CASCADE,"
        " member TEXT NOT NULL, expires_at REAL NOT NULL)",
        "CREATE INDEX IF NOT EXISTS leases_member ON leases (member)",
    ]),
]

#: nullable columns added since their table was made, with their declarations (see _add_columns)
ADDED_COLUMNS = {
    "servers": {"via": "INTEGER REFERENCES servers(id) ON DELETE RESTRICT"},
    "members": {"lag": "REAL"},
}

COLUMNS = tuple(METRICS)  # the key figures' columns, in order
SAMPLE_COLUMNS = ", ".join(COLUMNS)
ROLLUP_COLUMNS = ", ".join(f"{m}_min, {m}_avg, {m}_max" for m in COLUMNS)


async def _pragma(db: aiosqlite.Connection, setting: str) -> None:
    """Run a PRAGMA and close its cursor at once: some PRAGMAs answer with a row, and a cursor
    left open keeps a read transaction, so that connection would go on seeing an old snapshot."""
    async with db.execute("PRAGMA " + setting):
        pass


# Rows of a batch go several to a statement (INSERT ... VALUES (...), (...)): executemany steps
# SQLite once per row, and the database thread gives up the GIL around each step; a busy event
# loop hands it back once per switch interval, so 2,000 rows took seconds while a fleet
# connected (the writer fell behind and dropped outcomes: BENCHMARKS.md, "Stop 26"). Bound
# values per statement: SQLite's default limit since 3.32 (999 before).
MAX_VARIABLES = 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999
MAX_ROWS = 500  # rows per statement at most
UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33)  # UPDATE ... FROM: one statement for many servers


def rows_per_statement(conn: sqlite3.Connection, head: str, rows: list[tuple], tail: str = "") -> None:
    """head VALUES (row), (row), ... tail, for every row in order, in a few statements (on the
    database's thread: inside SQLiteBase.in_transaction)."""
    if not rows:
        return
    width = len(rows[0])
    per = max(1, min(MAX_ROWS, MAX_VARIABLES // width))
    one = "(" + ", ".join("?" * width) + ")"
    full = len(rows) // per * per
    if full:
        conn.executemany(f"{head} VALUES {', '.join([one] * per)}{tail}",
                         [[v for row in rows[i:i + per] for v in row] for i in range(0, full, per)])
    if full < len(rows):
        rest = rows[full:]
        conn.execute(f"{head} VALUES {', '.join([one] * len(rest))}{tail}", [v for row in rest for v in row])


def update_rows(conn: sqlite3.Connection, table: str, set_clause: Callable[[list[str]], str], rows: list[tuple]) -> None:
    """UPDATE table SET set_clause(names) WHERE id = <a row's last value>, for every row: names
    are what the SET clause calls the row's other values. Each id at most once in rows (an
    UPDATE ... FROM takes any one of several matching rows). On the database's thread."""
    if not rows:
        return
    width = len(rows[0])
    if UPDATE_FROM:
        names = [f"v.column{i + 1}" for i in range(width - 1)]
        rows_per_statement(conn, f"UPDATE {table} SET {set_clause(names)} FROM (", rows,
                           f") AS v WHERE {table}.id = v.column{width}")
    else:
        names = [f"?{i + 1}" for i in range(width - 1)]
        conn.executemany(f"UPDATE {table} SET {set_clause(names)} WHERE id = ?{width}", rows)


def json_rows(rows: Iterable, **columns: str) -> list[dict]:
    """Rows as dicts with the named JSON columns decoded (each column's value: the JSON text to
    read when it is NULL, or "" when it is never NULL)."""
    out = []
    for r in rows:
        d = dict(r)
        for column, empty in columns.items():
            d[column] = json.loads(d[column] or empty)
        out.append(d)
    return out


def compact(value: object, **kwargs) -> str:
    """Compact JSON text for a column."""
    return json.dumps(value, separators=(",", ":"), **kwargs)


# aiosqlite runs every call of a connection on that connection's own thread, through
# Connection._execute, with the sqlite3 connection as Connection._conn: not public API, but the
# one way to run several statements there in one call (tests/test_storage_sqlite.py checks both
# are there, so an aiosqlite that changes them fails the suite, not a central).
def _connection(db: aiosqlite.Connection) -> sqlite3.Connection:
    return db._conn


async def _on_thread(db: aiosqlite.Connection, fn: Callable[[], T]) -> T:
    return await db._execute(fn)


def _cannot_write(exc: sqlite3.OperationalError) -> StorageUnavailable:
    """A write's OperationalError (locked, read-only, full, I/O): the database's trouble, not the
    caller's data."""
    return StorageUnavailable(f"the database cannot be written: {exc}")


async def _first(db: aiosqlite.Connection, sql: str, args: Sequence):
    """The first row of a query (or None), in one call to the connection's thread."""
    def run():
        cur = _connection(db).execute(sql, args)
        try:
            return cur.fetchone()
        finally:
            cur.close()
    return await _on_thread(db, run)


class SQLiteBase:
    """The connection, its setup and the helpers the concept modules share."""

    def __init__(self, db: aiosqlite.Connection, path: Path, lock_timeout: float = 10.0):
        self.db = db
        self.path = path
        self.lock_timeout = lock_timeout
        # One transaction at a time on the shared connection: without it a second
        # coroutine's BEGIN fails ("cannot start a transaction within a transaction")
        # while the first one awaits inside its transaction (an action's audit row
        # written during a poll batch, say).
        self._write_lock = asyncio.Lock()
        # The newest sample per server, kept in memory once read: this process is the only one
        # that writes samples (the poller, through write_polls), so it stays exact, and lists
        # and /metrics need no query over the samples table (BENCHMARKS.md, HTTP API).
        self._latest: dict[int, dict] | None = None
        self.latest_changes = 0  # bumped whenever that copy changes (for caches of answers built on it)
        # Commits of this connection, and how many of them were quiet (in_transaction(quiet=True):
        # poll batches, their inventories, alert changes): a commit that is not (or another
        # process's: data_version) may have changed a server's settings or the set of servers, so
        # the poller's server list and write_polls' known ids are re-read only then.
        self.commits = 0
        self.quiet_commits = 0
        self._server_ids: tuple[object, set[int]] | None = None  # (servers marker, ids) for write_polls
        # A second connection, on a thread of its own, for the hot reads of the API (lists,
        # fleet figures, token lookups): on the writer's connection they queued behind poll
        # batches, rollups and pruning (0.6-1.1 s stalls; BENCHMARKS.md, HTTP API). It only
        # reads committed data, and every read is its own short transaction (cursors are
        # closed at once), so it sees each commit of the writer's connection as soon as that
        # returned. Opened on first use (the CLI seldom needs it).
        self._rdb: aiosqlite.Connection | None = None
        self._rdb_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str | Path, lock_timeout: float = 10.0):
        """Open (creating if needed) the database file and bring its schema up to date.

        lock_timeout: how long a write waits for a lock another process holds (SQLite's busy
        timeout). Every statement of this connection runs on one thread, so while a write waits
        every read waits behind it: the serving process keeps it short (database.lock_timeout)."""
        path = Path(path)
        files.prepare_database(path)  # 0600 before SQLite creates it, so -wal/-shm are 0600 too
        db = await aiosqlite.connect(str(path), isolation_level=None)
        db.row_factory = aiosqlite.Row
        self = cls(db, path, lock_timeout)
        try:
            await self._setup()
        except Exception:
            await db.close()
            raise
        return self

    async def _setup(self) -> None:
        await _pragma(self.db, f"busy_timeout = {int(self.lock_timeout * 1000)}")
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
        await self._add_metric_columns()
        await self._add_columns()
        for target, statements in MIGRATIONS:
            if version < target:
                async with self.transaction() as db:
                    for stmt in statements:
                        await db.execute(stmt)
                    await db.execute(f"PRAGMA user_version = {target}")
        if version < SCHEMA_VERSION:
            await self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    async def _add_metric_columns(self) -> None:
        """Give an existing database the columns of key figures added to central.model.METRICS
        since it was created (schema.sql has them for a new one), so adding one needs no migration."""
        await self._add_missing("samples", {m.column: "INTEGER" if m.integer else "REAL" for m in METRICS.values()})
        await self._add_missing("rollups", {f"{m.column}_{agg}": "REAL" for m in METRICS.values()
                                            for agg in ("min", "avg", "max")})

    async def _add_columns(self) -> None:
        """Give an older database the nullable columns added since (schema.sql has them for a new
        one): adding a nullable column needs no version of its own."""
        for table, columns in ADDED_COLUMNS.items():
            await self._add_missing(table, columns)

    async def _add_missing(self, table: str, columns: dict[str, str]) -> None:
        """ALTER TABLE table ADD COLUMN for each of columns (name: declaration) it lacks."""
        async with self.db.execute(f"PRAGMA table_info({table})") as cur:
            have = {r[1] for r in await cur.fetchall()}
        for column, decl in columns.items():
            if column not in have:
                try:
                    await self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
                except aiosqlite.OperationalError as exc:  # another process opening it added it first
                    if "duplicate column" not in str(exc):
                        raise

    @property
    def location(self) -> str:
        """The database file."""
        return str(self.path)

    async def database_size(self) -> int:
        """Bytes on disk: the database file plus its WAL."""
        total = 0
        for suffix in ("", "-wal"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                total += p.stat().st_size
        return total

    async def close(self) -> None:
        """Close the connections (a checkpoint keeps the WAL file small)."""
        if self._rdb is not None:
            rdb, self._rdb = self._rdb, None
            await rdb.close()
        try:
            async with self.db.execute("PRAGMA wal_checkpoint(PASSIVE)"):
                pass
        except aiosqlite.OperationalError as exc:  # only housekeeping: never fail a shutdown on it
            log.warning("WAL checkpoint on close failed: %s", exc)
        finally:
            await self.db.close()

    # reading and writing

    # Each read is one call to the connection's thread (aiosqlite's cursor API takes three:
    # execute, fetch, close), and each call waits for a turn of the event loop to hand back its
    # answer: tens of milliseconds a turn while a fleet of 10,000 connects (BENCHMARKS.md, "Stop 28").

    async def _one(self, sql: str, args: Sequence = ()):
        return await _first(self.db, sql, args)

    async def _all(self, sql: str, args: Sequence = ()) -> list:
        return list(await self.db.execute_fetchall(sql, args))

    async def _reader(self) -> aiosqlite.Connection:
        if self._rdb is None:
            async with self._rdb_lock:
                if self._rdb is None:
                    rdb = await aiosqlite.connect(str(self.path), isolation_level=None)
                    rdb.row_factory = aiosqlite.Row
                    try:
                        await _pragma(rdb, f"busy_timeout = {int(self.lock_timeout * 1000)}")
                        await _pragma(rdb, "query_only = ON")
                    except BaseException:
                        await rdb.close()
                        raise
                    self._rdb = rdb
        return self._rdb

    async def _read_one(self, sql: str, args: Sequence = ()):
        """_one on the read connection (committed data only: never inside a transaction)."""
        return await _first(await self._reader(), sql, args)

    async def _read_all(self, sql: str, args: Sequence = ()) -> list:
        """_all on the read connection (committed data only: never inside a transaction)."""
        return list(await (await self._reader()).execute_fetchall(sql, args))

    async def _data_version(self) -> int:
        """A number that changes whenever any connection (this process's writer or another
        process) commits a change to the database: SQLite's data_version seen from the read
        connection, which never writes itself. For caches of answers built from the database."""
        return (await self._read_one("PRAGMA data_version"))[0]

    async def servers_marker(self) -> tuple[int, int]:
        """(data_version of the writer's connection: another process's commits, this connection's
        commits other than quiet ones): equal while nothing but poll batches and what goes with
        them (inventories, alert changes) wrote."""
        (version,) = await self._one("PRAGMA data_version")
        return version, self.commits - self.quiet_commits

    async def change_marker(self) -> tuple[int, int]:
        """(data_version, latest_changes): any commit, and any change of the in-memory latest samples."""
        return await self._data_version(), self.latest_changes

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection inside one write transaction (one at a time): committed when the
        block ends, rolled back when it raises, when BEGIN or COMMIT fails, or when the task is
        cancelled anywhere in between."""
        async with self._write_lock:
            try:
                await self.db.execute("BEGIN IMMEDIATE")
                yield self.db
                await self.db.execute("COMMIT")
                self.commits += 1
            except sqlite3.OperationalError as exc:
                await self._rollback()
                raise _cannot_write(exc) from exc
            except BaseException:
                await self._rollback()
                raise

    async def _rollback(self) -> None:
        # aiosqlite runs this connection's statements one at a time in the order they were
        # sent, so this ROLLBACK runs after a BEGIN or COMMIT whose await was cancelled (it runs
        # anyway) and ends that transaction; left open, it made every later BEGIN fail
        # ("cannot start a transaction within a transaction").
        try:
            await self.db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # no transaction open: BEGIN failed, or COMMIT went through

    async def in_transaction(self, work: Callable[[sqlite3.Connection], T], *, quiet: bool = False) -> T:
        """work(connection) in one write transaction, run whole on the connection's thread: one
        call to that thread, where transaction() takes one per statement (and one to begin and
        to commit), each waiting for a turn of the event loop to hand back its answer. While a
        fleet of 10,000 connected a turn took tens of milliseconds, a poll batch of a dozen
        statements most of a second, and the writer fell behind (BENCHMARKS.md, "Stop 28").
        work only runs statements on the connection it is given: no awaits, nothing of the
        event loop's. Committed when it returns, rolled back when it raises; a cancelled caller
        does not cut it short (it runs to its commit or rollback, before any later statement).
        quiet: it adds or removes no server and changes no setting the poller reads (a poll
        batch, its inventories, alert changes), so servers_marker() stays as it was."""
        def run() -> T:
            conn = _connection(self.db)
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
                conn.execute("COMMIT")
            except BaseException:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # BEGIN failed, or a failed COMMIT already ended it
                raise
            return result

        async with self._write_lock:
            try:
                result = await _on_thread(self.db, run)
            except sqlite3.OperationalError as exc:
                raise _cannot_write(exc) from exc
            self.commits += 1
            self.quiet_commits += quiet
            return result

    async def check_writable(self) -> None:
        """Commit a small write (the time of this check); raises StorageUnavailable when the
        database cannot be written (read-only file or file system, disk full, locked)."""
        await self._write([("INSERT INTO meta (key, value) VALUES ('writable_checked_at', ?)"
                             " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(time.time()),))])

    async def _write(self, statements: Iterable[tuple[str, Sequence]]) -> list[int]:
        """Run statements in one transaction; returns each statement's lastrowid."""
        statements = list(statements)
        return await self.in_transaction(lambda conn: [conn.execute(sql, args).lastrowid for sql, args in statements])

    async def _write_many(self, batches: Sequence[tuple[str, list]], quiet: bool = False) -> None:
        """Run each statement over its rows (executemany), all in one transaction (quiet: as
        in_transaction's)."""
        def work(conn: sqlite3.Connection) -> None:
            for sql, rows in batches:
                conn.executemany(sql, rows)
        await self.in_transaction(work, quiet=quiet)
