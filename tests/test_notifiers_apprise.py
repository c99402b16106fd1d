"""Apprise channels against real receivers on loopback (an SMTP server, an HTTP server), secret
URLs that never show, channel health logged once per failing stretch, and the test command
through the CLI and the API."""
from __future__ import annotations

import dataclasses
import http.server
import json
import logging
import re
import threading

import pytest
from click.testing import CliRunner

from central.cli import cli
from central.config import ConfigError, NotifierConfig
from central.notifiers import check_channels
from tests.apiclient import start_api
from tests.receivers import HTTPReceiver, SMTPReceiver
from tests.test_alerts import failed, ok
from tests.test_notifiers import poll_all, setup, storage  # noqa: F401 - fixture

SECRET = "tok-S3CRET-9f2c"


@pytest.fixture
async def receiver():
    r = await HTTPReceiver().start()
    yield r
    await r.stop()


@pytest.fixture
async def smtp():
    s = await SMTPReceiver().start()
    yield s
    await s.stop()


def apprise(name, **kw) -> NotifierConfig:
    kw.setdefault("retries", 0)
    return NotifierConfig(name=name, type="apprise", timeout=10.0, **kw)


async def test_email_through_apprise_reaches_a_real_smtp_server(storage, smtp, tmp_path):  # noqa: F811
    url_file = tmp_path / "mail-url"
    url_file.write_text(f"# the ops mailbox\nmailto://alerts:{SECRET}@127.0.0.1:{smtp.port}"
                        "?from=central@example.org&to=ops@example.org&mode=insecure\n")
    engine, dispatcher, by_id = await setup(storage, [apprise("mail", url_file=str(url_file))], unreachable_after=1,
                                            external_url="https://central.example.net", time_zone="Europe/Berlin")
    try:
        await poll_all(engine, by_id, failed)
        await dispatcher.wait_idle()
        await poll_all(engine, by_id, ok)
        await dispatcher.wait_idle()
    finally:
        await dispatcher.stop()
    assert smtp.logins == [("alerts", SECRET)] * 2  # the password from the file was used for SMTP AUTH...
    firing, resolved = smtp.messages
    assert firing["To"] == "ops@example.org" and firing["From"] == "central@example.org"
    assert firing["Subject"] == "[FIRING] CRITICAL web1: server unreachable"
    text = firing.get_body(("plain",)).get_content()
    [alert] = await storage.list_alerts()
    assert f"https://central.example.net/alerts/{alert['id']}" in text
    assert "cannot reach web1 over SSH (1 polls in a row)" in text and "Value 1 polls (threshold ≥ 1 polls)" in text
    assert "Since " in text and ("CET" in text or "CEST" in text)
    assert resolved["Subject"] == "[RESOLVED] CRITICAL web1: server unreachable"
    assert "Resolved after" in resolved.get_body(("plain",)).get_content()
    log = await storage.notifications()
    assert [(n["event"], n["ok"]) for n in reversed(log)] == [("firing", True), ("resolved", True)]
    assert all(SECRET not in n["detail"] for n in log)  # ...and shows nowhere
    assert SECRET not in json.dumps(dispatcher.health())
    assert dispatcher.health()[0]["target"] == f"URL from {url_file}"


async def test_apprise_json_form_and_slack_style_posts_reach_a_real_http_receiver(
        storage, receiver, monkeypatch):  # noqa: F811
    monkeypatch.setenv("CENTRAL_TEST_MMOST_URL", f"mmost://127.0.0.1:{receiver.port}/{SECRET}")
    channels = [apprise("json", url=f"json://127.0.0.1:{receiver.port}/json"),
                apprise("form", url=f"form://127.0.0.1:{receiver.port}/form"),
                apprise("slack-style", url_env="CENTRAL_TEST_MMOST_URL")]
    engine, dispatcher, by_id = await setup(storage, channels, unreachable_after=1, servers=("web1",))
    try:
        await poll_all(engine, by_id, failed)
        await dispatcher.wait_idle()
        await poll_all(engine, by_id, ok)
        await dispatcher.wait_idle()
    finally:
        await dispatcher.stop()
    [j1, j2] = receiver.at("/json")
    assert j1["json"]["title"] == "[FIRING] CRITICAL web1: server unreachable" and j1["json"]["type"] == "failure"
    assert "/alerts/" in j1["json"]["message"]
    assert j2["json"]["title"].startswith("[RESOLVED]") and j2["json"]["type"] == "success"
    [f1, _] = receiver.at("/form")
    assert f1["form"]["title"] == j1["json"]["title"] and f1["form"]["message"] == j1["json"]["message"]
    # Mattermost's incoming webhook takes Slack's payload: {"text": ...} POSTed to /hooks/<token>.
    [s1, s2] = receiver.at(f"/hooks/{SECRET}")
    assert s1["json"]["text"].startswith("[FIRING] CRITICAL web1") and s2["json"]["text"].startswith("[RESOLVED]")
    assert [h["target"] for h in dispatcher.health()] == ["json://***", "form://***",
                                                           "URL from $CENTRAL_TEST_MMOST_URL"]


