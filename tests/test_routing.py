"""Routing and grouping: pure route selection, and a flapping fleet through the real engine and
dispatcher to real HTTP receivers, driven by an injected clock (no sleeping)."""
from __future__ import annotations

import dataclasses
import time

import pytest

from central.alerts import AlertEngine
from central.config import AlertRule, AlertsConfig, NotifierConfig, RouteConfig, load_config
from central.notifiers import Dispatcher
from central.routing import Router, build_routes, select_routes
from central.storage import Storage
from tests.receivers import HTTPReceiver
from tests.test_alerts import Clock, failed, ok


@pytest.fixture
async def storage(tmp_path):
    s = await Storage.open(tmp_path / "central.db")
    yield s
    await s.close()


@pytest.fixture
async def receiver():
    r = await HTTPReceiver().start()
    yield r
    await r.stop()


def alert(i, rule="disk_almost_full", server="web1", severity="warning", tags=("prod",), state="firing"):
    return {"id": i, "rule": rule, "server": server, "server_id": 1, "label": str(i), "severity": severity,
            "tags": list(tags), "state": state}


def test_routes_first_match_wins_continue_goes_on_and_the_default_takes_the_rest():
    cfg = AlertsConfig(route=RouteConfig(channels=("ops",)), routes=(
        RouteConfig(channels=("pager",), severities=("critical",), continue_=True),
        RouteConfig(channels=("db",), tags=("db*",)),
        RouteConfig(channels=("never",), tags=("db*",)),
    ))
    routes = build_routes(cfg, ["ops", "pager", "db", "never"])
    names = lambda a: [r.channels[0] for r in select_routes(routes, a)]  # noqa: E731
    assert names(alert(1, severity="critical", tags=("db-main",))) == ["pager", "db"]
    assert names(alert(2, severity="critical")) == ["pager"]  # matched a route: the default is not used
    assert names(alert(3, tags=("dbx",))) == ["db"]
    assert names(alert(4)) == ["ops"]
    # Unset grouping is the default route's; the default's own defaults: each alert alone, at once.
    assert (routes[1].group_by, routes[1].group_wait, routes[1].repeat_interval) == (("...",), 0.0, 4 * 3600.0)


class Policy:
    def __init__(self, name):
        self.name, self.repeat_override = name, None

    def accepts(self, event, severity):
        return True


def test_group_wait_collects_then_group_interval_batches_changes():
    cfg = AlertsConfig(route=RouteConfig(channels=("ops",), group_by=("rule",), group_wait=30.0,
                                         group_interval=60.0, repeat_interval=3600.0))
    router = Router(build_routes(cfg, ["ops"]), {"ops": Policy("ops")})
    router.add(alert(1), 0.0)
    router.add(alert(2), 10.0)
    assert router.flush(29.0) == []  # still in group_wait
    [m] = router.flush(30.0)
    assert (m.event, [a["id"] for a in m.firing], m.new) == ("firing", [1, 2], {1, 2})
    router.add(alert(3), 40.0)
    router.add(alert(1, state="resolved"), 50.0)
    assert router.flush(60.0) == []  # next look at 30 + 60
    [m] = router.flush(90.0)
    assert ([a["id"] for a in m.firing], [a["id"] for a in m.resolved], m.new) == ([2, 3], [1], {3})
    assert [e for e, _ in m.entries()] == ["repeat", "firing", "resolved"]
    assert router.flush(150.0) == []  # nothing changed, repeat not due
    [m] = router.flush(3690.0)
    assert m.event == "repeat" and [a["id"] for a in m.firing] == [2, 3]


# A flapping fleet: 20 servers in 3 groups (tags web, db, cache), ten minutes of polls every 10 s.
WEB, DB, CACHE = 8, 7, 5


