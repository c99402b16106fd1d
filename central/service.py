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
from .config import Config
from .model import StorageUnavailable
from .notifiers import Dispatcher
from .poller import Poller
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
    path = config.database_path
    try:
        storage = await Storage.open(path, config.database.lock_timeout)
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
        self.notifier = Dispatcher(storage, config.notifiers, alerts=config.alerts, queue_size=config.alerts.queue_size)
        # Starts on the first stored poll batch: short-lived CLI processes never evaluate or notify.
        self.alerts = AlertEngine(config, storage, self.notifier)
        self.poller.hooks.append(self.alerts.on_batch)
        self.poller.writer.listeners.append(self.alerts.storage_health)
        self.terminal = Terminals(config, storage, self.auth, self.transports)
        self.poller.maintenance_hooks.append(self.terminal.prune)

    @classmethod
    async def open(cls, config: Config, *, serving: bool = False) -> "Central":
        """Open the database (creating it) and make sure the local server exists. serving: for
        `central serve`, whose writes wait for another process's lock only database.lock_timeout
        (its reads queue behind them); a CLI command waits up to 10 s."""
        files.private_dir(config.data_path)
        host_authorities(config.ssh)  # a host CA file that cannot be read is one line at start, not a failed poll
        storage = await Storage.open(config.database_path, config.database.lock_timeout if serving else 10.0)
        central = cls(config, storage, SSHPool(config.ssh, config.key_path))
        if config.poll.local:
            await ensure_local_server(central)
        return central

    async def close(self) -> None:
        """Stop polling and close connections and the database."""
        await self.poller.stop()
        await self.terminal.close()
        await self.alerts.stop()
        await self.notifier.stop()
        await self.transports.close()
        await self.storage.close()
