"""The central CLI: help texts, one-line errors, and the server commands against a real host."""
from __future__ import annotations

import asyncio
import json

import click
import pytest
from click.testing import CliRunner

from central.cli import cli
from central.storage import Storage


def all_commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        yield prefix + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, prefix + (name,))


@pytest.mark.parametrize("path", [" ".join(p) for p, _ in all_commands(cli)])
def test_every_command_has_help_with_an_example(path):
    result = CliRunner().invoke(cli, path.split() + ["--help"])
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output, f"`central {path} --help` has no Example: block"
    assert f"central {path.split()[0]}" in result.output.split("Example:")[1]


@pytest.fixture
def run(tmp_path, monkeypatch):
    """Invoke the CLI with a data directory of its own."""
    monkeypatch.setenv("CENTRAL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CENTRAL_CONFIG", raising=False)

    def invoke(*args, input=None):
        return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)

    return invoke


def test_errors_are_one_line(run, tmp_path):
    assert run("init").exit_code == 0
    result = run("server", "show", "nope")
    assert result.exit_code == 1
    assert result.output.strip() == "Error: no server named 'nope'"
    bad = tmp_path / "bad.toml"
    bad.write_text("[poll]\ninterval = -1\n")
    result = run("--config", str(bad), "server", "list")
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: config: {bad}: poll.interval: must not be negative, got -1"


def test_server_list_filters_by_tag_and_status(run, tmp_path):
    assert run("init").exit_code == 0

    async def add():
        storage = await Storage.open(tmp_path / "data" / "central.db")
        try:
            for i in range(4):
                await storage.add_server(f"web{i}", "127.0.0.1", port=1, tags=("prod",) if i % 2 else ("dev",))
            await storage.update_server("web3", status="offline", status_reason="unreachable")
        finally:
            await storage.close()

    asyncio.run(add())
    names = lambda *opts: [r["name"] for r in json.loads(run("server", "list", "--json", *opts).output)]  # noqa: E731
    assert names() == ["local", "web0", "web1", "web2", "web3"]
    assert names("--tag", "prod") == ["web1", "web3"]
    assert names("--tag", "prod", "--status", "unknown") == ["web1"]
    assert names("--status", "offline") == ["web3"]
    assert "web1" in run("server", "list", "--tag", "prod").output


def test_init_and_local_server(run):
    result = run("init")
    assert result.exit_code == 0
    assert 'restrict,port-forwarding,permitopen="127.0.0.1:8083",command="/bin/false" ssh-ed25519 ' in result.output
    rows = json.loads(run("server", "list", "--json").output)
    assert [(r["name"], r["kind"]) for r in rows] == [("local", "local")]
    polled = json.loads(run("poll", "local", "--json").output)
    assert polled["ok"] and polled["document"]["hostname"]


@pytest.mark.hosts
def test_server_commands_against_a_real_host(run, tmp_path, test_host, client_key, monkeypatch):
    monkeypatch.setenv("CENTRAL_SSH_KEY_PATH", str(client_key.path))
    assert run("init").exit_code == 0
    host = test_host()
    # No terminal and no fingerprint: refuses rather than trusting blindly.
    result = run("server", "add", "web1", host.address)
    assert result.exit_code == 1 and "--host-key-fingerprint" in result.output
    # the host's agent secret, handed over before the server exists (as deploy-agent.sh does)
    result = run("server", "secret", "--host", host.address, input=host.agent_secret + "\n")
    assert result.exit_code == 0 and f"kept for {host.address}:22" in result.output, result.output
    assert host.agent_secret not in result.output
    result = run("server", "add", "web1", host.address, "--tag", "prod", "--host-key-fingerprint", host.fingerprint)
    assert result.exit_code == 0, result.output
    assert "agent 1.2.1 answers" in result.output, result.output
    assert f"host key {host.fingerprint} pinned" in result.output and "agent" in result.output
    assert "warning" not in result.output
    result = run("server", "add", "web1b", host.address, "--host-key-fingerprint", host.fingerprint)
    assert result.exit_code == 0, result.output
    assert (f"warning: web1b has the same address and port ({host.address}:22) and the same host key "
            f"({host.fingerprint}) as server web1: the same host under two names is polled and alerted twice "
            "(`central server remove web1b` if unintended)") in result.output.splitlines()
    assert run("server", "remove", "web1b", "--yes").exit_code == 0
    result = run("server", "add", "web2", host.address, "--host-key-fingerprint", "SHA256:" + "x" * 43)
    assert result.exit_code == 1 and "host_key_mismatch" in result.output
    rows = {r["name"]: r for r in json.loads(run("server", "list", "--json").output)}
    assert rows["web1"]["tags"] == ["prod"] and "web2" not in rows
    assert run("server", "test", "web1").output.startswith("web1: ok")
    polled = json.loads(run("poll", "web1", "--json").output)
    assert polled["document"]["hostname"] == host.name
    assert "status" in run("server", "show", "web1").output
    host.regenerate_host_key()
    result = run("server", "trust", "web1", "--host-key-fingerprint", host.fingerprint)
    assert result.exit_code == 0 and "polling resumes" in result.output
    assert run("server", "remove", "web1").exit_code == 1  # no terminal, no --yes
    assert run("server", "remove", "web1", "--yes").exit_code == 0
    assert "web1" not in run("server", "list").output


def test_a_data_directory_never_initialised_is_refused_in_one_line_and_left_alone(run, tmp_path, monkeypatch):
    """A shell without the right CENTRAL_DATA_DIR gets one line naming the directory and how to
    pick the right one, never a fresh empty database; --data-dir picks it; only init creates."""
    other = tmp_path / "elsewhere"
    for args in (["server", "list"], ["server", "add", "web1", "127.0.0.1"], ["alert", "list"], ["serve"]):
        result = run("--data-dir", str(other), *args)
        assert result.exit_code == 1, result.output
        assert result.output.count("\n") == 1, result.output
        assert result.output.startswith(f"Error: {other} is not a central data directory"), result.output
        assert "CENTRAL_DATA_DIR=DIR or --data-dir DIR" in result.output
        assert not other.exists()  # nothing was created
    assert run("init").exit_code == 0
    data = tmp_path / "data"
    monkeypatch.setenv("CENTRAL_DATA_DIR", str(other))  # a new shell pointing elsewhere
    assert run("server", "list").exit_code == 1 and not other.exists()
    rows = json.loads(run("--data-dir", str(data), "server", "list", "--json").output)
    assert [r["name"] for r in rows] == ["local"]
    assert run("--data-dir", str(other), "init").exit_code == 0
    assert (other / "central.db").is_file()
