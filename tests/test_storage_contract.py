"""The storage contract: what every backend of central.storage.Storage must do.

Each test runs once per backend in BACKENDS: SQLite on a temporary file, and PostgreSQL on a
database of its own in the real server tests/pgserver.py starts from Debian's packages. Only the interface is used here: backend-specific checks (schema versions,
files, connections) live in tests/test_storage_<backend>.py.
"""
from __future__ import annotations

import asyncio
import functools

import pytest

from central.model import ERROR, METRICS, OFFLINE, REASONS, Conflict, NotFound, PollOutcome
from central.storage import TIER_HOUR, TIER_MINUTE, Storage

DAY = 86400.0
NOW = 1_800_000_000.0  # fixed "now" so buckets are predictable


def _sqlite(request, tmp_path):
    return tmp_path / "c.db"


def _postgres(request, tmp_path):
    return request.getfixturevalue("pg_url")


# backend name -> where the test's database is (Storage.open opens it; the same one on every
# call within a test)
BACKENDS = {"sqlite": _sqlite, "postgres": _postgres}


@pytest.fixture(params=list(BACKENDS))
def backend(request, tmp_path):
    """Opens the test's database on this backend (again: reopens the same one)."""
    return functools.partial(Storage.open, BACKENDS[request.param](request, tmp_path))


@pytest.fixture
async def storage(backend):
    s = await backend()
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


def failed(server_id: int, ts: float, reason: str = "unreachable", error: str = "refused") -> PollOutcome:
    return PollOutcome(server_id=server_id, ts=ts, duration=1, ok=False, reason=reason, error=error)


async def test_reopening_keeps_what_was_stored(backend):
    s = await backend()
    await s.add_server("a", "10.0.0.1")
    await s.close()
    s = await backend()  # brings an existing database up to date again
    try:
        assert [x.name for x in await s.list_servers()] == ["a"]
    finally:
        await s.close()


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


async def test_a_batch_leaves_each_server_as_its_outcomes_one_by_one_would(storage):
    # A batch can hold several outcomes of a server (a writer catching up, an outage's buffer):
    # stored together they must leave its row as stored one at a time, in time order, would:
    # a success after failures resets them, failures after a success count from 0, an 'error'
    # reason holds until the count reaches offline_after.
    import random

    rnd = random.Random(15)
    kinds = [None, "unreachable", "agent_down", "timeout"]  # None: a success
    pairs = []
    for i in range(40):
        one = await storage.add_server(f"one{i}", f"10.0.1.{i + 1}")
        together = await storage.add_server(f"together{i}", f"10.0.2.{i + 1}")
        before = [rnd.choice(kinds) for _ in range(rnd.randrange(3))]  # the state the batch finds
        batch = [rnd.choice(kinds) for _ in range(rnd.randrange(1, 7))]
        pairs.append((one, together, before, batch))

    def outcome(server_id, kind, t):
        if kind is None:
            return ok(server_id, t)
        return failed(server_id, t, reason=kind, error=f"{kind} at {t}")

    for one, together, before, _ in pairs:
        for k, kind in enumerate(before):
            for s in (one, together):
                await storage.write_polls([outcome(s.id, kind, NOW + k)], offline_after=3)
    big = []
    for one, together, before, batch in pairs:
        for k, kind in enumerate(batch):
            t = NOW + 10 + k
            await storage.write_polls([outcome(one.id, kind, t)], offline_after=3)
            big.append(outcome(together.id, kind, t))
    rnd.shuffle(big)  # the batch's order is not the time order
    assert await storage.write_polls(big, offline_after=3) == []

    def row(server):
        return (server.status, server.status_reason, server.consecutive_failures, server.last_error,
                server.last_poll, server.last_seen, server.poll_duration)

    for one, together, before, batch in pairs:
        assert row(await storage.get_server(together.name)) == row(await storage.get_server(one.name)), (before, batch)
    # the cases that matter are in there
    assert any(b[-1] is None and None not in b[:-1] and len(b) > 1 for *_, b in pairs)  # failures, then a success
    assert any(b[0] is None and b[-1] is not None for *_, b in pairs)  # a success, then failures


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


async def test_batch_write_keeps_samples_and_latest(storage):
    a = await storage.add_server("a", "10.0.0.1")
    b = await storage.add_server("b", "10.0.0.2")
    await storage.write_polls([ok(a.id, NOW, 1), ok(b.id, NOW, 2), ok(a.id, NOW + 10, 3)], offline_after=3)
    latest = await storage.latest_samples()
    assert latest[a.id]["cpu"] == 3 and latest[b.id]["cpu"] == 2
    assert latest[a.id]["top"] == [[1, "init", 0.0, 1000.0]]
    assert len(await storage.samples(a.id, 0, NOW + 100)) == 2
    assert (await storage.latest_document(a.id))[0] == NOW + 10


async def test_an_outcome_the_database_refuses_never_takes_others_with_it(storage):
    servers = [await storage.add_server(f"s{i}", f"10.0.0.{i}") for i in range(5)]
    bad = ok(servers[2].id, NOW)
    bad.sample["procs"] = 10**19  # beyond a 64-bit integer
    batch = [ok(s.id, NOW) for s in servers[:2]] + [bad] + [ok(s.id, NOW) for s in servers[3:]]
    refused = await storage.write_polls(batch, offline_after=3)
    assert [o for o, _ in refused] == [bad] and "OverflowError" in refused[0][1]
    latest = await storage.latest_samples()
    assert sorted(latest) == sorted(s.id for s in servers if s is not servers[2])
    assert (await storage.get_server("s2")).status == "unknown"
    assert await storage.write_polls([ok(servers[2].id, NOW + 10)], offline_after=3) == []


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


