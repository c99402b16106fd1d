"""Deploy the agent to servers over the operator's own SSH access (`central deploy`).

The remote half is the bundled scripts/agent-install.sh, the same file
scripts/deploy-agent.sh pipes over ssh: this module logs in, uploads the agent, runs the
installer with `sh -s` (arguments base64 or checked tokens, shell-quoted) and follows its
"STEP" lines. The login uses the operator's keys, ssh-agent and ~/.ssh/config, and checks
the host key against the operator's known_hosts, or, on request, against the key central
pinned for the server. Host-key checking is never turned off.

The installer creates the central's login user (restricted by an sshd Match block) and the
agent secret, and prints the secret on its last line; this module stores it in the
database with the server's new login user, after checking that the operator can still
log in (and rolling the host's sshd and authorized_keys changes back if not). The secret
is never logged, shown or kept in a result.
"""
from __future__ import annotations

import asyncio
import base64
import getpass
import json
import logging
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import asyncssh

from .agentauth import check_secret
from .bundled import agent_path, agent_sha256, installer_path, terminal_installer_path
from . import model, servers
from .model import HOST_KEY_MISMATCH, AUTH_FAILED, CentralError, Invalid, Server
from .servers import CENTRAL_LOGIN_USER, USER_RE
from .service import restricted_key_line
from .failures import classify
from .serverlog import server_log
from .sshpool import load_client_key, public_key_line

log = logging.getLogger(__name__)

ACTION_KINDS = tuple(model.ACTION_KINDS)
#: unit and container globs the policy may hold (the same set deploy-agent.sh accepts)
GLOB_RE = re.compile(r"^[][A-Za-z0-9@_.:*?!-]{1,200}$")
AGENT_DIR = "/opt/central-agent"
UPLOAD_COMMAND = f"sh -c 'mkdir -p {AGENT_DIR} && cat > {AGENT_DIR}/agent.py.new'"
#: run before anything is uploaded (as scripts/deploy-agent.sh does): "python MAJOR MINOR" or nothing
PYTHON_CHECK = ('command -v python3 >/dev/null 2>&1 && '
                'python3 -c "import sys; print(\\"python %d %d\\" % sys.version_info[:2])"')
NO_PYTHON_HINT = "Install it (Debian/Ubuntu: apt-get install python3; RHEL: dnf install python3) and run again"


@dataclass(frozen=True)
class DeployOptions:
    """What to install and how to log in (defaults: everything allowed, operator's ssh)."""

    actions: tuple[str, ...] = ACTION_KINDS
    service_patterns: tuple[str, ...] = ("*",)
    container_patterns: tuple[str, ...] = ("*",)
    watch_units: tuple[str, ...] = ()
    #: install the central's key without the forwarding-only restriction, for the login user
    full_access: bool = False
    #: the dedicated user deploy creates for the central to log in as (not with full_access)
    central_user: str = CENTRAL_LOGIN_USER
    #: replace the host's agent secret even when it has a sound one
    rotate_secret: bool = False
    #: the user to log in as to deploy (None: the server's user if it is not the central's
    #: login user, else what ~/.ssh/config says for the host, else the local user, as ssh does)
    login_user: str | None = None
    #: private key to log in with (added to what ~/.ssh/config and ssh-agent offer)
    identity: str | None = None
    #: known_hosts file to check host keys against (None: the operator's, as ssh would)
    known_hosts: str | None = None
    #: check the host key against the key central pinned instead of known_hosts
    pinned_host_key: bool = False
    #: ssh config files (None: ~/.ssh/config as ssh reads it)
    ssh_config: tuple[str, ...] | None = None
    jobs: int = 8
    connect_timeout: float = 15.0
    #: also install the terminal key for this existing host account (docs/terminal.md)
    terminal_user: str | None = None
    #: who to log in as per server name (an inventory's ansible_user / User), below login_user
    login_users: tuple[tuple[str, str], ...] = ()


@dataclass
class DeployResult:
    """How deploying to one server went; updated in place as the steps go by."""

    server: str
    target: str
    state: str = "waiting"  # waiting, running, ok, failed, skipped
    step: str = ""
    message: str = ""
    hint: str = ""
    mode: str | None = None
    version: str | None = None
    sha256: str | None = None

    @property
    def ok(self) -> bool:
        """True when the deploy succeeded or was skipped on purpose."""
        return self.state in ("ok", "skipped")

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"server": self.server, "target": self.target, "state": self.state, "step": self.step,
                "message": self.message, "hint": self.hint, "mode": self.mode, "version": self.version,
                "sha256": self.sha256}


