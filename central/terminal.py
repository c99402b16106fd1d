"""The web terminal: who may open a shell where, the SSH session behind it, and its recording.

Off by default, three times over:
- a server has a terminal only once a host account is recorded for it (deploy
  --terminal-user NAME installs the terminal key for that account, restricted to a PTY
  session: ``restrict,pty``); the polling key can never open a shell;
- a user needs the ``terminal`` right, which an admin grants per user (admins included);
- opening a session needs a fresh authentication: the password entered again, or a page login
  at most terminal.fresh_auth old. It yields a ticket (single use, TICKET_TTL seconds) that the
  WebSocket presents.

Every session is recorded (asciicast v2, central.recording) from its first byte; when the
recording cannot be written the session ends. Sessions end on exit, when the page closes,
when a user ends them, after terminal.idle_timeout without input and at terminal.max_duration.
Openings, ends and every refusal are rows of the audit table (action "terminal").

No HTTP here: central/web/api_terminal.py is the HTTP and WebSocket edge.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import asyncssh

from . import hosttext, recording
from .auth import Identity
from .config import Config
from .failures import classify
from .model import ADMIN, BLOCKING_REASONS, TERMINAL, CentralError, Conflict, Forbidden, Invalid, NotFound, Server, Unavailable
from .serverlog import server_log
from .sshpool import connect_options, public_key_line
from .storage import Storage

log = logging.getLogger(__name__)

ACTION = "terminal"  # the audit table's action for everything the terminal does
TICKET_TTL = 60.0
MIN_COLS, MAX_COLS, MIN_ROWS, MAX_ROWS = 2, 1000, 1, 500
READ_SIZE = 32768
# Refusals of callers without a session are audited up to this many a minute (then only
# logged), so anonymous requests cannot fill the database.
ANONYMOUS_AUDITS_PER_MINUTE = 30

# Why a session ended, and the audit result of that end.
END_REASONS = {
    "exit": "ok",             # the shell exited
    "closed": "ok",           # the page closed or the user clicked End
    "ended": "ok",            # another user (an admin) ended it
    "idle": "refused",        # no input for terminal.idle_timeout
    "max_duration": "refused",
    "recording_limit": "refused",
    "failed": "failed",       # the SSH session broke
    "shutdown": "failed",     # the central stopped
}


class TerminalRefused(CentralError):
    """The terminal refuses: code says why (no_right, fresh_auth_required, not_enabled, ...)."""

    status = 403

    def __init__(self, code: str, message: str, status: int = 403):
        super().__init__(message)
        self.code = code
        self.status = status


class WrongPassword(TerminalRefused):
    """The password entered again was wrong (counts as a failed login)."""

    def __init__(self, message: str):
        super().__init__("wrong_password", message, 403)


ACCOUNT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")  # the rule for a server's SSH user too


def check_account(account: object) -> str:
    """A host account name (a Unix user name)."""
    if not isinstance(account, str) or not ACCOUNT_RE.match(account):
        raise Invalid(f"invalid terminal account {hosttext.escape(account, 40)!r}: expected a Unix user name")
    return account


def _duration_text(seconds: float) -> str:
    seconds = int(seconds)
    if seconds % 3600 == 0 and seconds >= 3600:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0 and seconds >= 60:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def terminal_key_line(public_key: str) -> str:
    """The authorized_keys line for the terminal key: a PTY session and nothing else."""
    return f"restrict,pty {public_key} central-terminal"


@dataclass
class Ticket:
    """Permission to open one session: who, where, until when (single use)."""

    value: str
    user_id: int
    user: str
    role: str
    server_id: int
    server_name: str
    account: str
    expires: float  # time.monotonic()


@dataclass
class TerminalSession:
    """One open terminal: the SSH process with a PTY, its recording and its limits."""

    id: int
    user_id: int
    user: str
    role: str
    server: Server
    account: str
    address: str
    cols: int
    rows: int
    started_at: float
    writer: recording.CastWriter
    conn: asyncssh.SSHClientConnection
    process: asyncssh.SSHClientProcess
    manager: "Terminals"
    last_input: float = field(default_factory=time.monotonic)
    started_mono: float = field(default_factory=time.monotonic)
    end_reason: str | None = None
    ended_by: str | None = None
    message: str = ""
    exit_status: int | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _watchdog: asyncio.Task | None = None
    _finished: bool = False

    def info(self) -> dict:
        """Who is connected where, for the page and the API."""
        now = time.monotonic()
        cfg = self.manager.config.terminal
        return {"id": self.id, "user": self.user, "server": self.server.name, "account": self.account,
                "address": self.address, "started_at": self.started_at, "cols": self.cols, "rows": self.rows,
                "idle_seconds": round(now - self.last_input, 1),
                "ends_at": self.started_at + cfg.max_duration, "recording_bytes": self.writer.bytes}

    def stop(self, reason: str, by: str | None = None, message: str = "") -> None:
        """End the session (the first reason given wins); run() then finishes it."""
        if self.end_reason is None:
            self.end_reason, self.ended_by, self.message = reason, by, message
        self.process.close()
        self.conn.close()

    def write(self, data: bytes) -> None:
        """Send input to the host (recorded first: nothing reaches the host unrecorded)."""
        if self.end_reason is not None or not data:
            return
        self.last_input = time.monotonic()
        try:
            self.writer.input(data)
        except (recording.RecordingFull, OSError) as exc:
            self._recording_failed(exc)
            return
        try:
            self.process.stdin.write(data)
        except (asyncssh.Error, OSError) as exc:  # the channel closed under us
            self.stop("failed", message=f"the SSH session broke: {exc}")

    def resize(self, cols: int, rows: int) -> None:
        """Change the PTY size."""
        cols, rows = _clamp_size(cols, rows)
        if self.end_reason is not None or (cols, rows) == (self.cols, self.rows):
            return
        self.cols, self.rows = cols, rows
        try:
            self.writer.resize(cols, rows)
        except (recording.RecordingFull, OSError) as exc:
            self._recording_failed(exc)
            return
        try:
            self.process.change_terminal_size(cols, rows)
        except (asyncssh.Error, OSError) as exc:
            self.stop("failed", message=f"the SSH session broke: {exc}")

    def _recording_failed(self, exc: Exception) -> None:
        if isinstance(exc, recording.RecordingFull):
            self.stop("recording_limit", message=f"session ended: {exc}; every session is recorded in full")
        else:
            log.error("terminal session %s: cannot write the recording: %s", self.id, exc)
            self.stop("failed", message=f"session ended: the recording cannot be written ({exc.strerror or exc})")

    async def run(self, sink: Callable[[bytes], Awaitable[None]]) -> None:
        """Pass the host's output to sink (recorded first) until the session ends; then finish it."""
        self._watchdog = asyncio.create_task(self._watch(), name=f"terminal-{self.id}-limits")
        try:
            while self.end_reason is None:
                try:
                    data = await self.process.stdout.read(READ_SIZE)
                except (asyncssh.Error, OSError, asyncio.IncompleteReadError) as exc:
                    if self.end_reason is None:
                        self.stop("failed", message=f"the SSH session broke: {exc}")
                    break
                if not data:
                    break
                try:
                    self.writer.output(data)
                except (recording.RecordingFull, OSError) as exc:
                    self._recording_failed(exc)
                    break
                try:
                    await sink(data)
                except (ConnectionError, RuntimeError):  # the page went away mid-send
                    self.stop("closed", message="the page closed the terminal")
                    break
            if self.end_reason is None:
                await self.process.wait_closed()
                self.exit_status = self.process.exit_status
                signal = self.process.exit_signal
                self.end_reason = "exit"
                self.message = (f"the shell exited with status {self.exit_status}" if signal is None
                                else f"the shell was ended by signal {signal[0]}")
        finally:
            await self.manager._finish(self)

    async def _watch(self) -> None:
        cfg = self.manager.config.terminal
        while self.end_reason is None:
            now = time.monotonic()
            over = self.started_mono + cfg.max_duration - now
            idle = self.last_input + cfg.idle_timeout - now
            if over <= 0:
                self.stop("max_duration", message=f"session ended: it reached the maximum duration of "
                                                  f"{_duration_text(cfg.max_duration)} (terminal.max_duration)")
                return
            if idle <= 0:
                self.stop("idle", message=f"session ended: no input for {_duration_text(cfg.idle_timeout)} "
                                          "(terminal.idle_timeout)")
                return
            await asyncio.sleep(min(over, idle) + 0.05)


