"""What only the PostgreSQL backend has (the storage contract, tests/test_storage_contract.py,
runs on both): versioned migrations under an advisory lock, time partitions that retention
drops whole, the server's trouble as StorageUnavailable (a lock held past lock_timeout, a
read-only database, a lost connection), and a central serving on PostgreSQL end to end.
Everything against the real PostgreSQL tests/pgserver.py starts from Debian's packages."""
from __future__ import annotations

import asyncio
import dataclasses
import json

import asyncpg
import pytest

from central.config import StorageConfig
from central.model import METRICS, PollOutcome, StorageUnavailable
from central.storage import TIER_MINUTE, Storage
from central.storage.postgres import SCHEMA_VERSION, PostgresStorage, safe_url
from tests.apiclient import start_api, wait_online
from tests.helpers import wait_for
from tests.sshharness import document_agent
from tests.test_poller import stored

DAY = 86400.0
NOW = 1_800_000_000.0


def ok(server_id: int, ts: float, cpu: float = 10.0) -> PollOutcome:
    sample = {m: None for m in METRICS} | {"cpu": cpu, "procs": 3, "top": []}
    return PollOutcome(server_id=server_id, ts=ts, duration=0.01, ok=True, doc_text="{}", sample=sample)


@pytest.fixture
async def storage(pg_url):
    s = await Storage.open(pg_url, lock_timeout=0.5)
    yield s
    await s.close()


async def test_a_postgresql_url_opens_the_postgresql_backend(storage, pg_url):
    assert isinstance(storage, PostgresStorage) and storage.location == pg_url
    assert await storage.database_size() > 1_000_000  # pg_database_size of a real database


def test_the_location_never_shows_the_password():
    assert safe_url("postgresql://central:s3cret@db.example:5432/central") == "postgresql://central:***@db.example:5432/central"
    assert safe_url("postgresql:///central?host=/run/postgresql") == "postgresql:///central?host=/run/postgresql"


async def test_migrations_run_once_even_when_centrals_open_a_new_database_together(pg_url, pg_server):
    opened = await asyncio.gather(*(Storage.open(pg_url) for _ in range(4)))
    try:
        await opened[0].add_server("a", "10.0.0.1")
        assert [s.name for s in await opened[3].list_servers()] == ["a"]
    finally:
        for s in opened:
            await s.close()
    assert pg_server.psql("SELECT string_agg(version::text, ',') FROM schema_migrations", _db(pg_url)) == \
        ",".join(str(v) for v in range(1, SCHEMA_VERSION + 1))
    again = await Storage.open(pg_url)  # idempotent: nothing to do, nothing lost
    try:
        assert [s.name for s in await again.list_servers()] == ["a"]
    finally:
        await again.close()


async def test_a_database_from_a_newer_central_is_refused(pg_url, pg_server):
    (await Storage.open(pg_url)).pool.terminate()
    pg_server.psql(f"INSERT INTO schema_migrations VALUES ({SCHEMA_VERSION + 1}, 0)", _db(pg_url))
    with pytest.raises(RuntimeError, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        await Storage.open(pg_url)


async def test_a_metric_added_later_gets_its_column(pg_url, pg_server):
    await (await Storage.open(pg_url)).close()
    pg_server.psql("ALTER TABLE samples DROP COLUMN disk_write; ALTER TABLE rollups DROP COLUMN disk_write_max",
                   _db(pg_url))
    s = await Storage.open(pg_url)
    try:
        a = await s.add_server("a", "10.0.0.1")
        await s.import_samples([(a.id, NOW, *[1.0] * len(METRICS), "[]")])
        assert (await s.samples(a.id, 0, NOW + 1))[0]["disk_write"] == 1.0
    finally:
        await s.close()


async def test_samples_live_in_day_partitions_and_retention_drops_them_whole(storage, pg_url, pg_server):
    a = await storage.add_server("a", "10.0.0.1")
    start = NOW - 5 * DAY
    await storage.write_polls([ok(a.id, start + i * 3600.0) for i in range(5 * 24)], offline_after=3)
    days = pg_server.psql("SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent"
                          " WHERE p.relname = 'samples'", _db(pg_url))
    assert int(days) == 6  # NOW - 5 days is not on a day boundary: six partitions
    assert (await storage.rollup(now=NOW, lag=0))[TIER_MINUTE][1] == NOW
    counts = await storage.prune(raw=2 * DAY, minute=14 * DAY, hour=400 * DAY, events=365 * DAY, now=NOW)
    assert counts["samples"] == 3 * 24  # every row before the cut, none after
    left = [r[0] for r in await storage.partitions("samples")]
    assert len(left) == 3 and all(int(name.rsplit("_", 1)[1]) + DAY > NOW - 2 * DAY for name in left)
    assert min(r["ts"] for r in await storage.samples(a.id, 0, NOW + 1)) >= NOW - 2 * DAY
    # the minute rollups of the dropped days stay (their own retention is 14 days)
    assert len(await storage.rollups(a.id, TIER_MINUTE, 0, NOW + 1)) == 5 * 24


async def test_a_version_2_database_is_brought_to_the_current_version_with_what_it_held(pg_url, pg_server):
    from central.storage.postgres.schema import MIGRATIONS

    con = await asyncpg.connect(pg_url)  # a database as the central before containers and bastions made it
    try:
        await con.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY,"
                          " applied_at double precision NOT NULL)")
        for version, statements in MIGRATIONS[:2]:
            for stmt in statements:
                await con.execute(stmt)
            await con.execute("INSERT INTO schema_migrations VALUES ($1, 0)", version)
        await con.execute("INSERT INTO servers (name, host, created_at) VALUES ('old', '10.0.0.1', 0)")
    finally:
        await con.close()
    s = await Storage.open(pg_url)
    try:
        old = await s.get_server("old")
        inner = await s.add_server("inner", "10.1.0.1", via=old.id)
        marker = await s.servers_marker()
        await s.write_polls([dataclasses.replace(ok(inner.id, NOW), sample=ok(inner.id, NOW).sample | {
            "containers": [["web", 1.0, 2.0, 3, 4.0, 5.0, 6.0, 7.0, 8]]})], offline_after=3)
        assert await s.container_names(inner.id) == ["web"] and await s.servers_marker() == marker
        # version 4: the members' poller lag
        assert [m["lag"] for m in await s.heartbeat("c0", "", 30.0, lag=0.5)] == [0.5]
    finally:
        await s.close()
    assert pg_server.psql("SELECT max(version) FROM schema_migrations", _db(pg_url)) == str(SCHEMA_VERSION)