class StepFailed(Exception):
    """One step of a deploy failed: what happened and what to do."""

    def __init__(self, step: str, message: str, hint: str):
        super().__init__(f"{step}: {message}")
        self.step, self.message, self.hint = step, message, hint


def check_options(options: DeployOptions) -> DeployOptions:
    """Validate the policy options and jobs; raise Invalid naming the bad value."""
    for kind in options.actions:
        if kind not in ACTION_KINDS:
            raise Invalid(f"unknown action kind {kind!r}: use kill, service or docker")
    for what, values in (("service pattern", options.service_patterns),
                         ("container pattern", options.container_patterns),
                         ("watched unit", options.watch_units)):
        for value in values:
            if not GLOB_RE.match(value):
                raise Invalid(f"{what} {value!r} has characters other than A-Z a-z 0-9 @ _ . : * ? ! [ ] -")
    if not 1 <= options.jobs <= 256:
        raise Invalid(f"jobs must be 1 to 256, not {options.jobs}")
    for what, user in (("central user", options.central_user), ("login user", options.login_user)):
        if user is not None and (not USER_RE.match(user) or user == "root" and what == "central user"):
            raise Invalid(f"invalid {what} {user!r}")
    if options.identity is not None and not Path(options.identity).is_file():
        raise Invalid(f"identity file {options.identity} does not exist")
    if options.terminal_user is not None:
        from .terminal import check_account

        check_account(options.terminal_user)
    if options.known_hosts is not None and not Path(options.known_hosts).is_file():
        raise Invalid(f"known_hosts file {options.known_hosts} does not exist")
    return replace(options, service_patterns=options.service_patterns or ("*",),
                   container_patterns=options.container_patterns or ("*",))


def policy_document(options: DeployOptions) -> dict:
    """The agent's policy file (/etc/central-agent.json) for these options."""
    return {"actions": {kind: kind in options.actions for kind in ACTION_KINDS},
            "service_patterns": list(options.service_patterns or ("*",)),
            "container_patterns": list(options.container_patterns or ("*",)),
            "watched_units": list(options.watch_units)}


def authorized_key_line(public_key: str, agent_port: int, full_access: bool) -> str:
    """The central's authorized_keys line: forwarding to the agent only, unless full access."""
    if full_access:
        return f"{public_key} central"
    return restricted_key_line(public_key, agent_port) + " central"


def installer_arguments(sha256: str, agent_port: int, policy: dict, public_key: str, key_line: str,
                        central_user: str | None = CENTRAL_LOGIN_USER, rotate: bool = False) -> list[str]:
    """The installer's argv (see scripts/agent-install.sh): base64 or checked tokens.
    central_user None: full access (the key goes to the login user's own authorized_keys)."""

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return [sha256, str(agent_port), b64(json.dumps(policy)), b64(key_line), public_key.split()[1],
            central_user or "-", "1" if rotate else "0"]


def _connect_hint(server: Server, reason: str, options: DeployOptions) -> str:
    target = f"{server.user}@{server.host}" + (f" -p {server.port}" if server.port != 22 else "")
    if reason == HOST_KEY_MISMATCH:
        if options.pinned_host_key:
            return "The host presents another key than the one central pinned: check it, then `central server trust`"
        return (f"Check the host's key (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on it) and add it to your "
                f"known_hosts (ssh {target} asks), or pass --pinned-host-key to use the key central pinned")
    if reason == AUTH_FAILED:
        return (f"central deploy logs in with your own SSH access: check that `ssh {target}` works without a "
                f"password (ssh-copy-id), or pass --identity FILE")
    return f"Check that the host is up and that sshd answers on {server.host}:{server.port}"


