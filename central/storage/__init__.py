"""central's storage: one interface by concept (central.storage.interface), one backend today
(central.storage.sqlite). Everything outside this package uses only what is exported here."""
from __future__ import annotations

from .interface import TIER_HOUR, TIER_MINUTE, Alerts, Audit, Inventory, Samples, Servers, Storage, Terminal, Users

__all__ = ["TIER_HOUR", "TIER_MINUTE", "Alerts", "Audit", "Inventory", "Samples", "Servers", "Storage", "Terminal", "Users"]
