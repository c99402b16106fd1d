"""The storage interface: what the rest of central may ask of a database, by concept.

Every backend implements `Storage` (central.storage.sqlite, central.storage.postgres). Callers see only domain
types (Server, PollOutcome, plain dicts and lists, numbers); no backend's connection, row or
error type crosses this interface, and "no such thing" / "already exists" are the domain
errors NotFound and Conflict. tests/test_storage_contract.py is the contract every backend
must pass.

Conventions: times are Unix seconds; JSON-ish columns (tags, top, details, matcher,
arguments, documents) come back decoded; dicts of rows carry the column names of schema.sql.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

from ..model import CONTAINER_METRICS, METRICS, PollOutcome, Server

# Rollup tiers: 1-minute buckets of raw samples, 1-hour buckets of 1-minute ones.
TIER_MINUTE, TIER_HOUR = 60, 3600


class Servers(ABC):
    """The servers table: settings, pinned host keys, poll status."""

    @abstractmethod
    async def add_server(
        self, name: str, host: str, *, kind: str = "ssh", port: int = 22, user: str = "central",
        key_path: str | None = None, agent_port: int = 8083, tags: Sequence[str] = (),
        interval_s: float | None = None, host_key: str | None = None, host_key_fingerprint: str | None = None,
        agent_secret: str | None = None, via: int | None = None,
    ) -> Server:
        """Insert a server with its agent secret, or the one pending for its host and port (see
        AgentSecrets), in one transaction; Conflict if the name is taken. via: the id of the
        bastion it is reached through."""

    @abstractmethod
    async def servers_marker(self) -> object:
        """A value that stays equal while nothing but poll batches (write_polls) wrote, here or in
        another process: the poller reloads its server list only when it changes."""

    @abstractmethod
    async def get_server(self, name: str) -> Server:
        """The server called name; NotFound otherwise."""

    @abstractmethod
    async def server_by_id(self, server_id: int) -> Server:
        """The server with this id; NotFound otherwise."""

    @abstractmethod
    async def find_server(self, name: str) -> Server | None:
        """The server called name, or None."""

    @abstractmethod
    async def list_servers(self) -> list[Server]:
        """Every server, by name."""

    @abstractmethod
    async def server_dicts(self) -> list[dict]:
        """Every server as a plain dict (tags decoded), by name: for lists, without building a
        frozen Server per row (that cost ~40 us a row, 40 ms for a 1,000-server page)."""

    @abstractmethod
    async def server_page(self, *, tag: str | None = None, status: str | None = None, name: str | None = None,
                          limit: int | None = 100, offset: int = 0) -> tuple[list[dict], int]:
        """One page of servers by name as plain dicts, filtered by tag, status and a name
        substring (case-insensitive), and how many match in all (limit None: no limit)."""

    @abstractmethod
    async def status_counts(self) -> dict[str, int]:
        """How many servers are in each status."""

    @abstractmethod
    async def online_ids(self) -> set[int]:
        """Ids of the servers whose last poll succeeded."""

    @abstractmethod
    async def update_server(self, name: str, **fields) -> Server:
        """Change stored fields of a server (only known columns; ValueError for others)."""

    @abstractmethod
    async def remove_server(self, name: str) -> None:
        """Delete a server and everything stored about it; Conflict while it is the bastion of others."""

    @abstractmethod
    async def pin_host_key(self, name: str, host_key: str, fingerprint: str) -> Server:
        """Pin a (new) host key and clear a status whose reason blocks polling (host key mismatch
        or unknown, central.model.REASONS)."""


class Samples(ABC):
    """Poll results: the newest document, raw samples, rollups, and retention of it all."""

    @abstractmethod
    async def write_polls(self, outcomes: Sequence[PollOutcome], offline_after: int) -> list[tuple[PollOutcome, str]]:
        """Store one batch of poll outcomes at once: each server's status (its reason's status,
        central.model.REASONS; 'offline' after offline_after failures in a row), its newest
        document and its sample. Outcomes of servers removed meanwhile are dropped.

        Fault-isolated: an outcome the database refuses as data (a value it cannot hold) is
        left out and returned with the reason, (outcome, why); every other outcome is stored.
        Raises when the database itself cannot be written (locked, read-only, full): then
        nothing of the batch is stored."""

    @abstractmethod
    async def latest_document(self, server_id: int) -> tuple[float, dict] | None:
        """(ts, /api/all document) of the server's newest successful poll."""

    @abstractmethod
    async def latest_samples(self) -> dict[int, dict]:
        """The newest sample of every server, by server id (treat the sample dicts as read-only)."""

    @abstractmethod
    async def samples(self, server_id: int, start: float, end: float) -> list[dict]:
        """Raw samples of a server in [start, end), oldest first: {ts, <metric>..., top}."""

    @abstractmethod
    async def rollups(self, server_id: int, tier: int, start: float, end: float) -> list[dict]:
        """Rollup buckets of one tier starting in [start, end), oldest first:
        {ts, n, <metric>_min, <metric>_avg, <metric>_max...}."""

    @abstractmethod
    async def history(
        self, server_id: int, start: float, end: float, *, max_points: int = 500,
        retention_raw: float, retention_minute: float, now: float | None = None,
        metrics: Sequence[str] = tuple(METRICS),
    ) -> dict:
        """Key figures over [start, end) in at most max_points buckets, from the finest tier that
        covers the range: {source, step, start, end, series: {ts, <m>, <m>_min, <m>_max...}}."""

    @abstractmethod
    async def rollup(self, now: float | None = None, lag: float = 120.0) -> dict:
        """Roll complete buckets of raw samples into 1-minute and 1-minute into 1-hour rollups;
        {tier: (from, until)} of what was rolled up this time."""

    @abstractmethod
    async def prune(self, *, raw: float, minute: float, hour: float, events: float,
                    now: float | None = None) -> dict:
        """Delete what has passed each tier's retention (never raw samples not rolled up yet),
        and events (inventory history, audit, notifications, resolved alerts) older than
        `events`; rows deleted: {samples, rollups, containers, events}."""

    @abstractmethod
    async def import_samples(self, rows: Sequence[tuple]) -> None:
        """Bulk-insert raw samples (server_id, ts, one value per key figure, top_json): imports,
        benchmarks, tests."""

    @abstractmethod
    async def import_rollups(self, tier: int, rows: Sequence[tuple]) -> None:
        """Bulk-insert rollup buckets (server_id, ts, n, then min/avg/max per metric); the tier
        then counts as rolled up to the end of the newest imported bucket."""


