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


async def test_a_batch_stores_its_new_inventories_with_one_read_and_one_write(central, monkeypatch):
    # a fleet's first contact brings one inventory per server in the same batch: one at a time
    # (two round trips each) the writer fell behind on a busy event loop
    storage = central.storage
    servers = [await storage.add_server(f"s{i}", f"10.0.0.{i + 1}") for i in range(30)]
    same = {"hostname": "s0", "kernel": "6.1"}
    await storage.write_inventory(servers[0].id, 1.0, inventory.digest(same), same, "initial", "first inventory")
    await storage.write_inventory(servers[1].id, 1.0, "old", {"hostname": "s1", "kernel": "6.1"}, "initial", "first")
    calls = []
    for name in ("inventory_latest", "inventories_latest", "write_inventory", "write_inventories"):
        real = getattr(storage, name)

        async def counted(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return await _real(*args, **kwargs)

        monkeypatch.setattr(storage, name, counted)
    now = time.time()
    batch = []
    for i, s in enumerate(servers):
        o = PollOutcome(s.id, now, 0.01, ok=True)
        o.extra["inventory"] = same if i == 0 else {"hostname": s.name, "kernel": "6.2"}
        batch.append(o)
    again = PollOutcome(servers[2].id, now + 10, 0.01, ok=True)  # a second poll of s2 in the same batch
    again.extra["inventory"] = {"hostname": "s2", "kernel": "6.3"}
    await central.poller.store(batch + [again])
    assert calls == ["inventories_latest", "write_inventories"]
    history = {s.name: [h["change_type"] for h in await storage.inventory_history(s.id)] for s in servers}
    assert history["s0"] == ["initial"]  # the same document: no change
    assert history["s1"] == ["os_change", "initial"]
    assert history["s2"] == ["os_change", "initial"]  # compared with the batch's first one
    assert all(history[s.name] == ["initial"] for s in servers[3:])
    assert (await storage.inventory_latest(servers[2].id))["doc"]["kernel"] == "6.3"
    assert (await storage.get_server("s2")).inventory_hash == inventory.digest(again.extra["inventory"])


async def test_an_inventory_that_cannot_be_stored_loses_no_other(central, caplog):
    storage = central.storage
    servers = [await storage.add_server(f"s{i}", f"10.0.0.{i + 1}") for i in range(3)]
    now = time.time()
    batch = []
    for s in servers:
        o = PollOutcome(s.id, now, 0.01, ok=True)
        o.extra["inventory"] = {"hostname": s.name, "kernel": "6.1"}
        batch.append(o)
    batch[1].extra["inventory"]["disks"] = {1, 2}  # cannot be written as JSON: fails the batch's transaction
    await central.poller.store(batch)
    assert [h["change_type"] for h in await storage.inventory_history(servers[0].id)] == ["initial"]
    assert await storage.inventory_history(servers[1].id) == []
    assert [h["change_type"] for h in await storage.inventory_history(servers[2].id)] == ["initial"]
    assert f"[#{servers[1].id}] inventory not stored: Object of type set is not JSON serializable" in caplog.text
    assert len([r for r in caplog.records if "inventory not stored" in r.getMessage()]) == 1
