"""`central migrate --to postgresql://...`: a SQLite database filled through the storage
interface with everything central stores is copied into a real PostgreSQL (tests/pgserver.py);
what the PostgreSQL backend then reads equals what SQLite reads, the counts match table by
table, a second run after more writes catches up without copying anything twice, and bad
input is one line."""
from __future__ import annotations

import asyncio
import json

import pytest
from click.testing import CliRunner

from central.cli import cli
from central.migrate import TABLES
from central.model import METRICS, PollOutcome
from central.storage import TIER_HOUR, TIER_MINUTE, Storage

NOW = 1_800_000_000.0
DAY = 86400.0


def ok(server_id: int, ts: float, cpu: float) -> PollOutcome:
    sample = {m: float(cpu) for m in METRICS} | {"procs": int(cpu), "top": [[1, "init", 0.5, 1000.0]],
                                                 "containers": [["web", float(cpu), 10.0, 1000 + int(cpu), 1.0, 2.0,
                                                                 3.0, 4.0, 5], ["db", 1.5, 2.0, 2000, 0.0, 0.0,
                                                                                0.0, 0.0, 12]]}
    return PollOutcome(server_id=server_id, ts=ts, duration=0.01, ok=True, doc_text='{"hostname":"h"}',
                       sample=sample, hostname="h", agent_version="1.1.0", agent_sha256="a" * 64)


async def fill(path) -> None:
    """Everything central keeps, through the interface (as a running central writes it)."""
    s = await Storage.open(path)
    try:
        web = await s.add_server("web1", "10.0.0.5", port=2222, tags=["prod", "web"], agent_secret="a" * 64,
                                 host_key="ssh-ed25519 AAAA", host_key_fingerprint="SHA256:x", interval_s=30.0)
        db = await s.add_server("db1", "10.0.0.6")
        # web1 is reached through db1, a server with a higher id (the copy must not trip over it)
        await s.update_server("web1", via=db.id)
        await s.add_server("local", "localhost", kind="local", port=0)
        await s.put_pending_secret("10.0.0.9", 22, "b" * 64)
        for i in range(3 * 24 * 6):  # three days, every 10 minutes, two servers
            await s.write_polls([ok(web.id, NOW - 3 * DAY + i * 600, i % 100), ok(db.id, NOW - 3 * DAY + i * 600, 7)],
                                offline_after=3)
        await s.write_polls([PollOutcome(server_id=db.id, ts=NOW, duration=1, ok=False, reason="unreachable",
                                         error="refused")], offline_after=3)
        await s.rollup(now=NOW, lag=0)
        await s.write_inventory(web.id, NOW - DAY, "h1", {"kernel": "6.1"}, "initial", "first inventory")
        await s.write_inventory(web.id, NOW, "h2", {"kernel": "6.2"}, "os_change", "kernel: 6.1 -> 6.2")
        alice = await s.add_user("alice", "admin", "scrypt$alice")
        bob = await s.add_user("bob", "operator", "scrypt$bob")
        await s.add_token(alice["id"], "ci", "tokenhash1")
        await s.add_session(bob["id"], "sessionhash1", NOW, NOW + 3600, "10.1.1.1")
        await s.grant_right("bob", "terminal", "alice", NOW)
        await s.set_terminal_account(web.id, "ops", "alice", NOW)
        sid = await s.add_terminal_session(user_id=bob["id"], user="bob", server_id=web.id, server_name="web1",
                                           account="ops", address="10.1.1.1", started_at=NOW, cols=80, rows=24,
                                           recording="1.cast")
        await s.end_terminal_session(sid, ended_at=NOW + 5, exit_status=0, end_reason="exit", ended_by=None,
                                     message="done", recording_bytes=12)
        [alert] = await s.save_alerts([{"rule": "cpu_high", "server_id": web.id, "label": "", "severity": "warning",
                                        "state": "firing", "summary": "CPU 99%", "value": 99.0, "started_at": NOW,
                                        "fired_at": NOW, "last_evaluated": NOW, "details": {"cpu": 99}}], [], [])
        await s.ack_alert(alert, "bob", NOW + 1)
        await s.add_silence({"server": "db1"}, NOW, NOW + 3600, "maintenance", "alice")
        await s.log_notifications([(alert, "mail", "firing", NOW, 1, True, "sent")])
        await s.add_audit(actor="cli:root", role="admin", server_id=web.id, server_name="web1", action="service",
                          arguments={"unit": "nginx.service", "verb": "restart"}, result="ok", exit_status=0,
                          output="done", duration_ms=12.5, ts=NOW)
        await s.check_writable()
    finally:
        await s.close()


