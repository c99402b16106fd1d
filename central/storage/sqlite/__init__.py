"""The SQLite backend (aiosqlite, WAL mode, one writer): central.storage.interface on one file.

One module per concept, all on the one connection and transaction helper of base.py.
"""
from __future__ import annotations

from ..interface import Storage
from .alerts import SQLiteAlerts
from .cluster import SQLiteCluster
from .audit import SQLiteAudit
from .containers import SQLiteContainers
from .base import MIGRATIONS, SCHEMA_VERSION, SQLiteBase
from .inventory import SQLiteInventory
from .samples import SQLiteSamples
from .secrets import SQLiteAgentSecrets
from .servers import SQLiteServers
from .terminal import SQLiteTerminal
from .users import SQLiteUsers

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SQLiteStorage"]


class SQLiteStorage(SQLiteServers, SQLiteSamples, SQLiteContainers, SQLiteInventory, SQLiteAlerts, SQLiteAudit,
                    SQLiteUsers, SQLiteTerminal, SQLiteAgentSecrets, SQLiteCluster, SQLiteBase, Storage):
    """central's database in one SQLite file: `await SQLiteStorage.open(path)`."""
