"""Bulk onboarding: a fleet file's hosts become servers, with host keys from a source the
operator trusts, never silently.

`plan_import` reads nothing but the entries (central.fleetfile), the stored servers and the
trusted keys, and says per host what an import would do: add it, change it, leave it (skip,
unchanged) or refuse it (error). `apply_import` carries a plan out. A host key comes from the
row itself (a public key line; a fingerprint is checked against the key the host presents),
from a known_hosts file the operator trusts (hashed entries included), or is fetched from the
host: fetched keys are shown in the plan, and applying them needs the plan's `confirmation`
(a digest of the fetched fingerprints), so the operator confirms the whole table once.
Re-running an import changes nothing.
"""
from __future__ import annotations

import asyncio
import hashlib
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Sequence

from . import fleetfile
from .fleetfile import Entry, KnownHost
from .model import CentralError, Conflict, Invalid, PollError
from .sshpool import MAX_BASTIONS
from .servers import CENTRAL_LOGIN_USER, check_host, check_name, check_port, check_tags, check_user, probe_key

if TYPE_CHECKING:
    from .service import Central

ADD, CHANGE, SKIP, ERROR = "add", "change", "skip", "error"
ACTIONS = (ADD, CHANGE, SKIP, ERROR)
#: where a pinned key came from
KEY_ROW, KEY_KNOWN_HOSTS, KEY_FETCHED, KEY_PINNED, KEY_CA = "row", "known_hosts", "fetched", "pinned", "cert_authority"
# ed25519 first: when known_hosts holds several keys of a host, pin the one ssh would prefer
_KEY_PREFERENCE = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")


@dataclass
class ImportRow:
    """What an import does with one host of the file."""

    name: str
    where: str  # file:line
    action: str = SKIP
    host: str = ""
    port: int = 22
    user: str = CENTRAL_LOGIN_USER
    tags: list[str] = field(default_factory=list)
    via: str | None = None
    fingerprint: str | None = None
    key_source: str | None = None
    changes: list[str] = field(default_factory=list)  # the fields a change sets
    error: str | None = None
    host_key: str | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """JSON-ready (without the raw key)."""
        d = asdict(self)
        d.pop("host_key")
        return d


@dataclass
class ImportPlan:
    """What an import would do, row by row, and the digest that confirms its fetched keys."""

    rows: list[ImportRow]

    @property
    def confirmation(self) -> str | None:
        """sha256 over the fetched keys' names and fingerprints (None: nothing was fetched)."""
        fetched = sorted(f"{r.name} {r.fingerprint}" for r in self.rows if r.key_source == KEY_FETCHED)
        if not fetched:
            return None
        return hashlib.sha256("\n".join(fetched).encode()).hexdigest()[:16]

    def summary(self) -> dict:
        """How many rows per action."""
        return {a: sum(1 for r in self.rows if r.action == a) for a in ACTIONS}

    def to_dict(self) -> dict:
        """JSON-ready."""
        return {"rows": [r.to_dict() for r in self.rows], "summary": self.summary(), "confirmation": self.confirmation}


def _pick(keys: Sequence[str]) -> str:
    return sorted(keys, key=lambda k: _KEY_PREFERENCE.index(k.split()[0]) if k.split()[0] in _KEY_PREFERENCE else 99)[0]


def _order(entries: Sequence[Entry]) -> list[Entry]:
    """Bastions before the hosts behind them (a cycle is left for the checks to report)."""
    by_name = {e.name: e for e in entries}
    out: list[Entry] = []
    placed: set[str] = set()

    def place(e: Entry, depth: int = 0) -> None:
        if e.name in placed or depth > len(entries):
            return
        if e.via and e.via in by_name and e.via != e.name:
            place(by_name[e.via], depth + 1)
        if e.name not in placed:
            placed.add(e.name)
            out.append(e)

    for e in entries:
        place(e)
    return out