class Containers(ABC):
    """Per-container figures (central.model.CONTAINER_METRICS): write_polls stores each poll's
    sample["containers"] (at most central.model.MAX_STORED_CONTAINERS per server and poll),
    rollup() and prune() roll them up and expire them with the host's samples."""

    @abstractmethod
    async def container_samples(self, server_id: int, name: str, start: float, end: float) -> list[dict]:
        """Raw samples of one container in [start, end), oldest first: {ts, <metric>...}."""

    @abstractmethod
    async def container_names(self, server_id: int, since: float = 0.0) -> list[str]:
        """Names of the server's containers with samples at or after since, by name."""

    @abstractmethod
    async def container_recent(self, server_id: int, since: float,
                               metrics: Sequence[str] = ("cpu", "mem", "mem_used")) -> dict[str, dict]:
        """Raw series of every container of a server since a time: {name: {ts: [...], <metric>: [...]}}."""

    @abstractmethod
    async def container_history(
        self, server_id: int, name: str, start: float, end: float, *, max_points: int = 500,
        retention_raw: float, retention_minute: float, now: float | None = None,
        metrics: Sequence[str] = tuple(CONTAINER_METRICS),
    ) -> dict:
        """One container's figures over [start, end) in at most max_points buckets, from the finest
        tier that covers the range: {source, step, start, end, series: {ts, <m>, <m>_min, <m>_max...}}."""


class Inventory(ABC):
    """Each server's hardware/OS inventory: the latest, and the history of changes."""

    @abstractmethod
    async def inventory_latest(self, server_id: int) -> dict | None:
        """{ts, hash, doc} of the server's current inventory."""

    @abstractmethod
    async def inventories_latest(self, server_ids: Sequence[int]) -> dict[int, dict]:
        """{server id: {ts, hash, doc}} of these servers' current inventories (those that have one),
        in one query per few hundred servers."""

    @abstractmethod
    async def write_inventory(self, server_id: int, ts: float, hash_: str, doc: dict,
                              change_type: str, summary: str) -> None:
        """Store a new inventory as latest, add it to the history and to the server's row."""

    @abstractmethod
    async def write_inventories(self, rows: Sequence[tuple[int, float, str, dict, str, str]]) -> None:
        """write_inventory for each (server_id, ts, hash, doc, change_type, summary), in order, in
        one transaction: all stored or none."""

    @abstractmethod
    async def inventory_history(self, server_id: int, limit: int = 100) -> list[dict]:
        """Inventory changes of a server, newest first (without the documents)."""

    @abstractmethod
    async def inventory_changes_since(self, after_id: int) -> list[dict]:
        """Inventory changes (not first inventories) with an id above after_id, oldest first."""

    @abstractmethod
    async def last_inventory_change_id(self) -> int:
        """The newest inventory history id (0 when empty)."""


