"""The central killed with SIGKILL mid-cycle loses no stored sample and corrupts nothing."""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys

import pytest
from click.testing import CliRunner

from central.cli import cli
from tests.helpers import wait_for_sync

pytestmark = pytest.mark.hosts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def count(db) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute("SELECT count(*) FROM samples").fetchone()[0]
    finally:
        con.close()


def test_sigkill_mid_cycle_keeps_every_stored_sample(tmp_path, test_host, client_key, monkeypatch):
    env = dict(os.environ, CENTRAL_DATA_DIR=str(tmp_path / "data"), CENTRAL_SSH_KEY_PATH=str(client_key.path),
               CENTRAL_POLL_INTERVAL="0.5", CENTRAL_POLL_TIMEOUT="2", CENTRAL_POLL_RELOAD_INTERVAL="0.5", CENTRAL_HTTP_PORT=str(free_port()))
    env.pop("CENTRAL_CONFIG", None)
    for k in ("CENTRAL_DATA_DIR", "CENTRAL_SSH_KEY_PATH"):
        monkeypatch.setenv(k, env[k])
    runner = CliRunner()
    assert runner.invoke(cli, ["init"]).exit_code == 0
    for host in test_host.many(3):
        r = runner.invoke(cli, ["server", "add", host.name, host.address, "--host-key-fingerprint", host.fingerprint])
        assert r.exit_code == 0, r.output
    db = tmp_path / "data" / "central.db"
    seen = 0
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, "-m", "central", "serve"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            target = seen + 20
            wait_for_sync(lambda: count(db) >= target, timeout=60, what=f"{target} samples (round {round_})")  # noqa: B023 - called at once
            before = count(db)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        after = count(db)
        assert after >= before, "samples that were committed before the kill are gone"
        con = sqlite3.connect(db)
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        bad = con.execute("SELECT count(*) FROM samples WHERE mem IS NULL OR mem < 0 OR mem > 100").fetchone()[0]
        assert bad == 0
        con.close()
        seen = after