def _clamp_size(cols: object, rows: object) -> tuple[int, int]:
    if isinstance(cols, bool) or not isinstance(cols, int) or isinstance(rows, bool) or not isinstance(rows, int):
        raise Invalid("terminal size: cols and rows must be integers")
    return max(MIN_COLS, min(MAX_COLS, cols)), max(MIN_ROWS, min(MAX_ROWS, rows))


class Terminals:
    """The terminal's rules and its open sessions (one per process that serves the page)."""

    def __init__(self, config: Config, storage: Storage, auth, transports):
        self.config = config
        self.storage = storage
        self.auth = auth
        self.transports = transports
        self._tickets: dict[str, Ticket] = {}
        self._sessions: dict[int, TerminalSession] = {}
        self._anonymous_audits: collections.deque = collections.deque()
        self._opening: dict[int, int] = {}  # user id -> sessions being opened

    # lifecycle (the serving process only: a CLI process must not touch others' sessions)

    async def start(self) -> None:
        """Close the rows a previous central left open (it stopped mid-session)."""
        rows = await self.storage.close_interrupted_terminal_sessions(time.time(), "the central stopped during the session")
        for row in rows:
            await self._audit(row["user"], "", row["server_id"], row["server_name"], "end", "failed",
                              "the central stopped during the session", session=row["id"], reason="interrupted")

    async def close(self) -> None:
        """End every open session (the central is stopping)."""
        sessions = list(self._sessions.values())
        for s in sessions:
            s.stop("shutdown", message="session ended: the central is stopping")
        for s in sessions:
            try:
                await asyncio.wait_for(s.done.wait(), 10)
            except asyncio.TimeoutError:
                log.warning("terminal session %s did not finish in time", s.id)

    # the key

    @property
    def key_path(self) -> Path:
        """The terminal's private key file."""
        return self.config.terminal_key_path

    def ensure_key(self) -> tuple[str, bool]:
        """Create the terminal key pair if missing; returns (public key line, created)."""
        from .service import ensure_key_pair  # service builds Terminals: import here, not at the top
        return ensure_key_pair(self.key_path)

    def public_key(self) -> str | None:
        """The terminal's public key line, or None when there is no key yet."""
        if not self.key_path.exists():
            return None
        return public_key_line(self._load_key())

    def _load_key(self) -> asyncssh.SSHKey:
        try:
            mode = self.key_path.stat().st_mode
        except FileNotFoundError:
            raise TerminalRefused("no_terminal_key", f"there is no terminal key ({self.key_path}): create it with "
                                  "`central terminal key` and install it with deploy --terminal-user", 409) from None
        if mode & 0o077:
            raise TerminalRefused("terminal_key_exposed", f"the terminal key {self.key_path} is readable by other "
                                  "users; chmod 600 it", 409)
        try:
            return asyncssh.read_private_key(str(self.key_path))
        except (OSError, asyncssh.KeyImportError) as exc:
            raise TerminalRefused("no_terminal_key", f"cannot read the terminal key {self.key_path}: {exc}", 409) from None

    # audit

    async def _audit(self, actor: str, role: str, server_id: int | None, server_name: str, event: str,
                     result: str, output: str, *, exit_status: int | None = None,
                     duration_ms: float | None = None, **details) -> None:
        arguments = {"event": event, **{k: v for k, v in details.items() if v is not None}}
        await self.storage.add_audit(actor=actor, role=role, server_id=server_id, server_name=server_name,
                                     action=ACTION, arguments=arguments, result=result, exit_status=exit_status,
                                     output=hosttext.clean(output, 2000), duration_ms=duration_ms)

    async def refuse(self, code: str, message: str, *, identity: Identity | None = None,
                     server: Server | None = None, server_name: str = "", status: int = 403,
                     address: str = "", error: type[TerminalRefused] = TerminalRefused) -> TerminalRefused:
        """Audit a refusal and return the error to raise (`raise await terminals.refuse(...)`)."""
        name = server.name if server is not None else hosttext.clean(server_name, 63)
        if identity is None and not self._anonymous_allowance():
            log.warning("terminal refused (%s) for an anonymous caller from %s; not audited (over %d a minute)",
                        code, hosttext.escape(address, 100), ANONYMOUS_AUDITS_PER_MINUTE)
        else:
            await self._audit(identity.user if identity else "anonymous", identity.role if identity else "",
                              server.id if server else None, name, "refused", "refused", message, reason=code,
                              address=hosttext.clean(address, 100) or None)
        log.info("terminal refused for %s on %s: %s", identity.user if identity else "anonymous",
                 hosttext.escape(name or "-"), message)
        return WrongPassword(message) if error is WrongPassword else error(code, message, status)

    def _anonymous_allowance(self) -> bool:
        now = time.monotonic()
        q = self._anonymous_audits
        while q and q[0] <= now - 60:
            q.popleft()
        if len(q) >= ANONYMOUS_AUDITS_PER_MINUTE:
            return False
        q.append(now)
        return True

    # rights and accounts

    async def may_open(self, identity: Identity) -> bool:
        """Whether the user holds the terminal right (admins too need it granted)."""
        return await self.storage.has_right(identity.user_id, TERMINAL)

    async def grant(self, user: str, by: str, role: str = "") -> dict:
        """Give user the terminal right."""
        await self.storage.grant_right(user, TERMINAL, by, time.time())
        await self._audit(by, role, None, "", "grant", "ok",
                          f"terminal right granted to {user}", user=user)
        return {"user": user, "right": TERMINAL, "granted": True}

    async def revoke(self, user: str, by: str, role: str = "") -> dict:
        """Take the terminal right back (open sessions of that user end)."""
        had = await self.storage.revoke_right(user, TERMINAL)
        for s in list(self._sessions.values()):
            if s.user == user:
                s.stop("ended", by=by, message=f"session ended: {by} revoked the terminal right")
        await self._audit(by, role, None, "", "revoke", "ok",
                          f"terminal right revoked from {user}" if had else f"{user} did not have the terminal right",
                          user=user)
        return {"user": user, "right": TERMINAL, "granted": False, "had": had}

    async def holders(self) -> list[dict]:
        """Users with the terminal right."""
        return await self.storage.right_holders(TERMINAL)

    async def enable(self, server_name: str, account: str, by: str, role: str = "") -> dict:
        """Record the host account the server's terminal logs in as (the key must be installed for it)."""
        check_account(account)
        server = await self.storage.get_server(server_name)
        if self._no_ssh(server):
            raise Invalid(f"no web terminal on {server_name}: {self._no_ssh(server)}")
        if account == server.user and account != "root":
            raise Invalid(f"{account} is {server_name}'s polling login; the terminal needs an account of its own")
        await self.storage.set_terminal_account(server.id, account, by, time.time())
        await self._audit(by, role, server.id, server.name, "enable", "ok", f"terminal enabled as {account}",
                          account=account)
        return {"server": server.name, "account": account, "enabled": True}

    async def disable(self, server_name: str, by: str, role: str = "") -> dict:
        """Turn a server's terminal off (its open sessions end)."""
        server = await self.storage.get_server(server_name)
        had = await self.storage.clear_terminal_account(server.id)
        for s in list(self._sessions.values()):
            if s.server.id == server.id:
                s.stop("ended", by=by, message=f"session ended: {by} turned the terminal off on {server.name}")
        await self._audit(by, role, server.id, server.name, "disable", "ok",
                          "terminal disabled" if had else "the terminal was not enabled")
        return {"server": server.name, "enabled": False, "was_enabled": had}

    def _no_ssh(self, server: Server) -> str | None:
        """Why a server cannot have a terminal (it is not reached over SSH), else None."""
        reason = self.transports.of_kind(server.kind).no_host_key
        return reason.format(name=server.name) if reason else None

    async def account(self, server: Server) -> str | None:
        """The server's terminal account (None: not enabled)."""
        return None if self._no_ssh(server) else await self.storage.terminal_account(server.id)

    async def accounts(self) -> dict[str, dict]:
        """Every server with a terminal, by name."""
        return await self.storage.terminal_accounts()

    # opening

    async def authorize(self, identity: Identity, server_name: str, *, password: str | None = None,
                        login_at: float | None = None, address: str = "") -> Ticket:
        """Check everything before a session (right, fresh authentication, the server); returns a ticket."""
        cfg = self.config.terminal
        if identity.via != "session":
            raise await self.refuse("not_a_page_session", "the terminal is opened from the page (log in there); "
                                    "API tokens cannot open one", identity=identity, server_name=server_name,
                                    address=address)
        if not await self.may_open(identity):
            raise await self.refuse("no_right", f"{identity.user} may not open terminals: an admin grants the right "
                                    f"with `central terminal grant {identity.user}`", identity=identity,
                                    server_name=server_name, address=address)
        try:
            server = await self.storage.get_server(server_name)
        except NotFound as exc:
            raise await self.refuse("no_such_server", exc.message, identity=identity, server_name=server_name,
                                    status=404, address=address) from None
        account = await self.account(server)
        if account is None:
            raise await self.refuse("not_enabled", f"the terminal is not enabled on {server.name}: deploy it with "
                                    "--terminal-user NAME (docs/terminal.md)", identity=identity, server=server,
                                    status=409, address=address)
        if not server.host_key or server.status_reason in BLOCKING_REASONS:
            raise await self.refuse("host_key", f"{server.name}'s host key is not trusted now "
                                    f"({server.status_reason or 'none pinned'}); re-trust it first",
                                    identity=identity, server=server, status=409, address=address)
        if password is not None:
            checked = await self.auth.login(identity.user, password)
            if checked is None or checked.user_id != identity.user_id:
                raise await self.refuse("wrong_password", "wrong password: enter your own password again to open "
                                        "a terminal", identity=identity, server=server, address=address,
                                        error=WrongPassword)
        elif login_at is None or time.time() - login_at > cfg.fresh_auth:
            raise await self.refuse("fresh_auth_required", "enter your password again to open a terminal "
                                    f"(a login older than {_duration_text(cfg.fresh_auth)} does not count: "
                                    "terminal.fresh_auth)", identity=identity, server=server, address=address)
        open_now = sum(1 for s in self._sessions.values() if s.user_id == identity.user_id)
        if open_now + self._opening.get(identity.user_id, 0) >= cfg.max_sessions_per_user:
            raise await self.refuse("too_many_sessions", f"{identity.user} has {open_now} terminal sessions open "
                                    f"(at most {cfg.max_sessions_per_user}: terminal.max_sessions_per_user); end one "
                                    "first", identity=identity, server=server, status=409, address=address)
        try:
            self._load_key()
        except TerminalRefused as exc:
            raise await self.refuse(exc.code, exc.message, identity=identity, server=server, status=409,
                                    address=address) from None
        self._drop_expired_tickets()
        ticket = Ticket(secrets.token_urlsafe(32), identity.user_id, identity.user, identity.role, server.id,
                        server.name, account, time.monotonic() + TICKET_TTL)
        self._tickets[ticket.value] = ticket
        return ticket

    def _drop_expired_tickets(self) -> None:
        now = time.monotonic()
        for value in [v for v, t in self._tickets.items() if t.expires <= now]:
            del self._tickets[value]

    async def redeem(self, value: object, identity: Identity, address: str = "") -> Ticket:
        """The ticket for this user (used up now); refused when unknown, used, expired or another user's."""
        ticket = self._tickets.pop(value, None) if isinstance(value, str) else None
        if ticket is None or ticket.expires <= time.monotonic() or ticket.user_id != identity.user_id:
            raise await self.refuse("bad_ticket", "this terminal ticket is unknown, used or expired: open the "
                                    "terminal again (it asks for a fresh authentication)", identity=identity,
                                    server_name=ticket.server_name if ticket else "", address=address)
        if not await self.may_open(identity):
            raise await self.refuse("no_right", f"{identity.user} may not open terminals (the right was revoked)",
                                    identity=identity, server_name=ticket.server_name, address=address)
        return ticket

    async def open(self, ticket: Ticket, cols: int, rows: int, address: str = "") -> TerminalSession:
        """Connect with the terminal key, start a shell on a PTY, start recording; returns the session."""
        cols, rows = _clamp_size(cols, rows)
        self._opening[ticket.user_id] = self._opening.get(ticket.user_id, 0) + 1
        try:
            return await self._open(ticket, cols, rows, address)
        finally:
            self._opening[ticket.user_id] -= 1
            if not self._opening[ticket.user_id]:
                del self._opening[ticket.user_id]

    async def _open(self, ticket: Ticket, cols: int, rows: int, address: str) -> TerminalSession:
        cfg = self.config.terminal
        server = await self.storage.get_server(ticket.server_name)
        slog = server_log(log, server.name)
        directory = self.config.recordings_path
        started = time.time()
        name = f"{int(started)}-{secrets.token_hex(6)}.cast"
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            writer = recording.CastWriter(directory / name, width=cols, height=rows,
                                          env={"TERM": cfg.term}, title=f"{ticket.account}@{server.name}",
                                          limit=cfg.max_recording_bytes, timestamp=started)
        except (OSError, recording.RecordingFull) as exc:
            # No recording, no session.
            message = f"cannot start the recording in {directory}: {getattr(exc, 'strerror', None) or exc}"
            await self._audit(ticket.user, ticket.role, server.id, server.name, "open", "failed", message,
                              account=ticket.account)
            raise Unavailable(message) from None
        session_id = await self.storage.add_terminal_session(
            user_id=ticket.user_id, user=ticket.user, server_id=server.id, server_name=server.name,
            account=ticket.account, address=hosttext.clean(address, 100), started_at=started, cols=cols, rows=rows,
            recording=name)
        try:
            conn, process = await self._connect(server, ticket.account, cols, rows)
        except CentralError as exc:
            writer.close()
            await self.storage.end_terminal_session(session_id, ended_at=time.time(), exit_status=None, end_reason="failed",
                                         ended_by=None, message=exc.message, recording_bytes=writer.bytes)
            await self._audit(ticket.user, ticket.role, server.id, server.name, "open", "failed", exc.message,
                              session=session_id, account=ticket.account)
            slog.info("terminal for %s as %s failed: %s", ticket.user, ticket.account, exc.message)
            raise
        session = TerminalSession(
            id=session_id, user_id=ticket.user_id, user=ticket.user, role=ticket.role, server=server,
            account=ticket.account, address=hosttext.clean(address, 100), cols=cols, rows=rows, started_at=started,
            writer=writer, conn=conn, process=process, manager=self)
        self._sessions[session_id] = session
        await self._audit(ticket.user, ticket.role, server.id, server.name, "open", "ok",
                          f"terminal session {session_id} as {ticket.account}", session=session_id,
                          account=ticket.account, address=session.address or None)
        slog.info("terminal session %s opened by %s as %s", session_id, ticket.user, ticket.account)
        return session

    async def _connect(self, server: Server, account: str, cols: int, rows: int):
        """An SSH connection as account with the terminal key (host key pinned) and a shell on a PTY."""
        key = self._load_key()
        ssh = self.config.ssh
        try:
            pinned = asyncssh.import_public_key(server.host_key)
        except (asyncssh.KeyImportError, ValueError, TypeError) as exc:
            raise Unavailable(f"the pinned host key of {server.name} cannot be read: {exc}") from None
        try:
            # behind a bastion: through the pool's connection to it, as polls go (never directly)
            via = await self.transports.ssh.pool.bastion_of(server)
            conn = await asyncio.wait_for(asyncssh.connect(
                server.host, server.port, username=account, client_keys=[key], tunnel=via[1] if via else (),
                known_hosts=([pinned], [], []), **connect_options(ssh)), ssh.connect_timeout + 1)
        except Exception as exc:  # noqa: BLE001 - classified
            err = classify(exc)
            raise Unavailable(f"cannot open a terminal on {server.name} as {account}: {err.reason}: {err.message}") from None
        try:
            process = await conn.create_process(term_type=self.config.terminal.term, term_size=(cols, rows),
                                                encoding=None)
        except (asyncssh.Error, OSError) as exc:
            conn.close()
            raise Unavailable(f"{server.name} refused a shell for {account}: {getattr(exc, 'reason', exc)}") from None
        return conn, process

    async def check(self, server: Server, account: str) -> None:
        """Open and close a PTY session as account with the terminal key (deploy's last step)."""
        conn, process = await self._connect(server, account, 80, 24)
        try:
            process.stdin.write(b"exit 0\n")
            await asyncio.wait_for(process.wait_closed(), self.config.ssh.connect_timeout + 5)
        except asyncio.TimeoutError:
            raise Unavailable(f"the shell of {account} on {server.name} did not end after `exit 0`") from None
        finally:
            process.close()
            conn.close()

    async def _finish(self, session: TerminalSession) -> None:
        """Record how a session ended (row and audit), once."""
        if session._finished:
            return
        session._finished = True
        try:
            if session._watchdog is not None:
                session._watchdog.cancel()
            session.process.close()
            session.conn.close()
            session.writer.close()
            reason = session.end_reason or "failed"
            ended = time.time()
            await self.storage.end_terminal_session(session.id, ended_at=ended, exit_status=session.exit_status,
                                         end_reason=reason, ended_by=session.ended_by, message=session.message,
                                         recording_bytes=session.writer.bytes)
            await self._audit(session.user, session.role, session.server.id, session.server.name, "end",
                              END_REASONS.get(reason, "failed"), session.message or reason,
                              exit_status=session.exit_status, duration_ms=round((ended - session.started_at) * 1000),
                              session=session.id, reason=reason, account=session.account, ended_by=session.ended_by)
            server_log(log, session.server.name).info("terminal session %s ended: %s", session.id, reason)
        finally:
            self._sessions.pop(session.id, None)
            session.done.set()

    # what is open, what was recorded

    def live(self) -> list[dict]:
        """Open sessions: who is connected where."""
        return [s.info() for s in sorted(self._sessions.values(), key=lambda s: s.id)]

    def live_session(self, session_id: int) -> TerminalSession | None:
        """An open session by id."""
        return self._sessions.get(session_id)

    async def end(self, session_id: int, identity: Identity) -> dict:
        """End an open session: one's own, or anyone's for an admin."""
        session = self._sessions.get(session_id)
        if session is None:
            row = await self.storage.get_terminal_session(session_id)
            raise Conflict(f"terminal session {session_id} already ended ({row['end_reason']})")
        if session.user_id != identity.user_id and not identity.allows(ADMIN):
            raise await self.refuse("not_yours", f"terminal session {session_id} is {session.user}'s; only an admin "
                                    "ends another user's session", identity=identity, server=session.server)
        by = identity.user
        session.stop("closed" if session.user_id == identity.user_id else "ended", by=by,
                     message="session ended from the page" if session.user_id == identity.user_id
                     else f"session ended by {by}")
        try:
            await asyncio.wait_for(session.done.wait(), 10)
        except asyncio.TimeoutError:
            pass
        return {"id": session_id, "ended": True, "ended_by": by}

    def _visible_to(self, row: dict, identity: Identity) -> bool:
        return identity.allows(ADMIN) or row["user_id"] == identity.user_id

    async def sessions(self, identity: Identity | None = None, *, server: str | None = None,
                       limit: int = 100, before_id: int | None = None) -> list[dict]:
        """Recorded sessions, newest first: all of them for admins (and the CLI), else one's own."""
        if not 1 <= limit <= 1000:
            raise Invalid(f"limit: expected 1 to 1000, got {limit}")
        user_id = None if identity is None or identity.allows(ADMIN) else identity.user_id
        rows = await self.storage.list_terminal_sessions(user_id=user_id, server=server, limit=limit, before_id=before_id)
        return [self._session_dict(r) for r in rows]

    def _session_dict(self, row: dict) -> dict:
        d = dict(row)
        live = self._sessions.get(row["id"])
        d["live"] = live is not None
        if live is not None:
            d["recording_bytes"] = live.writer.bytes
        d["duration"] = None if row["ended_at"] is None else round(row["ended_at"] - row["started_at"], 3)
        return d

    async def session(self, session_id: int, identity: Identity | None = None) -> dict:
        """One recorded session (its owner or an admin; identity None: the CLI)."""
        row = await self.storage.get_terminal_session(session_id)
        if identity is not None and not self._visible_to(row, identity):
            raise Forbidden(f"terminal session {session_id} is {row['user']}'s: only they and admins see it")
        return self._session_dict(row)

    async def recording_path(self, session_id: int, identity: Identity | None = None) -> Path:
        """The recording file of a session (same visibility as session())."""
        row = await self.session(session_id, identity)
        path = self.config.recordings_path / row["recording"]
        if "/" in row["recording"] or not path.is_file():
            raise NotFound(f"the recording of terminal session {session_id} is missing ({row['recording']})")
        return path

    # retention

    async def prune(self, now: float | None = None) -> int:
        """Delete sessions (rows and recordings) older than retention.recordings; returns how many."""
        now = time.time() if now is None else now
        names = await self.storage.prune_terminal_sessions(now - self.config.retention.recordings)
        for name in names:
            if "/" not in name:
                try:
                    os.unlink(self.config.recordings_path / name)
                except FileNotFoundError:
                    pass
        return len(names)