async def fleet_engine(storage, clock, receiver):
    cfg = load_config(env={"CENTRAL_DATA_DIR": "/nonexistent"})
    hooks = tuple(NotifierConfig(name=n, type="webhook", url=receiver.url("/" + n), retries=0) for n in
                  ("pager", "dbteam", "ops"))
    # storm_messages=0: every message counted as routed (the storm limit has tests of its own)
    alerts_cfg = dataclasses.replace(
        AlertsConfig(), unreachable_after=1, keep_firing_for=60.0, disk_full_for=0.0, storm_messages=0,
        rules=(AlertRule("cpu_high", "cpu.percent", ">", 90.0, 0.0, 60.0, "critical", tags=("cache",)),),
        route=RouteConfig(channels=("ops",)),
        routes=(
            RouteConfig(channels=("pager",), severities=("critical",), continue_=True, group_by=("rule",),
                        group_wait=30.0, group_interval=60.0, repeat_interval=300.0),
            RouteConfig(channels=("dbteam",), tags=("db",), continue_=True, group_by=("rule",),
                        group_wait=30.0, group_interval=60.0),
            RouteConfig(channels=("ops",)),  # everything also goes to ops, one message per alert at once
        ))
    cfg = dataclasses.replace(cfg, alerts=alerts_cfg, notifiers=hooks)
    by_id = {}
    for group, n in (("web", WEB), ("db", DB), ("cache", CACHE)):
        for i in range(n):
            s = await storage.add_server(f"{group}{i}", "10.0.0.1", tags=(group,))
            by_id[s.id] = s
    dispatcher = Dispatcher(storage, cfg.notifiers, alerts=cfg.alerts, clock=clock)
    engine = AlertEngine(cfg, storage, dispatcher, clock=clock)
    await engine.start(run_timer=False)
    return engine, dispatcher, by_id


def fleet_outcome(server, t):
    """What a server's poll at second t of the run looks like."""
    group, i = server.name.rstrip("0123456789"), int(server.name.lstrip("webdcah"))
    if group == "web":  # drops every other poll for five minutes, then steady
        return failed(server.id, t.now) if t.s < 300 and t.s % 20 == 0 else ok(server.id, t.now)
    if group == "db":  # the disk fills one server after another from 2:00, freed at 7:00
        full = 120 + 10 * i <= t.s < 420
        return ok(server.id, t.now, disks=(("/", 95.0 if full else 50.0, 1.0),))
    return ok(server.id, t.now, cpu=95.0 if t.s % 20 == 0 else 10.0)  # cache: CPU flaps the whole time


class T:
    def __init__(self, clock, start):
        self.clock, self.start = clock, start

    @property
    def now(self):
        return self.clock.now

    @property
    def s(self):
        return int(self.clock.now - self.start)


async def test_ten_minutes_of_a_flapping_fleet_give_exactly_the_expected_messages(storage, receiver):
    clock = Clock()
    t = T(clock, clock.now)
    engine, dispatcher, by_id = await fleet_engine(storage, clock, receiver)
    try:
        for _ in range(61):  # 0:00 .. 10:00
            await engine.on_batch([fleet_outcome(s, t) for s in by_id.values()], by_id)
            await engine.tick()
            clock.advance(10)
        await dispatcher.wait_idle()
    finally:
        await dispatcher.stop()

    def summary(path):
        return [(r["json"]["event"], len(r["json"]["alerts"])) for r in receiver.at(path)]

    # pager (critical, by rule, wait 30 s, look every 60 s, repeat 5 min):
    # server_unreachable: 8 at 0:30, a repeat at 5:30, 8 resolved at 6:30 (they resolve at 5:50);
    # cpu_high: 5 at 0:30, a repeat at 5:30 (it flaps within keep_firing_for: never resolves).
    assert sorted(summary("/pager")) == sorted([("firing", 8), ("firing", 5), ("repeat", 8), ("repeat", 5),
                                                 ("resolved", 8)])
    # dbteam (tag db, by rule): 4 full disks at 2:30 (2:00-2:30), 3 more at 3:30, 7 resolved at 8:30.
    assert summary("/dbteam") == [("firing", 4), ("firing", 7), ("resolved", 7)]
    assert [[a["event"] for a in r["json"]["alerts"]].count("firing") for r in receiver.at("/dbteam")] == [4, 3, 0]
    # ops: one message per alert at once: 8 web down + up, 5 cache CPU, 7 db disks full + freed.
    ops = summary("/ops")
    assert len(ops) == 8 * 2 + 5 + 7 * 2 == 35
    assert ops.count(("firing", 1)) == 20 and ops.count(("resolved", 1)) == 15
    first = receiver.at("/pager")[0]["json"]
    assert first["title"].startswith("[FIRING ") and "/alerts/" in first["text"]