class Deployer:
    """Deploys the bundled agent to servers; calls on_change(result) after every step."""

    def __init__(self, central, options: DeployOptions,
                 on_change: Callable[[DeployResult], None] | None = None):
        self.central = central
        self.options = check_options(options)
        self.on_change = on_change or (lambda result: None)
        self.agent = agent_path().read_bytes()
        self.sha256 = agent_sha256()
        self.installer = installer_path().read_text()
        self.terminal_key = None
        if self.options.terminal_user is not None:
            self.terminal_key, _ = central.terminal.ensure_key()
            self.terminal_installer = terminal_installer_path().read_text()

    def _set(self, result: DeployResult, **fields) -> None:
        for key, value in fields.items():
            setattr(result, key, value)
        self.on_change(result)

    async def run(self, servers: Sequence[Server], upgrade_outdated: bool = False) -> list[DeployResult]:
        """Deploy to every server, options.jobs at a time; one result per server, in order."""
        results = [DeployResult(s.name, self.central.transports.address(s) if self.central.transports.of(s).no_agent
                                else f"{self.login_user(s) or getpass.getuser()}@{s.host}:{s.port}") for s in servers]
        for result in results:
            self.on_change(result)
        slots = asyncio.Semaphore(self.options.jobs)

        async def one(server: Server, result: DeployResult) -> None:
            async with slots:
                await self._deploy_one(server, result, upgrade_outdated)

        await asyncio.gather(*(one(s, r) for s, r in zip(servers, results)))
        return results

    async def reported_sha256(self, server: Server) -> str | None:
        """The agent's sha256 as it answers now through the central, else as last polled; None
        for an agent the central cannot authenticate (no secret: deployed the old way)."""
        if await self.central.storage.agent_secret(server.id) is None:
            return None
        live = await servers.test_server(self.central, server.name)
        return live.get("sha256") if live.get("ok") else server.agent_sha256

    async def _deploy_one(self, server: Server, result: DeployResult, upgrade_outdated: bool) -> None:
        slog = server_log(log, server.name)
        no_agent = self.central.transports.of(server).no_agent
        if no_agent is not None:
            self._set(result, state="skipped", message=no_agent)
            return
        try:
            if upgrade_outdated:
                self._set(result, state="running", step="check")
                reported = await self.reported_sha256(server)
                old_login = server.user != self.options.central_user and not self.options.full_access
                if reported == self.sha256 and not old_login:
                    self._set(result, state="skipped", sha256=reported, message="agent is current")
                    return
            await self._deploy(server, result)
        except StepFailed as failure:
            slog.info("deploy failed at %s: %s", failure.step, failure.message)
            self._set(result, state="failed", step=failure.step, message=failure.message, hint=failure.hint)
        except Exception as exc:  # noqa: BLE001 - one host's surprise must not stop the others
            slog.exception("deploy failed at %s", result.step)
            self._set(result, state="failed", message=f"{type(exc).__name__}: {exc}",
                      hint="Run again; if it persists, check the host by hand")

    def login_user(self, server: Server) -> str | None:
        """Who to log in as to deploy (None: as ssh would, from ~/.ssh/config or the local user)."""
        if self.options.login_user:
            return self.options.login_user
        per_server = dict(self.options.login_users).get(server.name)
        if per_server:
            return per_server
        if server.user != self.options.central_user:
            return server.user  # deployed the old way, or --full-access: the login is the operator's
        return None

    async def _connect(self, server: Server, result: DeployResult | None = None) -> asyncssh.SSHClientConnection:
        opts = self.options
        kwargs: dict = {"connect_timeout": opts.connect_timeout}
        if self.login_user(server):
            kwargs["username"] = self.login_user(server)
        if opts.identity:
            kwargs["client_keys"] = [opts.identity]
        if opts.ssh_config is not None:
            kwargs["config"] = list(opts.ssh_config)
        if opts.pinned_host_key:
            if not server.host_key:
                raise StepFailed("connect", "central has no host key pinned for this server",
                                 f"Run `central server trust {server.name}` or drop --pinned-host-key")
            kwargs["known_hosts"] = ([asyncssh.import_public_key(server.host_key)], [], [])
        elif opts.known_hosts:
            kwargs["known_hosts"] = opts.known_hosts
        try:
            prepared = await asyncssh.SSHClientConnectionOptions.construct(
                None, host=server.host, port=server.port, **kwargs)
            if prepared.known_hosts is None:
                # `UserKnownHostsFile none` in an ssh config would turn checking off in asyncssh
                raise StepFailed("connect", "your ssh config sets no known_hosts file; central deploy never "
                                 "skips host-key checks", "Pass --known-hosts FILE or --pinned-host-key")
            if prepared.username == opts.central_user and not opts.full_access:
                raise StepFailed("connect", f"central deploy would log in as {opts.central_user}, the central's "
                                 "own restricted user", "Pass --user USER (root, or a user with passwordless sudo)")
            via, tunnel = "", ()
            if server.via is not None and not prepared.tunnel:
                # behind a bastion (and no ProxyJump of yours for it): the central's own pooled
                # connection to the bastion carries this login too; the host key is still checked
                bastion, tunnel = await self.central.pool.bastion_of(server)
                prepared = await asyncssh.SSHClientConnectionOptions.construct(
                    None, host=server.host, port=server.port, tunnel=tunnel, **kwargs)
                via = f" via {bastion.name}"
            if result is not None:
                self._set(result, target=f"{prepared.username}@{server.host}:{server.port}{via}")
            # tunnel given again: connect() re-reads the ssh config, which would otherwise replace it
            return await asyncio.wait_for(asyncssh.connect(server.host, server.port, options=prepared, tunnel=tunnel),
                                          opts.connect_timeout + 5)
        except StepFailed:
            raise
        except asyncssh.HostKeyNotVerifiable as exc:
            which = "the key central pinned" if opts.pinned_host_key else "your known_hosts"
            raise StepFailed("connect", f"host key not verified against {which} ({exc.reason})",
                             _connect_hint(server, HOST_KEY_MISMATCH, opts)) from None
        except Exception as exc:  # noqa: BLE001 - classified
            err = classify(exc)
            raise StepFailed("connect", f"{err.reason}: {err.message}", _connect_hint(server, err.reason, opts)) from None

    async def _deploy(self, server: Server, result: DeployResult) -> None:
        self._set(result, state="running", step="connect")
        public_key = public_key_line(load_client_key(server.key_path or self.central.config.key_path))
        key_line = authorized_key_line(public_key, server.agent_port, self.options.full_access)
        conn = await self._connect(server, result)
        async with conn:
            self._set(result, step="privileges")
            who = await conn.run("id -u", check=False)
            sudo = ""
            if (who.stdout or "").strip() != "0":
                sudo = "sudo -n "
                probe = await conn.run("sudo -n true", check=False)
                if probe.exit_status != 0:
                    raise StepFailed("privileges", f"{server.user} is not root and 'sudo -n' failed",
                                     f"Log in as root or allow {server.user} passwordless sudo")

            self._set(result, step="python")
            await self._check_python(conn)
            self._set(result, step="upload")
            upload = await conn.run(sudo + UPLOAD_COMMAND, input=self.agent, encoding=None, check=False)
            if upload.exit_status != 0:
                tail = (upload.stderr or b"").decode(errors="replace").strip().splitlines()[-1:] or [""]
                raise StepFailed("upload", f"could not write {AGENT_DIR}/agent.py.new ({tail[0]})",
                                 "Check free space and that /opt is writable")

            args = installer_arguments(self.sha256, server.agent_port, policy_document(self.options),
                                       public_key, key_line,
                                       None if self.options.full_access else self.options.central_user,
                                       self.options.rotate_secret)
            command = sudo + "sh -s -- " + " ".join(shlex.quote(a) for a in args)
            installed = await self._install(conn, command, result)
            self._set(result, step="operator-access")
            await self._check_operator_access(server, conn, sudo)
            if self.terminal_key is not None:
                await self._install_terminal_key(conn, sudo, server, result, installed["login"])
        # the host's secret and the user the central logs in as now, then a check through them
        secret = check_secret(installed["secret"])
        login = installed["login"]
        if not login or not USER_RE.match(login):
            raise StepFailed("check", "the installer named no valid login user for the central",
                             "Run again; if it persists, check the host by hand")
        await self.central.storage.set_agent_secret(server.id, secret)
        if login and login != server.user:
            await self.central.storage.update_server(server.name, user=login)
        self.central.transports.forget(server.id)
        if server.host_key:
            self._set(result, step="check")
            check = await servers.test_server(self.central, server.name)
            if not check.get("ok"):
                raise StepFailed("check", f"the central cannot reach the agent with its own key: "
                                 f"{check.get('reason')}: {check.get('error')}",
                                 "Check that the central's key is in the login user's authorized_keys "
                                 "and that sshd allows port forwarding")
        if self.terminal_key is not None:
            await self._record_terminal(server, result)
        self._set(result, state="ok", message=result.mode or "")

    async def _check_python(self, conn: asyncssh.SSHClientConnection) -> None:
        """python3 3.6+ on the host, checked before anything is uploaded (nothing is left behind)."""
        probe = await conn.run(PYTHON_CHECK, check=False)
        words = ((probe.stdout or "").strip().splitlines() or [""])[-1].split()
        if len(words) != 3 or words[0] != "python" or not (words[1].isdigit() and words[2].isdigit()):
            raise StepFailed("python", "python3 not found on the host (or it does not run)", NO_PYTHON_HINT)
        if (int(words[1]), int(words[2])) < (3, 6):
            raise StepFailed("python", f"python3 is {words[1]}.{words[2]}; the agent needs 3.6 or later",
                             "Install a newer python3 and run again")

    async def _check_operator_access(self, server: Server, conn: asyncssh.SSHClientConnection, sudo: str) -> None:
        """A fresh login as the operator must still work; if not, undo the host's sshd and
        authorized_keys changes over the connection still open."""
        try:
            probe = await self._connect(server)
            async with probe:
                await probe.run("true", check=False)
            return
        except StepFailed as failure:
            why = failure.message
        rollback = await conn.run(sudo + "sh -s -- rollback", input=self.installer, check=False)
        out = (rollback.stdout or "").strip().splitlines()
        if out and out[-1] == "ROLLED-BACK":
            done = "the sshd and authorized_keys changes were rolled back"
        else:
            done = "rolling them back failed too: " + (out[-1] if out else f"exit {rollback.exit_status}")
        raise StepFailed("operator-access", f"after the install you could no longer log in ({why}); {done}",
                         "Check the host's sshd configuration and your key, then run again")

    async def _install_terminal_key(self, conn: asyncssh.SSHClientConnection, sudo: str, server: Server,
                                    result: DeployResult, poll_user: str | None) -> None:
        """Install the terminal key, `restrict,pty`, for the named account (a separate installer)."""
        from .terminal import terminal_key_line

        account = self.options.terminal_user
        line = terminal_key_line(self.terminal_key)
        args = [account, base64.b64encode(line.encode()).decode(), self.terminal_key.split()[1], poll_user or "-"]
        command = sudo + "sh -s -- " + " ".join(shlex.quote(a) for a in args)
        await self._install(conn, command, result, self.terminal_installer)

    async def _record_terminal(self, server: Server, result: DeployResult) -> None:
        """Check that the terminal key opens a PTY session as the account, then record the account."""
        account = self.options.terminal_user
        if server.host_key:
            self._set(result, step="terminal-check")
            try:
                await self.central.terminal.check(server, account)
            except CentralError as exc:
                raise StepFailed("terminal-check", exc.message,
                                 f"Check that sshd lets {account} log in with a key and gives it a TTY") from None
        await self.central.terminal.enable(server.name, account, by="deploy")

    async def _install(self, conn: asyncssh.SSHClientConnection, command: str, result: DeployResult,
                       script: str | None = None) -> dict:
        """Run an installer (default: the agent's), following its STEP lines; raise StepFailed on a
        FAIL line. Returns {"secret", "login"} from the agent installer's SECRET and LOGIN lines."""
        process = await conn.create_process(command, stderr=asyncssh.STDOUT)
        process.stdin.write(self.installer if script is None else script)
        process.stdin.write_eof()
        failure = None
        last = ""
        installed = {"secret": None, "login": None}
        async for line in process.stdout:
            line = line.rstrip("\n")
            kind, _, rest = line.partition(" ")
            if kind == "SECRET":  # kept only here: never in `last`, a result or a log line
                installed["secret"] = rest
                continue
            if line:
                last = line
            if kind == "LOGIN":
                installed["login"] = rest
            elif kind == "STEP":
                self._set(result, step=rest)
            elif kind == "MODE":
                result.mode = rest
            elif kind == "AGENT":
                version, _, sha = rest.partition(" ")
                self._set(result, version=version, sha256=sha)
            elif kind == "FAIL":
                step, _, tail = rest.partition("\t")
                message, _, hint = tail.partition("\t")
                failure = StepFailed(step, message, hint)
        completed = await process.wait()
        if failure is not None:
            raise failure
        if completed.exit_status != 0:
            raise StepFailed(result.step or "install", last or f"the installer exited {completed.exit_status}",
                             "Run again; if it persists, check the host by hand")
        if script is None and installed["secret"] is None:
            raise StepFailed(result.step or "install", "the installer did not hand over the agent secret",
                             "Run again; if it persists, check the host by hand")
        return installed