async def plan_import(
    central: Central, entries: Sequence[Entry], *, known_hosts: Sequence[KnownHost] = (),
    fetch: bool = False, user: str | None = None, inventory_user: bool = False, extra_tags: Sequence[str] = (),
) -> ImportPlan:
    """What importing these entries would do (nothing is stored).

    user: the central's login user for added servers (default `central`; given, it is set on
    existing ones too); inventory_user: use each entry's own user instead (ansible_user, User).
    fetch: ask hosts without a trusted key for theirs (shown for confirmation).
    """
    known_index = fleetfile.KnownHostsIndex(list(known_hosts)) if known_hosts else None
    existing = {s.name: s for s in await central.storage.list_servers()}
    by_id = {s.id: s for s in existing.values()}
    names_in_file = {e.name for e in entries}
    rows: list[ImportRow] = []
    to_fetch: list[tuple[ImportRow, Entry, str | None]] = []  # (row, entry, fingerprint the row gives)
    for e in _order(entries):
        row = ImportRow(name=e.name, where=e.where)
        rows.append(row)
        try:
            check_name(e.name)
            row.host = check_host(e.host)
            row.port = check_port(e.port if e.port is not None else 22)
            if inventory_user and e.user:
                row.user = check_user(e.user)
            elif user:
                row.user = check_user(user)
            row.tags = list(check_tags([*e.tags, *extra_tags]))
            if e.via:
                if e.via == e.name:
                    raise Invalid("is its own bastion")
                if e.via not in names_in_file and e.via not in existing:
                    raise Invalid(f"its bastion {e.via!r} is neither in the file nor a server")
                row.via = e.via
        except CentralError as exc:
            row.action, row.error = ERROR, f"{e.where}: host {e.name}: {exc.message}"
            continue
        current = existing.get(e.name)
        if current is not None and central.transports.of(current).no_host_key is not None:
            row.action, row.error = ERROR, f"{e.where}: host {e.name}: the name is taken by the central's own host"
            continue
        moved = current is None or (current.host, current.port) != (row.host, row.port)
        given_fp = None
        trusted = fleetfile.trusted_keys(known_index, row.host, row.port) if known_index else []
        if e.host_key:
            if e.host_key.startswith("SHA256:") or ":" not in e.host_key and " " not in e.host_key:
                given_fp = e.host_key if e.host_key.startswith("SHA256:") else "SHA256:" + e.host_key
            else:
                try:
                    row.host_key = fleetfile.check_key_line(e.host_key)
                except ValueError as exc:
                    row.action, row.error = ERROR, f"{e.where}: host {e.name}: host_key: {exc}"
                    continue
                row.key_source = KEY_ROW
        elif trusted:
            row.host_key, row.key_source = _pick(trusted), KEY_KNOWN_HOSTS
        if row.host_key:
            row.fingerprint = fleetfile.key_fingerprint(row.host_key)
        if current is not None and not moved:
            # same address: the pinned key stays, unless the trusted source says another one
            if row.host_key and current.host_key and row.host_key != " ".join(current.host_key.split()[:2]) \
                    and not (row.key_source == KEY_KNOWN_HOSTS and current.host_key in trusted):
                row.action = ERROR
                row.error = (f"{e.where}: host {e.name}: {row.key_source} says {row.fingerprint} but "
                             f"{current.host_key_fingerprint} is pinned; verify it and run `central server trust {e.name}`")
                continue
            row.host_key, row.fingerprint = current.host_key, current.host_key_fingerprint
            row.key_source = KEY_PINNED if current.host_key else KEY_CA
        elif not row.host_key and not given_fp and central.pool.host_cas(row.host, row.port):
            row.key_source = KEY_CA  # a trusted host CA vouches: its certificate is checked on connect
        elif not row.host_key:
            if not (fetch or given_fp):
                row.action = ERROR
                row.error = (f"{e.where}: host {e.name}: no trusted host key for {fleetfile.host_token(row.host, row.port)}"
                             " (give a known_hosts file, a host_key per row, or fetch the keys to confirm them)")
                continue
            to_fetch.append((row, e, given_fp))
        if current is None:
            row.action = ADD
        else:
            changes = []
            if moved:
                changes += [f for f, old, new in (("host", current.host, row.host), ("port", current.port, row.port))
                            if old != new]
            if (inventory_user and e.user or user) and row.user != current.user:
                changes.append("user")
            elif not (inventory_user and e.user or user):
                row.user = current.user
            if tuple(row.tags) != current.tags:
                changes.append("tags")
            current_via = by_id[current.via].name if current.via in by_id else None
            if row.via != current_via:
                changes.append("via")
            row.action = CHANGE if changes else SKIP
            row.changes = changes
    _check_chains(rows, existing, by_id)
    if to_fetch:
        await _fetch_keys(central, to_fetch, rows, existing)
    return ImportPlan(rows)


def _check_chains(rows: list[ImportRow], existing: dict, by_id: dict) -> None:
    """Rows whose bastions, as the file and the stored servers say, loop or go deeper than
    MAX_BASTIONS become errors (the pool would refuse them at every connect)."""
    via_of = {name: (by_id[s.via].name if s.via in by_id else None) for name, s in existing.items()}
    via_of.update({r.name: r.via for r in rows if r.action != ERROR})
    for row in rows:
        if row.action == ERROR or row.via is None:
            continue
        chain, hop = [row.name], row.via
        while hop is not None:
            if hop in chain:
                row.action, row.error = ERROR, f"{row.where}: host {row.name}: its bastions loop ({' -> '.join(chain + [hop])})"
                break
            chain.append(hop)
            hop = via_of.get(hop)
        else:
            if len(chain) - 1 > MAX_BASTIONS:
                row.action = ERROR
                row.error = (f"{row.where}: host {row.name}: {' -> '.join(chain)}: at most {MAX_BASTIONS} "
                             "bastions in a row")