class Alerts(ABC):
    """Alerts and their acknowledgements, silences, and the notification log."""

    @abstractmethod
    async def open_alerts(self) -> list[dict]:
        """Every pending or firing alert (the evaluator's state after a restart)."""

    @abstractmethod
    async def save_alerts(self, inserts: Sequence[dict], updates: Sequence[dict], deletes: Sequence[int]) -> list[int]:
        """Insert new alert rows, rewrite changed ones and delete aborted ones at once; the new ids."""

    @abstractmethod
    async def list_alerts(self, *, firing_only: bool = False, open_only: bool = False, server_id: int | None = None,
                          limit: int = 100) -> list[dict]:
        """Alerts, firing then pending then resolved, newest first, with the server's name."""

    @abstractmethod
    async def get_alert(self, alert_id: int) -> dict:
        """One alert with its server's name; NotFound otherwise."""

    @abstractmethod
    async def ack_alert(self, alert_id: int, user: str, ts: float) -> None:
        """Record who acknowledged an alert and when."""

    @abstractmethod
    async def acked_open_alerts(self) -> dict[int, str]:
        """{alert id: who} of open alerts someone acknowledged."""

    @abstractmethod
    async def alert_counts(self) -> dict[str, int]:
        """Open alerts by state: {pending, firing, firing_info} (firing_info: the firing ones of severity info)."""

    @abstractmethod
    async def add_silence(self, matcher: dict, starts_at: float, ends_at: float, comment: str,
                          created_by: str, kind: str = "silence") -> int:
        """Store a silence (or maintenance window); its id."""

    @abstractmethod
    async def get_silence(self, silence_id: int) -> dict:
        """One silence; NotFound otherwise."""

    @abstractmethod
    async def end_silence(self, silence_id: int, ts: float) -> None:
        """End a silence now (the record stays, for the history)."""

    @abstractmethod
    async def list_silences(self, *, active_at: float | None = None, limit: int = 100) -> list[dict]:
        """Silences newest first; active_at: only those in force (or still to come) at that time."""

    @abstractmethod
    async def log_notification(self, alert_id: int | None, channel: str, event: str, ts: float,
                               attempt: int, ok: bool, detail: str) -> None:
        """Record one delivery attempt (dropped if its alert is gone)."""

    @abstractmethod
    async def log_notifications(self, rows: Sequence[tuple]) -> None:
        """Record one attempt of a message: (alert_id, channel, event, ts, attempt, ok, detail) per alert in it."""

    @abstractmethod
    async def channel_health(self) -> dict[str, dict]:
        """Per channel: last_success, last_error_at, last_error, failures_in_row (attempts since the success)."""

    @abstractmethod
    async def notifications(self, alert_id: int | None = None, limit: int = 100) -> list[dict]:
        """Delivery attempts newest first, of one alert or all."""

    @abstractmethod
    async def last_sent(self) -> dict[tuple[int, str], float]:
        """{(alert id, channel): time} of the last delivered firing/repeat of each firing alert."""


class Audit(ABC):
    """The record of every action request and its outcome."""

    @abstractmethod
    async def add_audit(
        self, *, actor: str, role: str, server_id: int | None, server_name: str, action: str,
        arguments: dict, result: str, exit_status: int | None = None, output: str = "",
        duration_ms: float | None = None, ts: float | None = None,
    ) -> int:
        """Record one action request and its outcome; returns the row id."""

    @abstractmethod
    async def audit_log(self, server_name: str | None = None, limit: int = 100,
                        before_id: int | None = None) -> list[dict]:
        """Audit rows, newest first: optionally one server's, and older than before_id (paging)."""