async def everything(s) -> dict:
    """What the interface reads back, for comparing two databases."""
    servers = await s.server_dicts()
    out: dict = {"servers": servers, "pending": await s.pending_secret_hosts(),
                 "secrets": {d["name"]: await s.agent_secret(d["id"]) for d in servers},
                 "users": await s.list_users(), "tokens": await s.list_tokens(),
                 "token_user": await s.token_user("tokenhash1"), "session": await s.session_user("sessionhash1", NOW),
                 "rights": await s.right_holders("terminal"), "accounts": await s.terminal_accounts(),
                 "terminal": await s.list_terminal_sessions(), "alerts": await s.list_alerts(),
                 "silences": await s.list_silences(), "notifications": await s.notifications(),
                 "audit": await s.audit_log(), "latest": await s.latest_samples()}
    for d in servers:
        sid = d["id"]
        out[f"samples {sid}"] = await s.samples(sid, 0, NOW + DAY)
        out[f"minute {sid}"] = await s.rollups(sid, TIER_MINUTE, 0, NOW + DAY)
        out[f"hour {sid}"] = await s.rollups(sid, TIER_HOUR, 0, NOW + DAY)
        out[f"document {sid}"] = await s.latest_document(sid)
        out[f"containers {sid}"] = names = await s.container_names(sid)
        for name in names:
            out[f"container {sid} {name}"] = await s.container_samples(sid, name, 0, NOW + DAY)
            out[f"container history {sid} {name}"] = await s.container_history(
                sid, name, NOW - 2 * DAY, NOW, retention_raw=DAY, retention_minute=14 * DAY, now=NOW)
        out[f"inventory {sid}"] = (await s.inventory_latest(sid), await s.inventory_history(sid))
        out[f"history {sid}"] = await s.history(sid, NOW - 2 * DAY, NOW, retention_raw=DAY, retention_minute=14 * DAY,
                                                now=NOW)
    return out


async def read(target) -> dict:
    s = await Storage.open(target)
    try:
        return await everything(s)
    finally:
        await s.close()


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("CENTRAL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CENTRAL_CONFIG", raising=False)

    def invoke(*args):
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    return invoke


def test_everything_is_copied_and_reads_back_the_same(tmp_path, pg_url, run):
    db = tmp_path / "c.db"
    asyncio.run(fill(db))
    result = run("migrate", "--to", pg_url, "--from", str(db), "--batch", "100", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True and {t["table"] for t in report["tables"]} == {t for t, _ in TABLES}
    counts = {t["table"]: (t["source"], t["destination"]) for t in report["tables"]}
    assert counts["samples"] == (2 * 3 * 24 * 6, 2 * 3 * 24 * 6) and counts["servers"] == (3, 3)
    assert counts["container_samples"] == (2 * 2 * 3 * 24 * 6,) * 2 and counts["container_rollups"][0] > 0
    assert all(src == dst and src > 0 for src, dst in counts.values()), counts  # every table had rows
    source, copied = asyncio.run(read(db)), asyncio.run(read(pg_url))
    for key in source:
        assert copied[key] == source[key], key
    assert {d["name"]: d["via"] for d in copied["servers"]}["web1"] == {d["name"]: d["id"]
                                                                       for d in copied["servers"]}["db1"]
    assert copied["containers 1"] == ["db", "web"] and len(copied["container 1 web"]) == 3 * 24 * 6


def test_a_second_run_catches_up_without_copying_twice(tmp_path, pg_url, run):
    db = tmp_path / "c.db"
    asyncio.run(fill(db))
    first = run("migrate", "--to", pg_url, "--from", str(db))
    assert first.exit_code == 0, first.output
    assert "samples: 864 of 864 rows" in first.stderr and "every table has the same number of rows" in first.stdout

    async def more():
        s = await Storage.open(db)
        try:
            web = await s.get_server("web1")
            await s.write_polls([ok(web.id, NOW + 600, 55)], offline_after=3)
            await s.update_server("db1", tags=["moved"])
            await s.add_server("new", "10.0.0.7")
        finally:
            await s.close()

    asyncio.run(more())
    second = run("migrate", "--to", pg_url, "--from", str(db), "--json")
    assert second.exit_code == 0, second.output
    counts = {t["table"]: t["destination"] for t in json.loads(second.stdout)["tables"]}
    assert counts["samples"] == 865 and counts["servers"] == 4
    copied = asyncio.run(read(pg_url))
    assert copied == asyncio.run(read(db))

    async def after():  # the central on PostgreSQL goes on with ids after the copied ones
        s = await Storage.open(pg_url)
        try:
            ids = [d["id"] for d in await s.server_dicts()]
            added = await s.add_server("after", "10.0.0.8")
            return ids, added.id
        finally:
            await s.close()

    ids, new_id = asyncio.run(after())
    assert new_id > max(ids)
    # a destination written meanwhile no longer counts as the source's copy: the run says so
    third = run("migrate", "--to", pg_url, "--from", str(db))
    assert third.exit_code == 1
    assert "counts differ from the source's: servers (4 vs 5)" in third.output and "Traceback" not in third.output


@pytest.mark.parametrize("args, message", [
    (["--to", "mysql://db/central"], "--to: expected a postgresql:// URL"),
    (["--to", "postgresql:///x", "--from", "/nonexistent/c.db"], "/nonexistent/c.db: no such database file"),
])
def test_bad_input_is_one_line(run, args, message):
    result = run("migrate", *args)
    assert result.exit_code == 1 and message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_an_unreachable_destination_is_one_line(tmp_path, run):
    db = tmp_path / "c.db"
    asyncio.run(fill(db))
    result = run("migrate", "--to", f"postgresql:///x?host={tmp_path}&port=1", "--from", str(db))
    assert result.exit_code == 1 and "cannot connect to postgresql:///x" in result.output
    assert len(result.output.strip().splitlines()) == 1
