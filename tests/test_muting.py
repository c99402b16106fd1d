"""Inhibition and weekly maintenance windows, through the real engine and dispatcher to a real
HTTP receiver, with an injected clock."""
from __future__ import annotations

import dataclasses
import datetime
import zoneinfo

import pytest

from central.alerts import AlertEngine
from central.config import AlertRule, AlertsConfig, InhibitRule, MaintenanceWindow, NotifierConfig, RouteConfig, load_config
from central.muting import Window
from central.notifiers import Dispatcher
from central.storage import Storage
from tests.receivers import HTTPReceiver
from tests.test_alerts import Clock, failed, ok

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")


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


async def engine_with(storage, clock, receiver, servers, **alert_cfg):
    cfg = load_config(env={"CENTRAL_DATA_DIR": "/nonexistent"})
    hook = NotifierConfig(name="ops", type="webhook", url=receiver.url("/ops"), retries=0)
    alert_cfg.setdefault("route", RouteConfig(repeat_interval=60.0))
    cfg = dataclasses.replace(cfg, alerts=dataclasses.replace(AlertsConfig(), **alert_cfg), notifiers=(hook,))
    by_id = {}
    for name, tags in servers:
        s = await storage.add_server(name, "10.0.0.1", tags=tags)
        by_id[s.id] = s
    dispatcher = Dispatcher(storage, cfg.notifiers, alerts=cfg.alerts, clock=clock)
    engine = AlertEngine(cfg, storage, dispatcher, clock=clock)
    await engine.start(run_timer=False)
    return engine, dispatcher, by_id


def sent(receiver, since=0):
    """(event, rule) of every alert in every message received after the first `since` messages."""
    return [(a["event"], a["rule"]) for r in receiver.requests[since:] for a in r["json"]["alerts"]]


CPU_HIGH = AlertRule("cpu_high", "cpu.percent", ">", 90.0, 0.0, 0.0, "warning")


@pytest.mark.parametrize("reason,polls,source", [("unreachable", 3, "server_unreachable"),
                                                 ("host_key_mismatch", 1, "host_key_mismatch")])
@pytest.mark.parametrize("builtin_inhibit", [True, False])
async def test_a_down_server_s_disk_and_cpu_alerts_send_nothing_while_it_is_down(
        storage, receiver, reason, polls, source, builtin_inhibit):
    clock = Clock()
    engine, dispatcher, by_id = await engine_with(
        storage, clock, receiver, [("web1", ("prod",))], disk_full_for=0.0, rules=(CPU_HIGH,),
        builtin_inhibit=builtin_inhibit)
    sid = next(iter(by_id))

    async def round_(outcome):
        await engine.on_batch([outcome], by_id)
        await engine.tick()
        await dispatcher.wait_idle()
        clock.advance(10)

    try:
        await round_(ok(sid, clock.now, cpu=99.0, disks=(("/", 97.0, 1.0),)))
        assert sorted(sent(receiver)) == [("firing", "cpu_high"), ("firing", "disk_almost_full")]
        before = len(receiver.requests)
        for _ in range(60):  # ten minutes down; repeats every minute would be due all along
            await round_(failed(sid, clock.now, reason=reason))
        down = sent(receiver, before)
        after_down = len(receiver.requests)
        await round_(ok(sid, clock.now, cpu=5.0, disks=(("/", 97.0, 1.0),)))  # back: CPU fine, disk still full
        back = sent(receiver, after_down)
    finally:
        await dispatcher.stop()
    others = [e for e in down if e[1] != source]
    if builtin_inhibit:
        assert others == []
        assert down[0] == ("firing", source) and {e for e, _ in down} <= {"firing", "repeat"}
    else:  # the control: without inhibition the stale alerts repeat every minute while it is down
        assert len([e for e in others if e == ("repeat", "disk_almost_full")]) >= 9
    assert ("resolved", "cpu_high") in back and ("resolved", source) in back


async def test_a_configured_inhibit_rule_mutes_warnings_while_a_critical_of_the_same_label_fires(storage, receiver):
    clock = Clock()
    rules = (AlertRule("disk_critical", "disk.percent", ">=", 98.0, 0.0, 0.0, "critical"),)
    inhibit = (InhibitRule(source_rules=("disk_critical",), target_rules=("disk_almost_full",),
                           equal=("server", "label")),)
    engine, dispatcher, by_id = await engine_with(storage, clock, receiver, [("web1", ())], disk_full_for=0.0,
                                                  rules=rules, inhibit=inhibit)
    sid = next(iter(by_id))
    try:
        await engine.on_batch([ok(sid, clock.now, disks=(("/", 99.0, 1.0), ("/var", 95.0, 1.0)))], by_id)
        await dispatcher.wait_idle()
    finally:
        await dispatcher.stop()
    got = sorted((a["rule"], a["label"]) for r in receiver.requests for a in r["json"]["alerts"])
    # "/" is at 99%: its warning is muted by its critical; "/var" has no critical, so its warning goes out.
    assert got == [("disk_almost_full", "/var"), ("disk_critical", "/")]


