"""The `central` command: thin click commands over central.service, rich output."""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import sys
import time

import click
from rich import box
from rich.console import Console
from rich.markup import escape as markup_escape
from rich.table import Table
from rich.text import Text

from . import __version__, alerts, files, hosttext, logs, servers, views
from . import servers as servers_mod
from .config import Config, ConfigError, load_config, parse_duration
from .model import REASON_TEXT, STATUSES, CentralError, PollError
from .service import Central, ensure_key_pair, restricted_key_line

# emoji=False: a host called ":fire:" is shown as typed, not as an emoji.
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)


def _h(value: object) -> str:
    """Host or user text for a rich markup string: control and bidi characters shown as escapes,
    square brackets inert (a hostname "[link=...]" or "[/bold]" is printed, never interpreted)."""
    return markup_escape(hosttext.escape(value))


def _p(value: object) -> str:
    """Host or user text for plain output (click.echo): control and bidi characters shown as escapes."""
    return hosttext.escape(value)


def _lines(text: str) -> str:
    """Several lines of host output (an action's stdout), each line escaped on its own."""
    return "\n".join(hosttext.escape(line) for line in text.splitlines())


class SafeTable(Table):
    """A rich Table whose text cells are host text: escaped and never read as markup.

    Cells that are ours and styled are passed as rich Text objects (see _styled).

    A table with headers keeps one line per row at any terminal width (80 columns included):
    no border columns, and a cell too long for its share of the width is cut with an
    ellipsis; only the columns named in `wrap` (a hint to act on) wrap instead. `--json`
    always has every value whole.
    """

    def __init__(self, *headers, wrap: tuple[str, ...] = (), **kwargs) -> None:
        self._fit = bool(headers)
        if headers:
            kwargs.setdefault("box", box.SIMPLE_HEAD)
            kwargs.setdefault("show_edge", False)
            kwargs.setdefault("pad_edge", False)
            kwargs.setdefault("padding", (0, 1, 0, 0))  # with the box's blank separator: 2 spaces apart
        super().__init__(*headers, **kwargs)
        for column in self.columns:
            if self._fit and str(column.header) not in wrap:
                column.no_wrap = True
                column.overflow = "ellipsis"

    def _calculate_column_widths(self, console, options) -> list[int]:
        """Each column as wide as its widest cell, the widest cut first when they do not fit
        (never a column below its header's first 10 characters, unless its cells are narrower)."""
        if not self._fit:
            return super()._calculate_column_widths(console, options)
        natural = [self._measure_column(console, options, c).maximum or 1 for c in self.columns]
        pads = [self._get_padding_width(i) for i in range(len(self.columns))]
        floor = [min(n, p + max(4, min(len(str(c.header)), 10))) for n, p, c in zip(natural, pads, self.columns)]
        room = options.max_width
        if sum(natural) <= room:
            return natural
        if sum(floor) >= room:  # a very narrow terminal: rich's own squeeze
            return super()._calculate_column_widths(console, options)
        low, high = 0, max(natural)  # the largest cap C with sum(min(n, max(C, f))) <= room
        while low < high:
            cap = (low + high + 1) // 2
            if sum(min(n, max(cap, f)) for n, f in zip(natural, floor)) <= room:
                low = cap
            else:
                high = cap - 1
        widths = [min(n, max(low, f)) for n, f in zip(natural, floor)]
        spare = room - sum(widths)
        for i in sorted(range(len(widths)), key=lambda i: natural[i] - widths[i], reverse=True):
            if spare <= 0:
                break
            if widths[i] < natural[i]:
                widths[i] += 1
                spare -= 1
        return widths

    def add_row(self, *cells, **kwargs) -> None:
        """Add a row; str cells are shown literally (escaped), Text cells as they are."""
        super().add_row(*(Text(hosttext.escape(c)) if isinstance(c, str) else c for c in cells), **kwargs)


def _styled(text: str, style: str) -> Text:
    """Our own word (a status, a result) in a colour, for a SafeTable cell."""
    return Text(hosttext.escape(text), style=style)


def _run(coro):
    return asyncio.run(coro)


def _config(ctx: click.Context) -> Config:
    obj = ctx.find_root().obj
    if "config" not in obj:
        try:
            env = dict(os.environ, CENTRAL_DATA_DIR=obj["data_dir"]) if obj.get("data_dir") else None
            obj["config"] = load_config(obj.get("config_path"), env=env)
        except ConfigError as exc:
            raise click.ClickException(f"config: {exc}") from None
    return obj["config"]


def require_initialised(config: Config) -> None:
    """Refuse, in one line, a data directory `central init` never made (only init creates one):
    a shell without CENTRAL_DATA_DIR would otherwise get a fresh empty database. On PostgreSQL
    (storage.url) the database is named by the URL, not found in the data directory."""
    if config.database_path.exists() or (config.storage.url and config.data_path.is_dir()):
        return
    where = config.data_path
    what = "it does not exist" if config.storage.url else f"no {config.database_path.name}"
    raise click.ClickException(
        _p(f"{where} is not a central data directory ({what}; `central init` never ran "
           f"there): point at the right one with CENTRAL_DATA_DIR=DIR or --data-dir DIR, or run `central init`"))


async def _with_central(config: Config, fn):
    central = await Central.open(config)
    try:
        return await fn(central)
    finally:
        await central.close()


def central_command(fn):
    """Run an async command body with an opened Central; map domain errors to one line."""

    @functools.wraps(fn)
    @click.pass_context
    def wrapper(ctx, *args, **kwargs):
        config = _config(ctx)
        require_initialised(config)
        try:
            return _run(_with_central(config, lambda c: fn(c, *args, **kwargs)))
        # Messages may quote a host (an agent's error, a hostname): one line, controls escaped.
        except PollError as exc:
            hint = f" ({REASON_TEXT.get(exc.reason, '')})" if exc.reason in REASON_TEXT else ""
            raise click.ClickException(_p(f"{exc.reason}: {exc.message}{hint}")) from None
        except CentralError as exc:
            detail = f" [{exc.detail}]" if exc.detail else ""
            raise click.ClickException(_p(exc.message + detail)) from None
        except click.ClickException as exc:
            exc.message = _p(exc.message)
            raise
        except (OSError, RuntimeError) as exc:
            raise click.ClickException(_p(str(exc))) from None

    return wrapper


def _age(ts: float | None) -> str:
    if not ts:
        return "never"
    d = max(0, time.time() - ts)
    if d < 90:
        return f"{d:.0f}s ago"
    if d < 5400:
        return f"{d / 60:.0f}m ago"
    if d < 172800:
        return f"{d / 3600:.0f}h ago"
    return f"{d / 86400:.0f}d ago"


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def _pct(v) -> str:
    return f"{v:.0f}%" if _is_number(v) else "-"


def _num(v, fmt: str = ".1f", scale: float = 1.0) -> str:
    """A number as fmt, or "-" for anything else a host may have sent ("NaN%", null, a list)."""
    return format(v / scale, fmt) if _is_number(v) else "-"


def _status_text(status: str, reason: str | None) -> Text:
    colour = STATUSES[status].colour if status in STATUSES else "dim"
    text = _styled(status, colour)
    if reason:
        text.append(f" ({hosttext.escape(reason)})")
    return text


def _echo_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="CENTRAL_CONFIG",
              help="Config file (default: $CENTRAL_CONFIG or <data dir>/config.toml).")
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="The central's data directory (default: $CENTRAL_DATA_DIR, else /var/lib/central as root, "
                   "~/.local/share/central otherwise).")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(__version__, prog_name="central")
@click.pass_context
def cli(ctx, config_path, data_dir, verbose):
    """central: one page for every host, over SSH.

    \b
    Example:
      central init
      central server add web1 10.0.0.5 --user root
      central serve
    """
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path
    # as if CENTRAL_DATA_DIR named it: the config file found there, and every path under it
    ctx.obj["data_dir"] = os.path.abspath(data_dir) if data_dir else None
    level = logging.WARNING - 10 * verbose
    logs.configure(max(level, logging.DEBUG))  # one line per record, host text escaped


