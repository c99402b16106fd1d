"""Inventory changes as the poller records them (central/inventory.py, Poller.store)."""
from __future__ import annotations

import time

import pytest

from central import inventory
from central.model import PollOutcome

pytestmark = pytest.mark.unit


async def store(central, inv, poll_hash):
    server = await central.storage.get_server("local")
    outcome = PollOutcome(server.id, time.time(), 0.01, ok=True, inventory_hash=poll_hash)
    outcome.extra["inventory"] = inv
    await central.poller.store([outcome])
    return await central.storage.inventory_history(server.id)


async def test_the_same_inventory_under_another_hash_is_no_change(central):
    """The agent's /api/all carries an inventory hash up to 25 s old, the fetched inventory is
    fresh: a document already stored is never a second, invisible "change"."""
    inv = {"hostname": "h", "interfaces": [{"name": "eth0", "mtu": 1500}]}
    assert [h["change_type"] for h in await store(central, inv, "stale-hash")] == ["initial"]
    assert [h["change_type"] for h in await store(central, inv, "fresh-hash")] == ["initial"]
    assert [h["change_type"] for h in await store(central, dict(inv), None)] == ["initial"]
    latest = await central.storage.inventory_latest((await central.storage.get_server("local")).id)
    assert latest["hash"] == inventory.digest(inv)
    # a real change still is one
    changed = {"hostname": "h", "interfaces": [{"name": "eth0", "mtu": 9000}]}
    history = await store(central, changed, "stale-hash")
    assert [h["change_type"] for h in history] == ["network_change", "initial"]