async def test_container_samples_live_in_day_partitions_dropped_whole(storage, pg_url, pg_server):
    a = await storage.add_server("a", "10.0.0.1")
    start = NOW - 5 * DAY
    polls = [dataclasses.replace(o, sample=o.sample | {"containers": [["web", 1.0, 2.0, 3, 4.0, 5.0, 6.0, 7.0, 8]]})
             for o in (ok(a.id, start + i * 3600.0) for i in range(5 * 24))]
    await storage.write_polls(polls, offline_after=3)
    assert len(await storage.partitions("container_samples")) == 6
    await storage.rollup(now=NOW, lag=0)
    counts = await storage.prune(raw=2 * DAY, minute=14 * DAY, hour=400 * DAY, events=365 * DAY, now=NOW)
    assert counts["containers"] == 3 * 24
    assert len(await storage.partitions("container_samples")) == 3
    assert min(r["ts"] for r in await storage.container_samples(a.id, "web", 0, NOW + 1)) >= NOW - 2 * DAY
    # the minute rollups of the dropped days stay, in partitions of their own
    assert len(await storage.partitions("container_rollups_60")) == 6
    hist = await storage.container_history(a.id, "web", start, NOW, max_points=200, retention_raw=2 * DAY,
                                           retention_minute=14 * DAY, now=NOW)
    assert hist["source"] == "minute" and len(hist["series"]["ts"]) == 5 * 24


async def test_a_lock_held_past_lock_timeout_is_storage_unavailable_and_nothing_is_lost(storage, pg_url):
    a = await storage.add_server("a", "10.0.0.1")
    holder = await asyncpg.connect(pg_url)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("LOCK TABLE servers IN EXCLUSIVE MODE")
        with pytest.raises(StorageUnavailable, match="database is locked"):
            await storage.write_polls([ok(a.id, NOW)], offline_after=3)
        await tx.rollback()
    finally:
        await holder.close()
    assert await storage.samples(a.id, 0, NOW + 1) == []  # the refused batch left nothing behind
    assert await storage.write_polls([ok(a.id, NOW)], offline_after=3) == []
    assert len(await storage.samples(a.id, 0, NOW + 1)) == 1


async def test_a_write_cancelled_while_its_rows_are_still_being_sent_ends_and_stores_nothing(storage):
    # asyncpg lost a cancel that came while a large executemany waited for the socket (the
    # server's side still reading the rows) and then waited for good for an answer: a central
    # on PostgreSQL stopped with a backlog (its writer cancelled mid-batch) never exited.
    servers = [await storage.add_server(f"h{i}", "10.0.0.1") for i in range(150)]
    big = json.dumps({"pad": "x" * 400_000})
    batch = [dataclasses.replace(ok(s.id, NOW), doc_text=big) for s in servers]
    write = asyncio.ensure_future(storage.write_polls(batch, offline_after=3))

    def sending() -> bool:  # a connection of the pool waiting to send more of the batch
        return any(h._con is not None and not h._con._protocol.writing_allowed.is_set()  # noqa: SLF001
                   for h in storage.pool._holders)  # noqa: SLF001
    await wait_for(lambda: sending() or write.done(), timeout=30, interval=0.001, what="the rows being sent")
    assert not write.done()
    write.cancel()
    done, _ = await asyncio.wait([write], timeout=10)
    assert done and write.cancelled()  # the cancel reached the caller (it hung here, forever)
    assert await storage.samples(servers[0].id, 0, NOW + 1) == []  # rolled back: nothing of the batch
    assert all(s.status != "online" for s in await storage.list_servers())
    assert await storage.write_polls(batch[:2], offline_after=3) == []  # the pool goes on
    assert len(await storage.samples(servers[0].id, 0, NOW + 1)) == 1


