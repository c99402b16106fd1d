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
