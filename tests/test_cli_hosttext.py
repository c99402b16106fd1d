"""Host text is inert in the CLI: rich markup, terminal escapes, bidi and newlines a host sends
are printed as visible text, never interpreted, and never crash a command.

The hostile text is stored the way the poller stores it (real SQLite in tmp_path); the commands
run as they do for an operator. Assertions are on the exact characters written: in-process
through click's runner, and through a real pseudo-terminal (where rich does style its output)
checking that the only escape sequences on the wire are rich's own colours (SGR).
"""
from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from central import cli as cli_module
from central.cli import cli
from central.config import load_config
from central.hosttext import escape
from central.model import PollOutcome
from central.sample import extract_sample
from central.storage import Storage

MARKUP = "[/bold][link=http://evil.example/]click[/link][red]"
TERMINAL = "\x1b]0;pwned\x07\x1b[2J\x1b]8;;http://evil.example/\x1b\\"
BIDI = "\u202eevil\u200b"
HOSTNAME = MARKUP + TERMINAL + BIDI
PROCESS = "[/bold]\x1b[2J"  # a comm is at most 15 bytes
MOUNT = "/srv/x\n2024-01-01 CRITICAL forged [/red]"
OUTPUT = "killed\n\x1b[2J[link=http://evil.example/]done[/link]"
SUMMARY = f"disk {MOUNT} 97% full \x1b]0;t\x07"
CHANGE = "hostname: old -> " + HOSTNAME

# The only escapes rich itself writes to a terminal: colours (SGR).
SGR = re.compile(r"\x1b\[[0-9;]*m")


def hostile_document() -> dict:
    now = time.time()
    return {
        "agent": {"version": "1.0" + MARKUP, "sha256": "0" * 64, "python": "3.11"},
        "timestamp": now, "hostname": HOSTNAME, "uptime": 100.0,
        "cpu": {"percent": 12.5, "count": 2},
        "memory": {"total": 1000, "available": 500, "percent": 50.0, "swap_total": 0, "swap_used": 0, "swap_percent": 0.0},
        "load": {"load1": 0.5, "load5": 0.4, "load15": 0.3},
        "filesystems": [{"mount": MOUNT, "device": "/dev/x" + TERMINAL, "fstype": "ext4", "total": 100,
                         "used": 97, "free": 3, "percent": 97.0}],
        "processes": {"count": 3, "top_cpu": [
            {"pid": 4242, "name": PROCESS, "cmdline": HOSTNAME, "cpu_percent": 99.0, "rss": 1_000_000, "user": "x"},
            {"pid": 4243, "name": "calm", "cmdline": "calm", "cpu_percent": "NaN%", "rss": "lots", "user": "x"},
        ]},
        "errors": [{"collector": "units", "error": MARKUP + TERMINAL}],
    }


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A data directory with a server web1 whose host sent hostile text everywhere it could."""
    monkeypatch.setenv("CENTRAL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CENTRAL_CONFIG", raising=False)
    config = load_config()

    async def populate():
        storage = await Storage.open(config.database_path)
        try:
            server = await storage.add_server("web1", "10.0.0.5", host_key_fingerprint="SHA256:" + "a" * 43)
            doc = hostile_document()
            now = time.time()
            await storage.write_polls([PollOutcome(
                server.id, now, 0.01, True, doc_text=json.dumps(doc), sample=extract_sample(doc),
                agent_version=doc["agent"]["version"], agent_sha256="0" * 64, hostname=HOSTNAME)], offline_after=3)
            await storage._write([("UPDATE servers SET last_error = ?, status_reason = ? WHERE id = ?",
                                   ("agent said: " + MARKUP + TERMINAL, "agent_error" + MARKUP, server.id))])
            await storage.write_inventory(server.id, now, "h1", {"hostname": HOSTNAME, "os": MARKUP}, "os_change", CHANGE)
            await storage.save_alerts([{
                "rule": "disk_almost_full", "server_id": server.id, "label": MOUNT, "severity": "critical",
                "state": "firing", "summary": SUMMARY, "value": 97.0, "started_at": now, "fired_at": now,
                "last_evaluated": now, "details": {"first": 97.0, "min": 97.0, "max": 97.0}}], [], [])
            await storage.add_audit(actor="cli:root", role="admin", server_id=server.id, server_name="web1",
                                    action="kill", arguments={"pid": 4242, "name": PROCESS}, result="ok",
                                    exit_status=0, output=OUTPUT, duration_ms=12.0)
        finally:
            await storage.close()

    asyncio.run(populate())
    return tmp_path / "data"


@pytest.fixture
def wide():
    """The CLI's consoles 400 columns wide, so no cell is wrapped."""
    consoles = (cli_module.console, cli_module.err_console)
    widths = [c._width for c in consoles]
    for c in consoles:
        c._width = 400
    yield
    for c, w in zip(consoles, widths):
        c._width = w


def _invoke(*args):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def run(data_dir, wide):
    """Invoke the CLI in-process on the hostile data directory."""
    return _invoke


def assert_inert(out: str) -> None:
    """Nothing a terminal would act on: no ESC, BEL, bidi or zero-width character at all."""
    for ch in ("\x1b", "\x07", "\u202e", "\u200b", "\x9b", "\x9d"):
        assert ch not in out, (ch, out)


def row(out: str, first: str) -> str:
    """The line (of a table, without its border) whose text starts with first."""
    for line in out.splitlines():
        if line.strip(" \u2502").startswith(first):
            return line.strip(" \u2502")
    raise AssertionError(f"no line starting with {first!r} in\n{out}")