async def test_every_message_is_in_the_delivery_log_per_alert(storage, receiver):
    clock = Clock()
    t = T(clock, clock.now)
    engine, dispatcher, by_id = await fleet_engine(storage, clock, receiver)
    try:
        for _ in range(4):  # 0:00 .. 0:30: the pager's first group message goes out at 0:30
            await engine.on_batch([fleet_outcome(s, t) for s in by_id.values()], by_id)
            await engine.tick()
            clock.advance(10)
        await dispatcher.wait_idle()
    finally:
        await dispatcher.stop()
    log = await storage.notifications(limit=1000)
    pager = [n for n in log if n["channel"] == "pager"]
    assert len(pager) == 13 and {n["event"] for n in pager} == {"firing"} and all(n["ok"] for n in pager)
    assert len({n["ts"] for n in pager}) == 1  # one message, one attempt, a row per alert in it


async def test_a_restart_neither_resends_a_group_nor_forgets_its_repeat(storage, receiver):
    clock = Clock()
    cfg = load_config(env={"CENTRAL_DATA_DIR": "/nonexistent"})
    cfg = dataclasses.replace(
        cfg, notifiers=(NotifierConfig(name="ops", type="webhook", url=receiver.url("/ops"), retries=0),),
        alerts=dataclasses.replace(AlertsConfig(), unreachable_after=1,
                                   route=RouteConfig(group_by=("rule",), repeat_interval=3600.0)))
    by_id = {}
    for name in ("web1", "web2"):
        s = await storage.add_server(name, "10.0.0.1")
        by_id[s.id] = s

    async def start():
        dispatcher = Dispatcher(storage, cfg.notifiers, alerts=cfg.alerts, clock=clock)
        engine = AlertEngine(cfg, storage, dispatcher, clock=clock)
        await engine.start(run_timer=False)
        return engine, dispatcher

    engine, dispatcher = await start()
    await engine.on_batch([failed(sid, clock.now) for sid in by_id], by_id)
    await dispatcher.wait_idle()
    await engine.stop()
    await dispatcher.stop()
    assert [(r["json"]["event"], len(r["json"]["alerts"])) for r in receiver.requests] == [("firing", 2)]
    engine, dispatcher = await start()  # the restart
    try:
        for _ in range(7):  # 10-minute ticks: the repeat is due an hour after the first message
            clock.advance(600)
            await engine.on_batch([failed(sid, clock.now) for sid in by_id], by_id)
            await engine.tick()
        await engine.on_batch([ok(sid, clock.now) for sid in by_id], by_id)
        await dispatcher.wait_idle()
    finally:
        await engine.stop()
        await dispatcher.stop()
    assert [(r["json"]["event"], len(r["json"]["alerts"])) for r in receiver.requests] == [
        ("firing", 2), ("repeat", 2), ("resolved", 2)]


# The storm limit: a network loss takes hundreds of hosts down at once; with the default route
# (each alert its own message) that was one message per host per channel, and past the queue's
# 1,000 the oldest were dropped.

async def storm_engine(storage, receiver, n: int, *, limit: int, window: float, alertmanager: bool = False):
    cfg = load_config(env={"CENTRAL_DATA_DIR": "/nonexistent"})
    hooks = (NotifierConfig(name="ops", type="webhook", url=receiver.url("/ops"), retries=0),)
    if alertmanager:
        hooks += (NotifierConfig(name="am", type="alertmanager", url=receiver.url("/am"), retries=0),)
    alerts_cfg = dataclasses.replace(AlertsConfig(), unreachable_after=1, storm_messages=limit, storm_window=window,
                                     route=RouteConfig(channels=tuple(h.name for h in hooks)))
    cfg = dataclasses.replace(cfg, alerts=alerts_cfg, notifiers=hooks)
    by_id = {}
    for i in range(n):
        s = await storage.add_server(f"web{i:03d}", "10.0.0.1", tags=("web",))
        by_id[s.id] = s
    dispatcher = Dispatcher(storage, cfg.notifiers, alerts=cfg.alerts, clock=time.time)
    engine = AlertEngine(cfg, storage, dispatcher, clock=time.time)
    await engine.start(run_timer=False)
    return engine, dispatcher, by_id


def _events(requests) -> list[tuple[str, str]]:
    return [(a["event"], a["server"]) for r in requests for a in r["json"]["alerts"]]


