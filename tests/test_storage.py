"""Storage on real SQLite files: schema, batched poll writes, rollups and retention."""
from __future__ import annotations

import sqlite3

import pytest

from central.model import ERROR, METRICS, OFFLINE, REASONS, Conflict, NotFound, PollOutcome
from central.storage import SCHEMA_VERSION, TIER_HOUR, TIER_MINUTE, Storage

DAY = 86400.0
NOW = 1_800_000_000.0  # fixed "now" so buckets are predictable


@pytest.fixture
async def storage(tmp_path):
    s = await Storage.open(tmp_path / "c.db")
    yield s
    await s.close()


def sample(cpu: float) -> dict:
    d = {m: None for m in METRICS}
    d.update(cpu=cpu, mem=50.0, procs=10, top=[[1, "init", 0.0, 1000.0]])
    return d


def ok(server_id: int, ts: float, cpu: float = 10.0) -> PollOutcome:
    return PollOutcome(server_id=server_id, ts=ts, duration=0.01, ok=True,
                       doc_text='{"hostname":"h"}', sample=sample(cpu), hostname="h",
                       agent_version="1.0.0", agent_sha256="a" * 64)


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


async def test_server_crud(storage):
    s = await storage.add_server("web1", "10.0.0.5", tags=["prod", "web"])
    assert s.tags == ("prod", "web") and s.status == "unknown"
    with pytest.raises(Conflict):
        await storage.add_server("web1", "10.0.0.6")
    s = await storage.update_server("web1", tags=["prod"], interval_s=30.0)
    assert s.tags == ("prod",) and s.interval_s == 30.0
    await storage.remove_server("web1")
    with pytest.raises(NotFound):
        await storage.get_server("web1")


async def test_failures_go_offline_after_n_and_recover(storage):
    s = await storage.add_server("a", "10.0.0.1")
    fail = PollOutcome(server_id=s.id, ts=NOW, duration=1, ok=False, reason="unreachable", error="refused")
    for i in range(2):
        await storage.write_polls([fail], offline_after=3)
        got = await storage.get_server("a")
        assert got.status == "unknown" and got.consecutive_failures == i + 1
    await storage.write_polls([fail], offline_after=3)
    got = await storage.get_server("a")
    assert (got.status, got.status_reason, got.last_error) == ("offline", "unreachable", "refused")
    await storage.write_polls([ok(s.id, NOW + 10)], offline_after=3)
    got = await storage.get_server("a")
    assert (got.status, got.status_reason, got.consecutive_failures) == ("online", None, 0)
    assert got.agent_version == "1.0.0"


async def test_agent_problems_are_error_at_once(storage):
    s = await storage.add_server("a", "10.0.0.1")
    await storage.write_polls([PollOutcome(server_id=s.id, ts=NOW, duration=1, ok=False,
                                           reason="agent_down", error="x")], offline_after=3)
    assert (await storage.get_server("a")).status == "error"


@pytest.mark.parametrize("reason", list(REASONS.values()), ids=list(REASONS))
async def test_each_reason_gives_its_status(storage, reason):
    s = await storage.add_server("a", "10.0.0.1")
    fail = PollOutcome(server_id=s.id, ts=NOW, duration=1, ok=False, reason=reason.name, error="x")
    await storage.write_polls([fail], offline_after=2)
    first = (await storage.get_server("a")).status
    await storage.write_polls([fail], offline_after=2)
    second = (await storage.get_server("a")).status
    assert (first, second) == ((ERROR, ERROR) if reason.status == ERROR else ("unknown", OFFLINE))


async def test_trusting_clears_only_reasons_that_block_polling(storage):
    for reason in REASONS.values():
        s = await storage.add_server(reason.name, "10.0.0.1")
        fail = PollOutcome(server_id=s.id, ts=NOW, duration=1, ok=False, reason=reason.name, error="x")
        await storage.write_polls([fail], offline_after=1)
        got = await storage.pin_host_key(reason.name, "ssh-ed25519 AAAA", "SHA256:x")
        if reason.blocks_polling:
            assert (got.status, got.status_reason) == ("unknown", None)
        else:
            assert got.status_reason == reason.name and got.status != "unknown"


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


async def test_batch_write_keeps_samples_and_latest(storage):
    a = await storage.add_server("a", "10.0.0.1")
    b = await storage.add_server("b", "10.0.0.2")
    await storage.write_polls([ok(a.id, NOW, 1), ok(b.id, NOW, 2), ok(a.id, NOW + 10, 3)], offline_after=3)
    latest = await storage.latest_samples()
    assert latest[a.id]["cpu"] == 3 and latest[b.id]["cpu"] == 2
    assert latest[a.id]["top"] == [[1, "init", 0.0, 1000.0]]
    assert len(await storage.samples(a.id, 0, NOW + 100)) == 2
    assert (await storage.latest_document(a.id))[0] == NOW + 10


async def fill(storage: Storage, server_id: int, start: float, end: float, step: float, cpu) -> int:
    """Insert raw samples every step seconds; cpu(ts) gives the value."""
    n = 0
    batch = []
    ts = start
    while ts < end:
        batch.append(ok(server_id, ts, cpu(ts)))
        n += 1
        ts += step
        if len(batch) >= 5000:
            await storage.write_polls(batch, offline_after=3)
            batch = []
    await storage.write_polls(batch, offline_after=3)
    return n