async def test_a_read_only_database_fails_the_writable_check_until_it_is_writable_again(storage, pg_url, pg_server):
    db = _db(pg_url)
    await storage.check_writable()
    pg_server.psql(f"ALTER DATABASE {db} SET default_transaction_read_only = on")
    _drop_connections(pg_server, db)
    for _ in range(2):  # the first may meet the dropped connection, the next one a read-only one
        with pytest.raises(StorageUnavailable):
            await storage.check_writable()
    with pytest.raises(StorageUnavailable, match="read-only transaction"):
        await storage.check_writable()
    pg_server.psql(f"ALTER DATABASE {db} SET default_transaction_read_only = off")
    _drop_connections(pg_server, db)
    for _ in range(3):
        try:
            await storage.check_writable()
            break
        except StorageUnavailable:
            continue  # a connection dropped above, replaced by the pool
    else:
        pytest.fail("the database stayed unwritable")
    assert await storage.add_server("a", "10.0.0.1")


async def test_a_lost_connection_is_storage_unavailable_not_a_crash(storage, pg_url, pg_server):
    await storage.add_server("a", "10.0.0.1")
    _drop_connections(pg_server, _db(pg_url))
    with pytest.raises(StorageUnavailable, match="cannot be (reached|written)"):
        await storage.list_servers()
    assert [s.name for s in await storage.list_servers()] == ["a"]  # the pool connects again


async def test_an_unreachable_server_is_one_line(tmp_path):
    with pytest.raises(StorageUnavailable, match="cannot connect to postgresql:///x"):
        await Storage.open(f"postgresql:///x?host={tmp_path}&port=1", lock_timeout=0.5)


async def test_a_central_on_postgresql_polls_serves_and_keeps_its_history(config, pg_url, pg_server, ssh_host,
                                                                         agent_document):
    config = dataclasses.replace(config, storage=StorageConfig(url=pg_url))
    api = await start_api(config)
    try:
        hosts = [await ssh_host(agent=document_agent(agent_document)) for _ in range(3)]
        for host in hosts:
            await stored(api.central, host)
        for host in hosts:
            await wait_online(api, host.name)
        await wait_online(api, "local")
        status, body, _ = await api.get("/api/v1/servers")
        assert status == 200
        listed = {s["name"]: s for s in body["servers"]}
        assert set(listed) == {"local", "h1", "h2", "h3"} and all(s["status"] == "online" for s in listed.values())
        status, body, _ = await api.get("/api/v1/status")
        assert status == 200 and body["database"]["path"] == pg_url and body["storage"]["ok"] is True
        status, text, _ = await api.get("/metrics")
        assert status == 200 and all(f'central_server_up{{server="{n}"}} 1' in text for n in listed)
        status, body, _ = await api.get("/api/v1/servers/h1/history")
        assert status == 200 and body["source"] == "raw" and len(body["series"]["ts"]) >= 1
        mem = body["series"]["mem"][-1]
        assert mem == pytest.approx(agent_document["memory"]["percent"])
    finally:
        await api.client.close()
    # in PostgreSQL itself: each host's samples, in a day partition of samples
    db = _db(pg_url)
    rows = pg_server.psql("SELECT s.name, count(*) > 0 FROM samples x JOIN servers s ON s.id = x.server_id"
                          " GROUP BY s.name ORDER BY s.name", db)
    assert rows.splitlines() == ["h1|t", "h2|t", "h3|t", "local|t"]
    assert pg_server.psql("SELECT count(DISTINCT tableoid::regclass) FROM samples", db) in ("1", "2")


def _db(url: str) -> str:
    return url.split("///", 1)[1].split("?", 1)[0]


def _drop_connections(pg_server, db: str) -> None:
    pg_server.psql(f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{db}'"
                   " AND pid <> pg_backend_pid()")


def test_the_cli_on_postgresql_needs_an_initialised_data_directory_not_a_database_file(tmp_path, pg_url,
                                                                                      monkeypatch):
    from click.testing import CliRunner

    from central.cli import cli

    monkeypatch.setenv("CENTRAL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CENTRAL_STORAGE_URL", pg_url)
    monkeypatch.delenv("CENTRAL_CONFIG", raising=False)
    r = CliRunner().invoke(cli, ["server", "list"])
    assert r.exit_code == 1 and "is not a central data directory (it does not exist" in r.output
    assert CliRunner().invoke(cli, ["init"]).exit_code == 0
    assert not (tmp_path / "data" / "central.db").exists()  # the database is PostgreSQL's
    r = CliRunner().invoke(cli, ["server", "list", "--json"])
    assert r.exit_code == 0, r.output
    assert [s["name"] for s in json.loads(r.output)] == ["local"]
