"""Concurrent writers on the shared aiosqlite connection each get their own transaction."""
import asyncio

from central.storage import Storage


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