class Users(ABC):
    """Users with their roles and password hashes, API tokens and page sessions (both stored as hashes only)."""

    @abstractmethod
    async def add_user(self, name: str, role: str, password_hash: str) -> dict:
        """Insert a user; Conflict if the name is taken."""

    @abstractmethod
    async def get_user(self, name: str) -> dict:
        """The user called name (with password_hash); NotFound otherwise."""

    @abstractmethod
    async def find_user(self, name: str) -> dict | None:
        """The user called name, or None."""

    @abstractmethod
    async def get_user_by_id(self, user_id: int) -> dict | None:
        """The user with this id, or None."""

    @abstractmethod
    async def list_users(self) -> list[dict]:
        """Every user (without password hashes), by name."""

    @abstractmethod
    async def count_users(self, role: str | None = None) -> int:
        """How many users there are (with this role)."""

    @abstractmethod
    async def set_user_password(self, name: str, password_hash: str) -> None:
        """Replace a user's password hash and end their sessions; NotFound if there is no such user."""

    @abstractmethod
    async def set_user_role(self, name: str, role: str) -> None:
        """Change a user's role; NotFound if there is no such user."""

    @abstractmethod
    async def remove_user(self, name: str) -> None:
        """Delete a user, their API tokens and sessions; NotFound if there is no such user."""

    @abstractmethod
    async def add_session(self, user_id: int, id_hash: str, created_at: float, expires_at: float,
                          address: str) -> None:
        """Store a page session by the hash of its id (expired sessions may be dropped on the way)."""

    @abstractmethod
    async def session_user(self, id_hash: str, now: float) -> dict | None:
        """The session with this id hash, unexpired at now, joined with its user (user_id, user, role, and
        the session's created_at: when that login happened), or None."""

    @abstractmethod
    async def remove_session(self, id_hash: str) -> None:
        """End one session (nothing happens for an unknown one)."""

    @abstractmethod
    async def remove_user_sessions(self, name: str) -> int:
        """End every session of a user; returns how many there were; NotFound if there is no such user."""

    @abstractmethod
    async def add_token(self, user_id: int, name: str, token_hash: str) -> dict:
        """Store a new API token's hash; returns the token row (without the hash)."""

    @abstractmethod
    async def token_user(self, token_hash: str) -> dict | None:
        """The unrevoked token with this hash joined with its user, or None."""

    @abstractmethod
    async def list_tokens(self, user: str | None = None) -> list[dict]:
        """API tokens (never their hashes), newest first; only one user's when named."""

    @abstractmethod
    async def revoke_token(self, token_id: int) -> dict:
        """Mark a token revoked (kept for the record); NotFound if there is no such token."""

    @abstractmethod
    async def touch_tokens(self, last_used: dict[int, float]) -> None:
        """Record when tokens were last used (batched by the caller)."""


class AgentSecrets(ABC):
    """The secret each server's agent authenticates with (docs/agent-protocol.md), and the ones
    handed over for a host not added yet. Only the agent client and deploy read them: no
    server dict carries one, and nothing logs one."""

    @abstractmethod
    async def agent_secret(self, server_id: int) -> str | None:
        """The server's agent secret, or None."""

    @abstractmethod
    async def agent_secret_ids(self) -> set[int]:
        """The ids of the servers the central has an agent secret for."""

    @abstractmethod
    async def set_agent_secret(self, server_id: int, secret: str) -> None:
        """Store (or replace) a server's agent secret."""

    @abstractmethod
    async def put_pending_secret(self, host: str, port: int, secret: str) -> None:
        """Keep a secret for a host and SSH port until a server with them is added."""

    @abstractmethod
    async def pending_secret(self, host: str, port: int) -> str | None:
        """The secret kept for a host and SSH port, or None."""

    @abstractmethod
    async def pending_secret_hosts(self) -> list[dict]:
        """The hosts secrets are kept for ({host, port, created_at}; never the secrets)."""


