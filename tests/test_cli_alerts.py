"""The alert commands of the CLI against a real database file, and help text on every command."""
from __future__ import annotations

import asyncio
import getpass
import json

import click
import pytest
from click.testing import CliRunner

from central.cli import cli
from central.storage import Storage


@pytest.fixture
def env(tmp_path):
    """CLI environment with its own data directory, holding one server with one firing alert."""
    data = tmp_path / "data"

    async def seed():
        storage = await Storage.open(data / "central.db")
        try:
            server = await storage.add_server("web1", "10.0.0.5", tags=("prod",))
            [alert_id] = await storage.save_alerts([{
                "rule": "server_unreachable", "server_id": server.id, "label": "", "severity": "critical",
                "state": "firing", "summary": "cannot reach web1 over SSH", "value": 3.0, "started_at": 1000.0,
                "fired_at": 1000.0, "last_evaluated": 1000.0, "details": {"first": 3.0, "min": 3.0, "max": 3.0},
            }], [], [])
            await storage.log_notification(alert_id, "ops", "firing", 1000.0, 1, True, "HTTP 200")
            return alert_id
        finally:
            await storage.close()

    alert_id = asyncio.run(seed())
    return {"CENTRAL_DATA_DIR": str(data), "CENTRAL_CONFIG": "", "alert_id": alert_id}


def run(env, *args):
    result = CliRunner().invoke(cli, list(args), env={k: v for k, v in env.items() if k != "alert_id"})
    return result


def test_alert_list_ack_and_show(env):
    r = run(env, "alert", "list", "--firing", "--json")
    assert r.exit_code == 0, r.output
    [row] = json.loads(r.output)
    assert (row["server"], row["rule"], row["state"]) == ("web1", "server_unreachable", "firing")
    r = run(env, "alert", "ack", str(env["alert_id"]))
    assert r.exit_code == 0, r.output
    assert f"acknowledged by cli:{getpass.getuser()}" in r.output
    r = run(env, "alert", "show", str(env["alert_id"]), "--json")
    shown = json.loads(r.output)
    assert shown["acked_by"] == f"cli:{getpass.getuser()}"
    assert [n["detail"] for n in shown["notifications"]] == ["HTTP 200"]
    r = run(env, "alert", "list", "--server", "nope")
    assert r.exit_code == 1 and r.output.strip() == "Error: no server named 'nope'"
    r = run(env, "alert", "ack", "999")
    assert r.exit_code == 1 and r.output.strip() == "Error: no alert with id 999"


def test_silence_maintenance_and_unsilence(env):
    r = run(env, "alert", "silence", "--rule", "disk_*", "--tag", "prod", "--duration", "2h", "--comment", "swap disks",
            "--json")
    assert r.exit_code == 0, r.output
    silence = json.loads(r.output)
    assert silence["matcher"] == {"rule": "disk_*", "tag": "prod"} and silence["ends_at"] - silence["starts_at"] == 7200
    r = run(env, "server", "maintenance", "web1", "--duration", "1h", "--comment", "kernel update")
    assert r.exit_code == 0 and "maintenance window" in r.output
    r = run(env, "alert", "silences", "--json")
    rows = json.loads(r.output)
    assert [(s["kind"], s["created_by"]) for s in rows] == [("maintenance", f"cli:{getpass.getuser()}"),
                                                            ("silence", f"cli:{getpass.getuser()}")]
    r = run(env, "alert", "unsilence", str(silence["id"]))
    assert r.exit_code == 0 and "ended" in r.output
    assert len(json.loads(run(env, "alert", "silences", "--json").output)) == 1
    assert len(json.loads(run(env, "alert", "silences", "--all", "--json").output)) == 2


def test_bad_input_is_one_line(env):
    r = run(env, "alert", "silence", "--server", "web1", "--duration", "soon", "--comment", "x")
    assert r.exit_code == 2 and "expected a duration like 10s, 5m or 48h, got 'soon'" in r.output
    r = run(env, "alert", "silence", "--duration", "1h", "--comment", "x")
    assert r.exit_code == 2 and "give --server, --rule or --tag" in r.output
    r = run(env, "server", "maintenance", "ghost", "--duration", "1h", "--comment", "x")
    assert r.exit_code == 1 and r.output.strip() == "Error: no server named 'ghost'"
    assert "Traceback" not in r.output


def _commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        yield prefix + (name,), command
        if isinstance(command, click.Group):
            yield from _commands(command, prefix + (name,))


def test_every_command_has_help_with_an_example():
    missing = [" ".join(path) for path, command in _commands(cli) if "Example:" not in (command.help or "")]
    assert missing == []
    r = CliRunner().invoke(cli, ["alert", "silence", "--help"])
    assert r.exit_code == 0 and "central alert silence --server web1 --duration 2h" in r.output


def test_wide_tables_fit_80_columns_one_line_a_row_and_json_stays_whole(env, tmp_path):
    """alert list, action log and server list at COLUMNS=80 (a real process: rich reads the width
    at start): no line wider than 80, one line per row, long cells cut with an ellipsis."""
    import os
    import subprocess
    import sys

    long_summary = "disk / on web1 is 97% full (inodes 12%, 3.1 GB free of 100 GB): " + "x" * 120
    long_output = "Job for nginx.service failed because the control process exited with error code. " * 3

    async def seed():
        storage = await Storage.open(tmp_path / "data" / "central.db")
        try:
            server = await storage.add_server("a-rather-long-server-name-01", "10.0.0.6", tags=("prod", "eu-west-1"))
            await storage.save_alerts([{
                "rule": "disk_almost_full", "server_id": server.id, "label": "/var/lib/postgresql/data",
                "severity": "warning", "state": "firing", "summary": long_summary, "value": 97.0,
                "started_at": 1000.0, "fired_at": 1000.0, "last_evaluated": 1000.0,
                "details": {"first": 97.0, "min": 97.0, "max": 97.0}}], [], [])
            for i in range(3):
                await storage.add_audit(actor="cli:operator-with-a-long-name", role="admin", server_id=server.id,
                                        server_name=server.name, action="service",
                                        arguments={"unit": f"nginx-frontend-worker@{i}.service", "verb": "restart"},
                                        result="failed", exit_status=1, output=long_output, duration_ms=1234.5)
        finally:
            await storage.close()

    asyncio.run(seed())
    environ = {**os.environ, "CENTRAL_DATA_DIR": env["CENTRAL_DATA_DIR"], "CENTRAL_CONFIG": "", "COLUMNS": "80"}

    def central(*args):
        res = subprocess.run([sys.executable, "-m", "central", *args], capture_output=True, text=True, env=environ,
                             timeout=120)
        assert res.returncode == 0, res.stderr
        return res.stdout

    for args, rows in ((("alert", "list"), 2), (("action", "log"), 3), (("server", "list"), 3)):
        lines = central(*args).rstrip("\n").splitlines()
        assert max(len(line) for line in lines) <= 80, "\n".join(lines)
        assert len(lines) == 2 + rows, "\n".join(lines)  # header, rule, one line per row
        assert any("…" in line for line in lines[2:]), "\n".join(lines)
    # what is cut on the terminal is whole in --json
    summaries = [a["summary"] for a in json.loads(central("alert", "list", "--json"))]
    assert long_summary in summaries
    outputs = [r["output"] for r in json.loads(central("action", "log", "--json"))]
    assert outputs == [long_output] * 3
    # a wide terminal shows the cells whole
    environ["COLUMNS"] = "400"
    assert "a-rather-long-server-name-01" in central("alert", "list")
