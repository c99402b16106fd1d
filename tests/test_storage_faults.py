"""Storage trouble with real faults, through the real app: a second process holding the write
lock, a read-only (immutable) database, a full file system. Nothing committed is lost, the
outage buffer drains when the fault ends, and readiness, status, /metrics, the page banner,
the storage_failing alert and the log follow the state. Needs root (chattr, mount)."""
from __future__ import annotations

import dataclasses
import logging
import os
import sqlite3
import subprocess
import sys

import pytest
from click.testing import CliRunner

from central.cli import cli
from central.config import NotifierConfig
from tests.apiclient import PASSWORD, start_api
from tests.helpers import wait_for
from tests.test_writer import LockHolder


def needs_root() -> None:
    if os.geteuid() == 0:
        return
    reason = f"storage fault tests use chattr and mount and need root, running as uid {os.geteuid()}"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip("ROOT TESTS SKIPPED: " + reason)


class Lock:
    text = "database is locked"

    def __init__(self, db):
        self.db = db

    def start(self):
        self.holder = LockHolder(self.db)

    def stop(self):
        self.holder.release()


class Immutable:
    text = "disk I/O error"

    def __init__(self, db):
        # The -shm file stays writable: it is memory-mapped, and an immutable one is SIGBUS.
        self.files = [str(db), str(db) + "-wal"]

    def start(self):
        subprocess.run(["chattr", "+i", *self.files], check=True)

    def stop(self):
        subprocess.run(["chattr", "-i", *self.files], check=True)


class Full:
    text = "database or disk is full"

    def __init__(self, db):
        self.filler = db.parent / "filler"

    def start(self):
        chunk = b"\0" * 65536
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, chunk)
        except OSError:  # ENOSPC: full
            pass
        finally:
            os.close(fd)

    def stop(self):
        self.filler.unlink()


FAULTS = {"lock": Lock, "immutable": Immutable, "full": Full}


@pytest.fixture
def db_dir(tmp_path, request):
    """A directory of its own for the database: a 16 MB tmpfs for the full-disk fault (so that
    it can be filled), else on the test's file system (tmpfs ignores the immutable flag for a
    file that is open already)."""
    needs_root()
    path = tmp_path / "db"
    path.mkdir()
    tmpfs = request.node.callspec.params.get("fault") == "full"
    if tmpfs:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(path)], check=True)
    yield path
    subprocess.run(["chattr", "-i", *map(str, path.iterdir())], check=False)
    if tmpfs:
        subprocess.run(["umount", "-l", str(path)], check=True)


def samples_on_disk(db) -> set:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return set(con.execute("SELECT server_id, ts FROM samples").fetchall())
    finally:
        con.close()


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_storage_fault_is_loud_and_loses_nothing(fault, config, db_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="central")
    db = db_dir / "central.db"
    sent = tmp_path / "notified.txt"
    notify = (f"import os; open({str(sent)!r}, 'a').write(os.environ['CENTRAL_ALERT_RULE'] + ' ' + "
              "os.environ['CENTRAL_ALERT_EVENT'] + ' ' + os.environ['CENTRAL_ALERT_SEVERITY'] + '\\n')")
    cfg = dataclasses.replace(
        config, poll=dataclasses.replace(config.poll, interval=0.5),
        database=dataclasses.replace(config.database, path=str(db), lock_timeout=0.3),
        notifiers=(NotifierConfig(name="file", type="command", argv=(sys.executable, "-c", notify)),))
    api = await start_api(cfg)
    central = api.central
    produced: list[tuple[int, float]] = []
    real_poll = central.poller.poll

    async def poll(server):
        outcome = await real_poll(server)
        if outcome.ok:
            produced.append((outcome.server_id, outcome.ts))
        return outcome

    central.poller.poll = poll
    writer = central.poller.writer
    injected = FAULTS[fault](db)
    try:
        await wait_for(lambda: writer.stored >= 2 and produced, what="polls stored")
        async with api.client.get("/readiness") as resp:
            assert resp.status == 200 and (await resp.json())["storage"]["ok"] is True

        async with api.client.post("/api/v1/login", json={"username": "viewer1", "password": PASSWORD}) as resp:
            assert resp.status == 200  # before the fault: a login writes its session
        injected.start()
        try:
            await wait_for(lambda: not writer.health.ok, what="storage failing")
            await wait_for(lambda: writer.buffered >= 3, what="outcomes buffered")
            assert injected.text in writer.health.reason
            async with api.client.get("/readiness") as resp:
                body = await resp.json()
                assert resp.status == 503 and body["status"] == "not_ready"
                assert injected.text in body["reason"] and body["storage"]["buffered"] >= 3
            # the API's reads do not queue behind the failing writer
            status, st, _ = await api.get("/api/v1/status", role="viewer")
            assert status == 200 and st["storage"]["ok"] is False and injected.text in st["storage"]["reason"]
            status, listing, _ = await api.get("/api/v1/servers", role="viewer")
            assert status == 200 and listing["servers"]
            async with api.client.get("/metrics", headers=api.headers("viewer")) as resp:
                text = await resp.text()
            assert "central_storage_up 0" in text and "central_storage_buffered_outcomes 0" not in text
            async with api.client.get("/") as resp:
                page = await resp.text()
            assert resp.status == 200 and 'id="storage-banner"' in page and injected.text in page
            # the critical alert is sent while the database it is about cannot be written
            await wait_for(lambda: sent.exists() and "storage_failing firing critical" in sent.read_text(),
                           what="the storage alert sent")
        finally:
            injected.stop()

        await wait_for(lambda: writer.health.ok and writer.buffered == 0, timeout=60, what="buffer drained")
        central.poller.poll = real_poll
        await central.poller.wait_flushed()
        assert writer.dropped == 0
        missing = set(produced) - samples_on_disk(db)
        assert not missing, f"{len(missing)} of {len(produced)} samples lost"
        async with api.client.get("/readiness") as resp:
            assert resp.status == 200
        status, alerts, _ = await api.get("/api/v1/alerts", role="viewer")
        stored = [a for a in alerts["alerts"] if a["rule"] == "storage_failing"]
        assert [(a["state"], a["severity"]) for a in stored] == [("resolved", "critical")]
    finally:
        await api.client.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "central.writer"]
    assert [m.split(":")[0].split(" after")[0] for m in lines] == ["storage failing", "storage recovered"], lines
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info]
    assert not tracebacks, tracebacks


@pytest.mark.parametrize("fault", ["immutable", "full"])
def test_serve_refuses_an_unwritable_database_in_one_line(fault, db_dir, tmp_path, monkeypatch):
    data = tmp_path / "data"
    monkeypatch.setenv("CENTRAL_DATA_DIR", str(data))
    monkeypatch.setenv("CENTRAL_DATABASE_PATH", str(db_dir / "central.db"))
    monkeypatch.delenv("CENTRAL_CONFIG", raising=False)
    runner = CliRunner()
    assert runner.invoke(cli, ["init"]).exit_code == 0
    injected = FAULTS[fault](db_dir / "central.db")
    con = sqlite3.connect(db_dir / "central.db")
    con.execute("PRAGMA journal_mode=WAL")  # the central's mode; its -wal is made immutable too
    con.close()
    (db_dir / "central.db-wal").touch()
    injected.start()
    try:
        result = runner.invoke(cli, ["serve", "--port", "1"])
    finally:
        injected.stop()
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot start: "), result.output
    assert "Traceback" not in result.output