async def _fetch_keys(central: Central, to_fetch, rows: list[ImportRow], existing: dict) -> None:
    """Ask each host for its key, a bounded number at a time (through its bastion, if any)."""
    slots = asyncio.Semaphore(max(1, central.config.ssh.max_concurrent_connects))
    planned = {r.name: r for r in rows}

    async def one(row: ImportRow, e: Entry, given_fp: str | None) -> None:
        async with slots:
            try:
                probed = await probe_key(central, row.host, row.port, via=_bastion_for(row, planned, existing))
            except CentralError as exc:
                row.action, row.error = ERROR, f"{e.where}: host {e.name}: cannot fetch its host key: {exc}"
                return
        if given_fp and probed["fingerprint"] != given_fp:
            row.action = ERROR
            row.error = (f"{e.where}: host {e.name}: presents {probed['fingerprint']}, not the given {given_fp}")
            return
        row.host_key, row.fingerprint = probed["host_key"], probed["fingerprint"]
        row.key_source = KEY_ROW if given_fp else KEY_FETCHED

    await asyncio.gather(*(one(*t) for t in to_fetch))


def _bastion_for(row: ImportRow, planned: dict[str, ImportRow], existing: dict):
    """The stored bastion server a row is reached through (one only in the file cannot be used yet)."""
    if row.via is None:
        return None
    if row.via in existing:
        return existing[row.via]
    raise PollError("bastion_unreachable", f"its bastion {row.via} is not added yet: import it first")


async def apply_import(central: Central, plan: ImportPlan, *, confirmation: str | None = None,
                       skip_errors: bool = False) -> dict:
    """Carry a plan out: add and change its rows, in order (bastions first). Refused, with
    nothing stored, while rows are in error (unless skip_errors) or when fetched keys are not
    confirmed by the plan's confirmation."""
    errors = [r for r in plan.rows if r.action == ERROR]
    if errors and not skip_errors:
        raise Invalid(f"{len(errors)} host(s) cannot be imported; nothing was stored: {errors[0].error}"
                      + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
    if plan.confirmation is not None and confirmation != plan.confirmation:
        raise Conflict(f"the fetched host keys must be confirmed: pass confirmation {plan.confirmation} "
                       "after checking the fingerprints", detail=plan.confirmation)
    ids = {s.name: s.id for s in await central.storage.list_servers()}
    done = {ADD: 0, CHANGE: 0}
    for row in plan.rows:
        if row.action not in (ADD, CHANGE):
            continue
        via = ids.get(row.via) if row.via else None
        if row.via and via is None:
            raise Conflict(f"{row.where}: host {row.name}: its bastion {row.via} is not stored")
        if row.action == ADD:
            server = await central.storage.add_server(
                row.name, row.host, port=row.port, user=row.user, tags=row.tags, host_key=row.host_key,
                host_key_fingerprint=row.fingerprint, via=via)
            ids[row.name] = server.id
        else:
            fields: dict = {"tags": tuple(row.tags), "user": row.user, "via": via}
            if "host" in row.changes or "port" in row.changes:
                fields.update(host=row.host, port=row.port, host_key=row.host_key, host_key_fingerprint=row.fingerprint)
            server = await central.storage.update_server(row.name, **fields)
            central.transports.forget(server.id)
        done[row.action] += 1
    return {"added": done[ADD], "changed": done[CHANGE],
            "skipped": sum(1 for r in plan.rows if r.action in (SKIP, ERROR))}


def read_known_hosts(paths: Sequence[str]) -> list[KnownHost]:
    """The lines of the operator's known_hosts files."""
    out: list[KnownHost] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise Invalid(f"cannot read known_hosts file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise Invalid(f"known_hosts file {path} is not UTF-8 text") from None
        out += fleetfile.parse_known_hosts(path, text)
    return out


def read_fleet_file(path: str, fmt: str | None = None) -> list[Entry]:
    """The entries of a fleet file on disk."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise Invalid(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise Invalid(f"{path} is not UTF-8 text") from None
    return fleetfile.parse(path, text, fmt)


async def import_text(central: Central, content: str, *, filename: str = "upload", fmt: str | None = None,
                      known_hosts: str = "", fetch: bool = False, user: str | None = None,
                      inventory_user: bool = False, tags: Sequence[str] = (), dry_run: bool = True,
                      confirmation: str | None = None, skip_errors: bool = False) -> dict:
    """The import as the API offers it: a fleet file's and a known_hosts file's text; a dry run
    returns the plan, otherwise the plan and what was stored."""
    entries = fleetfile.parse(filename, content, fmt)
    known = fleetfile.parse_known_hosts("known_hosts", known_hosts) if known_hosts else []
    plan = await plan_import(central, entries, known_hosts=known, fetch=fetch, user=user,
                             inventory_user=inventory_user, extra_tags=tags)
    out = {**plan.to_dict(), "dry_run": dry_run, "result": None}
    if not dry_run:
        out["result"] = await apply_import(central, plan, confirmation=confirmation, skip_errors=skip_errors)
    return out