async def test_an_outage_of_200_hosts_is_5_messages_not_200_and_none_is_lost(storage, receiver):
    engine, dispatcher, by_id = await storm_engine(storage, receiver, 200, limit=5, window=0.5)
    names = sorted(s.name for s in by_id.values())
    try:
        await engine.on_batch([failed(s.id, time.time()) for s in by_id.values()], by_id)
        await dispatcher.wait_idle()
        down = receiver.at("/ops")
        # four alone, then one that gathers the 196 others (it goes at once: the fifth of the window)
        assert [len(r["json"]["alerts"]) for r in down] == [1, 1, 1, 1, 196]
        assert sorted(server for _, server in _events(down)) == names
        assert {event for event, _ in _events(down)} == {"firing"}
        gathered = down[-1]["json"]
        assert gathered["event"] == "firing" and gathered["title"].startswith("[FIRING 196]")
        assert gathered["text"].startswith("196 notifications in one: ") and "... and 176 more" in gathered["text"]
        assert dispatcher.health()[0]["gathered"] == 195 and dispatcher.dropped == 0
        # every alert's firing is in the delivery log, once
        log = await storage.notifications(limit=10_000)
        assert sorted(e["alert_id"] for e in log if e["event"] == "firing") == sorted(
            st.id for st in engine.states.values())
        # the fleet comes back: its 200 resolutions, again in at most five messages
        await engine.on_batch([ok(s.id, time.time()) for s in by_id.values()], by_id)
        await dispatcher.wait_idle()
        up = receiver.at("/ops")[len(down):]
        assert len(up) <= 5 and sum(len(r["json"]["alerts"]) for r in up) == 200
        assert sorted(server for _, server in _events(up)) == names
        assert {event for event, _ in _events(up)} == {"resolved"}
    finally:
        await dispatcher.stop()


async def test_messages_over_the_limit_wait_for_the_window_and_go_as_one(storage, receiver):
    engine, dispatcher, by_id = await storm_engine(storage, receiver, 12, limit=2, window=0.6)
    servers = list(by_id.values())
    try:
        await engine.on_batch([failed(s.id, time.time()) for s in servers[:2]], by_id)
        await dispatcher.wait_idle()
        assert [len(r["json"]["alerts"]) for r in receiver.at("/ops")] == [1, 1]
        for s in servers[2:]:  # ten more, one poll batch each, within the window
            await engine.on_batch([failed(s.id, time.time())], by_id)
        await dispatcher.wait_idle()
        sent = receiver.at("/ops")
        assert [len(r["json"]["alerts"]) for r in sent] == [1, 1, 10]
        assert sorted(server for _, server in _events(sent[2:])) == sorted(s.name for s in servers[2:])
        # the third went when the first had left the window, not before
        assert sent[2]["arrived"] - sent[0]["arrived"] >= 0.6 * 0.95
    finally:
        await dispatcher.stop()


async def test_a_stop_sends_what_the_limit_holds_and_alertmanager_is_never_held(storage, receiver):
    engine, dispatcher, by_id = await storm_engine(storage, receiver, 8, limit=1, window=3600.0, alertmanager=True)
    servers = list(by_id.values())
    try:
        await engine.on_batch([failed(servers[0].id, time.time())], by_id)
        await dispatcher.wait_idle()
        await engine.on_batch([failed(s.id, time.time()) for s in servers[1:]], by_id)
        assert len(receiver.at("/ops")) == 1  # the rest waits for a window an hour long
    finally:
        await dispatcher.stop(drain=10.0)
    ops = receiver.at("/ops")
    assert [len(r["json"]["alerts"]) for r in ops] == [1, 7]
    # Alertmanager groups by itself: each alert on its own, none gathered
    assert len(receiver.at("/am/api/v2/alerts")) == 8 and all(len(r["json"]) == 1 for r in receiver.at("/am/api/v2/alerts"))


async def test_a_gathered_message_holds_at_most_max_gathered_alerts(storage, receiver, monkeypatch):
    # a webhook body of 20,000 alerts (~10 MB) is refused by receivers with a 1 MB limit, aiohttp's
    from central import routing

    monkeypatch.setattr(routing, "MAX_GATHERED", 50)
    engine, dispatcher, by_id = await storm_engine(storage, receiver, 200, limit=5, window=0.3)
    try:
        await engine.on_batch([failed(s.id, time.time()) for s in by_id.values()], by_id)
        await dispatcher.wait_idle()
    finally:
        await dispatcher.stop()
    sent = receiver.at("/ops")
    # four alone, the fifth gathers 50, then 50, 50 and the last 46 in the next window
    assert [len(r["json"]["alerts"]) for r in sent] == [1, 1, 1, 1, 50, 50, 50, 46]
    assert sorted(server for _, server in _events(sent)) == sorted(s.name for s in by_id.values())
    assert sent[5]["arrived"] - sent[0]["arrived"] >= 0.3 * 0.95