@cli.command()
@click.pass_context
def init(ctx):
    """Create the data directory, the database and the central's SSH key pair.

    Prints the public key and the restricted authorized_keys line to install on hosts
    (scripts/deploy-agent.sh does that for you). When no user exists yet it creates the
    admin user "admin" and prints its random password once. Safe to run again.

    \b
    Example:
      central init
    """
    config = _config(ctx)
    files.private_dir(config.data_path)
    line, created = ensure_key_pair(config.key_path)

    try:
        password = _run(_with_central(config, lambda c: c.auth.ensure_first_admin("admin")))
    except (CentralError, OSError, RuntimeError) as exc:
        raise click.ClickException(_p(exc)) from None
    console.print(f"database: {_h(config.database_location)}")
    console.print(f"SSH key:  {_h(config.key_path)} ({'created' if created else 'exists'})")
    console.print("\nThe central's public key:")
    click.echo(line)
    console.print("\nRestricted authorized_keys line (forwarding to the agent only, no shell):")
    click.echo(restricted_key_line(line))
    if password:
        click.echo("\nCreated the first user: admin (role admin). Its password, shown only this once:")
        click.echo(f"  {password}")
        click.echo("Change it with `central user passwd admin`.")


@cli.command()
@click.option("--to", "url", required=True, metavar="URL", help="The PostgreSQL database: postgresql://...")
@click.option("--from", "source", type=click.Path(dir_okay=False), default=None,
              help="The SQLite file to copy (default: database.path of the config).")