async def test_rollups_and_retention_over_simulated_weeks(storage):
    a = await storage.add_server("a", "10.0.0.1")
    start = NOW - 21 * DAY
    # Three weeks of samples every 60 s; cpu alternates 0/20 within each minute pair so
    # min/avg/max differ and are known exactly.
    await fill(storage, a.id, start, NOW, 30.0, lambda ts: 0.0 if int(ts / 30) % 2 == 0 else 20.0)
    await storage.rollup(now=NOW, lag=0)
    # A second run without new data changes nothing (progress is remembered).
    assert await storage.rollup(now=NOW, lag=0) == {}
    counts = await storage.prune(raw=2 * DAY, minute=14 * DAY, hour=400 * DAY, events=365 * DAY, now=NOW)
    assert counts["samples"] > 0 and counts["rollups"] > 0

    raw = await storage.samples(a.id, 0, NOW + 1)
    assert raw[0]["ts"] >= NOW - 2 * DAY - 60
    minute = await storage._all("SELECT ts, n, cpu_min, cpu_avg, cpu_max FROM rollups WHERE tier = ? ORDER BY ts",
                                (TIER_MINUTE,))
    assert minute[0]["ts"] >= NOW - 14 * DAY - 60
    assert all((r["n"], r["cpu_min"], r["cpu_avg"], r["cpu_max"]) == (2, 0.0, 10.0, 20.0) for r in minute)
    hour = await storage._all("SELECT ts, n, cpu_avg FROM rollups WHERE tier = ? ORDER BY ts", (TIER_HOUR,))
    assert hour[0]["ts"] <= start + 3600  # hour tier keeps the whole three weeks
    assert all(r["n"] == 120 and r["cpu_avg"] == pytest.approx(10.0) for r in hour)

    # History picks the finest tier that covers the range, with a bounded number of points.
    h = await storage.history(a.id, NOW - 3600, NOW, max_points=500, retention_raw=2 * DAY,
                              retention_minute=14 * DAY, now=NOW)
    assert h["source"] == "raw" and len(h["series"]["ts"]) <= 500
    h = await storage.history(a.id, NOW - 7 * DAY, NOW, max_points=500, retention_raw=2 * DAY,
                              retention_minute=14 * DAY, now=NOW)
    assert h["source"] == "minute" and 0 < len(h["series"]["ts"]) <= 500
    assert h["series"]["cpu_max"][0] == 20.0 and h["series"]["cpu"][0] == pytest.approx(10.0)
    h = await storage.history(a.id, NOW - 20 * DAY, NOW, max_points=500, retention_raw=2 * DAY,
                              retention_minute=14 * DAY, now=NOW)
    assert h["source"] == "hour" and 0 < len(h["series"]["ts"]) <= 500


async def test_prune_never_drops_samples_not_yet_rolled_up(storage):
    a = await storage.add_server("a", "10.0.0.1")
    await fill(storage, a.id, NOW - 5 * DAY, NOW, 600.0, lambda ts: 5.0)
    counts = await storage.prune(raw=2 * DAY, minute=14 * DAY, hour=400 * DAY, events=365 * DAY, now=NOW)
    assert counts["samples"] == 0
    assert len(await storage.samples(a.id, 0, NOW + 1)) == 5 * 144


async def test_inventory_history(storage):
    a = await storage.add_server("a", "10.0.0.1")
    await storage.write_inventory(a.id, NOW, "h1", {"kernel": "6.1"}, "initial", "first inventory")
    await storage.write_inventory(a.id, NOW + 1, "h2", {"kernel": "6.2"}, "os_change", "kernel: 6.1 -> 6.2")
    inv = await storage.inventory_latest(a.id)
    assert inv["hash"] == "h2" and inv["doc"] == {"kernel": "6.2"}
    assert [h["change_type"] for h in await storage.inventory_history(a.id)] == ["os_change", "initial"]
    assert (await storage.get_server("a")).inventory_hash == "h2"


async def test_history_reaches_past_the_last_rollup(storage):
    a = await storage.add_server("a", "10.0.0.1")
    # Two days of samples, rolled up until 30 minutes ago; the last 30 minutes are raw only.
    await fill(storage, a.id, NOW - 2 * DAY, NOW, 60.0, lambda ts: 10.0 if ts < NOW - 1800 else 90.0)
    await storage.rollup(now=NOW - 1800, lag=0)
    h = await storage.history(a.id, NOW - DAY, NOW, max_points=200, retention_raw=2 * DAY,
                              retention_minute=14 * DAY, now=NOW)
    assert h["source"] == "minute"
    cpu = h["series"]["cpu"]
    assert cpu[0] == pytest.approx(10.0) and cpu[-1] == pytest.approx(90.0)
    # Nothing is counted twice where the tiers meet: every bucket's average stays within the data.
    assert all(10.0 - 1e-9 <= v <= 90.0 + 1e-9 for v in cpu)
    n_points = sum(1 for v in cpu if v is not None)
    assert n_points == len(h["series"]["ts"]) <= 200


async def test_reads_see_every_committed_write_at_once(tmp_path):
    # Reads use their own connection: it must never keep an old snapshot (an unclosed PRAGMA
    # cursor once held a read transaction open, so fresh rows were invisible to it).
    for _ in range(5):
        s = await Storage.open(tmp_path / "c.db")
        try:
            name = f"s{len(await s.list_servers())}"
            await s.add_server(name, "10.0.0.1")
            assert (await s.find_server(name)) is not None
        finally:
            await s.close()
