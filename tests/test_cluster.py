"""Several centrals on one PostgreSQL (central.cluster): rendezvous hashing splits the fleet so
that a member joining or leaving moves only its share; three real Centrals on a real
PostgreSQL (tests/pgserver.py) polling in-process SSH hosts (tests/sshharness.py) poll every
server exactly once between them, a central that stops without leaving (a crash: its leases
are left to expire) loses its servers to the others within the TTL, one that comes back gets
its share again, and a clean stop hands over at once."""
from __future__ import annotations

import dataclasses
import itertools
import json
import time

import pytest

from central import views
from central.cluster import owner, share
from central.config import AlertRule, ClusterConfig, NotifierConfig, RouteConfig, StorageConfig
from central.service import Central
from tests.helpers import wait_for
from tests.receivers import HTTPReceiver
from tests.sshharness import document_agent
from tests.test_poller import stored

TTL = 2.0


def test_rendezvous_moves_only_the_share_of_a_member_that_joins_or_leaves():
    servers = range(1, 3001)
    three = ["c0", "c1", "c2"]
    split = {sid: owner(three, sid) for sid in servers}
    counts = {m: sum(1 for o in split.values() if o == m) for m in three}
    assert all(800 < n < 1200 for n in counts.values()), counts  # balanced
    four = {sid: owner(three + ["c3"], sid) for sid in servers}
    moved = {sid for sid in servers if four[sid] != split[sid]}
    assert all(four[sid] == "c3" for sid in moved) and 500 < len(moved) < 1000  # only to the newcomer
    two = {sid: owner(["c0", "c2"], sid) for sid in servers}
    assert {sid for sid in servers if two[sid] != split[sid]} == {sid for sid in servers if split[sid] == "c1"}
    assert share(three, "c1", servers) == {sid for sid in servers if split[sid] == "c1"}
    assert owner([], 1) is None


def polled(central: Central) -> set[int]:
    return set(central.poller._servers)


@pytest.fixture
async def cluster(config, pg_url):
    made: list[Central] = []

    async def start(member: str) -> Central:
        cfg = dataclasses.replace(
            config, storage=StorageConfig(url=pg_url), cluster=ClusterConfig(enabled=True, ttl=TTL, member=member),
            poll=dataclasses.replace(config.poll, local=False, reload_interval=0.5, interval=1.0))
        c = await Central.open(cfg)
        await c.poller.start()
        made.append(c)
        return c

    yield start
    for c in made:
        await c.close()


async def test_three_centrals_share_the_fleet_and_take_over_from_one_that_dies(cluster, ssh_host, agent_document):
    first = await cluster("c0")
    hosts = [await ssh_host(agent=document_agent(agent_document)) for _ in range(12)]
    ids = {(await stored(first, h)).id for h in hosts}
    centrals = {"c0": first, "c1": await cluster("c1"), "c2": await cluster("c2")}

    def split_is(members: list[str]):
        def check():
            got = {m: polled(centrals[m]) for m in members}
            disjoint = all(not (got[a] & got[b]) for a, b in itertools.combinations(members, 2))
            expected = all(got[m] == share(members, m, ids) for m in members)
            return disjoint and expected and set().union(*got.values()) == ids
        return check

    await wait_for(split_is(["c0", "c1", "c2"]), timeout=30, what="the three-way split")
    assert all(polled(c) for c in centrals.values())  # 12 servers: everyone has a share
    status = await views.central_status(centrals["c1"])
    assert [m["member"] for m in status["cluster"]["members"]] == ["c0", "c1", "c2"]
    assert status["cluster"]["servers"] == len(share(["c0", "c1", "c2"], "c1", ids))
    await wait_for(lambda: _all_seen(first, ids), timeout=30, what="every server polled")

    # c0 stops without leaving (as a crash would): its leases stay until they expire
    dead = centrals.pop("c0")
    dead_share = polled(dead)
    dead.membership = None  # close() must not hand over: the others wait for the TTL
    stopped_at = time.time()
    await dead.close()
    await wait_for(split_is(["c1", "c2"]), timeout=10 * TTL, what="the takeover of c0's servers")
    took = time.time() - stopped_at
    assert took >= TTL * 0.5  # nobody took them before the leases could expire
    # every server of c0 is polled again, by one of the others
    await wait_for(lambda: _all_seen_after(centrals["c1"], dead_share, stopped_at + took), timeout=30,
                   what="c0's servers polled after the takeover")

    # c0 comes back: it gets its share again, the others release it
    centrals["c0"] = await cluster("c0")
    await wait_for(split_is(["c0", "c1", "c2"]), timeout=10 * TTL, what="c0 back with its share")
    assert polled(centrals["c0"]) == dead_share

    # a clean stop hands over at once: no lease of c2 is left
    leaving = centrals.pop("c2")
    await leaving.close()
    assert await centrals["c1"].storage.claim_servers("probe", sorted(ids), ttl=0.0) == set()
    await wait_for(split_is(["c0", "c1"]), timeout=10 * TTL, what="c2's servers handed over")