def berlin(y, mo, d, h, mi=0) -> float:
    return datetime.datetime(y, mo, d, h, mi, tzinfo=BERLIN).timestamp()


def test_weekly_window_in_a_named_zone_including_dst_and_midnight():
    sunday = Window(MaintenanceWindow(name="backups", days=("sun",), start="02:00", end="04:00",
                                      time_zone="Europe/Berlin", tags=("db",)))
    # 2027-01-17 is a Sunday (CET, UTC+1).
    assert not sunday.active(berlin(2027, 1, 17, 1, 59))
    assert sunday.active(berlin(2027, 1, 17, 2, 0)) and sunday.active(berlin(2027, 1, 17, 3, 59))
    assert not sunday.active(berlin(2027, 1, 17, 4, 0))
    assert not sunday.active(berlin(2027, 1, 18, 3, 0))  # Monday
    assert sunday.next(berlin(2027, 1, 18, 12)) == (berlin(2027, 1, 24, 2), berlin(2027, 1, 24, 4))
    # 2027-03-28: clocks go from 02:00 CET to 03:00 CEST; the window is 01:00-02:00 UTC that night.
    utc = datetime.timezone.utc
    assert sunday.active(datetime.datetime(2027, 3, 28, 1, 30, tzinfo=utc).timestamp())
    assert not sunday.active(datetime.datetime(2027, 3, 28, 2, 0, tzinfo=utc).timestamp())
    night = Window(MaintenanceWindow(name="n", days=("sat",), start="23:00", end="01:00", time_zone="UTC",
                                     servers=("*",)))
    sat = datetime.datetime(2027, 1, 16, 23, 30, tzinfo=utc).timestamp()
    assert night.active(sat) and night.active(sat + 3600) and not night.active(sat + 5400)
    assert sunday.covers("disk_almost_full", "db1", ("db",)) and not sunday.covers("disk_almost_full", "web1", ("web",))


async def test_a_recurring_window_mutes_then_lets_through(storage, receiver):
    clock = Clock(berlin(2027, 1, 17, 1, 50))  # a Sunday, ten minutes before the window
    window = MaintenanceWindow(name="sunday-backups", days=("sun",), start="02:00", end="04:00",
                               time_zone="Europe/Berlin", tags=("db",))
    engine, dispatcher, by_id = await engine_with(
        storage, clock, receiver, [("db1", ("db",)), ("web1", ("web",))], disk_full_for=0.0,
        maintenance=(window,), route=RouteConfig(repeat_interval=0.0))
    log = []
    try:
        while clock.now < berlin(2027, 1, 17, 4, 10):
            full = clock.now >= berlin(2027, 1, 17, 2, 10)
            outcomes = [ok(sid, clock.now, disks=(("/", 95.0 if full else 50.0, 1.0),)) for sid in by_id]
            await engine.on_batch(outcomes, by_id)
            await engine.tick()
            await dispatcher.wait_idle()
            for r in receiver.requests[len(log):]:
                log.extend((clock.now, a["server"], a["event"]) for a in r["json"]["alerts"])
            clock.advance(60)
    finally:
        await dispatcher.stop()
    # web1 is outside the window: notified at 02:10. db1 fires at 02:10 too but is held until 04:00.
    assert log == [(berlin(2027, 1, 17, 2, 10), "web1", "firing"), (berlin(2027, 1, 17, 4, 0), "db1", "firing")]
    [db1] = [a for a in await storage.list_alerts(firing_only=True) if a["server"] == "db1"]
    assert db1["started_at"] == berlin(2027, 1, 17, 2, 10)  # recorded all along, only the message waited


def test_a_bastion_down_holds_back_the_alerts_of_the_hosts_behind_it():
    from central.muting import bastion_inhibited, bastions_down

    firing = [{"rule": "server_unreachable", "server": "bastion1", "via": None},
              {"rule": "unreachable_via_bastion", "server": "bastion2", "via": "bastion1"},
              {"rule": "disk_almost_full", "server": "web1", "via": "bastion1"}]
    down = bastions_down(firing)
    assert down == {"bastion1", "bastion2"}  # a disk alert says nothing about tunnels
    # a host behind bastion2 (itself behind bastion1): held, so is bastion2's own
    assert bastion_inhibited({"rule": "unreachable_via_bastion", "server": "app1", "via": "bastion2"}, down)
    assert bastion_inhibited({"rule": "unreachable_via_bastion", "server": "bastion2", "via": "bastion1"}, down)
    # the bastion answering: its hosts' alert goes out alone; other rules are not this check's
    assert not bastion_inhibited({"rule": "unreachable_via_bastion", "server": "app9", "via": "bastion3"}, down)
    assert not bastion_inhibited({"rule": "disk_almost_full", "server": "app1", "via": "bastion1"}, down)
    assert not bastion_inhibited({"rule": "unreachable_via_bastion", "server": "app1", "via": None}, down)