class Terminal(ABC):
    """The web terminal: rights granted to users, each server's terminal account, sessions."""

    @abstractmethod
    async def grant_right(self, user: str, right: str, by: str, ts: float) -> None:
        """Give user a right (granting it again keeps the first grant)."""

    @abstractmethod
    async def revoke_right(self, user: str, right: str) -> bool:
        """Take a right back; False when the user did not have it."""

    @abstractmethod
    async def has_right(self, user_id: int, right: str) -> bool:
        """Whether the user holds the right now."""

    @abstractmethod
    async def right_holders(self, right: str) -> list[dict]:
        """Users holding a right: name, role, who granted it and when."""

    @abstractmethod
    async def set_terminal_account(self, server_id: int, account: str, by: str, ts: float) -> None:
        """Record the host account the server's terminal logs in as."""

    @abstractmethod
    async def clear_terminal_account(self, server_id: int) -> bool:
        """Forget the server's terminal account; False when it had none."""

    @abstractmethod
    async def terminal_account(self, server_id: int) -> str | None:
        """The server's terminal account, or None: not enabled."""

    @abstractmethod
    async def terminal_accounts(self) -> dict[str, dict]:
        """Every enabled server by name: account, set_by, set_at."""

    @abstractmethod
    async def add_terminal_session(self, *, user_id: int, user: str, server_id: int, server_name: str, account: str, address: str, started_at: float, cols: int, rows: int, recording: str) -> int:
        """A new open session row; returns its id."""

    @abstractmethod
    async def end_terminal_session(self, session_id: int, *, ended_at: float, exit_status: int | None, end_reason: str, ended_by: str | None, message: str, recording_bytes: int) -> None:
        """Close a session row."""

    @abstractmethod
    async def get_terminal_session(self, session_id: int) -> dict:
        """One session row; NotFound when there is none."""

    @abstractmethod
    async def list_terminal_sessions(self, *, user_id: int | None = None, server: str | None = None, open_only: bool = False, limit: int = 100, before_id: int | None = None) -> list[dict]:
        """Session rows, newest first (optionally one user's, one server's, only open ones)."""

    @abstractmethod
    async def close_interrupted_terminal_sessions(self, ts: float, message: str) -> list[dict]:
        """Mark rows left open by a central that stopped mid-session; returns them."""

    @abstractmethod
    async def prune_terminal_sessions(self, before: float) -> list[str]:
        """Delete ended sessions that started before `before`; returns their recording file names."""


class Cluster(ABC):
    """Several centrals on one database (central.cluster): members by heartbeat, and a lease per
    server held by the one member that polls it. Times come from the database's clock where
    it has one (PostgreSQL), so members' clocks need not agree."""

    @abstractmethod
    async def heartbeat(self, member: str, address: str, ttl: float, lag: float | None = None) -> list[dict]:
        """Record that member is alive now, and its poller's lag (seconds its last poll started
        late); the live members (a heartbeat within ttl), by name: {member, address, started_at,
        heartbeat_at, lag, servers (leases held), now (the database's time)}."""

    @abstractmethod
    async def claim_servers(self, member: str, server_ids: Sequence[int], ttl: float) -> set[int]:
        """Take or renew the leases of these servers for ttl, each unless another member holds it
        unexpired; the ids whose lease member holds now."""

    @abstractmethod
    async def release_servers(self, member: str, server_ids: Sequence[int]) -> None:
        """Give up member's leases of these servers (their new owner takes them at once)."""

    @abstractmethod
    async def leave(self, member: str) -> None:
        """Remove member and every lease it holds (a clean shutdown hands over at once)."""


class Storage(Servers, Samples, Containers, Inventory, Alerts, Audit, Users, Terminal, AgentSecrets, Cluster):
    """A database of central: open with `await Storage.open(target)`, close with `await storage.close()`."""

    @classmethod
    async def open(cls, target: str | Path, lock_timeout: float = 10.0) -> "Storage":
        """Open (creating if needed) the database at target and bring its schema up to date.

        target is a SQLite file path, or a postgresql://... URL (central.storage.postgres);
        lock_timeout is how long a write waits for a lock another process holds."""
        from .postgres import PostgresStorage, is_postgres_url

        if is_postgres_url(target):
            return await PostgresStorage.open(str(target), lock_timeout)
        from .sqlite import SQLiteStorage

        return await SQLiteStorage.open(target, lock_timeout)

    @abstractmethod
    async def check_writable(self) -> None:
        """Commit a small write; raises when the database cannot be written."""

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the database is, for status pages (a path, or a URL without credentials)."""

    @abstractmethod
    async def database_size(self) -> int:
        """Bytes the database takes."""

    @abstractmethod
    async def change_marker(self) -> object:
        """A value that differs whenever anything stored may have changed since it was taken (a
        commit by this process or another one): answers built from the database can be kept
        while it stays equal."""

    @abstractmethod
    async def close(self) -> None:
        """Close the database."""