class Undeployer(Deployer):
    """Removes what deploying installed from servers (the installer's `uninstall` mode) over the
    operator's own SSH access; calls on_change(result) after every step."""

    def __init__(self, central, options: DeployOptions,
                 on_change: Callable[[DeployResult], None] | None = None):
        super().__init__(central, replace(options, terminal_user=None), on_change)

    def _blobs(self, server: Server) -> list[str]:
        """The key blobs whose authorized_keys lines go: the central's key, the terminal key ("-": none)."""
        blobs = [public_key_line(load_client_key(server.key_path or self.central.config.key_path)).split()[1]]
        terminal = Path(str(self.central.config.terminal_key_path) + ".pub")
        try:
            blobs.append(terminal.read_text().split()[1])
        except (OSError, IndexError):
            blobs.append("-")
        return blobs

    async def _deploy_one(self, server: Server, result: DeployResult, upgrade_outdated: bool) -> None:
        slog = server_log(log, server.name)
        no_agent = self.central.transports.of(server).no_agent
        if no_agent is not None:
            self._set(result, state="skipped", message=no_agent)
            return
        try:
            await self._undeploy(server, result)
        except StepFailed as failure:
            slog.info("undeploy failed at %s: %s", failure.step, failure.message)
            self._set(result, state="failed", step=failure.step, message=failure.message, hint=failure.hint)
        except Exception as exc:  # noqa: BLE001 - one host's surprise must not stop the others
            slog.exception("undeploy failed at %s", result.step)
            self._set(result, state="failed", message=f"{type(exc).__name__}: {exc}",
                      hint="Run again; if it persists, check the host by hand")

    async def _undeploy(self, server: Server, result: DeployResult) -> None:
        self._set(result, state="running", step="connect")
        blobs = self._blobs(server)
        conn = await self._connect(server, result)
        async with conn:
            self._set(result, step="privileges")
            who = await conn.run("id -u", check=False)
            sudo = ""
            if (who.stdout or "").strip() != "0":
                sudo = "sudo -n "
                if (await conn.run("sudo -n true", check=False)).exit_status != 0:
                    raise StepFailed("privileges", f"{server.user} is not root and 'sudo -n' failed",
                                     f"Log in as root or allow {server.user} passwordless sudo")
            args = ["uninstall", *blobs, self.options.central_user]
            command = sudo + "sh -s -- " + " ".join(shlex.quote(a) for a in args)
            process = await conn.create_process(command, stderr=asyncssh.STDOUT)
            process.stdin.write(self.installer)
            process.stdin.write_eof()
            removed, failure, done, last = [], None, False, ""
            async for line in process.stdout:
                line = line.rstrip("\n")
                kind, _, rest = line.partition(" ")
                last = line or last
                if kind == "STEP":
                    self._set(result, step=rest)
                elif kind == "REMOVED":
                    removed.append(rest)
                elif kind == "FAIL":
                    step, _, tail = rest.partition("\t")
                    message, _, hint = tail.partition("\t")
                    failure = StepFailed(step, message, hint)
                elif line == "UNINSTALLED":
                    done = True
            completed = await process.wait()
        if failure is not None:
            raise failure
        if completed.exit_status != 0 or not done:
            raise StepFailed(result.step or "uninstall", last or f"the uninstaller exited {completed.exit_status}",
                             "Run again; if it persists, check the host by hand")
        self.central.transports.forget(server.id)
        server_log(log, server.name).info("undeployed: removed %s", ", ".join(removed) or "nothing")
        self._set(result, state="ok", mode=None,
                  message=f"{len(removed)} items removed" + (f": {', '.join(removed)}" if removed else ""))


async def select_inventory(central, entries) -> tuple[list[Server], tuple[tuple[str, str], ...]]:
    """The servers a fleet file names (each must have been imported) and, per server, the login
    user the file gives (ansible_user, User)."""
    found, users = [], []
    for e in entries:
        server = await central.storage.find_server(e.name)
        if server is None:
            raise Invalid(f"{e.where}: host {e.name} is not a server: import the file first "
                          f"(central server import {e.path})")
        found.append(server)
        if e.user:
            users.append((e.name, e.user))
    return found, tuple(users)


async def select_servers(central, names: Sequence[str], all_servers: bool) -> list[Server]:
    """The servers named (each must exist), or with all_servers every remote server."""
    if all_servers:
        if names:
            raise Invalid("give server names or --all, not both")
        return [s for s in await central.storage.list_servers() if central.transports.of(s).no_agent is None]
    if not names:
        raise Invalid("name at least one server (or pass --all)")
    seen: list[Server] = []
    for name in dict.fromkeys(names):
        seen.append(await central.storage.get_server(name))
    return seen
