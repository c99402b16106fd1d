"""`central terminal ...`: the web terminal's rights, accounts, key, sessions and recordings.

Thin commands over central.terminal (registered on the `central` group by central.cli).
"""
from __future__ import annotations

import sys
import time

import click
from . import cli as climod
from . import recording
from .cli import SafeTable, _actor, _echo_json, _p, central_command, cli
from .service import Central
from .terminal import terminal_key_line


def _cell(value) -> str:
    """A SafeTable cell (it escapes): a dash for nothing."""
    return "-" if value is None or value == "" else str(value)[:200]


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


@cli.group()
def terminal():
    """The web terminal: rights, host accounts, its key, sessions and their recordings.

    Off by default: a server needs a terminal account (deploy --terminal-user NAME installs the
    terminal key for it) and a user the terminal right. See docs/terminal.md.

    \b
    Example:
      central terminal key
      central deploy web1 --terminal-user ops
      central terminal grant alice
      central terminal sessions
      central terminal replay 12
    """


@terminal.command("key")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@central_command
async def terminal_key(central: Central, as_json):
    """Print the terminal's public key (created, 0600, on first use) and its authorized_keys line.

    The key is kept apart from the polling key; deploy --terminal-user installs the line for a
    host account (PTY session only: restrict,pty).

    \b
    Example:
      central terminal key
    """
    line, created = central.terminal.ensure_key()
    result = {"path": str(central.terminal.key_path), "public_key": line, "created": created,
              "authorized_keys_line": terminal_key_line(line)}
    if as_json:
        _echo_json(result)
        return
    click.echo(f"terminal key: {result['path']} ({'created' if created else 'exists'})")
    click.echo(f"public key:   {line}")
    click.echo(f"authorized_keys line for the terminal account: {result['authorized_keys_line']}")


@terminal.command("grant")
@click.argument("user")
@central_command
async def terminal_grant(central: Central, user):
    """Give USER the terminal right (admins need it too).

    \b
    Example:
      central terminal grant alice
    """
    await central.terminal.grant(user, _actor())
    click.echo(f"{_p(user)} may open terminals (on servers where the terminal is enabled)")


@terminal.command("revoke")
@click.argument("user")
@central_command
async def terminal_revoke(central: Central, user):
    """Take the terminal right from USER.

    \b
    Example:
      central terminal revoke alice
    """
    result = await central.terminal.revoke(user, _actor())
    click.echo(f"{_p(user)} may no longer open terminals" if result["had"] else f"{_p(user)} did not have the terminal right")


@terminal.command("users")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@central_command
async def terminal_users(central: Central, as_json):
    """List the users with the terminal right.

    \b
    Example:
      central terminal users
    """
    rows = await central.terminal.holders()
    if as_json:
        _echo_json(rows)
        return
    t = SafeTable("user", "role", "granted by", "granted")
    for r in rows:
        t.add_row(_cell(r["user"]), _cell(r["role"]), _cell(r["granted_by"]), _when(r["granted_at"]))
    climod.console.print(t)


@terminal.command("enable")
@click.argument("server")
@click.option("--user", "account", required=True, help="The host account the terminal logs in as.")
@central_command
async def terminal_enable(central: Central, server, account):
    """Record the host account SERVER's terminal logs in as.

    The terminal key must be in that account's authorized_keys (deploy --terminal-user does
    both); without it the terminal is "not enabled on this host".

    \b
    Example:
      central terminal enable web1 --user ops
    """
    await central.terminal.enable(server, account, _actor())
    click.echo(f"terminal enabled on {_p(server)} as {_p(account)}")


@terminal.command("disable")
@click.argument("server")
@central_command
async def terminal_disable(central: Central, server):
    """Turn SERVER's terminal off (the key stays on the host until removed there).

    \b
    Example:
      central terminal disable web1
    """
    result = await central.terminal.disable(server, _actor())
    click.echo(f"terminal disabled on {_p(server)}" if result["was_enabled"] else f"the terminal was not enabled on {_p(server)}")


@terminal.command("servers")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@central_command
async def terminal_servers(central: Central, as_json):
    """List the servers with a terminal and the account it uses.

    \b
    Example:
      central terminal servers
    """
    accounts = await central.terminal.accounts()
    if as_json:
        _echo_json(accounts)
        return
    t = SafeTable("server", "account", "enabled by", "since")
    for name, a in accounts.items():
        t.add_row(_cell(name), _cell(a["account"]), _cell(a["set_by"]), _when(a["set_at"]))
    climod.console.print(t)


@terminal.command("sessions")
@click.option("--server", help="Only this server's sessions.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000), help="Rows to show.")
@click.option("--before", "before_id", type=int, help="Only sessions older than this id (paging).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@central_command
async def terminal_sessions(central: Central, server, limit, before_id, as_json):
    """List terminal sessions, newest first: who, where, when, how long, how it ended.

    \b
    Example:
      central terminal sessions
      central terminal sessions --server web1 --json
    """
    rows = await central.terminal.sessions(server=server, limit=limit, before_id=before_id)
    if as_json:
        _echo_json(rows)
        return
    t = SafeTable("id", "user", "server", "account", "started", "duration", "exit", "ended", "message", "bytes")
    for r in rows:
        ended = r["end_reason"] or "open"
        if r["ended_by"]:
            ended += f" ({r['ended_by']})"
        t.add_row(str(r["id"]), _cell(r["user"]), _cell(r["server_name"]), _cell(r["account"]), _when(r["started_at"]),
                  "-" if r["duration"] is None else f"{r['duration']:.0f}s",
                  "-" if r["exit_status"] is None else str(r["exit_status"]), _cell(ended),
                  _cell((r["message"] or "")[:80]), str(r["recording_bytes"]))
    climod.console.print(t)


@terminal.command("replay")
@click.argument("session_id", type=int)
@click.option("--raw", is_flag=True, help="Print the recording file itself (asciicast v2, plain ASCII).")
@click.option("--speed", default=1.0, show_default=True, type=click.FloatRange(0.01, 1000), help="Playback speed.")
@click.option("--idle-limit", default=2.0, show_default=True, type=click.FloatRange(0),
              help="Cut pauses longer than this many seconds (0: keep them).")
@central_command
async def terminal_replay(central: Central, session_id, raw, speed, idle_limit):
    """Replay a session's recording in this terminal with its timing (or --raw: the .cast file).

    What the host sent is shown as it was: this is a terminal recording, escapes included.

    \b
    Example:
      central terminal replay 12
      central terminal replay 12 --speed 4
      central terminal replay 12 --raw > session-12.cast
    """
    import asyncio

    path = await central.terminal.recording_path(session_id)
    if raw:
        sys.stdout.write(path.read_text(encoding="ascii", errors="replace"))
        return
    try:
        cast = recording.read(path)
    except recording.BadRecording as exc:
        raise click.ClickException(f"{path}: {exc}") from None
    out = sys.stdout
    for delay, text in recording.playback(cast, speed=speed, idle_limit=idle_limit or None):
        if delay > 0:
            out.flush()
            await asyncio.sleep(delay)
        out.write(text)
    out.write("\n")
    out.flush()
