"""The serving process's garbage-collector policy (central/gcpolicy.py): frozen after start-up
and after each server-list load, thresholds raised, every pause measured, defaults given back;
and the served app wires it to the real poller's reloads."""
from __future__ import annotations

import asyncio
import gc
import sys
import weakref

import pytest

from central.gcpolicy import COUNT_EVERY, FULL_EVERY, THRESHOLDS, YOUNG_EVERY, GCPolicy
from central.web.app import create_app
from central.web.keys import CENTRAL, GC_POLICY
from tests.helpers import wait_for

pytestmark = pytest.mark.unit


class Cycle:
    def __init__(self):
        self.me = self


def test_start_freezes_settle_collects_then_freezes_stop_gives_back():
    before = gc.get_threshold()
    policy = GCPolicy()
    policy.start()
    try:
        assert gc.get_threshold() == THRESHOLDS
        assert gc.get_freeze_count() > 0 and policy.settles == 1
        survivor = Cycle()
        policy.settle()
        # frozen (not walked: gc.freeze only moves lists): out of the collector's reach
        assert survivor not in gc.get_objects()
        assert policy.settles == 2
        garbage = Cycle()
        ref = weakref.ref(garbage)
        del garbage
        gc.collect(1)  # a young cycle is still collected by the (small) young collections
        assert ref() is None
    finally:
        policy.stop()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    assert policy._callback not in gc.callbacks  # noqa: SLF001


GROWTH = 0.02  # the tests' FULL_GROWTH: a few MB of objects, not a quarter of pytest's


class Garbage:
    """A cycle with a payload of its own blocks."""

    def __init__(self):
        self.me = self
        self.payload = [str(i) * 3 for i in range(20)]


def _grow_blocks(policy, fraction: float, make=Garbage) -> list:
    """New objects until the allocated blocks grew by fraction over the policy's baseline."""
    kept = []
    while sys.getallocatedblocks() < policy.baseline * (1 + fraction) + 1000:
        kept.extend(make() for _ in range(1_000))
    return kept


def test_a_full_collection_waits_for_full_every_and_for_the_allocated_blocks_to_grow():
    now = [0.0]
    policy = GCPolicy(clock=lambda: now[0], growth=GROWTH)
    policy.start()
    try:
        kept = Cycle()
        ref = weakref.ref(kept)
        policy.settle()  # kept is frozen now
        del kept
        now[0] = FULL_EVERY - 1
        policy.settle()
        assert policy.baseline is None and policy.blocks == 0  # not even counted before FULL_EVERY
        now[0] = FULL_EVERY + 1
        policy.settle()
        # the first count is the baseline: no pause, and a frozen cycle is not collected
        assert ref() is not None and policy.full_collections == 0
        assert policy.baseline == policy.blocks > 0
        grown = _grow_blocks(policy, GROWTH)
        now[0] += COUNT_EVERY / 2
        policy.settle()
        assert ref() is not None and policy.full_collections == 0  # not counted again so soon
        now[0] += COUNT_EVERY
        policy.settle()  # grown by GROWTH: everything unfrozen and collected
        assert ref() is None and policy.full_collections == 1
        assert policy.baseline == policy.blocks
        garbage = Cycle()
        ref = weakref.ref(garbage)
        policy.settle()
        del garbage, grown  # cyclic garbage: its blocks stay allocated until it is collected
        before = sys.getallocatedblocks()
        _grow_blocks(policy, GROWTH)  # and more of it
        assert sys.getallocatedblocks() > before
        now[0] += FULL_EVERY - 1
        policy.settle()
        assert ref() is not None and policy.full_collections == 1  # grown, but within FULL_EVERY of the last
        now[0] += 2
        policy.settle()
        assert ref() is None and policy.full_collections == 2
        assert policy.baseline < before  # the garbage's blocks are free again
        baseline = policy.baseline
        now[0] += FULL_EVERY + 1
        policy.settle()
        assert policy.full_collections == 2 and policy.baseline == baseline  # not grown: no pause
    finally:
        policy.stop()


