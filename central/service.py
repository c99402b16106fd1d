"""The running system (Central: config, database, transports, poller, alerts, opened together)
and the central's own SSH key pair.

Every operation the CLI and the HTTP API offer is an async function taking the opened Central
first, in the module of its concept: central.servers (probe, add, test, trust, change,
remove, poll), central.views (what lists, pages and the API show), central.alerts (alerts and
silences), central.actions (remote actions and their audit), central.deploy (agents),
central.auth (users and tokens) and central.terminal (the web terminal: a Terminals object,
like the alert engine, because it holds the open sessions). Handlers and click commands parse
input, call one of these, and map CentralError to their own error form. Nothing here knows about HTTP or terminals.
"""
from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import asyncssh

from . import files
from .alerts import AlertEngine
from .auth import Auth
from .cluster import Membership, default_member_name
from .config import Config
from .model import StorageUnavailable
from .notifiers import Dispatcher
from .poller import Poller
from .remotewrite import RemoteWriter, RemoteWriteSettings
from .servers import ensure_local_server
from .sshpool import SSHPool, host_authorities, public_key_line
from .storage import Storage
from .terminal import Terminals
from .transport import Transports

log = logging.getLogger(__name__)


async def check_database_writable(config: Config) -> None:
    """Raise StorageUnavailable, in one line, unless `central serve` can write its database
    (read-only file or file system, disk full, not openable). A lock another process holds is
    no reason not to start: poll outcomes wait in memory until it is released."""
    path = config.database_location
    try:
        storage = await Storage.open(config.database_target, config.database.lock_timeout)
    except StorageUnavailable as exc:
        raise StorageUnavailable(f"{path}: {exc.message}") from None
    except Exception as exc:  # noqa: BLE001 - sqlite3 or OS errors opening the file: one line, no traceback
        raise StorageUnavailable(f"cannot open the database {path}: {exc}") from None
    try:
        await storage.check_writable()
    except StorageUnavailable as exc:
        if "database is locked" not in exc.message:
            raise StorageUnavailable(f"{path}: {exc.message}") from None
        log.warning("%s is locked by another process; poll outcomes wait in memory until it is released", path)
    finally:
        await storage.close()


def remote_write_settings(config: Config) -> RemoteWriteSettings:
    """The remote writer's settings from [remote_write] (the bearer token read from its file)."""
    rw = config.remote_write
    token = None
    if rw.bearer_token_file:
        try:
            token = Path(rw.bearer_token_file).read_text().strip()
        except OSError as exc:
            raise StorageUnavailable(f"remote_write.bearer_token_file: cannot read {rw.bearer_token_file}: "
                                     f"{exc.strerror}") from None
    return RemoteWriteSettings(url=rw.url, timeout=rw.timeout, batch_size=rw.batch_size, max_samples=rw.max_samples,
                               backoff_initial=rw.backoff_initial, backoff_max=rw.backoff_max, bearer_token=token)


def restricted_key_line(public_key: str, agent_port: int = 8083) -> str:
    """The authorized_keys line that lets the central forward to the agent and nothing else."""
    return f'restrict,port-forwarding,permitopen="127.0.0.1:{agent_port}",command="/bin/false" {public_key}'


def ensure_key_pair(path: Path) -> tuple[str, bool]:
    """Create the central's ed25519 key pair if missing; returns (public key line, created)."""
    pub = Path(str(path) + ".pub")
    if path.exists():
        files.private_file(path)
        key = asyncssh.read_private_key(str(path))
        line = public_key_line(key)
        if not pub.exists():
            files.create_private(pub, (line + " central\n").encode(), mode=0o644)
        return line, False
    if not path.parent.is_dir():
        files.private_dir(path.parent)
    key = asyncssh.generate_private_key("ssh-ed25519", comment="central@" + socket.gethostname())
    files.create_private(path, key.export_private_key())
    line = public_key_line(key)
    files.create_private(pub, f"{line} central@{socket.gethostname()}\n".encode(), mode=0o644)
    return line, True


RESTART_NOTE = "takes effect at the next restart"
#: what a reload (SIGHUP) applies; every other section waits for a restart
RELOADABLE = ("alerts", "notifiers", "retention")


def _by_name(items) -> dict:
    return {getattr(item, "name", None) or str(i + 1): item for i, item in enumerate(items)}


def describe_changes(old: Config, new: Config) -> list[str]:
    """What differs between two configs, one line per change, in words an operator reads."""
    import dataclasses

    lines = []
    for what, before, after in (("alert rule", old.alerts.rules, new.alerts.rules),
                                ("notifier", old.notifiers, new.notifiers)):
        a, b = _by_name(before), _by_name(after)
        lines += [f"{what} {name} added" for name in b if name not in a]
        lines += [f"{what} {name} removed" for name in a if name not in b]
        lines += [f"{what} {name} changed" for name in b if name in a and a[name] != b[name]]
    for field in dataclasses.fields(old.alerts):
        if field.name != "rules" and getattr(old.alerts, field.name) != getattr(new.alerts, field.name):
            lines.append(f"alerts.{field.name.rstrip('_')} changed")
    for field in dataclasses.fields(old.retention):
        x, y = getattr(old.retention, field.name), getattr(new.retention, field.name)
        if x != y:
            lines.append(f"retention.{field.name}: {x:g}s -> {y:g}s")
    for field in dataclasses.fields(old):
        if field.name in RELOADABLE or field.name == "source":
            continue
        if getattr(old, field.name) != getattr(new, field.name):
            lines.append(f"{field.name} changed: {RESTART_NOTE}")
    return lines


