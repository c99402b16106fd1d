"""central's storage: one interface by concept (central.storage.interface), two backends
(central.storage.sqlite, the embedded default; central.storage.postgres). Everything outside this package uses only what is exported here."""
from __future__ import annotations

from .interface import (
    TIER_HOUR, TIER_MINUTE, AgentSecrets, Alerts, Audit, Cluster, Inventory, Samples, Servers, Storage, Terminal,
    Users,
)

__all__ = ["TIER_HOUR", "TIER_MINUTE", "AgentSecrets", "Alerts", "Audit", "Cluster", "Inventory", "Samples", "Servers",
           "Storage", "Terminal", "Users"]