async def test_a_grouped_message_lists_its_alerts(storage, receiver):  # noqa: F811
    from central.config import RouteConfig

    engine, dispatcher, by_id = await setup(
        storage, [apprise("json", url=f"json://127.0.0.1:{receiver.port}/json")], unreachable_after=1,
        servers=("web1", "web2", "web3"), route=RouteConfig(group_by=("rule",)))
    try:
        await poll_all(engine, by_id, failed)
        await dispatcher.wait_idle()
    finally:
        await dispatcher.stop()
    [msg] = receiver.at("/json")
    assert msg["json"]["title"] == "[FIRING 3] server_unreachable"
    lines = msg["json"]["message"].splitlines()
    assert lines[0] == "Firing (3):"
    assert [ln for ln in lines if ln.startswith("- ")] == [f"- CRITICAL web{i}: server unreachable" for i in (1, 2, 3)]


async def test_a_failing_channel_is_logged_once_then_once_on_recovery_with_a_count(storage, receiver, caplog):  # noqa: F811
    receiver.failing = True
    hook = NotifierConfig(name="ops", type="webhook", url=receiver.url("/hook"), retries=2, backoff=0.01,
                          timeout=5.0)
    engine, dispatcher, by_id = await setup(storage, [hook], unreachable_after=1, servers=("web1", "web2", "web3"))
    caplog.set_level(logging.DEBUG, logger="central.notifiers")
    try:
        await poll_all(engine, by_id, failed)  # three alerts, three messages, three attempts each: all fail
        await dispatcher.wait_idle()
        [health] = dispatcher.health()
        assert (health["state"], health["failures_in_row"], health["failed"]) == ("failing", 9, 3)
        assert health["last_error"].startswith("HTTP 500") and health["last_success"] is None
        receiver.failing = False
        await poll_all(engine, by_id, ok)
        await dispatcher.wait_idle()
    finally:
        await dispatcher.stop()
    warnings = [r.getMessage() for r in caplog.records if r.name == "central.notifiers" and r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("notifier ops: failing: HTTP 500")
    assert warnings[1].startswith("notifier ops: recovered after 9 failed attempts over ")
    [health] = dispatcher.health()
    assert (health["state"], health["failures_in_row"]) == ("ok", 0) and health["last_success"] is not None


async def test_secret_urls_are_scrubbed_from_errors_and_never_returned(storage, monkeypatch, caplog):  # noqa: F811
    class Echo(HTTPReceiver):
        async def handle(self, request):  # a receiver that echoes the URL it was called with
            from aiohttp import web

            self.requests.append({"path": request.path})
            return web.Response(status=403, text=f"bad token in {request.path_qs}")

    echo = await Echo().start()
    monkeypatch.setenv("CENTRAL_TEST_HOOK", f"http://127.0.0.1:{echo.port}/hooks/{SECRET}?key={SECRET}x")
    hook = NotifierConfig(name="ops", type="webhook", url_env="CENTRAL_TEST_HOOK", retries=0)
    engine, dispatcher, by_id = await setup(storage, [hook], unreachable_after=1)
    caplog.set_level(logging.DEBUG)
    try:
        await poll_all(engine, by_id, failed)
        await dispatcher.wait_idle()
    finally:
        await dispatcher.stop()
        await echo.stop()
    assert echo.requests == [{"path": f"/hooks/{SECRET}"}]  # the secret URL was used...
    [entry] = await storage.notifications()
    assert entry["detail"] == "HTTP 403: bad token in /hooks/***?key=***"  # ...and shows nowhere
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("central"))
    assert "notifier ops: failing: HTTP 403" in ours and SECRET not in ours
    assert SECRET not in json.dumps(dispatcher.health())


