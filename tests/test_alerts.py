"""Alert rules and their state machine, with an injected clock and a real SQLite database."""
from __future__ import annotations

import dataclasses
import json

import pytest

from central import alerts
from central.alerts import AlertEngine, rules_for_server
from central.config import AlertOverride, AlertRule, AlertsConfig, ConfigError, load_config
from central.model import Conflict, Invalid, NotFound, PollOutcome
from central.storage import Storage
from tests.helpers import central_over


class Clock:
    """Simulated time: tests move it forward instead of waiting."""

    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class Recorder:
    """Collects what the engine hands to the notifier (the dispatcher is tested in test_notifiers)."""

    def __init__(self):
        self.events: list[tuple[str, dict]] = []
        self.reminders: list[list] = []

    def notify(self, event, alert):
        self.events.append((event, alert))

    def remind(self, alerts_, now):
        self.reminders.append(alerts_)

    def count(self, event, rule=None):
        return sum(1 for e, a in self.events if e == event and (rule is None or a["rule"] == rule))


def doc(cpu=10.0, disks=(("/", 50.0, 10.0),), units=None, watched=None, ifaces=(), containers=None, hardware=None):
    """A minimal valid agent document."""
    d = {
        "agent": {"version": "1.0.0", "sha256": "x"}, "timestamp": 1.0, "hostname": "h",
        "cpu": {"percent": cpu, "iowait": 1.0}, "memory": {"percent": 40.0, "swap_percent": 0.0},
        "load": {"load1": 0.1, "load5": 0.2, "load15": 0.3},
        "filesystems": [{"mountpoint": m, "percent": p, "inodes_percent": i} for m, p, i in disks],
        "network": {"rx_rate": 0.0, "tx_rate": 0.0, "interfaces": [
            {"name": n, "rx_errors": e, "tx_errors": 0, "rx_drops": 0, "tx_drops": 0} for n, e in ifaces]},
        "processes": {"count": 100, "top_cpu": []}, "errors": {},
    }
    if units is not None:
        d["systemd"] = {"available": True, "failed": [], "watched": units}
    if watched is not None:
        d["processes"]["watched"] = watched
    if hardware is not None:
        d.update(hardware)
    if containers is not None:
        d["containers"] = {"available": True, "reason": None, "cgroup": 2, "count": len(containers),
                           "containers": containers}
    return d


def ok(server_id, ts, **kw):
    from central.sample import extract_facts, extract_sample

    document = doc(**kw)
    return PollOutcome(server_id=server_id, ts=ts, duration=0.01, ok=True, doc_text=json.dumps(document),
                       sample=extract_sample(document), extra={"facts": extract_facts(document)})


def failed(server_id, ts, reason="unreachable"):
    return PollOutcome(server_id=server_id, ts=ts, duration=0.01, ok=False, reason=reason, error=f"{reason} (test)")


@pytest.fixture
async def storage(tmp_path):
    s = await Storage.open(tmp_path / "central.db")
    yield s
    await s.close()


async def make_engine(storage, clock, *, servers=(("web1", ("prod",)),), **alert_cfg):
    cfg = load_config(env={"CENTRAL_DATA_DIR": "/nonexistent"})
    cfg = dataclasses.replace(cfg, alerts=dataclasses.replace(AlertsConfig(), **alert_cfg))
    by_id = {}
    for name, tags in servers:
        s = await storage.find_server(name) or await storage.add_server(name, "10.0.0.1", tags=tags)
        by_id[s.id] = s
    rec = Recorder()
    engine = AlertEngine(cfg, storage, rec, clock=clock)
    await engine.start(run_timer=False)
    return engine, rec, by_id


async def poll(engine, by_id, clock, outcome_fn, **kw):
    """One poll of every server at the clock's time."""
    outcomes = [outcome_fn(sid, clock.now, **kw) for sid in by_id]
    await engine.on_batch(outcomes, by_id)