def test_the_young_generations_are_collected_every_young_every_seconds():
    # the thresholds count allocations minus deallocations: at steady state a young collection
    # came seconds late and walked 92,000-155,000 objects at 10,000 hosts (82-152 ms). tick()
    # collects them once YOUNG_EVERY passed without a collection, so each walks little.
    now = [0.0]
    policy = GCPolicy(clock=lambda: now[0])
    policy.start()
    try:
        garbage = Cycle()
        ref = weakref.ref(garbage)
        del garbage
        now[0] += YOUNG_EVERY / 2
        assert policy.tick() is False and policy.young_ticks == 0  # not due yet
        survivor = Cycle()
        now[0] += YOUNG_EVERY
        assert policy.tick() is True and policy.young_ticks == 1
        assert ref() is None  # the young cycle is freed
        # what survived went to the old generation: the next young collection does not walk it again
        assert any(o is survivor for o in gc.get_objects(2))
        assert not any(o is survivor for o in gc.get_objects(0)) and not any(o is survivor for o in gc.get_objects(1))
        assert policy.tick() is False  # a collection just ran
    finally:
        policy.stop()
    now[0] += YOUNG_EVERY
    assert policy.tick() is False  # a stopped policy collects nothing


async def test_run_ticks_until_cancelled():
    now = [0.0]

    def clock() -> float:
        now[0] += YOUNG_EVERY  # every reading is YOUNG_EVERY later: each tick is due
        return now[0]

    policy = GCPolicy(clock=clock)
    policy.start()
    task = asyncio.create_task(policy.run(every=0.01))
    try:
        await wait_for(lambda: policy.young_ticks >= 3, timeout=10, what="three young collections")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        policy.stop()


async def test_the_served_app_settles_after_each_server_list_load(config):
    app = create_app(config)
    from aiohttp.test_utils import TestServer

    server = TestServer(app)
    await server.start_server()
    try:
        policy = app[GC_POLICY]
        assert gc.get_threshold() == THRESHOLDS and policy.settles >= 1
        assert [t for t in asyncio.all_tasks() if t.get_name() == "gc-young"]  # and collects the young ones
        before = policy.settles  # (the poller's own periodic reload settles too)
        await app[CENTRAL].poller.reload()
        await app[CENTRAL].poller.reload()
        assert policy.settles >= before + 2
    finally:
        await server.close()
    assert gc.get_freeze_count() == 0


def test_a_process_that_ends_next_keeps_its_objects_frozen():
    # unfrozen at the stop, the collection at interpreter exit walked every object (2.8 s from
    # the central closed to the process gone, at 10,000 servers)
    before = gc.get_threshold()
    policy = GCPolicy()
    policy.start()
    frozen = gc.get_freeze_count()
    try:
        policy.stop(unfreeze=False)
        assert gc.get_threshold() == before and policy._callback not in gc.callbacks  # noqa: SLF001
        assert frozen > 0 and gc.get_freeze_count() > frozen // 2  # (a few freed by their refcount)
    finally:
        gc.unfreeze()


async def test_the_served_app_gives_the_collector_back_only_after_the_central_closed(config, monkeypatch):
    from aiohttp.test_utils import TestServer

    from central.service import Central

    app = create_app(config)
    seen = []
    close = Central.close

    async def closing(self):
        seen.append(("close", gc.get_threshold() == THRESHOLDS, gc.get_freeze_count() > 0))
        await close(self)

    monkeypatch.setattr(Central, "close", closing)
    server = TestServer(app)
    await server.start_server()
    await server.close()
    # while the central closed, the policy still held (thresholds, frozen objects); an app in a
    # process that goes on (tests) gives the frozen objects back afterwards
    assert seen == [("close", True, True)]
    assert gc.get_freeze_count() == 0 and gc.get_threshold() != THRESHOLDS