@pytest.mark.slow
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
    minute = await storage.rollups(a.id, TIER_MINUTE, 0, NOW + 1)
    assert minute[0]["ts"] >= NOW - 14 * DAY - 60
    assert all((r["n"], r["cpu_min"], r["cpu_avg"], r["cpu_max"]) == (2, 0.0, 10.0, 20.0) for r in minute)
    hour = await storage.rollups(a.id, TIER_HOUR, 0, NOW + 1)
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


async def test_inventories_of_many_servers_are_read_and_written_together(storage):
    servers = [await storage.add_server(f"s{i}", f"10.0.{i // 250}.{i % 250 + 1}") for i in range(600)]
    a, b = servers[0], servers[1]
    await storage.write_inventories([
        (a.id, NOW, "h1", {"kernel": "6.1"}, "initial", "first inventory"),
        (b.id, NOW, "g1", {"kernel": "6.1"}, "initial", "first inventory"),
        (a.id, NOW + 1, "h2", {"kernel": "6.2"}, "os_change", "kernel: 6.1 -> 6.2"),  # in order: the newest wins
    ])
    assert await storage.write_inventories([]) is None
    latest = await storage.inventories_latest([s.id for s in servers])  # more than one query's worth
    assert set(latest) == {a.id, b.id}
    assert (latest[a.id]["hash"], latest[a.id]["doc"]) == ("h2", {"kernel": "6.2"})
    assert latest[a.id] == await storage.inventory_latest(a.id)
    assert [h["change_type"] for h in await storage.inventory_history(a.id)] == ["os_change", "initial"]
    assert (await storage.get_server("s0")).inventory_hash == "h2" and (await storage.get_server("s1")).inventory_hash == "g1"
    assert await storage.inventories_latest([]) == {}


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


async def test_reads_see_every_committed_write_at_once(backend):
    # Reads must never keep an old snapshot (an unclosed PRAGMA cursor once held a SQLite read
    # transaction open, so fresh rows were invisible to it).
    for _ in range(5):
        s = await backend()
        try:
            name = f"s{len(await s.list_servers())}"
            await s.add_server(name, "10.0.0.1")
            assert (await s.find_server(name)) is not None
        finally:
            await s.close()


# servers: what the rest of central relies on beyond the basics above

async def test_server_lookups_pages_and_counts(storage):
    for i in range(5):
        await storage.add_server(f"web{i}", f"10.0.0.{i}", tags=("prod",) if i % 2 else ("dev", "x"))
    await storage.add_server("DB1", "10.0.1.1", port=2222, user="mon", tags=("prod",))
    assert await storage.find_server("nope") is None
    with pytest.raises(NotFound):
        await storage.get_server("nope")
    assert [s.name for s in await storage.list_servers()] == ["DB1", "web0", "web1", "web2", "web3", "web4"]
    dicts = await storage.server_dicts()
    assert [d["name"] for d in dicts][:2] == ["DB1", "web0"] and dicts[0]["tags"] == ["prod"]
    assert (dicts[0]["port"], dicts[0]["user"]) == (2222, "mon")
    page, total = await storage.server_page(tag="prod", limit=2, offset=1)
    assert total == 3 and [d["name"] for d in page] == ["web1", "web3"] and page[0]["tags"] == ["prod"]
    page, total = await storage.server_page(name="WEB", status="unknown")
    assert total == 5 and len(page) == 5
    page, total = await storage.server_page(name="db")
    assert [d["name"] for d in page] == ["DB1"] and total == 1
    db1 = await storage.get_server("DB1")
    await storage.write_polls([ok(db1.id, NOW)], offline_after=3)
    assert await storage.status_counts() == {"online": 1, "unknown": 5}
    assert await storage.online_ids() == {db1.id}
    assert (await storage.server_page(status="online"))[1] == 1


async def test_update_server_takes_only_known_fields(storage):
    await storage.add_server("a", "10.0.0.1")
    with pytest.raises(ValueError, match="not updatable"):
        await storage.update_server("a", kind="local")
    with pytest.raises(NotFound):
        await storage.update_server("nope", port=23)
    s = await storage.update_server("a", port=2200, host_key=None, status="error", status_reason="host_key_unknown")
    assert (s.port, s.status, s.status_reason) == (2200, "error", "host_key_unknown")


async def test_removing_a_server_removes_what_is_stored_about_it(storage):
    a = await storage.add_server("a", "10.0.0.1")
    b = await storage.add_server("b", "10.0.0.2")
    await storage.write_polls([ok(a.id, NOW), ok(b.id, NOW)], offline_after=3)
    await storage.write_inventory(a.id, NOW, "h1", {"k": 1}, "initial", "first")
    assert set(await storage.latest_samples()) == {a.id, b.id}
    await storage.remove_server("a")
    assert set(await storage.latest_samples()) == {b.id}
    assert await storage.latest_document(a.id) is None and await storage.samples(a.id, 0, NOW + 1) == []
    assert await storage.inventory_latest(a.id) is None
    # an outcome of a server removed while it was queued is dropped, not the batch
    await storage.write_polls([ok(a.id, NOW + 10), ok(b.id, NOW + 10)], offline_after=3)
    assert len(await storage.samples(b.id, 0, NOW + 100)) == 2
    with pytest.raises(NotFound):
        await storage.remove_server("a")


