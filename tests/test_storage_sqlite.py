"""The SQLite backend beyond the storage contract: its file, schema versions and transactions."""
from __future__ import annotations

import asyncio
import sqlite3

import pytest

from central.storage import Storage
from central.storage.sqlite import SCHEMA_VERSION
from tests.test_storage_contract import NOW, ok


async def test_schema_is_rerunnable_and_versioned(tmp_path):
    path = tmp_path / "c.db"
    s = await Storage.open(path)
    await s.add_server("a", "10.0.0.1")
    await s.close()
    s = await Storage.open(path)  # runs schema.sql again over the existing database
    assert [x.name for x in await s.list_servers()] == ["a"]
    await s.close()
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


async def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "c.db"
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(RuntimeError, match="newer than this central"):
        await Storage.open(path)


async def test_an_older_database_gets_the_columns_of_new_key_figures(tmp_path):
    path = tmp_path / "c.db"
    await (await Storage.open(path)).close()
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE samples DROP COLUMN procs")  # as if procs were added after it was created
    con.execute("ALTER TABLE rollups DROP COLUMN procs_max")
    con.commit()
    con.close()
    s = await Storage.open(path)
    sid = (await s.add_server("a", "10.0.0.1")).id
    await s.write_polls([ok(sid, NOW)], offline_after=3)
    assert (await s.samples(sid, 0, NOW + 1))[0]["procs"] == 10
    await s.close()
    con = sqlite3.connect(path)
    assert "procs_max" in [r[1] for r in con.execute("PRAGMA table_info(rollups)")]
    con.close()


async def test_an_older_database_gets_the_members_lag_column(tmp_path):
    path = tmp_path / "c.db"
    await (await Storage.open(path)).close()
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE members DROP COLUMN lag")  # a members table from before the poll lag
    con.commit()
    con.close()
    s = await Storage.open(path)
    try:
        assert [m["lag"] for m in await s.heartbeat("c0", "", 30.0, lag=0.5)] == [0.5]
    finally:
        await s.close()


async def test_concurrent_writes_do_not_collide(tmp_path):
    storage = await Storage.open(tmp_path / "c.db")
    try:
        async def write(i):
            await storage._write([("INSERT INTO meta (key, value) VALUES (?, ?)", (f"a{i}", "1")),
                                  ("INSERT INTO meta (key, value) VALUES (?, ?)", (f"b{i}", "2"))])

        async def write_many(i):
            await storage._write_many([("INSERT INTO meta (key, value) VALUES (?, ?)", [(f"c{i}", "3"), (f"d{i}", "4")])])

        results = await asyncio.gather(*(f(i) for i in range(20) for f in (write, write_many)),
                                       return_exceptions=True)
        assert [r for r in results if r is not None] == []
        (count,) = await storage._one("SELECT count(*) FROM meta WHERE key GLOB '[abcd][0-9]*'")
        assert count == 80
    finally:
        await storage.close()


def test_the_backend_offers_callers_nothing_beyond_the_interface():
    from central.storage.sqlite import SQLiteStorage

    interface = {n for n in dir(Storage) if not n.startswith("_")}
    backend = {n for n in dir(SQLiteStorage) if not n.startswith("_")}
    assert backend - interface == {"transaction"}  # the concept modules' shared helper
