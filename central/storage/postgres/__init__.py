"""The PostgreSQL backend (asyncpg, one pool): central.storage.interface on a PostgreSQL
database, selected by `storage.url = "postgresql://..."`.

One module per concept, as for SQLite, on the pool and transaction helpers of base.py; the
schema and its versioned migrations are in schema.py. Raw samples and rollups live in time
partitions (a day of samples or 1-minute rollups, 30 days of 1-hour rollups): retention drops
whole partitions.
"""
from __future__ import annotations

from ..interface import Storage
from .alerts import PostgresAlerts
from .cluster import PostgresCluster
from .containers import PostgresContainers
from .audit import PostgresAudit
from .base import PostgresBase, safe_url
from .inventory import PostgresInventory
from .samples import PostgresSamples
from .schema import MIGRATIONS, SCHEMA_VERSION
from .secrets import PostgresAgentSecrets
from .servers import PostgresServers
from .terminal import PostgresTerminal
from .users import PostgresUsers

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "PostgresStorage", "is_postgres_url", "safe_url"]


def is_postgres_url(target: object) -> bool:
    """Whether target names a PostgreSQL database (postgresql://... or postgres://...)."""
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


class PostgresStorage(PostgresServers, PostgresSamples, PostgresContainers, PostgresInventory, PostgresAlerts,
                      PostgresAudit, PostgresUsers, PostgresTerminal, PostgresAgentSecrets, PostgresCluster,
                      PostgresBase, Storage):
    """central's database on PostgreSQL: `await PostgresStorage.open("postgresql://...")`."""