async def _all_seen(central: Central, ids: set[int]) -> bool:
    return all(s.last_seen for s in await central.storage.list_servers() if s.id in ids)


async def _all_seen_after(central: Central, ids: set[int], after: float) -> bool:
    return all(s.last_seen and s.last_seen >= after for s in await central.storage.list_servers() if s.id in ids)


def cpu_agent(doc: dict, state: dict):
    """The real document with the CPU figure the test sets."""
    async def handler(request):
        d = json.loads(json.dumps(doc))
        d["cpu"]["percent"] = state["cpu"]
        return await document_agent(d)(request)
    return handler


async def test_an_alert_fires_once_and_resolves_once_across_a_takeover(config, pg_url, ssh_host, agent_document):
    receiver = await HTTPReceiver().start()
    alerts = dataclasses.replace(
        config.alerts, rules=(AlertRule("cpu_hot", "cpu.percent", ">", 50.0),), tick_interval=0.2,
        route=RouteConfig(group_wait=0.0, group_interval=0.2, repeat_interval=3600.0))
    base = dataclasses.replace(
        config, storage=StorageConfig(url=pg_url), alerts=alerts,
        notifiers=(NotifierConfig(name="hook", type="webhook", url=receiver.url(), retries=0),),
        poll=dataclasses.replace(config.poll, local=False, reload_interval=0.5, interval=0.5))
    state = {"cpu": 99.0}
    centrals: dict[str, Central] = {}
    try:
        for m in ("c0", "c1"):
            centrals[m] = await Central.open(dataclasses.replace(
                base, cluster=ClusterConfig(enabled=True, ttl=TTL, member=m)))
            await centrals[m].poller.start()
        host = await ssh_host(agent=cpu_agent(agent_document, state))
        server = await stored(centrals["c0"], host)
        # more servers (cool ones), so that both centrals poll some: the new owner's alert
        # engine runs before the takeover and must adopt the alert it did not start with
        for _ in range(7):
            await stored(centrals["c0"], await ssh_host(agent=cpu_agent(agent_document, {"cpu": 1.0})))
        await wait_for(lambda: all(c.membership.owned and c.alerts._started for c in centrals.values()),
                       timeout=30, what="both centrals polling and evaluating")

        def events(kind):
            return [a for r in receiver.requests for a in r["json"]["alerts"] if a["event"] == kind]

        await wait_for(lambda: events("firing"), timeout=30, what="the firing message")
        first = next(m for m, c in centrals.items() if server.id in c.membership.owned)
        other = "c1" if first == "c0" else "c0"
        dead = centrals.pop(first)
        dead.membership = None  # a crash: no hand-over, the lease expires
        await dead.close()
        await wait_for(lambda: server.id in centrals[other].membership.owned, timeout=10 * TTL,
                       what="the takeover")
        polls = centrals[other].poller.polls
        await wait_for(lambda: centrals[other].poller.polls >= polls + 3, timeout=30, what="polls by the new owner")
        state["cpu"] = 1.0
        await wait_for(lambda: events("resolved"), timeout=30, what="the resolved message")
        await centrals[other].notifier.wait_idle()
        assert len(events("firing")) == 1 and len(events("resolved")) == 1, receiver.requests
        [row] = await centrals[other].storage.list_alerts()
        assert (row["rule"], row["state"]) == ("cpu_hot", "resolved")
    finally:
        for c in centrals.values():
            await c.close()
        await receiver.stop()