@click.option("--batch", type=click.IntRange(1, 100_000), default=5000, show_default=True,
              help="Rows per write.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@click.pass_context
def migrate(ctx, url, source, batch, as_json):
    """Copy the SQLite database into PostgreSQL (everything, ids and all).

    Servers, agent secrets, users, tokens, sessions, alerts, silences, notifications, audit,
    inventory, samples and rollups are copied table by table with progress; then each
    table's rows are counted on both sides, and a difference fails the command. Safe to run
    again: it brings the destination up to the source's newest state (stop the central
    before the last run, then set storage.url; docs/scaling.md).

    \b
    Example:
      central migrate --to 'postgresql://central@db1/central'
    """
    from pathlib import Path

    from .migrate import migrate as run_migration

    config = _config(ctx)
    path = Path(source) if source else config.database_path
    shown: dict[str, int] = {}

    def progress(table: str, done: int, total: int) -> None:
        # a line per table start and end, and about every tenth of a big table
        step = max(total // 10, batch)
        if done == 0 or done >= total or done - shown.get(table, 0) >= step:
            shown[table] = done
            if not as_json:
                err_console.print(f"{table}: {done:,} of {total:,} rows", highlight=False)

    try:
        report = _run(run_migration(path, url, batch=batch, progress=progress))
    except CentralError as exc:
        raise click.ClickException(_p(exc.message)) from None
    except (OSError, RuntimeError) as exc:
        raise click.ClickException(_p(str(exc))) from None
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        table = SafeTable("table", "source rows", "destination rows", "copied", "")
        for t in report.tables:
            table.add_row(t.table, f"{t.source:,}", f"{t.destination:,}", f"{t.copied:,}",
                          _styled("ok", "green") if t.ok else _styled("DIFFERENT", "red"))
        console.print(table)
        console.print(f"{_h(report.source)} -> {_h(report.destination)}: "
                      + ("every table has the same number of rows" if report.ok else "counts differ"))
    if not report.ok:
        bad = ", ".join(f"{t.table} ({t.source} vs {t.destination})" for t in report.tables if not t.ok)
        raise click.ClickException(_p(f"the destination's counts differ from the source's: {bad}"))


@cli.command()
@click.option("--listen", help="Address to listen on (overrides http.listen).")
@click.option("--port", type=int, help="Port to listen on (overrides http.port).")
@click.pass_context
def serve(ctx, listen, port):
    """Run the central: poller, alerting and the HTTP API and page.

    \b
    Example:
      central serve --listen 127.0.0.1 --port 9083
    """
    import dataclasses

    config = _config(ctx)
    overrides = {}
    if listen or port:
        http = dataclasses.replace(config.http, **{k: v for k, v in (("listen", listen), ("port", port)) if v})
        config = dataclasses.replace(config, http=http)
        overrides = {f"CENTRAL_HTTP_{k.upper()}": str(v) for k, v in (("listen", listen), ("port", port)) if v}
    if ctx.find_root().obj.get("data_dir"):
        overrides["CENTRAL_DATA_DIR"] = ctx.find_root().obj["data_dir"]
    require_initialised(config)
    if not config.key_path.exists():
        raise click.ClickException(f"no SSH key at {config.key_path}: run `central init` first")
    try:
        files.lock_data_dir(config.data_path)
    except files.AlreadyServing as exc:
        path, pid = exc.args
        who = f"pid {pid}" if pid else "another process"
        raise click.ClickException(_p(f"central serve already runs on {config.data_path} ({who} holds {path}); "
                                      "stop it first (two would poll and notify twice)")) from None
    try:
        _serve_locked(config, overrides)
    finally:
        files.unlock_data_dir()


def _serve_locked(config: Config, overrides: dict) -> None:
    """What `central serve` does once it holds the data directory's lock."""
    from .notifiers import check_channels
    from .service import check_database_writable
    from .telegrambot import check_bot
    from .web.app import run_app

    try:
        check_channels(config.notifiers)
        check_bot(config.telegram)
    except ConfigError as exc:
        where = f"{config.source}: " if config.source else ""
        raise click.ClickException(f"config: {where}{exc}") from None
    try:
        asyncio.run(check_database_writable(config))
    except CentralError as exc:
        raise click.ClickException(f"cannot start: {exc.message}") from None
    try:
        run_app(config, overrides)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {config.http.listen}:{config.http.port}: {exc.strerror or exc}") from None


@cli.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome and the whole agent document as JSON.")
@central_command
async def poll(central: Central, name, as_json):
    """Poll one server now and print what it reported (nothing is stored).

    \b
    Example:
      central poll web1
    """
    result = await servers.poll_now(central, name)
    if as_json:
        _echo_json(result)
        return
    if not result["ok"]:
        raise PollError(result["reason"], result["error"])
    s, doc = result["sample"], result["document"]
    console.print(f"[bold]{_h(name)}[/bold] ({_h(doc.get('hostname'))}) polled in {result['duration_ms']:.1f} ms")
    console.print(f"cpu {_pct(s['cpu'])}  mem {_pct(s['mem'])}  swap {_pct(s['swap'])}  disk {_pct(s['disk'])}  "
                  f"load {_num(s['load1'], '.2f')} {_num(s['load5'], '.2f')} {_num(s['load15'], '.2f')}  "
                  f"processes {_num(s['procs'], '.0f')}")
    if s["top"]:
        t = SafeTable("pid", "name", "cpu %", "rss MB", title="top processes")
        for pid, pname, cpu, rss in s["top"]:
            t.add_row(str(pid), str(pname), _num(cpu), _num(rss, scale=1e6))
        console.print(t)
    if doc.get("errors"):
        console.print(f"[yellow]collector errors:[/yellow] {_h(doc['errors'])}")


@cli.group()
def server():
    """Add, list, inspect, test, trust and remove servers.

    \b
    Example:
      central server list
    """


def _confirm_key(probed: dict, accept: bool, expected: str | None) -> str:
    """The fingerprint the operator confirmed (interactively or by option)."""
    from .servers import normalise_fingerprint

    if expected:
        if normalise_fingerprint(expected) != probed["fingerprint"]:
            raise click.ClickException(
                f"host_key_mismatch: {probed['host']}:{probed['port']} presents {probed['fingerprint']}, "
                f"not {normalise_fingerprint(expected)}; not pinned")
        return probed["fingerprint"]
    click.echo(f"{_p(probed['host'])}:{probed['port']} presents a {_p(probed['algorithm'])} host key:")
    click.echo(f"  {probed['fingerprint']}")
    if accept:
        return probed["fingerprint"]
    if not sys.stdin.isatty():
        raise click.ClickException("cannot confirm the host key without a terminal: "
                                   "pass --host-key-fingerprint FP (or --accept-host-key)")
    if not click.confirm("Is this the host's key (compare with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on it)?"):
        raise click.ClickException("host key not confirmed; nothing added")
    return probed["fingerprint"]


@server.command("add")
@click.argument("name")
@click.argument("host")
@click.option("--user", default="central", show_default=True,
              help="SSH user the central logs in as (deploy creates `central`; root with --full-access).")
@click.option("--port", default=22, show_default=True, type=int, help="SSH port.")
@click.option("--key", "key_path", type=click.Path(dir_okay=False), help="Private key (default: the central's key).")
@click.option("--tag", "tags", multiple=True, help="Tag (repeatable).")
@click.option("--interval", type=float, help="Poll interval in seconds (default: poll.interval).")
@click.option("--agent-port", default=8083, show_default=True, type=int, help="Agent port on the host's loopback.")
@click.option("--accept-host-key", is_flag=True, help="Pin the key the host presents without asking.")
@click.option("--host-key-fingerprint", "fp", help="Pin only if the host presents this SHA256 fingerprint.")
@click.option("--via", metavar="BASTION", help="Reach it through this server (a bastion, added before).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@central_command
async def server_add(central: Central, name, host, user, port, key_path, tags, interval, agent_port,
                     accept_host_key, fp, via, as_json):
    """Add a server: show its host key fingerprint, pin it once confirmed, check the agent.

    An unreachable host or a refused key is an error and nothing is added. When the agent
    does not answer yet the server is added anyway and the command says how to deploy it.

    \b
    Example:
      central server add web1 10.0.0.5 --tag prod --host-key-fingerprint SHA256:abc...
      central server add db1 db1.lan --user monitor --accept-host-key
      central server add app7 10.1.0.7 --via bastion1 --host-key-fingerprint SHA256:def...
    """
    if not (fp or accept_host_key) and central.pool.host_cas(host, port):
        await servers.check_new(central, name, host, port)
        confirmed = None
        click.echo(f"{_p(host)}:{port} is vouched for by a trusted host CA: its certificate is checked, no key pinned")
    else:
        probed = await servers.probe_new(central, name, host, port, via=via)
        confirmed = _confirm_key(probed, accept_host_key, fp)
    result = await servers.add_server(central, name, host, port=port, user=user, key_path=key_path, tags=list(tags),
                                      interval=interval, agent_port=agent_port, fingerprint=confirmed, via=via)
    if as_json:
        _echo_json(result)
        return
    agent = result["agent"]
    click.echo(f"added {name} ({_p(user)}@{_p(host)}:{port}), "
               + (f"host key {confirmed} pinned" if confirmed else "trusted through its host certificate"))
    if agent["ok"]:
        outdated = " [outdated: redeploy with `central deploy --upgrade-outdated`]" if agent.get("outdated") else ""
        click.echo(f"agent {_p(agent.get('version'))} answers{outdated}")
    else:
        click.echo(f"warning: {agent['reason']}: {_p(agent['error'])}")
        click.echo(_p(agent["hint"]))
    for warning in result["warnings"]:
        click.echo(f"warning: {_p(warning)}")


@server.command("ssh-config")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["ansible-ini", "ansible-yaml", "ssh-config", "csv"]),
              help="The file's format (default: from its name and content).")
@click.option("--include", metavar="FILE", help="Your own ssh config, for everything the inventory does not say.")
def server_ssh_config(path, fmt, include):
    """Print an ssh config for a fleet file's hosts (what scripts/deploy-agent.sh --inventory uses).

    One Host block per host: HostName, Port, User (ansible_user, User) and ProxyJump to its
    bastion (central_via, via), so `ssh NAME` and deploy-agent.sh reach it as the inventory says.

    \b
    Example:
      central server ssh-config inventory.ini --include ~/.ssh/config > fleet_ssh_config
    """
    from . import fleet, fleetfile

    try:
        entries = fleet.read_fleet_file(path, fmt)
        for e in entries:
            servers.check_name(e.name)
            servers.check_host(e.host)
            if e.user:
                servers.check_user(e.user)
            if e.via:
                servers.check_name(e.via)
    except CentralError as exc:
        raise click.ClickException(_p(exc.message)) from None
    if include and any(c.isspace() or c in '"#' for c in include):
        raise click.ClickException("--include: a path without spaces, quotes or '#'")
    click.echo(fleetfile.ssh_config_for(entries, include), nl=False)


@server.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--tag", help="Only servers with this tag.")
@click.option("--status", type=click.Choice(list(STATUSES)), help="Only servers in this status.")
@central_command
async def server_list(central: Central, as_json, tag, status):
    """List servers with status, CPU, memory, disk, load and last seen.

    \b
    Example:
      central server list --tag prod
      central server list --json | jq '.[] | select(.status != "online") | .name'
    """
    rows = (await views.server_list(central, tag=tag, status=status, limit=None))["servers"]
    if as_json:
        _echo_json(rows)
        return
    t = SafeTable("name", "host", "status", "cpu", "mem", "disk", "load", "last seen", "tags")
    names = {r["id"]: r["name"] for r in (await central.storage.server_dicts() if any(r.get("via") for r in rows) else ())}
    for r in rows:
        s = r["sample"] or {}
        load = _num(s.get("load1"), ".2f")
        host = central.transports.address(r) + (f" via {names.get(r['via'], '?')}" if r.get("via") else "")
        t.add_row(r["name"], host, _status_text(r["status"], r["status_reason"]), _pct(s.get("cpu")),
                  _pct(s.get("mem")), _pct(s.get("disk")), load, _age(r["last_seen"]), ", ".join(r["tags"]))
    console.print(t)


@server.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@central_command
async def server_show(central: Central, name, as_json):
    """Show one server: settings, status, agent, inventory and recent changes.

    \b
    Example:
      central server show web1
    """
    d = await views.server_detail(central, name)
    if as_json:
        _echo_json(d)
        return
    s = d["server"]
    t = SafeTable(show_header=False, box=None)
    for key in ("name", "host", "port", "user", "tags", "status", "status_reason", "last_error", "last_seen",
                "host_key_fingerprint", "agent_version", "agent_sha256", "hostname"):
        value = s.get(key)
        if key == "last_seen":
            value = _age(value)
        elif key == "tags":
            value = ", ".join(value)
        t.add_row(key, "-" if value in (None, "") else str(value))
    if d["agent_outdated"]:
        t.add_row("agent", _styled("outdated", "yellow"))
    console.print(t)
    inv = (d["inventory"] or {}).get("doc") or {}
    if inv:
        console.print(f"inventory: {_h(json.dumps(inv, sort_keys=True)[:400])}")
    for change in d["inventory_changes"][:5]:
        console.print(f"  {_age(change['ts'])}: {_h(change['change_type'])}: {_h(change['change_summary'])}")


def _confirm_removal(yes: bool, question: str) -> None:
    """Ask before deleting (refusing without a terminal unless --yes was given)."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise CentralError("refusing to remove without confirmation: pass --yes")
    if not click.confirm(question):
        raise CentralError("not removed")


@server.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@central_command
async def server_remove(central: Central, name, yes):
    """Remove a server and all its stored history.

    \b
    Example:
      central server remove web1 --yes
    """
    await central.storage.get_server(name)
    _confirm_removal(yes, f"Remove {name} and all its history?")
    await servers.remove_server(central, name)
    click.echo(f"removed {name}")


@server.command("test")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@central_command
async def server_test(central: Central, name, as_json):
    """Check SSH with the pinned key and the agent's health.

    \b
    Example:
      central server test web1
    """
    result = await servers.test_server(central, name)
    if as_json:
        _echo_json(result)
    elif result.get("ok"):
        click.echo(f"{name}: ok" + (f", agent {_p(result['version'])}" if result.get("version") else "")
                   + (" (outdated)" if result.get("outdated") else ""))
    else:
        click.echo(f"{name}: {result['reason']}: {_p(result['error'])}")
        if result.get("hint"):
            click.echo(_p(result["hint"]))
    if not result.get("ok"):
        sys.exit(1)


@server.command("trust")
@click.argument("name")
@click.option("--accept-host-key", is_flag=True, help="Pin the key the host presents now without asking.")
@click.option("--host-key-fingerprint", "fp", help="Pin only if the host presents this SHA256 fingerprint.")
@central_command
async def server_trust(central: Central, name, accept_host_key, fp):
    """Re-pin a server's host key after you verified the change (resumes polling).

    \b
    Example:
      central server trust web1 --host-key-fingerprint SHA256:abc...
    """
    found = await servers.probe_server(central, name)
    if found["pinned"]:
        click.echo(f"pinned now: {found['pinned']}")
    confirmed = _confirm_key(found["probe"], accept_host_key, fp)
    result = await servers.trust_server(central, name, confirmed)
    click.echo(f"{name}: host key {result['server']['host_key_fingerprint']} pinned; polling resumes")


@server.command("secret")
@click.argument("name", required=False)
@click.option("--host", help="For a host that is not a server yet: keep the secret until `server add` names it.")
@click.option("--port", default=22, show_default=True, type=int, help="The host's SSH port (with --host).")
@central_command
async def server_secret(central: Central, name, host, port):
    """Give the central a host's agent secret, read from stdin (never from the command line).

    The secret is the content of /etc/central-agent/secret on the host, which deploy creates.
    `central deploy` stores it by itself; scripts/deploy-agent.sh hands it over with --host
    (run before the server is added). It is never printed, logged or shown by the API.

    \b
    Example:
      ssh root@10.0.0.5 cat /etc/central-agent/secret | central server secret web1
      ... | central server secret --host 10.0.0.5 --port 22
    """
    if (name is None) == (host is None):
        raise click.ClickException("give a server name or --host HOST, not both")
    if sys.stdin.isatty():
        secret = click.prompt("Agent secret", hide_input=True)
    else:
        secret = sys.stdin.read(4096)
    result = await servers.store_agent_secret(central, secret, name=name, host=host, port=port)
    if result["stored_for"]:
        click.echo("agent secret stored for " + ", ".join(result["stored_for"]))
    else:
        pending = result["pending"]
        click.echo(f"agent secret kept for {pending['host']}:{pending['port']} until "
                   f"`central server add NAME {pending['host']}` adds it")

_IMPORT_STYLE = {"add": "green", "change": "yellow", "skip": "dim", "error": "red"}


def _import_table(plan) -> SafeTable:
    """One row per host of the file: what the import does with it and which key it pins."""
    t = SafeTable("name", "line", "action", "address", "tags", "via", "host key", "note", title="import")
    for r in plan.rows:
        key = f"{r.fingerprint} ({r.key_source})" if r.fingerprint else "-"
        note = r.error if r.action == "error" else ", ".join(r.changes)
        t.add_row(r.name, r.where, _styled(r.action, _IMPORT_STYLE[r.action]), f"{r.user}@{r.host}:{r.port}",
                  ", ".join(r.tags), r.via or "-", key, note)
    return t


@server.command("import")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["ansible-ini", "ansible-yaml", "ssh-config", "csv"]),
              help="The file's format (default: from its name and content).")
@click.option("--known-hosts", "known_hosts", multiple=True, type=click.Path(dir_okay=False),
              help="A known_hosts file you trust for the host keys (repeatable; hashed entries work).")
@click.option("--fetch-host-keys", is_flag=True,
              help="Ask hosts without a trusted key for theirs; the table shows them for one confirmation.")
@click.option("--confirm", "confirmation", metavar="DIGEST",
              help="Confirm fetched keys without a prompt: the digest a dry run printed for them.")
@click.option("--user", help="The central's login user on the hosts (default: central).")
@click.option("--inventory-user", is_flag=True,
              help="Log in as each host's own user from the file (ansible_user, User) instead.")
@click.option("--tag", "tags", multiple=True, help="A tag for every imported server, besides its groups (repeatable).")
@click.option("--dry-run", is_flag=True, help="Print what would be added, changed or skipped; store nothing.")
@click.option("--skip-errors", is_flag=True, help="Import the good rows even when others are in error.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan (and the result) as JSON.")
@central_command
async def server_import(central: Central, path, fmt, known_hosts, fetch_host_keys, confirmation, user,
                        inventory_user, tags, dry_run, skip_errors, as_json):
    """Add or update many servers from an Ansible inventory, an ssh config or a CSV file.

    Ansible groups become tags; ansible_host, ansible_port and central_via (a bastion's name)
    are honoured, and ansible_user with --inventory-user (else it is only who you deploy as).
    In an ssh config every Host alias without wildcards is a server (HostName, Port, User,
    ProxyJump as ssh resolves them). CSV has a header: name,host,port,user,tags,host_key,via.
    Host keys come from a known_hosts file you trust, a host_key per row (a key line, or a
    fingerprint the host must present), or --fetch-host-keys (all shown, confirmed once).
    Nothing is trusted silently. Running it again changes nothing.

    \b
    Example:
      central server import inventory.ini --known-hosts ~/.ssh/known_hosts --dry-run
      central server import hosts.yml --known-hosts ~/.ssh/known_hosts
      central server import ~/.ssh/config --fetch-host-keys
      central server import fleet.csv --fetch-host-keys --confirm 3f2a9c0d1e4b5a6f
    """
    from . import fleet

    entries = fleet.read_fleet_file(path, fmt)
    known = fleet.read_known_hosts(known_hosts)
    plan = await fleet.plan_import(central, entries, known_hosts=known, fetch=fetch_host_keys, user=user,
                                   inventory_user=inventory_user, extra_tags=tags)
    summary = plan.summary()
    if as_json and dry_run:
        _echo_json(plan.to_dict())
    elif not as_json:
        console.print(_import_table(plan))
        console.print(f"{summary['add']} to add, {summary['change']} to change, {summary['skip']} unchanged, "
                      f"{summary['error']} in error")
    if dry_run:
        if plan.confirmation and not as_json:
            click.echo(f"fetched host keys: confirm them with --confirm {plan.confirmation}")
        if summary["error"]:
            sys.exit(1)
        return
    if plan.confirmation and confirmation is None:
        if as_json or not sys.stdin.isatty():
            raise click.ClickException("cannot confirm the fetched host keys without a terminal: check the table "
                                       f"(--dry-run) and pass --confirm {plan.confirmation}")
        if not click.confirm(f"Are these the hosts' keys ({sum(1 for r in plan.rows if r.key_source == 'fetched')} "
                             "fetched; compare with ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on them)?"):
            raise click.ClickException("host keys not confirmed; nothing imported")
        confirmation = plan.confirmation
    result = await fleet.apply_import(central, plan, confirmation=confirmation, skip_errors=skip_errors)
    if as_json:
        _echo_json({**plan.to_dict(), "result": result})
    else:
        click.echo(f"imported: {result['added']} added, {result['changed']} changed, {result['skipped']} skipped")


def _read_password(password_stdin: bool, confirm: bool = True) -> str:
    """A password from stdin (one line) or an interactive prompt; never from argv."""
    if password_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    if not sys.stdin.isatty():
        raise click.ClickException("no terminal to ask for the password: pipe it in with --password-stdin")
    return click.prompt("Password", hide_input=True, confirmation_prompt=confirm)


@cli.group()
def user():
    """Manage the users of the HTTP API and page (roles: viewer, operator, admin).

    viewer reads everything; operator may also act (remote actions, acknowledge alerts, test
    servers); admin also manages servers, users and tokens.

    \b
    Example:
      central user add alice --role operator
      central user list
    """


@user.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["viewer", "operator", "admin"]), default="viewer", show_default=True,
              help="What the user may do.")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@central_command
async def user_add(central: Central, name, role, password_stdin):
    """Add a user; the password is prompted for (or read from stdin).

    \b
    Example:
      central user add alice --role operator
      printf '%s\\n' "$PASSWORD" | central user add ci --role viewer --password-stdin
    """
    from .auth import check_password, check_username

    check_username(name)
    if await central.storage.find_user(name) is not None:
        raise CentralError(f"a user named {name!r} already exists")
    password = check_password(_read_password(password_stdin))
    await central.auth.add_user(name, role, password)
    click.echo(f"added user {name} ({role})")


@user.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the new password from the first line of stdin.")
@central_command
async def user_passwd(central: Central, name, password_stdin):
    """Set a user's password (their open browser sessions end).

    \b
    Example:
      central user passwd admin
    """
    await central.storage.get_user(name)
    await central.auth.set_password(name, _read_password(password_stdin))
    click.echo(f"password of {name} changed")


@user.command("role")
@click.argument("name")
@click.argument("role", type=click.Choice(["viewer", "operator", "admin"]))
@central_command
async def user_role(central: Central, name, role):
    """Change a user's role (the last admin stays admin).

    \b
    Example:
      central user role alice admin
    """
    await central.auth.set_role(name, role)
    click.echo(f"{name} is now {role}")


@user.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@central_command
async def user_remove(central: Central, name, yes):
    """Remove a user and revoke their API tokens (the last admin cannot be removed).

    \b
    Example:
      central user remove alice --yes
    """
    await central.storage.get_user(name)
    _confirm_removal(yes, f"Remove user {name} and their API tokens?")
    await central.auth.remove_user(name)
    click.echo(f"removed user {name}")


@user.command("logout")
@click.argument("name")
@central_command
async def user_logout(central: Central, name):
    """End every page session of a user (their saved cookies stop working; API tokens stay).

    \b
    Example:
      central user logout alice
    """
    ended = await central.auth.end_user_sessions(name)
    click.echo(f"ended {ended} session{'s' if ended != 1 else ''} of {name}")


@user.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@central_command
async def user_list(central: Central, as_json):
    """List users and their roles.

    \b
    Example:
      central user list --json
    """
    users = await central.auth.list_users()
    if as_json:
        _echo_json(users)
        return
    t = SafeTable("name", "role", "created")
    for u in users:
        t.add_row(u["name"], u["role"], _age(u["created_at"]))
    console.print(t)


@cli.group()
def token():
    """Create, list and revoke API tokens for scripts (Authorization: Bearer <token>).

    \b
    Example:
      central token create grafana --user admin
    """


@token.command("create")
@click.argument("name")
@click.option("--user", "owner", default="admin", show_default=True, help="The user the token acts as.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (including the token).")
@central_command
async def token_create(central: Central, name, owner, as_json):
    """Create an API token; it is printed once and stored only as a hash.

    \b
    Example:
      central token create prometheus --user viewer1
      curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:9083/api/v1/servers
    """
    secret, record = await central.auth.create_token(owner, name)
    if as_json:
        _echo_json({**record, "token": secret})
        return
    click.echo(f"token {record['id']} ({name}) for {owner}; shown only this once:")
    click.echo(secret)


@token.command("list")
@click.option("--user", "owner", help="Only this user's tokens.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@central_command
async def token_list(central: Central, owner, as_json):
    """List API tokens (never the tokens themselves).

    \b
    Example:
      central token list --user admin
    """
    tokens = await central.auth.list_tokens(owner)
    if as_json:
        _echo_json(tokens)
        return
    t = SafeTable("id", "name", "user", "created", "last used", "state")
    for tk in tokens:
        t.add_row(str(tk["id"]), tk["name"], tk["user"], _age(tk["created_at"]), _age(tk["last_used"]),
                  "revoked" if tk["revoked_at"] else "active")
    console.print(t)


@token.command("revoke")
@click.argument("token_id", type=int)
@central_command
async def token_revoke(central: Central, token_id):
    """Revoke an API token by id (it stops working at once).

    \b
    Example:
      central token revoke 3
    """
    record = await central.auth.revoke_token(token_id)
    click.echo(f"revoked token {record['id']} ({record['name']})")



_STATE_STYLE = {"ok": "green", "failed": "red", "skipped": "cyan", "running": "yellow", "waiting": "dim"}


def _deploy_table(results, final: bool) -> SafeTable:
    """One row per server: the step it is at (live) or how it ended (summary)."""
    if final:
        t = SafeTable("server", "target", "result", "agent", "sha256", "message", title="deploy summary",
                      wrap=("message",))
    else:
        t = SafeTable("server", "target", "state", "step")
    for r in results:
        style = _STATE_STYLE.get(r.state, "")
        state = _styled(r.state, style)
        if final:
            message = r.message
            if r.state == "failed":
                message = f"at {r.step}: {r.message}. {r.hint}"
            t.add_row(r.server, r.target, state, r.version or "-", (r.sha256 or "-")[:12], message)
        else:
            t.add_row(r.server, r.target, state, r.step or "-")
    return t


@cli.command()
@click.argument("servers", nargs=-1)
@click.option("--all", "all_servers", is_flag=True, help="Every server central knows (except its own host).")
@click.option("--upgrade-outdated", is_flag=True,
              help="Only servers whose agent reports another sha256 than the bundled agent (or none).")
@click.option("--no-actions", is_flag=True, help="The agent refuses every action (kill, service, docker).")
@click.option("--allow-actions", metavar="LIST", help="Comma-separated subset of kill,service,docker (default: all).")
@click.option("--service-pattern", "service_patterns", multiple=True, metavar="GLOB",
              help="Units actions may touch (repeatable; default '*').")
@click.option("--container-pattern", "container_patterns", multiple=True, metavar="GLOB",
              help="Docker containers actions may touch (repeatable; default '*').")
@click.option("--watch-unit", "watch_units", multiple=True, metavar="UNIT", help="Unit whose state the agent reports (repeatable).")
@click.option("--full-access", is_flag=True,
              help="Install the central's key without restrictions for your login user (allows a shell).")
@click.option("--central-user", default="central", show_default=True,
              help="The unprivileged user deploy creates on the host for the central to log in as.")
@click.option("--rotate-secret", is_flag=True, help="Give the agent a new secret even if it has a sound one.")
@click.option("--user", "login_user",
              help="Who you log in as to deploy (default: the server's user when it is not the central's, "
                   "else your ssh config's, else your own name, as ssh does).")
@click.option("--identity", type=click.Path(dir_okay=False), help="Your SSH private key to log in with.")
@click.option("--known-hosts", type=click.Path(dir_okay=False),
              help="known_hosts file to check host keys against (default: yours, as ssh uses).")
@click.option("--pinned-host-key", is_flag=True, help="Check host keys against the keys central pinned instead.")
@click.option("--ssh-config", type=click.Path(dir_okay=False), help="ssh config file (default: ~/.ssh/config).")
@click.option("--terminal-user", metavar="NAME",
              help="Also install the web terminal's key (restrict,pty) for this existing host account.")
@click.option("-j", "--jobs", default=8, show_default=True, type=int, help="Servers deployed in parallel.")
@click.option("--inventory", type=click.Path(dir_okay=False),
              help="Deploy the hosts of this fleet file (imported before), each as its own user (ansible_user, User).")
@click.option("--inventory-format", type=click.Choice(["ansible-ini", "ansible-yaml", "ssh-config", "csv"]),
              help="The fleet file's format (default: from its name and content).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON (no progress display).")
@central_command
async def deploy(central: Central, servers, all_servers, upgrade_outdated, no_actions, allow_actions,
                 service_patterns, container_patterns, watch_units, full_access, central_user, rotate_secret,
                 login_user, identity, known_hosts, pinned_host_key, ssh_config, terminal_user, jobs, inventory,
                 inventory_format, as_json):
    """Install or upgrade the agent on servers over your own SSH access.

    The same steps as scripts/deploy-agent.sh (the same installer runs on the host): log in
    with your keys, ssh-agent and ~/.ssh/config (as root or a user with passwordless sudo),
    upload the bundled agent, write its policy, create the agent secret and the central's
    login user `central`, whose key may only forward to the agent port (an sshd Match block,
    checked with sshd -t before sshd reloads), (re)start the agent, check that you can still
    log in (or roll the sshd changes back), store the secret, then check that the central
    reaches the agent as `central`. Servers deployed the old way are upgraded in place.
    Host keys are checked against your known_hosts, or with --pinned-host-key against the
    keys central pinned.

    \b
    Example:
      central deploy web1 web2
      central deploy --all --upgrade-outdated
      central deploy --all --allow-actions service --service-pattern 'nginx*' --pinned-host-key
      central deploy web1 --terminal-user ops
      central deploy --inventory inventory.ini --pinned-host-key -j 20
    """
    from .deploy import ACTION_KINDS, Deployer, DeployOptions, select_inventory, select_servers

    if no_actions and allow_actions:
        raise click.UsageError("--no-actions and --allow-actions exclude each other")
    actions = () if no_actions else (tuple(a for a in allow_actions.split(",") if a) if allow_actions is not None
                                     else ACTION_KINDS)
    options = DeployOptions(actions=actions, service_patterns=service_patterns, container_patterns=container_patterns,
                            watch_units=watch_units, full_access=full_access, central_user=central_user,
                            rotate_secret=rotate_secret, login_user=login_user, identity=identity,
                            known_hosts=known_hosts, pinned_host_key=pinned_host_key,
                            ssh_config=(ssh_config,) if ssh_config else None, jobs=jobs,
                            terminal_user=terminal_user)
    if inventory:
        if servers or all_servers:
            raise click.UsageError("--inventory excludes server names and --all")
        from dataclasses import replace

        from .fleet import read_fleet_file

        targets, users = await select_inventory(central, read_fleet_file(inventory, inventory_format))
        options = replace(options, login_users=users)
    else:
        targets = await select_servers(central, servers, all_servers)
    if not targets:
        raise CentralError("no servers to deploy to: add them with `central server add` first")
    results: list = []
    live = None
    if not as_json and err_console.is_terminal:
        from rich.live import Live

        live = Live(console=err_console, auto_refresh=False, transient=True)

        def on_change(result):
            if result not in results:
                results.append(result)
            live.update(_deploy_table(results, final=False), refresh=True)
    else:
        def on_change(result):
            if result not in results:
                results.append(result)
            elif not as_json and result.state in ("running", "ok", "failed", "skipped"):
                detail = f": {result.message}" if result.state in ("failed", "skipped") else ""
                err_console.print(_p(f"[{result.server}] {result.state if result.state != 'running' else result.step}"
                                     f"{detail}"), markup=False, highlight=False)

    deployer = Deployer(central, options, on_change)
    if live is not None:
        with live:
            results = await deployer.run(targets, upgrade_outdated)
    else:
        results = await deployer.run(targets, upgrade_outdated)
    failed = [r for r in results if not r.ok]
    if as_json:
        _echo_json([r.to_dict() for r in results])
    else:
        console.print(_deploy_table(results, final=True))
        done = sum(1 for r in results if r.state == "ok")
        skipped = sum(1 for r in results if r.state == "skipped")
        console.print(f"{done} deployed, {skipped} skipped, {len(failed)} failed")
    if failed:
        sys.exit(1)


@cli.command()
@click.argument("servers", nargs=-1)
@click.option("--all", "all_servers", is_flag=True, help="Every server central knows (except its own host).")
@click.option("--remove", is_flag=True, help="Then remove the servers from central too, with their history.")
@click.option("--central-user", default="central", show_default=True,
              help="The login user deploy created on the hosts (removed if deploy created it).")
@click.option("--user", "login_user",
              help="Who you log in as (default: the server's user when it is not the central's, "
                   "else your ssh config's, else your own name, as ssh does).")
@click.option("--identity", type=click.Path(dir_okay=False), help="Your SSH private key to log in with.")
@click.option("--known-hosts", type=click.Path(dir_okay=False),
              help="known_hosts file to check host keys against (default: yours, as ssh uses).")
@click.option("--pinned-host-key", is_flag=True, help="Check host keys against the keys central pinned instead.")
@click.option("--ssh-config", type=click.Path(dir_okay=False), help="ssh config file (default: ~/.ssh/config).")
@click.option("-j", "--jobs", default=8, show_default=True, type=int, help="Servers undeployed in parallel.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@central_command
async def undeploy(central: Central, servers, all_servers, remove, central_user, login_user, identity, known_hosts,
                   pinned_host_key, ssh_config, jobs, yes, as_json):
    """Remove the agent and everything deploying installed from servers, over your own SSH access.

    On each host: the agent and its service (systemd unit, or the fallback loop and its boot
    entry), /opt/central-agent, the policy /etc/central-agent.json, /etc/central-agent (the
    secret and the login user's key), the sshd Match block (sshd -t, then reloaded), every
    authorized_keys line holding the central's key or the terminal key, and the login user
    `central` if deploy created it. The same as scripts/deploy-agent.sh --uninstall.
    The servers stay in central (polling them now fails) unless --remove.

    \b
    Example:
      central undeploy web1 --yes
      central undeploy web1 web2 --remove --yes
    """
    from .deploy import DeployOptions, Undeployer, select_servers

    options = DeployOptions(central_user=central_user, login_user=login_user, identity=identity,
                            known_hosts=known_hosts, pinned_host_key=pinned_host_key,
                            ssh_config=(ssh_config,) if ssh_config else None, jobs=jobs)
    targets = await select_servers(central, servers, all_servers)
    if not targets:
        raise CentralError("no servers to undeploy")
    names = ", ".join(s.name for s in targets)
    _confirm_removal(yes, f"Remove the agent and central's access from {names}"
                          + (" and remove them from central with their history?" if remove else "?"))

    def on_change(result):
        if not as_json and result.state in ("ok", "failed", "skipped"):
            detail = f": {result.message}" if result.state != "ok" else ""
            err_console.print(_p(f"[{result.server}] {result.state}{detail}"), markup=False, highlight=False)

    results = await Undeployer(central, options, on_change).run(targets)
    if remove:
        for r in results:
            if r.state == "ok":
                await servers_mod.remove_server(central, r.server)
    failed = [r for r in results if not r.ok]
    if as_json:
        _echo_json([{**r.to_dict(), "removed_from_central": remove and r.state == "ok"} for r in results])
    else:
        t = SafeTable("server", "target", "result", "message", title="undeploy summary", wrap=("message",))
        for r in results:
            message = f"at {r.step}: {r.message}. {r.hint}" if r.state == "failed" else r.message
            t.add_row(r.server, r.target, _styled(r.state, _STATE_STYLE.get(r.state, "")), message)
        console.print(t)
        done = sum(1 for r in results if r.state == "ok")
        console.print(f"{done} undeployed, {len(failed)} failed"
                      + ("; removed from central" if remove and done else
                         ("" if remove or not done else "; `central server remove NAME` forgets a server")))
    if failed:
        sys.exit(1)


@cli.group()
def action():
    """Run remote actions on a server (kill, service, docker) and read the audit trail.

    Every request is checked (arguments, the host's policy), confirmed, and recorded in
    the audit log with its outcome, refusals included. The CLI acts as role admin, with
    actor cli:<your unix user>.

    \b
    Example:
      central action kill web1 4242
      central action service web1 nginx restart
      central action log web1
    """


def _actor() -> str:
    import getpass

    try:
        return "cli:" + getpass.getuser()
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


def _cli_value(text: str | None):
    """A number typed on the command line as an int; anything else goes to validation as is."""
    if text is not None and text.isascii() and text.isdigit():
        return int(text)
    return text


async def _act(central: Central, server_name: str, kind: str, args: dict, yes: bool, as_json: bool) -> None:
    from .actions import LOCAL_OPERATOR_ROLE, Cancelled, run_action

    async def confirm(preview: dict) -> bool:
        if not as_json:
            click.echo(_lines(preview["text"]))
        if yes:
            return True
        if not sys.stdin.isatty():
            raise Cancelled("refusing to act without confirmation: no terminal, pass --yes")
        return click.confirm("Go ahead?", default=False)

    result = await run_action(central, _actor(), LOCAL_OPERATOR_ROLE, server_name, kind, args, confirm=confirm)
    if as_json:
        _echo_json(result)
    else:
        state = "[green]ok[/green]" if result["ok"] else "[red]failed[/red]"
        took = "" if result["duration_ms"] is None else f", {result['duration_ms']:.0f} ms"
        console.print(f"{state} (exit status {result['exit_status']}{took}, audit #{result['audit_id']})")
        if result["output"].strip():
            click.echo(_lines(result["output"].rstrip()))
    if not result["ok"]:
        sys.exit(1)


def _action_options(fn):
    """--yes and --json, and the async body run with an opened Central."""
    fn = central_command(fn)
    fn = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(fn)
    return click.option("--yes", is_flag=True, help="Do not ask for confirmation.")(fn)


@action.command("kill")
@click.argument("server_name", metavar="SERVER")
@click.argument("pid", metavar="PID")
@click.option("--signal", "sig", default="TERM", show_default=True,
              help="TERM, KILL, HUP, INT, QUIT, USR1 or USR2 (the SIG prefix is optional).")
@click.option("--start-time", metavar="TICKS",
              help="The process start time (field 22 of /proc/PID/stat) you expect; default: "
                   "what the central saw last, so a reused pid is never signalled.")
@_action_options
async def action_kill(central: Central, server_name, pid, sig, start_time, yes, as_json):
    """Send a signal to a process on a server (shows the process and asks first).

    \b
    Example:
      central action kill web1 4242
      central action kill web1 4242 --signal KILL --yes
    """
    args = {"pid": _cli_value(pid), "signal": sig}
    if start_time is not None:
        args["start_time"] = _cli_value(start_time)
    await _act(central, server_name, "kill", args, yes, as_json)


@action.command("service")
@click.argument("server_name", metavar="SERVER")
@click.argument("unit", metavar="UNIT")
@click.argument("verb", metavar="start|stop|restart")
@_action_options
async def action_service(central: Central, server_name, unit, verb, yes, as_json):
    """Start, stop or restart a systemd service on a server (within the host's policy).

    \b
    Example:
      central action service web1 nginx restart
      central action service web1 app-worker@2.service stop --yes
    """
    await _act(central, server_name, "service", {"unit": unit, "verb": verb}, yes, as_json)


@action.command("docker")
@click.argument("server_name", metavar="SERVER")
@click.argument("container", metavar="CONTAINER")
@click.argument("verb", metavar="start|stop|restart")
@_action_options
async def action_docker(central: Central, server_name, container, verb, yes, as_json):
    """Start, stop or restart a docker container on a server (through the Engine API).

    \b
    Example:
      central action docker web1 redis restart
      central action docker web1 3f2a9c1b7d0e stop --yes
    """
    await _act(central, server_name, "docker", {"container": container, "verb": verb}, yes, as_json)


@action.command("log")
@click.argument("server_name", metavar="[SERVER]", required=False)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000), help="Rows to show.")
@click.option("--before", "before_id", type=int, help="Only rows older than this audit id (paging).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@central_command
async def action_log(central: Central, server_name, limit, before_id, as_json):
    """Show the audit trail of actions, newest first: who, what, where, and the outcome.

    \b
    Example:
      central action log
      central action log web1 --limit 20
      central action log --json | jq '.[] | select(.result != "ok")'
    """
    from .actions import audit_log

    rows = await audit_log(central, server_name, limit, before_id)
    if as_json:
        _echo_json(rows)
        return
    colours = {"ok": "green", "failed": "red", "refused": "yellow", "invalid": "yellow", "error": "red"}
    t = SafeTable("id", "when", "actor", "server", "action", "arguments", "result", "exit", "ms", "output")
    for r in rows:
        colour = colours.get(r["result"], "white")
        args = " ".join(f"{k}={v}" for k, v in r["arguments"].items() if v is not None)  # escaped by SafeTable
        output = (r["output"] or "").strip().splitlines()
        t.add_row(str(r["id"]), time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["ts"])), r["actor"],
                  r["server_name"], r["action"], args, _styled(r["result"], colour),
                  "-" if r["exit_status"] is None else str(r["exit_status"]),
                  "-" if r["duration_ms"] is None else f"{r['duration_ms']:.0f}",
                  output[-1][:80] if output else "")
    console.print(t)


def _log_line(line: dict) -> str:
    """One log line for the terminal: time, identifier[pid], message (host text escaped)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(line["ts"])) if line.get("ts") else "-"
    who = line.get("identifier") or ""
    if line.get("pid"):
        who += f"[{line['pid']}]"
    return _p(f"{when} {who + ': ' if who else ''}{line.get('message') or ''}")


@cli.command("logs")
@click.argument("server_name", metavar="SERVER")
@click.argument("target", metavar="UNIT|CONTAINER")
@click.option("-n", "--lines", default=100, show_default=True, type=click.IntRange(1, 1000), help="Lines to show.")
@click.option("-f", "--follow", is_flag=True, help="Keep asking every 3 s and print new lines (Ctrl-C ends).")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON (not with --follow).")
@central_command
async def host_logs(central: Central, server_name, target, lines, follow, as_json):
    """Show the last lines of a unit's journal or a container's log on a server.

    A name with a unit suffix (.service, .timer, ...) is a unit; any other name is a container
    (Docker, or LXC on an LXC host). Read by the host's agent now, never stored; every request
    is in the audit log (central action log); the host policy's "logs": false refuses it. The
    CLI asks as role admin, with actor cli:<your unix user>.

    \b
    Example:
      central logs web1 nginx.service -n 50
      central logs web1 redis -f
      central logs web1 cron.service --json | jq -r '.lines[].message'
    """
    from .actions import LOCAL_OPERATOR_ROLE
    from .hostlogs import fetch_logs, target_of

    which = target_of(target)
    answer = await fetch_logs(central, _actor(), LOCAL_OPERATOR_ROLE, server_name, lines=lines, **which)
    if as_json and not follow:
        _echo_json(answer)
        return
    seen = []
    for line in answer["lines"]:
        click.echo(_log_line(line))
        seen.append((line.get("ts"), line.get("message")))
    while follow:
        await asyncio.sleep(3.0)
        answer = await fetch_logs(central, _actor(), LOCAL_OPERATOR_ROLE, server_name, lines=min(lines, 200), **which)
        known = set(seen[-1000:])
        for line in answer["lines"]:
            key = (line.get("ts"), line.get("message"))
            if key not in known:
                click.echo(_log_line(line))
                seen.append(key)


def _duration(ctx, param, value: str) -> float:
    """click callback: a duration option ("30m", "2h") in seconds."""
    try:
        seconds = parse_duration(value, "--duration")
    except ConfigError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[1]) from None
    if seconds <= 0:
        raise click.BadParameter("must be longer than 0")
    return seconds


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def _until(ts: float) -> str:
    d = ts - time.time()
    if d <= 0:
        return "ended " + _when(ts)
    return f"{_when(ts)} (in {d / 3600:.1f}h)" if d >= 5400 else f"{_when(ts)} (in {max(d / 60, 1):.0f}m)"


@server.command("maintenance")
@click.argument("name")
@click.option("--duration", required=True, callback=_duration, help="How long, e.g. 30m, 1h, 2d.")
@click.option("--comment", required=True, help="Why (shown with the window).")
@click.option("--json", "as_json", is_flag=True, help="Print the window as JSON.")
@central_command
async def server_maintenance(central: Central, name, duration, comment, as_json):
    """Start a maintenance window: the server's alerts are recorded but not notified.

    The window is a silence of kind "maintenance" for this one server; end it early with
    `central alert unsilence ID`.

    \b
    Example:
      central server maintenance web1 --duration 1h --comment "kernel update"
    """
    window = await alerts.create_silence(central, server=name, duration=duration,
                                         comment=comment, user=alerts.cli_user(), maintenance=True)
    if as_json:
        _echo_json(window)
        return
    click.echo(f"maintenance window {window['id']} for {_p(name)} until {_until(window['ends_at'])}")


@cli.group()
def alert():
    """List, acknowledge and silence alerts.

    \b
    Example:
      central alert list --firing
    """


_STATE_COLOUR = {"firing": "red", "pending": "yellow", "resolved": "green"}


@alert.command("list")
@click.option("--firing", is_flag=True, help="Only firing alerts.")
@click.option("--open", "open_only", is_flag=True, help="Only pending and firing alerts.")
@click.option("--server", help="Only this server's alerts.")
@click.option("--limit", default=100, show_default=True, type=int, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@central_command
async def alert_list(central: Central, firing, open_only, server, limit, as_json):
    """List alerts: firing first, then pending, then resolved (newest first).

    \b
    Example:
      central alert list --firing
      central alert list --server web1 --json | jq '.[] | select(.severity == "critical")'
    """
    rows = await alerts.list_alerts(central, firing_only=firing, server=server, limit=limit,
                                    open_only=open_only)
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo("no alerts")
        return
    t = SafeTable("id", "state", "severity", "server", "rule", "label", "since", "acked", "summary")
    for r in rows:
        colour = _STATE_COLOUR.get(r["state"], "dim")
        since = r["resolved_at"] if r["state"] == "resolved" else (r["fired_at"] or r["started_at"])
        t.add_row(str(r["id"]), _styled(r["state"], colour), r["severity"], r["server"] or "-", r["rule"],
                  r["label"] or "", _age(since), r["acked_by"] or "", r["summary"])
    console.print(t)


@alert.command("show")
@click.argument("alert_id", metavar="ID", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@central_command
async def alert_show(central: Central, alert_id, as_json):
    """Show one alert with the values seen and its delivery log.

    \b
    Example:
      central alert show 42
    """
    a = await alerts.get_alert(central, alert_id)
    if as_json:
        _echo_json(a)
        return
    t = SafeTable(show_header=False, box=None)
    for key in ("id", "state", "severity", "server", "rule", "label", "summary", "value"):
        t.add_row(key, "-" if a.get(key) in (None, "") else str(a[key]))
    for key in ("started_at", "fired_at", "last_evaluated", "resolved_at", "acked_at"):
        t.add_row(key, _when(a.get(key)))
    t.add_row("acked_by", a.get("acked_by") or "-")
    seen = a["details"]
    t.add_row("values", f"first {seen.get('first')}, min {seen.get('min')}, max {seen.get('max')}")
    console.print(t)
    for n in a["notifications"]:
        console.print(f"  {_when(n['ts'])} {_h(n['channel'])} {_h(n['event'])} attempt {n['attempt']}: "
                      f"{'ok' if n['ok'] else 'failed'} {_h(n['detail'])}")


@alert.command("ack")
@click.argument("alert_id", metavar="ID", type=int)
@central_command
async def alert_ack(central: Central, alert_id):
    """Acknowledge an alert as cli:<your OS user>: it stops repeating (resolution is still sent).

    \b
    Example:
      central alert ack 42
    """
    a = await alerts.ack(central, alert_id, alerts.cli_user())
    click.echo(f"alert {a['id']} ({_p(a['rule'])} on {_p(a['server'])}) acknowledged by {_p(a['acked_by'])}")


@alert.command("silence")
@click.option("--server", help="Server name (glob, e.g. 'web*').")
@click.option("--rule", help="Rule name (glob, e.g. 'disk_*').")
@click.option("--tag", help="Server tag (glob).")
@click.option("--duration", required=True, callback=_duration, help="How long, e.g. 30m, 2h, 1d.")
@click.option("--comment", required=True, help="Why (shown with the silence).")
@click.option("--json", "as_json", is_flag=True, help="Print the silence as JSON.")
@central_command
async def alert_silence(central: Central, server, rule, tag, duration, comment, as_json):
    """Mute notifications for matching alerts (all given selectors must match); alerts are still recorded.

    An alert still firing when the silence ends is notified then.

    \b
    Example:
      central alert silence --server web1 --duration 2h --comment "disk swap"
      central alert silence --rule disk_almost_full --tag lab --duration 1d --comment "lab is full"
    """
    if not (server or rule or tag):
        raise click.UsageError("give --server, --rule or --tag")
    s = await alerts.create_silence(central, server=server, rule=rule, tag=tag,
                                    duration=duration, comment=comment, user=alerts.cli_user())
    if as_json:
        _echo_json(s)
        return
    what = ", ".join(f"{k} {v}" for k, v in s["matcher"].items())
    click.echo(f"silence {s['id']} ({_p(what)}) until {_until(s['ends_at'])}")


@alert.command("unsilence")
@click.argument("silence_id", metavar="ID", type=int)
@central_command
async def alert_unsilence(central: Central, silence_id):
    """End a silence or maintenance window now (it stays in the history).

    \b
    Example:
      central alert unsilence 7
    """
    s = await alerts.delete_silence(central, silence_id)
    click.echo(f"{s['kind']} {s['id']} ended")


@alert.command("silences")
@click.option("--all", "show_all", is_flag=True, help="Include ended silences.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@central_command
async def alert_silences(central: Central, show_all, as_json):
    """List silences and maintenance windows (current and upcoming unless --all).

    \b
    Example:
      central alert silences
    """
    rows = await alerts.list_silences(central, active_only=not show_all)
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo("no silences")
        return
    t = SafeTable("id", "kind", "matches", "until", "by", "comment")
    for r in rows:
        t.add_row(str(r["id"]), r["kind"], ", ".join(f"{k}={v}" for k, v in r["matcher"].items()),
                  _until(r["ends_at"]), r["created_by"], r["comment"])
    console.print(t)


@cli.group()
def notifier():
    """See the notification channels' health and send test messages.

    \b
    Example:
      central notifier list
      central notifier test ops-mail
    """


@notifier.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (channels, routes, maintenance windows).")
@central_command
async def notifier_list(central: Central, as_json):
    """List the configured channels with their health as the delivery log tells it.

    \b
    Example:
      central notifier list
      central notifier list --json | jq '.notifiers[] | select(.state == "failing")'
    """
    data = await views.notifications_status(central)
    if as_json:
        _echo_json(data)
        return
    if not data["notifiers"]:
        click.echo("no notifiers configured (see [[notifiers]] in config.example.toml)")
        return
    t = SafeTable("name", "type", "target", "state", "last success", "last error", "failures in a row")
    for n in data["notifiers"]:
        colour = {"ok": "green", "failing": "red"}.get(n["state"], "dim")
        error = f"{_age(n['last_error_at'])}: {n['last_error']}" if n["last_error_at"] else ""
        t.add_row(n["name"], n["type"], n["target"], _styled(n["state"], colour),
                  _age(n["last_success"]) if n["last_success"] else "never", error, str(n["failures_in_row"]))
    console.print(t)


@notifier.command("test")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@central_command
async def notifier_test(central: Central, name, as_json):
    """Send a test message through one channel now (one attempt) and say what happened.

    The attempt is recorded in the delivery log like any other; exit status 1 when it failed.

    \b
    Example:
      central notifier test ops-mail
    """
    result = await central.notifier.send_test(name)
    if as_json:
        _echo_json(result)
    elif result["ok"]:
        click.echo(f"{result['name']}: delivered in {result['seconds']:.2f}s ({_p(result['detail'])})")
    if not result["ok"]:
        raise click.ClickException(f"{result['name']}: not delivered: {_p(result['detail'])}")


def main() -> None:
    """Entry point of the `central` command."""
    cli(prog_name="central")


if __name__ == "__main__":  # pragma: no cover
    main()


# `central terminal ...` lives in its own module; importing it registers the group.
from . import cli_terminal  # noqa: E402,F401