def test_serve_refuses_a_missing_or_unknown_secret_url_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^notifiers\[1\] \(\"mail\"\)\.url_env: the environment variable "
                                          r"CENTRAL_NOPE is not set or empty$"):
        check_channels([apprise("mail", url_env="CENTRAL_NOPE")], env={})
    f = tmp_path / "u"
    f.write_text(f"nosuchservice://{SECRET}@x\n")
    with pytest.raises(ConfigError) as err:
        check_channels([apprise("a", url_file=str(f))], env={})
    assert str(err.value).startswith('notifiers[1] ("a").url_file: URL line 1 is not one Apprise understands')
    assert SECRET not in str(err.value)
    with pytest.raises(ConfigError, match=r"url_file: cannot read"):
        check_channels([apprise("a", url_file=str(tmp_path / "missing"))], env={})


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200
    bodies: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        self.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(self.status)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def threaded_receiver():
    """A real HTTP receiver in a thread (the CLI runs its own event loop)."""
    _Handler.bodies, _Handler.status = [], 200
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_cli_notifier_test_and_list(tmp_path, threaded_receiver):
    port = threaded_receiver.server_address[1]
    conf = tmp_path / "central.toml"
    conf.write_text(f'data_dir = "{tmp_path / "data"}"\n[poll]\nlocal = false\n'
                    '[[notifiers]]\nname = "ops"\ntype = "webhook"\nurl_env = "CENTRAL_TEST_OPS_URL"\n')
    env = {"CENTRAL_CONFIG": str(conf), "CENTRAL_TEST_OPS_URL": f"http://127.0.0.1:{port}/h/{SECRET}"}
    runner = CliRunner()
    assert runner.invoke(cli, ["init"], env=env).exit_code == 0
    r = runner.invoke(cli, ["notifier", "test", "ops"], env=env)
    assert r.exit_code == 0, r.output
    assert r.output.startswith("ops: delivered in ") and r.output.rstrip().endswith("(HTTP 200)")
    [body] = _Handler.bodies
    assert (body["event"], body["alerts"], body["title"]) == ("test", [], "central: test notification")
    _Handler.status = 502
    r = runner.invoke(cli, ["notifier", "test", "ops"], env=env)
    assert r.exit_code == 1 and r.output.strip() == "Error: ops: not delivered: HTTP 502: {}"
    r = runner.invoke(cli, ["notifier", "test", "nope"], env=env)
    assert r.exit_code == 1 and r.output.strip() == "Error: no notifier named 'nope' (notifiers: ops)"
    r = runner.invoke(cli, ["notifier", "list", "--json"], env=env)
    assert r.exit_code == 0, r.output
    [n] = json.loads(r.output)["notifiers"]
    assert (n["name"], n["state"], n["failures_in_row"], n["target"]) == ("ops", "failing", 1,
                                                                        "URL from $CENTRAL_TEST_OPS_URL")
    assert n["last_success"] is not None and n["last_error"] == "HTTP 502: {}"
    r = runner.invoke(cli, ["notifier", "list"], env=env)
    assert r.exit_code == 0 and "failing" in r.output and SECRET not in r.output


async def test_api_test_message_is_for_admins_and_health_shows_in_status(config, receiver):
    config = dataclasses.replace(config, notifiers=(
        NotifierConfig(name="ops", type="webhook", url=receiver.url(f"/h/{SECRET}"), retries=0),))
    api = await start_api(config)
    try:
        status, body, _ = await api.request("POST", "/api/v1/notifiers/ops/test", role="operator")
        assert status == 403
        status, body, _ = await api.request("POST", "/api/v1/notifiers/ops/test", role="admin")
        assert status == 200 and body["ok"] is True and body["detail"] == "HTTP 200", body
        status, body, _ = await api.request("POST", "/api/v1/notifiers/nope/test", role="admin")
        assert status == 404 and "no notifier named 'nope'" in body["detail"], body
        status, body, _ = await api.get("/api/v1/status", role="viewer")
        [n] = body["notifiers"]
        assert (n["name"], n["state"], n["failures_in_row"]) == ("ops", "ok", 0) and n["last_success"] is not None
        assert n["target"] == f"http://127.0.0.1:{receiver.port}/***"
        status, listing, _ = await api.get("/api/v1/notifiers", role="viewer")
        assert status == 200 and listing["notifiers"] == body["notifiers"]
        assert listing["routes"][0]["channels"] == ["ops"]
        assert SECRET not in json.dumps(listing) + json.dumps(body)
        from tests.test_pages import login, page

        await login(api, "viewer1")
        status, html, _ = await page(api, "/alerts")  # the page shows the same health
        row = re.search(r'<tr data-notifier="ops">(.*?)</tr>', html, re.S).group(1)
        assert status == 200 and "webhook" in row and ">ok<" in row and "s ago" in row and SECRET not in html
    finally:
        await api.client.close()
    assert [r["json"]["event"] for r in receiver.requests] == ["test"]


async def test_alertmanager_test_message_is_a_short_lived_info_alert(storage, receiver):  # noqa: F811
    am = NotifierConfig(name="am", type="alertmanager", url=receiver.url(""), retries=0)
    engine, dispatcher, by_id = await setup(storage, [am])
    try:
        result = await dispatcher.send_test("am")
    finally:
        await dispatcher.stop()
    assert result["ok"], result
    [req] = receiver.requests
    assert req["path"] == "/api/v2/alerts"
    [entry] = req["json"]
    assert entry["labels"] == {"alertname": "central_test", "severity": "info", "channel": "am"}


def test_serve_refuses_to_start_with_an_unreadable_secret_url(tmp_path):
    data = tmp_path / "data"
    conf = tmp_path / "central.toml"
    conf.write_text(f'data_dir = "{data}"\n[[notifiers]]\nname = "mail"\ntype = "apprise"\n'
                    'url_env = "CENTRAL_TEST_UNSET_MAIL_URL"\n')
    assert CliRunner().invoke(cli, ["init"], env={"CENTRAL_CONFIG": str(conf)}).exit_code == 0
    r = CliRunner().invoke(cli, ["serve", "--port", "1"], env={"CENTRAL_CONFIG": str(conf)})
    assert r.exit_code == 1
    assert r.output.strip() == (f'Error: config: {conf}: notifiers[1] ("mail").url_env: the environment variable '
                                "CENTRAL_TEST_UNSET_MAIL_URL is not set or empty")