async def test_a_failure_keeps_the_last_good_document_and_sample(storage):
    a = await storage.add_server("a", "10.0.0.1")
    await storage.write_polls([ok(a.id, NOW, 42.0)], offline_after=3)
    await storage.write_polls([failed(a.id, NOW + 10)], offline_after=3)
    s = await storage.get_server("a")
    assert (s.last_seen, s.last_poll, s.last_error, s.consecutive_failures) == (NOW, NOW + 10, "refused", 1)
    assert (await storage.latest_samples())[a.id]["cpu"] == 42.0
    assert (await storage.latest_document(a.id)) == (NOW, {"hostname": "h"})


async def test_imported_samples_and_rollups(storage):
    a = await storage.add_server("a", "10.0.0.1")
    await storage.import_samples([(a.id, NOW + i, *[float(i)] * len(METRICS), "[]") for i in range(3)])
    assert [r["cpu"] for r in await storage.samples(a.id, 0, NOW + 10)] == [0.0, 1.0, 2.0]
    assert (await storage.latest_samples())[a.id]["cpu"] == 2.0
    bucket = (NOW // TIER_HOUR - 5) * TIER_HOUR
    await storage.import_rollups(TIER_HOUR, [(a.id, bucket, 60, *[v for _ in METRICS for v in (1.0, 2.0, 3.0)])])
    [row] = await storage.rollups(a.id, TIER_HOUR, 0, NOW)
    assert (row["ts"], row["n"], row["cpu_min"], row["cpu_avg"], row["cpu_max"]) == (bucket, 60, 1.0, 2.0, 3.0)
    h = await storage.history(a.id, bucket - 30 * DAY, bucket + TIER_HOUR, retention_raw=DAY, retention_minute=DAY,
                              now=NOW, metrics=["cpu"])
    assert h["source"] == "hour" and h["series"]["cpu"] == [2.0] and h["series"]["cpu_max"] == [3.0]


async def test_concurrent_writers_do_not_collide(storage):
    a = await storage.add_server("a", "10.0.0.1")

    async def inventory(i):  # several statements in one transaction
        await storage.write_inventory(a.id, NOW + i, f"h{i}", {"i": i}, "other_change", f"change {i}")

    async def samples(i):  # many rows in one transaction
        await storage.import_samples([(a.id, NOW + 1000 * i + j, *[1.0] * len(METRICS), "[]") for j in range(2)])

    async def audit(i):
        await storage.add_audit(actor="t", role="admin", server_id=a.id, server_name="a", action="kill",
                                arguments={"i": i}, result="ok")

    results = await asyncio.gather(*(f(i) for i in range(20) for f in (inventory, samples, audit)),
                                   return_exceptions=True)
    assert [r for r in results if r is not None] == []
    assert len(await storage.inventory_history(a.id, limit=100)) == 20
    assert len(await storage.samples(a.id, 0, NOW + 10**6)) == 40
    assert len(await storage.audit_log(limit=100)) == 20


# inventory

async def test_inventory_changes_since(storage):
    a = await storage.add_server("a", "10.0.0.1")
    assert await storage.last_inventory_change_id() == 0
    await storage.write_inventory(a.id, NOW, "h1", {"k": 1}, "initial", "first inventory")
    first = await storage.last_inventory_change_id()
    await storage.write_inventory(a.id, NOW + 1, "h2", {"k": 2}, "hardware_change", "k: 1 -> 2")
    changes = await storage.inventory_changes_since(0)
    assert [(c["server_id"], c["change_type"], c["change_summary"]) for c in changes] == \
        [(a.id, "hardware_change", "k: 1 -> 2")]  # not the first inventory
    assert await storage.inventory_changes_since(changes[0]["id"]) == []
    assert await storage.last_inventory_change_id() == changes[0]["id"] > first


# alerts, silences and notifications

def alert_row(server_id: int, rule: str, state: str, **extra) -> dict:
    return {"rule": rule, "server_id": server_id, "label": "", "severity": "warning", "state": state,
            "summary": f"{rule} is {state}", "started_at": NOW, "last_evaluated": NOW, **extra}


async def test_alerts_saved_listed_and_acknowledged(storage):
    a = await storage.add_server("a", "10.0.0.1")
    ids = await storage.save_alerts([alert_row(a.id, "cpu", "firing", fired_at=NOW, details={"x": 1}),
                                     alert_row(a.id, "mem", "pending"),
                                     alert_row(a.id, "old", "resolved", resolved_at=NOW),
                                     alert_row(a.id, "inventory_changed", "firing", severity="info")], [], [])
    cpu, mem, old, info = ids
    assert await storage.alert_counts() == {"pending": 1, "firing": 2, "firing_info": 1}
    await storage.save_alerts([], [], [info])
    assert sorted(r["rule"] for r in await storage.open_alerts()) == ["cpu", "mem"]
    assert [r["rule"] for r in await storage.list_alerts()] == ["cpu", "mem", "old"]
    assert [r["rule"] for r in await storage.list_alerts(firing_only=True)] == ["cpu"]
    assert [r["rule"] for r in await storage.list_alerts(open_only=True, server_id=a.id)] == ["cpu", "mem"]
    got = await storage.get_alert(cpu)
    assert (got["server"], got["details"], got["fired_at"]) == ("a", {"x": 1}, NOW)
    with pytest.raises(NotFound):
        await storage.get_alert(9999)
    await storage.ack_alert(cpu, "alice", NOW + 5)
    assert await storage.acked_open_alerts() == {cpu: "alice"}
    # rewrite one, drop another, in one call
    await storage.save_alerts([], [dict(alert_row(a.id, "cpu", "resolved", resolved_at=NOW + 9), id=cpu)], [mem])
    assert await storage.alert_counts() == {"pending": 0, "firing": 0, "firing_info": 0}
    assert (await storage.get_alert(cpu))["state"] == "resolved" and old in [r["id"] for r in await storage.list_alerts()]
    with pytest.raises(NotFound):
        await storage.get_alert(mem)


async def test_silences(storage):
    first = await storage.add_silence({"server": "web*"}, NOW, NOW + 3600, "deploy", "alice")
    second = await storage.add_silence({"server": "db1"}, NOW, NOW + 60, "fix", "bob", kind="maintenance")
    s = await storage.get_silence(first)
    assert (s["matcher"], s["ends_at"], s["comment"], s["created_by"], s["kind"]) == \
        ({"server": "web*"}, NOW + 3600, "deploy", "alice", "silence")
    assert [x["id"] for x in await storage.list_silences()] == [second, first]
    assert [x["id"] for x in await storage.list_silences(active_at=NOW + 120)] == [first]
    await storage.end_silence(first, NOW + 10)
    assert (await storage.get_silence(first))["ends_at"] == NOW + 10
    assert await storage.list_silences(active_at=NOW + 120) == []
    with pytest.raises(NotFound):
        await storage.get_silence(9999)


async def test_notification_log(storage):
    a = await storage.add_server("a", "10.0.0.1")
    [alert] = await storage.save_alerts([alert_row(a.id, "cpu", "firing", fired_at=NOW)], [], [])
    await storage.log_notification(alert, "hook", "firing", NOW, 1, False, "timeout")
    await storage.log_notification(alert, "hook", "firing", NOW + 1, 2, True, "200")
    await storage.log_notification(alert, "hook", "repeat", NOW + 60, 1, True, "200")
    await storage.log_notification(None, "hook", "test", NOW + 61, 1, True, "x" * 5000)
    await storage.log_notification(9999, "hook", "firing", NOW, 1, True, "gone")  # its alert is gone: dropped
    rows = await storage.notifications(alert)
    assert [(r["event"], r["attempt"], r["ok"]) for r in rows] == [("repeat", 1, True), ("firing", 2, True),
                                                                   ("firing", 1, False)]
    everything = await storage.notifications()
    assert len(everything) == 4 and len(everything[0]["detail"]) == 2000
    assert await storage.last_sent() == {(alert, "hook"): NOW + 60}


async def test_message_attempts_and_channel_health(storage):
    a = await storage.add_server("a", "10.0.0.1")
    ids = await storage.save_alerts([alert_row(a.id, r, "firing", fired_at=NOW) for r in ("cpu", "mem")], [], [])
    # A two-alert message: its first two attempts fail, the third goes through; then a failing stretch.
    for attempt, ok, ts in ((1, False, NOW), (2, False, NOW + 1), (3, True, NOW + 3)):
        await storage.log_notifications([(i, "mail", "firing", ts, attempt, ok, "ok" if ok else "HTTP 500")
                                          for i in ids])
    for attempt, ts in ((1, NOW + 60), (2, NOW + 61)):
        await storage.log_notifications([(i, "mail", "repeat", ts, attempt, False, f"timeout {attempt}")
                                         for i in ids])
    await storage.log_notifications([(None, "hook", "test", NOW + 70, 1, True, "HTTP 200")])
    assert len(await storage.notifications(ids[0])) == 5
    assert await storage.channel_health() == {
        "mail": {"last_success": NOW + 3, "failures_in_row": 2, "last_error_at": NOW + 61, "last_error": "timeout 2"},
        "hook": {"last_success": NOW + 70, "failures_in_row": 0, "last_error_at": None, "last_error": None},
    }


# audit

async def test_audit_log_pages_newest_first(storage):
    a = await storage.add_server("a", "10.0.0.1")
    ids = [await storage.add_audit(actor="cli:root", role="admin", server_id=a.id if i % 2 else None,
                                   server_name="a" if i % 2 else "b", action="service",
                                   arguments={"unit": "nginx.service", "verb": "restart", "i": i}, result="ok",
                                   exit_status=0, output=f"out {i}", duration_ms=1.5, ts=NOW + i)
           for i in range(5)]
    rows = await storage.audit_log()
    assert [r["id"] for r in rows] == ids[::-1]
    assert rows[0]["arguments"] == {"unit": "nginx.service", "verb": "restart", "i": 4}
    assert (rows[0]["ts"], rows[0]["actor"], rows[0]["exit_status"], rows[0]["output"]) == (NOW + 4, "cli:root", 0, "out 4")
    assert [r["id"] for r in await storage.audit_log("a")] == [ids[3], ids[1]]
    assert [r["id"] for r in await storage.audit_log(limit=2, before_id=ids[3])] == [ids[2], ids[1]]


# users and tokens

async def test_users(storage):
    alice = await storage.add_user("alice", "admin", "hash1")
    assert (alice["name"], alice["role"], alice["password_hash"]) == ("alice", "admin", "hash1")
    with pytest.raises(Conflict):
        await storage.add_user("alice", "viewer", "x")
    await storage.add_user("bob", "viewer", "hash2")
    assert [u["name"] for u in await storage.list_users()] == ["alice", "bob"]
    assert "password_hash" not in (await storage.list_users())[0]
    assert (await storage.count_users(), await storage.count_users("admin")) == (2, 1)
    assert (await storage.get_user_by_id(alice["id"]))["name"] == "alice"
    assert await storage.get_user_by_id(9999) is None and await storage.find_user("carol") is None
    await storage.set_user_password("bob", "hash3")
    await storage.set_user_role("bob", "operator")
    bob = await storage.get_user("bob")
    assert (bob["password_hash"], bob["role"]) == ("hash3", "operator")
    for call in (storage.set_user_password("carol", "x"), storage.set_user_role("carol", "admin"),
                 storage.remove_user("carol"), storage.get_user("carol")):
        with pytest.raises(NotFound):
            await call
    await storage.remove_user("bob")
    assert await storage.find_user("bob") is None


async def test_sessions(storage):
    """Page sessions: found by id hash until they expire, are removed, or their user changes password or goes."""
    alice = await storage.add_user("alice", "admin", "h")
    bob = await storage.add_user("bob", "viewer", "h")
    for uid, h in ((alice["id"], "a1"), (alice["id"], "a2"), (bob["id"], "b1")):
        await storage.add_session(uid, h, NOW, NOW + 3600, "10.0.0.1")
    row = await storage.session_user("a1", NOW)
    assert (row["user_id"], row["user"], row["role"], row["created_at"]) == (alice["id"], "alice", "admin", NOW)
    assert await storage.session_user("a1", NOW + 3600) is None  # expired
    assert await storage.session_user("nope", NOW) is None
    await storage.remove_session("a1")
    assert await storage.session_user("a1", NOW) is None and await storage.session_user("a2", NOW)
    await storage.set_user_password("alice", "h2")
    assert await storage.session_user("a2", NOW) is None and await storage.session_user("b1", NOW)
    await storage.add_session(bob["id"], "b2", NOW, NOW + 60, "")
    assert await storage.remove_user_sessions("bob") == 2
    assert await storage.session_user("b1", NOW) is None
    await storage.add_session(bob["id"], "b3", NOW, NOW + 60, "")
    await storage.remove_user("bob")
    assert await storage.session_user("b3", NOW) is None
    with pytest.raises(NotFound):
        await storage.remove_user_sessions("bob")
    # a new session drops the expired ones
    await storage.add_session(alice["id"], "a3", NOW, NOW + 10, "")
    await storage.add_session(alice["id"], "a4", NOW + 20, NOW + 30, "")
    assert await storage.session_user("a3", NOW + 5) is None  # gone, not merely expired later


async def test_tokens(storage):
    alice = await storage.add_user("alice", "operator", "h")
    token = await storage.add_token(alice["id"], "ci", "thash")
    assert token["name"] == "ci" and token["revoked_at"] is None and "token_hash" not in token
    found = await storage.token_user("thash")
    assert (found["token_id"], found["user"], found["role"], found["user_id"]) == (token["id"], "alice", "operator", alice["id"])
    assert await storage.token_user("other") is None
    await storage.touch_tokens({token["id"]: NOW})
    [listed] = await storage.list_tokens("alice")
    assert (listed["user"], listed["last_used"]) == ("alice", NOW) and "token_hash" not in listed
    assert await storage.list_tokens("bob") == [] and len(await storage.list_tokens()) == 1
    revoked = await storage.revoke_token(token["id"])
    assert revoked["revoked_at"] is not None and await storage.token_user("thash") is None
    assert (await storage.revoke_token(token["id"]))["revoked_at"] == revoked["revoked_at"]  # kept as it was
    with pytest.raises(NotFound):
        await storage.revoke_token(9999)
    await storage.remove_user("alice")  # takes the tokens along
    assert await storage.list_tokens() == []


async def test_prune_drops_old_events(storage):
    a = await storage.add_server("a", "10.0.0.1")
    await storage.write_inventory(a.id, NOW - 400 * DAY, "h1", {"k": 1}, "initial", "first")
    await storage.write_inventory(a.id, NOW - 399 * DAY, "h2", {"k": 2}, "os_change", "second")
    await storage.add_audit(actor="t", role="admin", server_id=a.id, server_name="a", action="kill", arguments={},
                            result="ok", ts=NOW - 400 * DAY)
    [old] = await storage.save_alerts([alert_row(a.id, "cpu", "resolved", resolved_at=NOW - 400 * DAY)], [], [])
    await storage.log_notification(None, "hook", "test", NOW - 400 * DAY, 1, True, "")
    counts = await storage.prune(raw=2 * DAY, minute=14 * DAY, hour=400 * DAY, events=365 * DAY, now=NOW)
    assert counts["events"] == 4
    # the newest inventory of a server stays, however old
    assert [h["hash"] for h in await storage.inventory_history(a.id)] == ["h2"]
    assert await storage.audit_log() == [] and await storage.notifications() == []
    with pytest.raises(NotFound):
        await storage.get_alert(old)


async def test_terminal_rights(storage):
    alice = await storage.add_user("alice", "operator", "h")
    await storage.add_user("bob", "admin", "h")
    assert not await storage.has_right(alice["id"], "terminal")
    await storage.grant_right("alice", "terminal", "bob", NOW)
    await storage.grant_right("alice", "terminal", "carol", NOW + 1)  # again: the first grant stays
    assert await storage.has_right(alice["id"], "terminal") and not await storage.has_right(alice["id"], "other")
    assert await storage.right_holders("terminal") == [
        {"user": "alice", "role": "operator", "granted_by": "bob", "granted_at": NOW}]
    assert await storage.revoke_right("alice", "terminal") is True
    assert await storage.revoke_right("alice", "terminal") is False
    with pytest.raises(NotFound):
        await storage.grant_right("nobody", "terminal", "bob", NOW)
    await storage.grant_right("alice", "terminal", "bob", NOW)
    await storage.remove_user("alice")  # takes the right along
    assert await storage.right_holders("terminal") == []


async def test_terminal_accounts_and_sessions(storage):
    a = await storage.add_server("a", "10.0.0.1")
    b = await storage.add_server("b", "10.0.0.2")
    alice = await storage.add_user("alice", "operator", "h")
    assert await storage.terminal_account(a.id) is None
    await storage.set_terminal_account(a.id, "ops", "bob", NOW)
    await storage.set_terminal_account(a.id, "deploy", "carol", NOW + 1)
    await storage.set_terminal_account(b.id, "ops", "bob", NOW)
    assert await storage.terminal_account(a.id) == "deploy"
    assert await storage.terminal_accounts() == {"a": {"account": "deploy", "set_by": "carol", "set_at": NOW + 1},
                                                  "b": {"account": "ops", "set_by": "bob", "set_at": NOW}}
    assert await storage.clear_terminal_account(b.id) is True and await storage.clear_terminal_account(b.id) is False

    def session(server, started):
        return dict(user_id=alice["id"], user="alice", server_id=server.id, server_name=server.name, account="ops",
                    address="10.1.1.1", started_at=started, cols=80, rows=24, recording=f"{started}.cast")

    old = await storage.add_terminal_session(**session(a, NOW - 100 * DAY))
    ended = await storage.add_terminal_session(**session(b, NOW - 1))
    live = await storage.add_terminal_session(**session(a, NOW))
    await storage.end_terminal_session(old, ended_at=NOW - 100 * DAY + 5, exit_status=0, end_reason="exit",
                                       ended_by=None, message="done", recording_bytes=123)
    await storage.end_terminal_session(ended, ended_at=NOW, exit_status=None, end_reason="ended", ended_by="bob",
                                       message="by bob", recording_bytes=7)
    row = await storage.get_terminal_session(old)
    assert (row["user"], row["server_name"], row["exit_status"], row["end_reason"], row["recording_bytes"],
            row["ended_at"] - row["started_at"]) == ("alice", "a", 0, "exit", 123, 5)
    with pytest.raises(NotFound):
        await storage.get_terminal_session(9999)
    assert [r["id"] for r in await storage.list_terminal_sessions()] == [live, ended, old]
    assert [r["id"] for r in await storage.list_terminal_sessions(server="a")] == [live, old]
    assert [r["id"] for r in await storage.list_terminal_sessions(open_only=True)] == [live]
    assert [r["id"] for r in await storage.list_terminal_sessions(before_id=live, limit=1)] == [ended]
    assert await storage.list_terminal_sessions(user_id=alice["id"] + 1) == []
    # only ended sessions are pruned, and only those that started before the cut
    assert await storage.prune_terminal_sessions(NOW - DAY) == [f"{NOW - 100 * DAY}.cast"]
    assert [r["id"] for r in await storage.close_interrupted_terminal_sessions(NOW + 5, "stopped")] == [live]
    row = await storage.get_terminal_session(live)
    assert (row["end_reason"], row["ended_at"], row["message"]) == ("interrupted", NOW + 5, "stopped")
    await storage.remove_server("a")  # the sessions stay, their server_id cleared; the account goes
    assert (await storage.get_terminal_session(live))["server_id"] is None
    assert await storage.terminal_accounts() == {}


SECRET_A, SECRET_B = "a" * 64, "b" * 64


async def test_agent_secrets_given_pending_and_picked_up_by_add(storage):
    given = await storage.add_server("given", "10.0.0.1", agent_secret=SECRET_A)
    assert await storage.agent_secret(given.id) == SECRET_A
    # handed over for an address before the server exists, picked up by the add for it only
    await storage.put_pending_secret("10.0.0.2", 22, SECRET_A)
    await storage.put_pending_secret("10.0.0.2", 22, SECRET_B)  # the newer one wins
    await storage.put_pending_secret("10.0.0.3", 2222, SECRET_A)
    assert await storage.pending_secret("10.0.0.2", 22) == SECRET_B
    assert [(h["host"], h["port"]) for h in await storage.pending_secret_hosts()] == [
        ("10.0.0.2", 22), ("10.0.0.3", 2222)]
    assert all("secret" not in h for h in await storage.pending_secret_hosts())
    picked = await storage.add_server("picked", "10.0.0.2")
    assert await storage.agent_secret(picked.id) == SECRET_B
    assert await storage.pending_secret("10.0.0.2", 22) is None
    other_port = await storage.add_server("other-port", "10.0.0.3", port=22)
    assert await storage.agent_secret(other_port.id) is None  # 2222 was meant, not 22
    local = await storage.add_server("local", "localhost", kind="local", port=0)
    assert await storage.agent_secret_ids() == {given.id, picked.id}
    await storage.set_agent_secret(given.id, SECRET_B)
    assert await storage.agent_secret(given.id) == SECRET_B
    assert await storage.agent_secret(local.id) is None
    # never in what lists and the API read
    for row in await storage.server_dicts():
        assert SECRET_A not in str(row) and SECRET_B not in str(row)
    await storage.remove_server("given")
    assert await storage.agent_secret(given.id) is None and given.id not in await storage.agent_secret_ids()


async def test_servers_are_added_with_the_central_login_user_by_default(storage):
    assert (await storage.add_server("a", "10.0.0.1")).user == "central"


async def test_the_writable_check_commits_without_touching_stored_data(storage):
    server = await storage.add_server("a", "10.0.0.1", agent_secret=SECRET_A)
    await storage.write_polls([ok(server.id, NOW)], offline_after=3)
    for _ in range(2):  # repeatable: the check replaces its own record
        await storage.check_writable()
    assert [s.name for s in await storage.list_servers()] == ["a"]
    assert await storage.agent_secret(server.id) == SECRET_A
    assert sorted(await storage.latest_samples()) == [server.id]


# several centrals: members and leases (central.cluster)

async def test_members_heartbeat_and_leave(storage):
    assert [m["member"] for m in await storage.heartbeat("a", "10.0.0.1:9083", ttl=30)] == ["a"]
    members = await storage.heartbeat("b", "10.0.0.2:9083", ttl=30, lag=0.125)
    assert [(m["member"], m["address"], m["servers"], m["lag"]) for m in members] == [
        ("a", "10.0.0.1:9083", 0, None), ("b", "10.0.0.2:9083", 0, 0.125)]
    assert all(m["now"] >= m["heartbeat_at"] >= m["started_at"] for m in members)
    # a heartbeat older than the TTL is not live
    assert [m["member"] for m in await storage.heartbeat("b", "", ttl=0.0)] == []
    await storage.leave("a")
    assert [m["member"] for m in await storage.heartbeat("b", "", ttl=30)] == ["b"]


async def test_a_lease_is_held_by_one_member_until_it_expires_or_is_released(storage):
    ids = [(await storage.add_server(f"s{i}", "10.0.0.1")).id for i in range(4)]
    assert await storage.claim_servers("a", ids[:3], ttl=30) == set(ids[:3])
    assert await storage.claim_servers("b", ids, ttl=30) == {ids[3]}  # a's stay a's
    assert await storage.claim_servers("a", ids[:3], ttl=30) == set(ids[:3])  # renewed
    members = {m["member"]: m["servers"] for m in await storage.heartbeat("a", "", ttl=30)}
    assert members == {"a": 3}
    await storage.release_servers("a", [ids[0]])
    assert await storage.claim_servers("b", [ids[0]], ttl=30) == {ids[0]}
    # a lease not renewed in time (ttl 0: expired at once) is taken over
    assert await storage.claim_servers("a", [ids[1]], ttl=0.0) == set()
    assert await storage.claim_servers("b", [ids[1]], ttl=30) == {ids[1]}
    await storage.remove_server("s2")  # its lease goes with it
    assert await storage.claim_servers("b", [ids[2]], ttl=30) == set()
    await storage.leave("b")
    assert await storage.claim_servers("a", [ids[0], ids[1], ids[3]], ttl=30) == {ids[0], ids[1], ids[3]}


# --- containers ---------------------------------------------------------------------------

def with_containers(outcome: PollOutcome, containers: list) -> PollOutcome:
    """outcome with sample["containers"] ([[name, cpu, mem, mem_used, net_rx, net_tx, disk_read,
    disk_write, pids], ...], as central.sample makes it)."""
    outcome.sample["containers"] = containers
    return outcome


def container(name: str, cpu: float, mem_used: int = 1000) -> list:
    return [name, cpu, 10.0, mem_used, 1.0, 2.0, 3.0, 4.0, 5]


async def test_container_samples_are_stored_per_container_and_rolled_up(storage):
    from central.model import CONTAINER_METRICS

    assert list(CONTAINER_METRICS) == ["cpu", "mem", "mem_used", "net_rx", "net_tx", "disk_read", "disk_write", "pids"]
    a = await storage.add_server("a", "10.0.0.1")
    b = await storage.add_server("b", "10.0.0.2")
    start = NOW - 3600
    batch = []
    for i in range(120):  # two polls a minute for an hour, cpu 0/20 alternating
        ts = start + 30 * i
        batch.append(with_containers(ok(a.id, ts), [container("web", 20.0 * (i % 2)), container("db", 50.0, 2000)]))
    batch.append(with_containers(ok(b.id, start), [container("web", 99.0)]))
    await storage.write_polls(batch, offline_after=3)
    assert await storage.container_names(a.id) == ["db", "web"]
    raw = await storage.container_samples(a.id, "web", start, NOW)
    assert len(raw) == 120 and raw[1]["cpu"] == 20.0 and raw[1]["mem_used"] == 1000 and raw[1]["pids"] == 5
    # another server's container of the same name is its own series
    assert [r["cpu"] for r in await storage.container_samples(b.id, "web", 0, NOW)] == [99.0]
    recent = await storage.container_recent(a.id, NOW - 120)
    assert sorted(recent) == ["db", "web"] and recent["db"]["mem_used"] == [2000] * 4
    await storage.rollup(now=NOW, lag=0)
    hist = await storage.container_history(a.id, "web", start, NOW, max_points=10, retention_raw=60,
                                           retention_minute=7 * DAY, now=NOW)
    assert hist["source"] == "minute"
    assert all(v == 10.0 for v in hist["series"]["cpu"]) and max(hist["series"]["cpu_max"]) == 20.0
    assert min(hist["series"]["cpu_min"]) == 0.0
    with pytest.raises(ValueError):
        await storage.container_history(a.id, "web", start, NOW, retention_raw=60, retention_minute=60,
                                        metrics=["cpu; DROP TABLE servers"])
    # raw container samples go with the raw retention once rolled up; rollups stay
    counts = await storage.prune(raw=60, minute=7 * DAY, hour=30 * DAY, events=30 * DAY, now=NOW)
    assert counts["containers"] == 241 - 4  # all but the last minute's 2 polls x 2 containers of a
    assert await storage.container_samples(a.id, "web", 0, NOW - 60) == []
    hist = await storage.container_history(a.id, "db", start, NOW, max_points=10, retention_raw=60,
                                           retention_minute=7 * DAY, now=NOW)
    assert hist["series"]["mem_used"] and all(v == 2000 for v in hist["series"]["mem_used"])


async def test_containers_stored_per_poll_are_capped_and_removed_with_their_server(storage):
    from central.model import MAX_STORED_CONTAINERS

    a = await storage.add_server("a", "10.0.0.1")
    many = [container(f"c{i:03d}", 1.0) for i in range(MAX_STORED_CONTAINERS + 30)]
    many.insert(1, container("c000", 7.0))  # a name twice: the first one is kept
    await storage.write_polls([with_containers(ok(a.id, NOW), many)], offline_after=3)
    names = await storage.container_names(a.id)
    assert len(names) == MAX_STORED_CONTAINERS and names[0] == "c000" and "c049" in names and "c050" not in names
    assert [r["cpu"] for r in await storage.container_samples(a.id, "c000", 0, NOW + 1)] == [1.0]
    await storage.remove_server("a")
    assert await storage.container_names(a.id) == []


async def test_a_container_row_the_database_refuses_keeps_other_servers_samples(storage):
    a = await storage.add_server("a", "10.0.0.1")
    b = await storage.add_server("b", "10.0.0.2")
    bad = with_containers(ok(a.id, NOW), [container("x", 1.0, mem_used=10**19)])
    refused = await storage.write_polls([bad, with_containers(ok(b.id, NOW), [container("y", 2.0)])], offline_after=3)
    assert [o for o, _ in refused] == [bad]
    assert await storage.container_names(a.id) == [] and await storage.container_names(b.id) == ["y"]
    assert a.id not in await storage.latest_samples()


# --- bastions, lookups by id, and the markers the poller and the answers cache rest on -------

async def test_a_server_behind_a_bastion_and_lookup_by_id(storage):
    bastion = await storage.add_server("bastion", "10.0.0.1")
    inner = await storage.add_server("inner", "10.1.0.1", via=bastion.id)
    assert inner.via == bastion.id and (await storage.server_by_id(inner.id)).name == "inner"
    with pytest.raises(NotFound):
        await storage.server_by_id(inner.id + 1000)
    with pytest.raises(Conflict, match="bastion of inner"):
        await storage.remove_server("bastion")
    assert (await storage.get_server("inner")).via == bastion.id  # nothing removed
    moved = await storage.update_server("inner", via=None)
    assert moved.via is None
    await storage.remove_server("bastion")
    assert [s.name for s in await storage.list_servers()] == ["inner"]


async def test_the_servers_marker_stays_while_only_poll_batches_and_their_inventories_and_alerts_write(backend):
    storage = await backend()
    other = await backend()  # another process on the same database (the CLI)
    try:
        a = await storage.add_server("a", "10.0.0.1")
        first = await storage.servers_marker()
        assert await storage.servers_marker() == first
        await storage.write_polls([ok(a.id, NOW), failed(a.id, NOW + 30)], offline_after=1)
        assert await storage.servers_marker() == first  # poll batches: the same
        # nor what goes with them: their inventories (the poller keeps its copy of the hash) and
        # alert changes (while 10,000 hosts connected each batch made the poller read the list again)
        await storage.write_inventories([(a.id, NOW, "h1", {"kernel": "6.1"}, "initial", "first inventory")])
        await storage.save_alerts([alert_row(a.id, "cpu", "pending")], [], [])
        assert await storage.servers_marker() == first
        assert (await storage.get_server("a")).inventory_hash == "h1"
        await storage.update_server("a", tags=["x"])
        second = await storage.servers_marker()
        assert second != first
        await other.add_server("b", "10.0.0.2")  # another process's change is seen too
        third = await storage.servers_marker()
        assert third != second
        await other.remove_server("b")
        assert await storage.servers_marker() != third
    finally:
        await other.close()
        await storage.close()


async def test_the_change_marker_moves_with_any_commit_of_any_process(backend):
    storage = await backend()
    other = await backend()
    try:
        a = await storage.add_server("a", "10.0.0.1")
        first = await storage.change_marker()
        assert await storage.change_marker() == first  # nothing committed: the same
        await storage.write_polls([ok(a.id, NOW)], offline_after=3)
        second = await storage.change_marker()
        assert second != first
        await other.add_user("alice", "admin", "scrypt$x")  # another process's commit
        assert await storage.change_marker() != second
        # the in-memory latest samples are part of it
        await storage.latest_samples()
        third = await storage.change_marker()
        await storage.write_polls([ok(a.id, NOW + 30)], offline_after=3)
        assert await storage.change_marker() != third
    finally:
        await other.close()
        await storage.close()