def test_server_show_prints_host_text_literally(run):
    out = run("server", "show", "web1")
    assert_inert(out)
    assert re.fullmatch(r"\s*hostname\s+" + re.escape(escape(HOSTNAME)) + r"\s*", row(out, "hostname"))
    assert re.fullmatch(r"\s*last_error\s+" + re.escape("agent said: " + escape(MARKUP + TERMINAL)) + r"\s*",
                        row(out, "last_error"))
    assert re.fullmatch(r"\s*agent_version\s+" + re.escape("1.0" + MARKUP) + r"\s*", row(out, "agent_version"))
    # the change summary and the inventory carry the markup as typed
    assert f"os_change: {escape(CHANGE)}" in out
    assert "[link=http://evil.example/]click[/link]" in row(out, "inventory:")


def test_server_list_prints_host_text_literally(run):
    out = run("server", "list")
    assert_inert(out)
    line = row(out, "web1")
    assert "agent_error" + MARKUP in line  # the stored reason, brackets and all


def test_alert_list_prints_summaries_literally(run):
    out = run("alert", "list")
    assert_inert(out)
    line = row(out, "1 ")
    assert escape(MOUNT) in line and escape(SUMMARY) in line
    assert "2024-01-01 CRITICAL" not in out.replace(escape(MOUNT), "")  # no forged line of its own
    out = run("alert", "show", "1")
    assert_inert(out)
    assert escape(SUMMARY) in row(out, "summary")


def test_action_log_prints_output_literally(run):
    out = run("action", "log")
    assert_inert(out)
    line = row(out, "1 ")
    assert "name=" + escape(PROCESS) in line
    assert "[link=http://evil.example/]done[/link]" in line  # the output's last line, as text


def test_json_output_is_escaped_json(run):
    out = run("server", "show", "web1", "--json")
    assert_inert(out)
    assert json.loads(out)["server"]["hostname"] == HOSTNAME  # JSON keeps the value, escaped as \\u001b


def test_hostile_errors_are_one_escaped_line(data_dir):
    """An agent's error message quoted in a CLI error: one line, nothing interpreted."""
    import click

    from central.model import PollError

    @click.command()
    @cli_module.central_command
    async def boom(central):
        raise PollError("agent_error", "agent says " + MARKUP + TERMINAL + "\nError: forged")

    cli.add_command(boom, "boom")
    try:
        result = CliRunner().invoke(cli, ["boom"])
    finally:
        del cli.commands["boom"]
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert_inert(result.output)
    assert escape("agent says " + MARKUP + TERMINAL + "\nError: forged") in result.output


def _in_a_terminal(data_dir, *args: str) -> bytes:
    """Run `central ARGS` on a pseudo-terminal (rich styles its output) and return every byte written."""
    leader, follower = pty.openpty()
    env = {**os.environ, "CENTRAL_DATA_DIR": str(data_dir), "TERM": "xterm-256color", "COLUMNS": "400",
           "LINES": "50", "CENTRAL_CONFIG": ""}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, "-m", "central", *args], stdin=follower, stdout=follower,
                            stderr=follower, env=env, close_fds=True)
    os.close(follower)
    out = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            proc.kill()
            raise AssertionError(f"central {args} wrote nothing for 60 s: {out!r}")
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    assert proc.wait(timeout=30) == 0, out
    return out


@pytest.mark.parametrize("args", [("server", "show", "web1"), ("server", "list"), ("alert", "list"),
                                  ("action", "log")])
def test_on_a_real_terminal_only_rich_colours_reach_it(data_dir, args):
    raw = _in_a_terminal(data_dir, *args).decode()
    assert SGR.search(raw), "rich did not think this was a terminal: the test proves nothing"
    plain = SGR.sub("", raw)
    assert_inert(plain)  # no OSC title, no CSI 2J, no hyperlink, no bidi: only colours
    assert "\x1b]8;" not in raw  # no hyperlink from [link=...]
    if args[0] == "server" and args[1] == "show":
        assert escape(HOSTNAME) in plain


# A kernel host name has at most 64 bytes.
LIVE_HOSTNAME = "[/bold][link=http://e.example/]x[/link]\x1b]0;t\x07\u202e"
RENAME = "import ctypes, sys; ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)\nwhile True: pass"


@pytest.mark.hosts
def test_poll_of_a_real_host_with_a_hostile_hostname_and_process(tmp_path, monkeypatch, wide, test_host, client_key):
    """The issue's case: `central poll` of a host whose kernel hostname and busiest process carry markup and escapes."""
    monkeypatch.setenv("CENTRAL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CENTRAL_SSH_KEY_PATH", str(client_key.path))
    monkeypatch.delenv("CENTRAL_CONFIG", raising=False)
    _invoke("init")
    host = test_host()
    host.run(["python3", "-c", "import socket, sys; socket.sethostname(sys.argv[1])", LIVE_HOSTNAME])
    host.spawn(["python3", "-c", RENAME, PROCESS])
    _invoke("server", "add", "web1", host.address, "--host-key-fingerprint", host.fingerprint)
    doc = json.loads(_invoke("poll", "web1", "--json"))["document"]
    assert doc["hostname"] in (LIVE_HOSTNAME, "[/bold][link=http://e.example/]x[/link]]0;t")  # stored raw or cleaned
    out = _invoke("poll", "web1")
    assert_inert(out)
    first = out.splitlines()[0]
    assert re.fullmatch(r"web1 \(" + re.escape(escape(doc["hostname"])) + r"\) polled in [0-9.]+ ms", first), first
    names = [p["name"] for p in doc["processes"]["top_cpu"]]
    assert any(n.startswith("[/bold]") for n in names), names
    assert any(escape(n) in out for n in names if n.startswith("[/bold]"))
    for args in (("server", "show", "web1"), ("server", "list")):
        shown = _invoke(*args)
        assert_inert(shown)