class Central:
    """The running system: config, database, transports to the hosts and poller, opened together."""

    def __init__(self, config: Config, storage: Storage, pool: SSHPool):
        self.config = config
        self.storage = storage
        self.pool = pool
        # where the pool's agent clients find each server's secret (read at every channel open)
        pool.agent_secret = lambda server: storage.agent_secret(server.id)
        pool.resolve_server = storage.server_by_id  # a server's bastion (Server.via)
        self.transports = Transports(config, pool)
        self.poller = Poller(config, storage, self.transports)
        self.auth = Auth(storage)
        self.started_at = time.time()
        self.reloaded_from = config.source  # the config file the last reload read ("": none)
        self.notifier = Dispatcher(storage, config.notifiers, alerts=config.alerts, queue_size=config.alerts.queue_size)
        # Starts on the first stored poll batch: short-lived CLI processes never evaluate or notify.
        self.alerts = AlertEngine(config, storage, self.notifier)
        self.poller.hooks.append(self.alerts.on_batch)
        self.poller.writer.listeners.append(self.alerts.storage_health)
        self.terminal = Terminals(config, storage, self.auth, self.transports)
        self.poller.maintenance_hooks.append(self.terminal.prune)
        # several centrals on one database (cluster.enabled): poll only this central's share
        self.membership: Membership | None = None
        if config.cluster.enabled:
            member = config.cluster.member or default_member_name(config.http.port)
            self.membership = Membership(storage, member, ttl=config.cluster.ttl,
                                         address=f"{config.http.listen}:{config.http.port}",
                                         lag=lambda: self.poller.lag)
            self.poller.ownership = self.membership.ownership
            # alerts are evaluated and notified by the server's owner only
            membership = self.membership
            self.alerts.owns = lambda server_id: server_id in membership.owned
            self.membership.listeners.append(self.alerts.adopt)
        # remote write (remote_write.url): every stored sample also goes to a Prometheus receiver
        self.remote_write: RemoteWriter | None = None
        if config.remote_write.url:
            self.remote_write = RemoteWriter(remote_write_settings(config))
            self.poller.hooks.append(self.remote_write.on_batch)

    @classmethod
    async def open(cls, config: Config, *, serving: bool = False) -> "Central":
        """Open the database (creating it) and make sure the local server exists. serving: for
        `central serve`, whose writes wait for another process's lock only database.lock_timeout
        (its reads queue behind them); a CLI command waits up to 10 s."""
        files.private_dir(config.data_path)
        host_authorities(config.ssh)  # a host CA file that cannot be read is one line at start, not a failed poll
        storage = await Storage.open(config.database_target, config.database.lock_timeout if serving else 10.0)
        central = cls(config, storage, SSHPool(config.ssh, config.key_path))
        if serving and config.poll.workers:
            from .pollworker import PollWorkers

            central.transports.ssh.workers = PollWorkers(config, {"secret": storage.agent_secret,
                                                                  "server": storage.server_by_id})
        if config.poll.local:
            await ensure_local_server(central)
        return central

    async def reload(self, config_path: str | None = None, env: dict | None = None) -> list[str]:
        """Re-read the config file (SIGHUP) and apply what can change while serving: alert rules
        and the rest of [alerts], notifiers and retention. Returns the changes, one line each
        (empty: nothing changed). A file that does not load, or whose notifiers cannot be
        read, raises ConfigError and nothing changes."""
        import dataclasses

        from .config import load_config
        from .notifiers import check_channels

        old = self.config
        new = load_config(config_path or old.source or None, env=env)
        check_channels(new.notifiers)
        changes = describe_changes(old, new)
        merged = dataclasses.replace(old, alerts=new.alerts, notifiers=new.notifiers, retention=new.retention,
                                     source=new.source)
        self.reloaded_from = new.source
        if not any(not line.endswith(RESTART_NOTE) for line in changes):
            return changes
        self.config = merged
        self.poller.config = dataclasses.replace(self.poller.config, retention=new.retention, alerts=new.alerts,
                                                 notifiers=new.notifiers)
        notifier = None
        if new.notifiers != old.notifiers or new.alerts != old.alerts:
            notifier = Dispatcher(self.storage, new.notifiers, alerts=new.alerts, queue_size=new.alerts.queue_size)
            was_started = self.notifier.started
            await self.notifier.stop()
            self.notifier = notifier
            if was_started:
                await notifier.start()
        self.alerts.reconfigure(merged, notifier)
        self.terminal.config = dataclasses.replace(self.terminal.config, retention=new.retention)
        return changes

    async def close(self) -> None:
        """Stop polling and close connections and the database."""
        await self.poller.stop()
        if self.membership is not None:
            await self.membership.leave()
        if self.remote_write is not None:
            await self.remote_write.stop()
        await self.terminal.close()
        await self.alerts.stop()
        await self.notifier.stop()
        await self.transports.close()
        await self.storage.close()