async def test_unreachable_fires_after_n_missed_polls_and_resolves(storage):
    clock = Clock()
    engine, rec, by_id = await make_engine(storage, clock, unreachable_after=3)
    for _ in range(2):
        await poll(engine, by_id, clock, failed)
        clock.advance(10)
    assert rec.events == []
    rows = await storage.list_alerts()
    assert [(r["rule"], r["state"]) for r in rows] == []
    await poll(engine, by_id, clock, failed)
    assert [(e, a["rule"], a["severity"]) for e, a in rec.events] == [("firing", "server_unreachable", "critical")]
    row = (await storage.list_alerts(firing_only=True))[0]
    assert row["server"] == "web1" and row["value"] == 3.0 and "unreachable (test)" in row["summary"]
    clock.advance(10)
    await poll(engine, by_id, clock, failed)  # still firing: nothing new
    assert len(rec.events) == 1
    clock.advance(10)
    await poll(engine, by_id, clock, ok)
    assert [e for e, _ in rec.events] == ["firing", "resolved"]
    row = await storage.get_alert(row["id"])
    assert row["state"] == "resolved" and row["resolved_at"] == clock.now
    assert row["details"]["max"] == 4.0 and row["details"]["first"] == 3.0


async def test_for_makes_a_pending_alert_that_fires_only_if_it_keeps_holding(storage):
    clock = Clock()
    engine, rec, by_id = await make_engine(
        storage, clock, rules=(AlertRule("cpu_high", "cpu.percent", ">", 90.0, for_=60.0),))
    await poll(engine, by_id, clock, ok, cpu=95.0)
    [row] = await storage.list_alerts()
    assert row["state"] == "pending" and row["rule"] == "cpu_high"
    clock.advance(30)
    await poll(engine, by_id, clock, ok, cpu=50.0)  # clears before `for`: the pending row goes
    assert await storage.list_alerts() == [] and rec.events == []
    for _ in range(7):
        await poll(engine, by_id, clock, ok, cpu=97.0)
        clock.advance(10)
    assert rec.count("firing") == 1
    [row] = await storage.list_alerts(firing_only=True)
    assert row["fired_at"] - row["started_at"] == 60.0


async def test_disk_per_mount_labels_overrides_and_series_disappearing(storage):
    clock = Clock()
    engine, rec, by_id = await make_engine(
        storage, clock, servers=(("db1", ("db",)), ("web1", ("prod",))), disk_full_for=0.0,
        overrides=(AlertOverride(rule="disk_almost_full", tags=("db",), threshold=95.0),
                   AlertOverride(rule="disk_almost_full", labels=("/boot",), enabled=False)))
    disks = (("/", 92.0, 1.0), ("/var", 96.0, 1.0), ("/boot", 99.0, 1.0))
    await poll(engine, by_id, clock, ok, disks=disks)
    fired = sorted((a["server"], a["label"]) for e, a in rec.events if e == "firing")
    # db1's threshold is 95, so / (92%) only fires on web1; /boot is disabled everywhere
    assert fired == [("db1", "/var"), ("web1", "/"), ("web1", "/var")]
    clock.advance(10)
    await poll(engine, by_id, clock, ok, disks=(("/", 92.0, 1.0),))  # /var unmounted
    resolved = sorted((a["server"], a["label"]) for e, a in rec.events if e == "resolved")
    assert resolved == [("db1", "/var"), ("web1", "/var")]
    assert [(r["server"], r["label"]) for r in await storage.list_alerts(firing_only=True)] == [("web1", "/")]


async def test_a_failed_poll_keeps_metric_alerts_as_they_were(storage):
    clock = Clock()
    engine, rec, by_id = await make_engine(storage, clock, disk_full_for=0.0, unreachable_after=100)
    await poll(engine, by_id, clock, ok, disks=(("/", 99.0, 1.0),))
    clock.advance(10)
    await poll(engine, by_id, clock, failed)
    assert [e for e, _ in rec.events] == ["firing"]
    assert len(await storage.list_alerts(firing_only=True)) == 1


async def test_watched_units_and_processes_from_the_agent_document(storage):
    clock = Clock()
    engine, rec, by_id = await make_engine(storage, clock, unit_inactive_for=0.0, process_missing_for=0.0)
    await poll(engine, by_id, clock, ok, units={"nginx.service": "failed", "cron.service": "active"},
               watched={"postgres": 0, "nginx": 2})
    got = sorted((a["rule"], a["label"]) for e, a in rec.events)
    assert got == [("process_missing", "postgres"), ("systemd_unit_inactive", "nginx.service")]
    [unit] = [a for _, a in rec.events if a["rule"] == "systemd_unit_inactive"]
    assert unit["summary"] == "watched unit nginx.service on web1 is failed"


