"""Notifiers against real receivers: an aiohttp server on a random port, a real Alertmanager, real commands."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import subprocess
import sys
import time

import aiohttp
import pytest
from aiohttp import web

from central.alerts import AlertEngine
from central.config import AlertsConfig, NotifierConfig, load_config
from central.notifiers import Dispatcher
from central.storage import Storage
from tests import tools
from tests.helpers import central_over, stop_process, wait_for
from tests.test_alerts import Clock, failed, ok

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




class Receiver:
    """A real HTTP server that records what it is sent; can fail the first N requests or hang."""

    def __init__(self, fail_first: int = 0, hang: bool = False):
        self.fail_first = fail_first
        self.hang = hang
        self.requests: list[dict] = []
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append({"path": request.path, "body": body, "headers": dict(request.headers)})
        if self.hang:
            await self.release.wait()
        if len(self.requests) <= self.fail_first:
            return web.json_response({"error": "try later"}, status=500)
        return web.json_response({"ok": True})

    async def start(self, port: int = 0) -> "Receiver":
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def events(self) -> list[str]:
        """The event of each alert in each message received, in order."""
        return [a["event"] for r in self.requests for a in r["body"]["alerts"]]

    async def stop(self) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def storage(tmp_path):
    s = await Storage.open(tmp_path / "central.db")
    yield s
    await s.close()


@pytest.fixture
async def receiver():
    r = await Receiver().start()
    yield r
    await r.stop()


async def setup(storage, notifiers, clock=time.time, servers=("web1",), **alert_cfg):
    """An engine with a real Dispatcher; returns (engine, dispatcher, {id: server})."""
    cfg = load_config(env={"CENTRAL_DATA_DIR": "/nonexistent"})
    cfg = dataclasses.replace(cfg, alerts=dataclasses.replace(AlertsConfig(), **alert_cfg),
                              notifiers=tuple(notifiers))
    by_id = {}
    for name in servers:
        s = await storage.add_server(name, "10.0.0.1", tags=("prod",))
        by_id[s.id] = s
    dispatcher = Dispatcher(storage, cfg.notifiers, alerts=cfg.alerts, queue_size=cfg.alerts.queue_size, clock=clock)
    engine = AlertEngine(cfg, storage, dispatcher, clock=clock)
    await engine.start(run_timer=False)
    return engine, dispatcher, by_id


def hook(name, url, **kw) -> NotifierConfig:
    kw.setdefault("backoff", 0.05)
    return NotifierConfig(name=name, type="webhook", url=url, timeout=5.0, **kw)


async def poll_all(engine, by_id, make, ts=None, **kw):
    await engine.on_batch([make(sid, ts if ts is not None else time.time(), **kw) for sid in by_id], by_id)


async def test_webhook_gets_firing_and_resolved_with_the_alert(storage, receiver):
    engine, dispatcher, by_id = await setup(storage, [hook("ops", receiver.url)], unreachable_after=1)
    try:
        await poll_all(engine, by_id, failed)
        await poll_all(engine, by_id, ok)
        await dispatcher.wait_idle()
    finally:
        await dispatcher.stop()
    assert receiver.events() == ["firing", "resolved"]
    first = receiver.requests[0]["body"]
    assert first["version"] == 2 and first["channel"] == "ops" and first["event"] == "firing"
    [alert] = first["alerts"]
    assert (alert["rule"], alert["server"], alert["severity"], alert["state"]) == (
        "server_unreachable", "web1", "critical", "firing")
    assert [a["state"] for a in receiver.requests[1]["body"]["alerts"]] == ["resolved"]
    log = await storage.notifications(alert["id"])
    assert [(n["event"], n["ok"], n["attempt"], n["detail"]) for n in reversed(log)] == [
        ("firing", True, 1, "HTTP 200"), ("resolved", True, 1, "HTTP 200")]


async def test_webhook_retries_after_500(storage):
    receiver = await Receiver(fail_first=2).start()
    engine, dispatcher, by_id = await setup(storage, [hook("ops", receiver.url, retries=3)], unreachable_after=1)
    try:
        await poll_all(engine, by_id, failed)
        await dispatcher.wait_idle()
    finally:
        await dispatcher.stop()
        await receiver.stop()
    assert receiver.events() == ["firing"] * 3
    log = list(reversed(await storage.notifications()))
    assert [(n["attempt"], n["ok"]) for n in log] == [(1, False), (2, False), (3, True)]
    assert log[0]["detail"].startswith("HTTP 500")


async def test_webhook_retries_while_the_receiver_is_down_then_up(storage):
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    engine, dispatcher, by_id = await setup(
        storage, [hook("ops", url, retries=8, backoff=0.2, backoff_max=0.4)], unreachable_after=1)
    receiver = Receiver()
    try:
        await poll_all(engine, by_id, failed)
        # The first attempt finds nothing listening and is recorded as failed...
        await wait_for(storage.notifications, what="a failed attempt")
        [first] = await storage.notifications()
        assert not first["ok"] and "Connect" in first["detail"]
        await receiver.start(port)  # ...then the receiver comes up and a retry gets through
        await dispatcher.wait_idle()
    finally:
        await dispatcher.stop()
        await receiver.stop()
    assert receiver.events() == ["firing"]
    log = await storage.notifications()
    assert log[0]["ok"] and log[0]["attempt"] >= 2
    assert all(not n["ok"] for n in log[1:])


async def test_gives_up_after_retries_and_records_it(storage):
    url = f"http://127.0.0.1:{free_port()}/hook"
    engine, dispatcher, by_id = await setup(storage, [hook("ops", url, retries=2)], unreachable_after=1)
    try:
        await poll_all(engine, by_id, failed)
        await dispatcher.wait_idle()
        channel = dispatcher.channels[0]
        assert (channel.failed, channel.delivered) == (1, 0)
    finally:
        await dispatcher.stop()
    assert [n["attempt"] for n in await storage.notifications()] == [3, 2, 1]


async def test_a_hanging_receiver_does_not_hold_up_evaluation(storage):
    receiver = await Receiver(hang=True).start()
    engine, dispatcher, by_id = await setup(storage, [hook("ops", receiver.url, retries=0)],
                                            unreachable_after=1, servers=("web1", "web2"))
    try:
        await poll_all(engine, by_id, failed)
        await wait_for(lambda: receiver.requests, what="the first request")
        # The receiver holds the request open; polls keep being evaluated and recorded.
        await poll_all(engine, by_id, ok)
        rows = await storage.list_alerts()
        assert sorted(r["state"] for r in rows) == ["resolved", "resolved"]
        assert await storage.notifications() == []  # nothing delivered yet
        receiver.release.set()
        await dispatcher.wait_idle()
    finally:
        await dispatcher.stop()
        await receiver.stop()
    assert sorted(receiver.events()) == ["firing", "firing", "resolved", "resolved"]


async def test_queue_overflow_drops_the_oldest_and_counts(storage):
    dispatcher = Dispatcher(storage, [hook("ops", "http://127.0.0.1:9/")], queue_size=2)
    for i in range(1, 6):  # workers not started: everything stays queued
        dispatcher.notify("firing", {"id": i, "severity": "warning", "rule": "r", "server": "s", "server_id": 1,
                                     "label": str(i)})
    dispatcher.pump()
    assert dispatcher.dropped == 3
    assert [m.firing[0]["id"] for m in dispatcher.channels[0].queue] == [4, 5]


async def test_severity_filters(storage, receiver):
    engine, dispatcher, by_id = await setup(storage, [
        hook("critical-only", receiver.url, min_severity="critical"),
        hook("info-only", receiver.url, severities=("info",)),
    ], unreachable_after=1, disk_full_for=0.0)
    try:
        await poll_all(engine, by_id, ok, disks=(("/", 99.0, 1.0),))  # disk: warning
        await poll_all(engine, by_id, failed)  # unreachable: critical
        await dispatcher.wait_idle()
    finally:
        await dispatcher.stop()
    got = [(r["body"]["channel"], a["rule"]) for r in receiver.requests for a in r["body"]["alerts"]]
    assert got == [("critical-only", "server_unreachable")]


async def test_repeats_while_firing_until_acknowledged(storage, receiver):
    clock = Clock()
    engine, dispatcher, by_id = await setup(storage, [hook("ops", receiver.url, repeat_interval=300.0)],
                                            clock=clock, unreachable_after=1)
    try:
        await poll_all(engine, by_id, failed, ts=clock.now)
        for _ in range(12):  # an hour of ticks every 5 minutes
            clock.advance(300)
            await engine.tick()
        await dispatcher.wait_idle()
        assert receiver.events() == ["firing"] + ["repeat"] * 12
        from central.alerts import ack

        [row] = await storage.list_alerts()
        await ack(central_over(storage), row["id"], "cli:ann", now=clock.now)
        for _ in range(12):
            clock.advance(300)
            await engine.tick()
        await poll_all(engine, by_id, ok, ts=clock.now)
        await dispatcher.wait_idle()
    finally:
        await dispatcher.stop()
    assert receiver.events() == ["firing"] + ["repeat"] * 12 + ["resolved"]


async def test_flapping_through_the_real_dispatcher(storage, receiver):
    """Ten minutes of down/up every 10 s poll, keep_firing_for 60 s: the receiver gets exactly 1 + 1."""
    clock = Clock()
    engine, dispatcher, by_id = await setup(storage, [hook("ops", receiver.url)], clock=clock,
                                            unreachable_after=1, keep_firing_for=60.0)
    try:
        for i in range(60):
            await poll_all(engine, by_id, ok if i % 2 else failed, ts=clock.now)
            await engine.tick()
            clock.advance(10)
        for _ in range(7):
            await poll_all(engine, by_id, ok, ts=clock.now)
            await engine.tick()
            clock.advance(10)
        await dispatcher.wait_idle()
    finally:
        await dispatcher.stop()
    assert receiver.events() == ["firing", "resolved"]


async def test_silenced_alert_is_recorded_but_not_sent(storage, receiver):
    from central.alerts import create_silence

    engine, dispatcher, by_id = await setup(storage, [hook("ops", receiver.url)], unreachable_after=1,
                                            servers=("web1", "web2"))
    try:
        await create_silence(central_over(storage), server="web1", duration=3600, comment="rack move", user="u", maintenance=True)
        await engine.tick()
        await poll_all(engine, by_id, failed)
        await dispatcher.wait_idle()
    finally:
        await dispatcher.stop()
    assert [a["server"] for r in receiver.requests for a in r["body"]["alerts"]] == ["web2"]
    assert sorted(r["server"] for r in await storage.list_alerts(firing_only=True)) == ["web1", "web2"]


HOSTILE = 'x"; $(touch {marker}) `touch {marker}` \'q\'\n2nd line & | ; *'


async def test_command_gets_hostile_text_verbatim_and_runs_nothing(storage, tmp_path):
    marker = tmp_path / "pwned"
    out = tmp_path / "env.json"
    script = ("import json, os, sys; json.dump({k: v for k, v in os.environ.items() if k.startswith('CENTRAL_ALERT_')}"
              " | {'ARGV': sys.argv[1:]}, open(sys.argv[1], 'w'))")
    notifier = NotifierConfig(name="pager", type="command", argv=(sys.executable, "-c", script, str(out)),
                              timeout=20.0, retries=0)
    engine, dispatcher, by_id = await setup(storage, [notifier], process_missing_for=0.0)
    hostile = HOSTILE.format(marker=marker)
    try:
        # The label comes from the host (a watched process name): untrusted text.
        await poll_all(engine, by_id, ok, watched={hostile: 0})
        await dispatcher.wait_idle()
    finally:
        await dispatcher.stop()
    env = json.loads(out.read_text())
    assert env["CENTRAL_ALERT_LABEL"] == hostile
    assert env["CENTRAL_ALERT_SUMMARY"] == f"no process named {hostile} runs on web1"
    assert env["CENTRAL_ALERT_EVENT"] == "firing" and env["CENTRAL_ALERT_RULE"] == "process_missing"
    assert json.loads(env["CENTRAL_ALERT_JSON"])["label"] == hostile
    assert env["ARGV"] == [str(out)]
    assert not marker.exists()
    [entry] = await storage.notifications()
    assert entry["ok"] and entry["detail"] == "exit 0"


async def test_command_timeout_and_failure_are_recorded(storage, tmp_path):
    slow = NotifierConfig(name="slow", type="command", argv=(sys.executable, "-c", "import time; time.sleep(60)"),
                          timeout=0.5, retries=0)
    bad = NotifierConfig(name="bad", type="command", argv=(sys.executable, "-c", "print('nope'); raise SystemExit(3)"),
                         retries=0)
    missing = NotifierConfig(name="missing", type="command", argv=(str(tmp_path / "no-such-program"),), retries=0)
    engine, dispatcher, by_id = await setup(storage, [slow, bad, missing], unreachable_after=1)
    try:
        await poll_all(engine, by_id, failed)
        await dispatcher.wait_idle()
    finally:
        await dispatcher.stop()
    log = {n["channel"]: n for n in await storage.notifications()}
    assert not log["slow"]["ok"] and "did not finish within 0.5s" in log["slow"]["detail"]
    assert not log["bad"]["ok"] and "exited with 3: nope" in log["bad"]["detail"]
    assert not log["missing"]["ok"] and "cannot run" in log["missing"]["detail"]


# A real Alertmanager

@pytest.fixture
async def alertmanager(tmp_path):
    tools.require(ALERTMANAGER, "the Debian package prometheus-alertmanager")
    conf = tmp_path / "alertmanager.yml"
    conf.write_text("route:\n  receiver: \"null\"\nreceivers:\n  - name: \"null\"\n")
    port = free_port()
    data = tmp_path / "am-data"
    data.mkdir()
    log_file = open(tmp_path / "alertmanager.log", "wb")
    proc = subprocess.Popen(
        [ALERTMANAGER, f"--config.file={conf}", f"--storage.path={data}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=log_file, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            async def ready():
                if proc.poll() is not None:
                    raise AssertionError("alertmanager exited: " + (tmp_path / "alertmanager.log").read_text()[-1000:])
                try:
                    async with session.get(base + "/-/ready") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False
            await wait_for(ready, timeout=30, what="alertmanager to be ready")
        yield base
    finally:
        stop_process(proc, 10)
        log_file.close()


async def am_alerts(base: str, **params) -> list[dict]:
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/api/v2/alerts", params={k: str(v).lower() for k, v in params.items()}) as r:
            assert r.status == 200
            return await r.json()


async def test_alertmanager_lists_the_alert_then_marks_it_resolved(storage, alertmanager):
    am = NotifierConfig(name="am", type="alertmanager", url=alertmanager, retries=2, backoff=0.1)
    engine, dispatcher, by_id = await setup(storage, [am], unreachable_after=1, disk_full_for=0.0,
                                            external_url="http://central.example:9083")
    try:
        await poll_all(engine, by_id, ok, disks=(("/var", 97.5, 1.0),))
        await dispatcher.wait_idle()
        [alert] = await am_alerts(alertmanager)
        assert alert["labels"] == {"alertname": "disk_almost_full", "server": "web1", "severity": "warning",
                                   "label": "/var"}
        assert alert["status"]["state"] == "active"
        assert alert["annotations"]["summary"] == "/var on web1 is 97.5% full (threshold 90%)"
        assert alert["generatorURL"].startswith("http://central.example:9083/alerts/")
        await poll_all(engine, by_id, ok, disks=(("/var", 50.0, 1.0),))
        await dispatcher.wait_idle()
        # Resolved: Alertmanager no longer lists it among active alerts.
        assert await wait_for(lambda: _none_active(alertmanager), what="alertmanager to resolve the alert")
    finally:
        await dispatcher.stop()
    sent = [(n["event"], n["ok"]) for n in reversed(await storage.notifications())]
    assert sent == [("firing", True), ("resolved", True)]


async def _none_active(base: str) -> bool:
    active = await am_alerts(base, active=True, silenced=True, inhibited=True, unprocessed=True)
    return active == []