async def test_network_error_rate_from_counters(storage):
    clock = Clock()
    engine, rec, by_id = await make_engine(
        storage, clock, rules=(AlertRule("nic_errors", "network.errors", ">", 1.0),))
    await poll(engine, by_id, clock, ok, ifaces=(("eth0", 100),))
    clock.advance(10)
    await poll(engine, by_id, clock, ok, ifaces=(("eth0", 105),))  # 0.5/s
    assert rec.events == []
    clock.advance(10)
    await poll(engine, by_id, clock, ok, ifaces=(("eth0", 200),))  # 9.5/s
    [(event, alert)] = rec.events
    assert (event, alert["label"], alert["value"]) == ("firing", "eth0", 9.5)


async def flap(engine, by_id, clock, pattern, seconds=600, interval=10):
    """Poll every interval for `seconds` of simulated time; pattern(i) says whether poll i succeeds."""
    for i in range(seconds // interval):
        await poll(engine, by_id, clock, ok if pattern(i) else failed)
        await engine.tick()
        clock.advance(interval)


async def test_flapping_every_poll_gives_one_firing_and_one_resolving(storage):
    clock = Clock()
    engine, rec, by_id = await make_engine(storage, clock, unreachable_after=1, keep_firing_for=60.0)
    await flap(engine, by_id, clock, lambda i: i % 2 == 1)  # down, up, down, up... for ten minutes
    assert (rec.count("firing"), rec.count("resolved")) == (1, 0)
    for _ in range(7):  # stable again: resolves keep_firing_for after the last failure
        await poll(engine, by_id, clock, ok)
        await engine.tick()
        clock.advance(10)
    assert (rec.count("firing"), rec.count("resolved")) == (1, 1)
    rows = await storage.list_alerts()
    assert [r["state"] for r in rows] == ["resolved"]


async def test_flapping_without_keep_firing_for_would_notify_every_poll(storage):
    """The control: the same flapping with keep_firing_for = 0 sends 30 + 30 notifications."""
    clock = Clock()
    engine, rec, by_id = await make_engine(storage, clock, unreachable_after=1, keep_firing_for=0.0)
    await flap(engine, by_id, clock, lambda i: i % 2 == 1)
    assert (rec.count("firing"), rec.count("resolved")) == (30, 30)
    assert len(await storage.list_alerts(limit=1000)) == 30


async def test_flapping_with_for_never_fires(storage):
    clock = Clock()
    engine, rec, by_id = await make_engine(
        storage, clock, rules=(AlertRule("cpu_high", "cpu.percent", ">", 90.0, for_=30.0, keep_firing_for=60.0),))
    for i in range(60):
        await poll(engine, by_id, clock, ok, cpu=99.0 if i % 2 == 0 else 5.0)
        await engine.tick()
        clock.advance(10)
    assert rec.events == []
    assert await storage.list_alerts() == []  # aborted pendings leave no rows


async def test_flapping_slower_than_the_window_notifies_once_per_window(storage):
    """Down one poll, up seven (80 s period), keep_firing_for 60 s: one firing + one resolving per period."""
    clock = Clock()
    engine, rec, by_id = await make_engine(storage, clock, unreachable_after=1, keep_firing_for=60.0)
    await flap(engine, by_id, clock, lambda i: i % 8 != 0)
    # failures at polls 0, 8, ..., 56 (t = 0, 80, ..., 560 s): 8 firings; each resolves 60 s after
    # the next poll succeeds (t + 70 s), so all 8 resolve within the ten minutes (the last at 630 s
    # is after the loop ends at 600 s: 7 within).
    assert rec.count("firing") == 8
    assert rec.count("resolved") == 7
    firing_times = [a["fired_at"] for e, a in rec.events if e == "firing"]
    assert all(b - a >= 60.0 for a, b in zip(firing_times, firing_times[1:]))


async def test_keep_firing_for_resolves_by_timer_without_polls(storage):
    clock = Clock()
    engine, rec, by_id = await make_engine(storage, clock, unreachable_after=1, keep_firing_for=60.0)
    await poll(engine, by_id, clock, failed)
    clock.advance(10)
    await poll(engine, by_id, clock, ok)
    clock.advance(59)
    await engine.tick()
    assert rec.count("resolved") == 0
    clock.advance(1)
    await engine.tick()
    assert rec.count("resolved") == 1


async def test_host_key_mismatch_never_resolves_until_a_successful_poll(storage):
    clock = Clock()
    engine, rec, by_id = await make_engine(storage, clock)
    await poll(engine, by_id, clock, failed, reason="host_key_mismatch")
    assert [(e, a["rule"], a["severity"]) for e, a in rec.events] == [("firing", "host_key_mismatch", "critical")]
    for _ in range(100):  # no polls while blocked: only the timer runs, for hours
        clock.advance(600)
        await engine.tick()
    assert rec.count("resolved") == 0
    await poll(engine, by_id, clock, ok)  # re-trusted: polling resumed and worked
    assert rec.count("resolved", "host_key_mismatch") == 1


async def test_state_survives_a_restart(storage):
    clock = Clock()
    engine, rec, by_id = await make_engine(storage, clock, unreachable_after=1)
    await poll(engine, by_id, clock, failed)
    await engine.stop()
    engine2, rec2, by_id = await make_engine(storage, clock, unreachable_after=1)
    clock.advance(10)
    await poll(engine2, by_id, clock, failed)
    assert rec2.events == []  # still the same open alert, not notified again
    await poll(engine2, by_id, clock, ok)
    assert [e for e, _ in rec2.events] == ["resolved"]
    assert len(await storage.list_alerts()) == 1


async def test_silence_mutes_but_records_and_notifies_when_it_ends(storage):
    clock = Clock()
    engine, rec, by_id = await make_engine(storage, clock, unreachable_after=1)
    silence = await alerts.create_silence(central_over(storage), tag="prod", duration=300, comment="switch swap", user="cli:ann",
                                          now=clock.now)
    await engine.tick()
    await poll(engine, by_id, clock, failed)
    assert rec.events == []
    [row] = await storage.list_alerts(firing_only=True)  # recorded all the same
    assert row["last_notified"] is None
    clock.advance(300)
    await engine.tick()  # silence over, still firing: now it is sent
    assert [e for e, _ in rec.events] == ["firing"]
    assert silence["matcher"] == {"tag": "prod"}


async def test_resolved_while_silenced_sends_nothing(storage):
    clock = Clock()
    engine, rec, by_id = await make_engine(storage, clock, unreachable_after=1)
    await alerts.create_silence(central_over(storage), server="web*", rule="server_unreachable", duration=600,
                                comment="x", user="u", now=clock.now)
    await engine.tick()
    await poll(engine, by_id, clock, failed)
    clock.advance(10)
    await poll(engine, by_id, clock, ok)
    assert rec.events == []
    assert [r["state"] for r in await storage.list_alerts()] == ["resolved"]


async def test_maintenance_window_mutes_one_server_only(storage):
    clock = Clock()
    engine, rec, by_id = await make_engine(storage, clock, unreachable_after=1,
                                           servers=(("web1", ()), ("web2", ())))
    win = await alerts.create_silence(central_over(storage), server="web1", duration=3600, comment="kernel update",
                                      user="cli:bob", maintenance=True, now=clock.now)
    assert win["kind"] == "maintenance"
    await engine.tick()
    await poll(engine, by_id, clock, failed)
    assert [a["server"] for _, a in rec.events] == ["web2"]
    assert sorted(r["server"] for r in await storage.list_alerts(firing_only=True)) == ["web1", "web2"]
    # ending it early (unsilence) lets web1's still-firing alert through
    clock.advance(60)
    await alerts.delete_silence(central_over(storage), win["id"], now=clock.now)
    await engine.tick()
    assert sorted(a["server"] for _, a in rec.events) == ["web1", "web2"]
    with pytest.raises(Conflict):
        await alerts.delete_silence(central_over(storage), win["id"], now=clock.now)
    with pytest.raises(NotFound):
        await alerts.create_silence(central_over(storage), server="nope", duration=60, comment="x", user="u", maintenance=True)


async def test_ack_stops_repeats_and_is_recorded(storage):
    clock = Clock()
    engine, rec, by_id = await make_engine(storage, clock, unreachable_after=1)
    await poll(engine, by_id, clock, failed)
    [row] = await alerts.list_alerts(central_over(storage), firing_only=True, server="web1")
    await engine.tick()
    assert [(a["id"], acked, muted) for a, acked, muted in rec.reminders[-1]] == [(row["id"], False, False)]
    acked = await alerts.ack(central_over(storage), row["id"], "cli:ann", now=clock.now)
    assert acked["acked_by"] == "cli:ann" and acked["acked_at"] == clock.now
    await engine.tick()
    assert [acked_ for _, acked_, _ in rec.reminders[-1]] == [True]
    with pytest.raises(NotFound):
        await alerts.ack(central_over(storage), 999, "u")
    await poll(engine, by_id, clock, ok)
    with pytest.raises(Conflict):
        await alerts.ack(central_over(storage), row["id"], "u")


async def test_inventory_change_opens_an_info_alert_that_expires(storage):
    clock = Clock()
    engine, rec, by_id = await make_engine(storage, clock, inventory_alert_for=3600.0)
    sid = next(iter(by_id))
    await storage.write_inventory(sid, clock.now, "h1", {"memory_total": 1}, "initial", "first inventory")
    await storage.write_inventory(sid, clock.now, "h2", {"memory_total": 2}, "hardware_change",
                                  "memory_total: 1 -> 2")
    outcome = ok(sid, clock.now)
    outcome.extra["inventory"] = {"memory_total": 2}
    await engine.on_batch([outcome], by_id)
    [(event, alert)] = rec.events
    assert (event, alert["rule"], alert["severity"], alert["label"]) == ("firing", "inventory_changed", "info",
                                                                         "hardware_change")
    assert "memory_total: 1 -> 2" in alert["summary"]
    clock.advance(3600)
    await engine.tick()
    assert [e for e, _ in rec.events] == ["firing", "resolved"]


def test_rule_selection_by_name_and_tag_globs():
    rules = [AlertRule("a", "cpu.percent", servers=("web*",)), AlertRule("b", "cpu.percent", tags=("prod",)),
             AlertRule("c", "cpu.percent", enabled=False)]
    overrides = [AlertOverride(rule="b", servers=("web2",), enabled=False),
                 AlertOverride(rule="*", tags=("lab",), severity="info")]
    assert [r.name for r in rules_for_server(rules, overrides, "web1", ("prod",)).rules] == ["a", "b"]
    assert [r.name for r in rules_for_server(rules, overrides, "web2", ("prod",)).rules] == ["a"]
    assert [r.name for r in rules_for_server(rules, overrides, "db1", ("prod",)).rules] == ["b"]
    assert [r.severity for r in rules_for_server(rules, overrides, "web1", ("lab",)).rules] == ["info"]


def test_config_rules_and_errors_name_the_key(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('''
[alerts]
unreachable_after = 2
disabled = ["inventory_changed"]

[[alerts.rules]]
name = "cpu_high"
metric = "cpu.percent"
op = ">="
threshold = 90
for = "5m"
keep_firing_for = "2m"
severity = "critical"
tags = ["prod"]

[[alerts.overrides]]
rule = "cpu_high"
servers = ["batch-*"]
enabled = false

[[notifiers]]
name = "ops"
type = "webhook"
url = "http://127.0.0.1:9/hook"
min_severity = "warning"
''')
    cfg = load_config(good, env={})
    rule = cfg.alerts.rules[0]
    assert (rule.for_, rule.keep_firing_for, rule.threshold, rule.tags) == (300.0, 120.0, 90.0, ("prod",))
    assert cfg.alerts.overrides[0].enabled is False and cfg.notifiers[0].repeat_interval is None
    bad = {
        '[[alerts.rules]]\nname = "x"\nmetric = "cpu.percent"\nthreshold = "high"\n':
            'alerts.rules[1] ("x").threshold: expected a number',
        '[[alerts.rules]]\nname = "x"\nmetric = "cpu.percent"\n[[alerts.rules]]\nname = "y"\nmetric = "cpu"\n':
            'alerts.rules[2] ("y").metric: unknown metric \'cpu\'',
        '[[alerts.rules]]\nname = "x"\nmetric = "cpu.percent"\nop = "=>"\n': 'alerts.rules[1] ("x").op:',
        '[[alerts.rules]]\nname = "x"\nmetric = "cpu.percent"\nfor = "soon"\n': 'alerts.rules[1] ("x").for: expected a duration',
        '[[alerts.rules]]\nname = "disk_almost_full"\nmetric = "cpu.percent"\n': "is already the name of a built-in rule",
        '[[alerts.rules]]\nname = "x"\nmetric = "cpu.percent"\nseverity = "page"\n': 'alerts.rules[1] ("x").severity:',
        '[[alerts.rules]]\nname = "x"\nmetric = "cpu.percent"\nthreshhold = 1\n': 'alerts.rules[1] ("x").threshhold: unknown setting',
        '[[alerts.overrides]]\nrule = "x"\n': 'alerts.overrides[1] ("x"): give servers, tags or labels',
        '[[notifiers]]\nname = "a"\ntype = "sms"\n': 'notifiers[1] ("a").type:',
        '[[notifiers]]\nname = "a"\ntype = "webhook"\nurl = "ftp://x"\n': 'notifiers[1] ("a").url:',
        '[[notifiers]]\nname = "a"\ntype = "command"\nargv = "echo hi"\n': None,
        '[[notifiers]]\nname = "a"\ntype = "command"\n': 'notifiers[1] ("a").argv:',
        '[alerts]\nunreachable_after = 0\n': "alerts.unreachable_after: must be greater than 0",
        '[alerts]\ndisabled = ["nope"]\n': "alerts.disabled:",
    }
    for i, (text, message) in enumerate(bad.items()):
        path = tmp_path / f"bad{i}.toml"
        path.write_text(text)
        if message is None:  # a comma list string is accepted for tuples (as env overrides are)
            assert load_config(path, env={}).notifiers[0].argv == ("echo hi",)
            continue
        with pytest.raises(ConfigError) as exc:
            load_config(path, env={})
        assert message in str(exc.value), (text, str(exc.value))


async def test_silence_input_is_checked(storage):
    with pytest.raises(Invalid, match="needs a server, a rule or a tag"):
        await alerts.create_silence(central_over(storage), duration=60, comment="x", user="u")
    with pytest.raises(Invalid, match="comment is required"):
        await alerts.create_silence(central_over(storage), server="a", duration=60, comment=" ", user="u")
    with pytest.raises(Invalid, match="invalid duration"):
        await alerts.create_silence(central_over(storage), server="a", duration=0, comment="x", user="u")
    with pytest.raises(Invalid, match="invalid server"):
        await alerts.create_silence(central_over(storage), server="a b; rm", duration=60, comment="x", user="u")
    s = await alerts.create_silence(central_over(storage), rule="disk_*", duration=60, comment="x", user="u", now=1000.0)
    assert [r["id"] for r in await alerts.list_silences(central_over(storage), now=1030.0)] == [s["id"]]
    assert await alerts.list_silences(central_over(storage), now=1060.0) == []
    assert len(await alerts.list_silences(central_over(storage), active_only=False, now=1060.0)) == 1


def test_example_config_loads(tmp_path):
    """The commented rule/notifier examples in config.example.toml are valid once uncommented."""
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "config.example.toml").read_text()
    tail = text[text.index("# [[alerts.rules]]"):]
    head = text[:text.index("# [[alerts.rules]]")]
    tail = re.sub(r"(?m)^# (?=\[\[|[a-z_]+ = )", "", tail)
    (tmp_path / "c.toml").write_text(head + tail)
    cfg = load_config(tmp_path / "c.toml", env={})
    assert [r.name for r in cfg.alerts.rules] == ["cpu_high", "inodes_low"]
    assert [n.type for n in cfg.notifiers] == ["webhook", "alertmanager", "apprise", "apprise", "command"]
    assert [r.channels for r in cfg.alerts.routes] == [("pager",), ("ops-webhook",)]
    assert cfg.alerts.route.group_by == ("...",) and cfg.alerts.route.repeat_interval == 4 * 3600.0
    assert [w.name for w in cfg.alerts.maintenance] == ["sunday-backups"]
    assert cfg.alerts.inhibit[0].equal == ("server", "label")


def ct(name, state="running", health=None, restarts=0, mem=10.0):
    return {"name": name, "engine": "docker", "state": state, "health": health, "restarts": restarts,
            "memory_percent": mem, "cpu_percent": 1.0}


async def test_container_rules_stopped_unhealthy_restarting_and_a_name_selector(storage):
    from central.model import BUILTIN_RULES

    clock = Clock()
    engine, rec, by_id = await make_engine(storage, clock, rules=(
        AlertRule("db_memory", "container.memory_percent", ">=", 90.0, labels=("db*",)),))
    # spare was never seen running: no container_stopped for it, ever
    await poll(engine, by_id, clock, ok, containers=[ct("web"), ct("db1", mem=95.0), ct("cache", mem=95.0),
                                                     ct("spare", state="exited")])
    assert [(a["rule"], a["label"]) for e, a in rec.events] == [("db_memory", "db1")]  # cache is not selected
    clock.advance(10)
    await poll(engine, by_id, clock, ok, containers=[ct("web", state="exited"), ct("db1", health="unhealthy", restarts=2),
                                                     ct("cache"), ct("spare", state="exited")])
    # restarted twice since the previous poll: at once; stopped and unhealthy wait their 60 s
    assert [(e, a["rule"], a["label"]) for e, a in rec.events[1:]] == [("firing", "container_restarting", "db1"),
                                                                         ("resolved", "db_memory", "db1")]
    [restart] = [a for e, a in rec.events if a["rule"] == "container_restarting"]
    assert restart["summary"] == "container db1 on web1 restarted 2 times since the previous poll (running)"
    pending = {(st.rule, st.label) for st in engine.states.values() if st.state == "pending"}
    assert pending == {("container_stopped", "web"), ("container_unhealthy", "db1")}
    clock.advance(BUILTIN_RULES["container_stopped"].for_)
    await poll(engine, by_id, clock, ok, containers=[ct("web", state="exited"), ct("db1", health="unhealthy", restarts=2),
                                                     ct("cache"), ct("spare", state="exited")])
    fired = sorted((a["rule"], a["label"]) for e, a in rec.events if e == "firing")
    assert fired == [("container_restarting", "db1"), ("container_stopped", "web"), ("container_unhealthy", "db1"),
                     ("db_memory", "db1")]
    [stopped] = [a for e, a in rec.events if a["rule"] == "container_stopped"]
    assert stopped["summary"] == "container web on web1 is exited"
    # web removed: its alert resolves (the series is gone); a restarting state counts as a restart
    clock.advance(10)
    await poll(engine, by_id, clock, ok, containers=[ct("db1", state="restarting", restarts=2), ct("cache")])
    assert ("resolved", "container_stopped", "web") in [(e, a["rule"], a["label"]) for e, a in rec.events]
    assert any(st.rule == "container_restarting" and st.label == "db1" and st.state == "firing"
               for st in engine.states.values())


async def test_a_sensor_over_its_critical_mark_and_a_failing_disk_are_critical_at_once(storage):
    clock = Clock()
    engine, rec, by_id = await make_engine(storage, clock)
    hot = {"sensors": {"available": True, "temperatures": [
               {"name": "coretemp", "label": "Package id 0", "celsius": 101.0, "critical": 100.0},
               {"name": "acpitz", "label": "acpitz", "celsius": 99.0, "critical": None},  # no mark: no alert
               {"name": "nvme", "label": "Composite", "celsius": 50.0, "critical": 84.8}], "fans": []},
           "smart": {"available": True, "disks": [{"device": "/dev/sda", "passed": False},
                                                  {"device": "/dev/sdb", "passed": True},
                                                  {"device": "/dev/vda", "passed": None}]}}
    await poll(engine, by_id, clock, ok, hardware=hot)
    got = sorted((e, a["rule"], a["label"], a["severity"]) for e, a in rec.events)
    assert got == [("firing", "disk_failing", "/dev/sda", "critical"),
                   ("firing", "temperature_critical", "Package id 0", "critical")]
    [temp] = [a for e, a in rec.events if a["rule"] == "temperature_critical"]
    assert temp["summary"] == "sensor Package id 0 on web1 is at or above its critical temperature (1 °C over it)"
