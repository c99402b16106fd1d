"""The web terminal through the real app: tickets, the WebSocket, recordings, refusals, limits.

The host is an in-process asyncssh server on port 0 that accepts the terminal key and runs a
tiny shell on the PTY (the real sshd with `restrict,pty` is in tests/test_terminal_hosts.py).
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import stat

import asyncssh
import pytest

from central import recording
from central.config import ConfigError, load_config
from tests.apiclient import PASSWORD, password_hash, start_api


async def _shell(process: asyncssh.SSHServerProcess) -> None:
    """A stand-in shell: says its terminal, echoes commands, `exit N`, `blast`, `sleep`."""
    cols, rows, *_ = process.get_terminal_size()
    process.stdout.write(f"term={process.get_terminal_type()} size={cols}x{rows}\r\n$ ")
    while True:
        try:
            line = await process.stdin.readline()
        except asyncssh.TerminalSizeChanged as exc:
            process.stdout.write(f"resized {exc.width}x{exc.height}\r\n$ ")
            continue
        except (asyncssh.BreakReceived, asyncssh.SignalReceived):
            continue
        if not line:
            process.exit(0)
            return
        cmd = line.strip()
        if cmd.startswith("exit"):
            process.exit(int(cmd.split()[1]))
            return
        if cmd == "blast":
            process.stdout.write("x" * 5000 + "\r\n$ ")
        else:
            process.stdout.write(f"you said {cmd}\r\n$ ")


@pytest.fixture
async def ssh_host(tmp_path):
    """(port, host key line, authorize(key line)): an asyncssh server running _shell."""
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    keys_file = tmp_path / "authorized_keys"
    keys_file.write_text("")

    class Server(asyncssh.SSHServer):
        def begin_auth(self, username):
            self.username = username
            return True

        def public_key_auth_supported(self):
            return True

        def validate_public_key(self, username, key):
            authorized = asyncssh.import_authorized_keys(keys_file.read_text() or "\n") if keys_file.read_text() else None
            return username == "deploy" and authorized is not None and authorized.validate(key, "127.0.0.1", "127.0.0.1") is not None

    server = await asyncssh.create_server(Server, "127.0.0.1", 0, server_host_keys=[host_key], process_factory=_shell)
    port = server.sockets[0].getsockname()[1]

    def authorize(line: str) -> None:
        keys_file.write_text(keys_file.read_text() + line + "\n")

    yield port, " ".join(host_key.export_public_key().decode().split()[:2]), authorize
    server.close()
    await server.wait_closed()


WS_HEADERS = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


def _config(config, **terminal):
    return dataclasses.replace(config, terminal=dataclasses.replace(config.terminal, **terminal))


class Page:
    """A logged-in page session (cookie + CSRF token) on the test client."""

    def __init__(self, api, user: str):
        self.api, self.user, self.csrf = api, user, None

    async def login(self):
        # each page has its own cookie jar: one client per user
        from aiohttp.test_utils import TestClient
        self.client = TestClient(self.api.client.server)
        await self.client.start_server()
        async with self.client.post("/api/v1/login", json={"username": self.user, "password": PASSWORD}) as resp:
            assert resp.status == 200, await resp.text()
            self.csrf = (await resp.json())["csrf_token"]
        return self

    @property
    def origin(self) -> str:
        return str(self.client.make_url("")).rstrip("/")

    async def authorize(self, server: str, **body):
        async with self.client.post(f"/api/v1/servers/{server}/terminal", json=body,
                                    headers={"X-CSRF-Token": self.csrf}) as resp:
            return resp.status, await resp.json()

    def ws(self, ticket: str, origin: str | None = "same", cols: int = 100, rows: int = 30):
        headers = {} if origin is None else {"Origin": self.origin if origin == "same" else origin}
        return self.client.ws_connect(f"/api/v1/terminal/ws?ticket={ticket}&cols={cols}&rows={rows}", headers=headers)

    async def close(self):
        await self.client.close()


@pytest.fixture
async def term(config, ssh_host, request):
    """The app with server `box` (the in-process host, terminal enabled as `deploy`), the terminal
    key authorized there, and operator1 holding the terminal right."""
    cfg = _config(config, **getattr(request, "param", {}))
    api = await start_api(cfg)
    port, host_key, authorize = ssh_host
    central = api.central
    line, _ = central.terminal.ensure_key()
    authorize(f"restrict,pty {line}")
    await central.storage.add_server("box", "127.0.0.1", port=port, host_key=host_key, host_key_fingerprint="x")
    await central.terminal.enable("box", "deploy", by="test")
    await central.terminal.grant("operator1", by="test")
    pages = []

    async def page(user="operator1"):
        p = await Page(api, user).login()
        pages.append(p)
        return p

    api.page = page
    yield api
    for p in pages:
        await p.close()
    await api.client.close()


async def _read_until(ws, text: str, timeout: float = 10.0) -> tuple[str, list[dict]]:
    """Output (decoded) and control messages until text appears in the output."""
    out, controls = "", []

    async def loop():
        nonlocal out
        while text not in out:
            msg = await ws.receive()
            if msg.type.name == "BINARY":
                out += msg.data.decode(errors="replace")
            elif msg.type.name == "TEXT":
                controls.append(json.loads(msg.data))
            else:
                raise AssertionError(f"socket ended ({msg.type}) before {text!r}; output so far: {out!r}; {controls}")

    await asyncio.wait_for(loop(), timeout)
    return out, controls


async def _until_control(ws, kind: str, timeout: float = 10.0) -> dict:
    async def loop():
        while True:
            msg = await ws.receive()
            if msg.type.name == "TEXT" and json.loads(msg.data)["type"] == kind:
                return json.loads(msg.data)
            if msg.type.name not in ("TEXT", "BINARY"):
                raise AssertionError(f"socket ended ({msg.type}) before a {kind} message")
    return await asyncio.wait_for(loop(), timeout)


async def _terminal_audit(central, event=None):
    rows = [r for r in await central.storage.audit_log(limit=200) if r["action"] == "terminal"]
    return [r for r in rows if event is None or r["arguments"].get("event") == event]


async def test_a_session_types_resizes_exits_and_is_recorded(term):
    page = await term.page()
    status, answer = await page.authorize("box")
    assert status == 200, answer
    assert answer["account"] == "deploy" and answer["websocket"].startswith("/api/v1/terminal/ws?ticket=")
    async with page.ws(answer["ticket"]) as ws:
        started = await _until_control(ws, "started")
        assert started["server"] == "box" and started["account"] == "deploy"
        out, _ = await _read_until(ws, "size=100x30")
        assert "term=xterm-256color" in out
        await ws.send_bytes(b"hello\r")
        await _read_until(ws, "you said hello")
        await ws.send_str(json.dumps({"type": "resize", "cols": 120, "rows": 40}))
        await _read_until(ws, "resized 120x40")
        assert term.central.terminal.live()[0]["user"] == "operator1"
        await ws.send_bytes("ünï\r".encode())
        await _read_until(ws, "you said ünï")
        await ws.send_bytes(b"exit 3\r")
        ended = await _until_control(ws, "ended")
    assert ended["reason"] == "exit" and ended["exit_status"] == 3
    assert ended["message"] == "the shell exited with status 3"
    assert term.central.terminal.live() == []

    row = (await term.central.terminal.sessions())[0]
    assert (row["user"], row["server_name"], row["account"], row["exit_status"], row["end_reason"]) == \
        ("operator1", "box", "deploy", 3, "exit")
    assert row["duration"] > 0 and row["cols"] == 100 and row["rows"] == 30
    path = term.central.config.recordings_path / row["recording"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    raw = path.read_bytes()
    assert raw.isascii()  # dumping it to a terminal shows JSON, never an escape sequence
    cast = recording.read(path)
    assert cast.header["version"] == 2 and (cast.width, cast.height) == (100, 30)
    assert cast.header["env"] == {"TERM": "xterm-256color"} and cast.header["title"] == "deploy@box"
    assert cast.input() == "hello\rünï\rexit 3\r"
    assert "you said hello" in cast.output() and "you said ünï" in cast.output()
    assert ("r", "120x40") in [(c, d) for _, c, d in cast.events]
    assert row["recording_bytes"] == len(raw)

    opened, closed = await _terminal_audit(term.central, "open"), await _terminal_audit(term.central, "end")
    assert opened[0]["result"] == "ok" and opened[0]["actor"] == "operator1" and opened[0]["server_name"] == "box"
    assert closed[0]["result"] == "ok" and closed[0]["exit_status"] == 3
    assert closed[0]["arguments"]["session"] == row["id"] and closed[0]["duration_ms"] > 0

    # the recording over HTTP: the owner and admins, nobody else
    async with page.client.get(f"/api/v1/terminal/sessions/{row['id']}/recording") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "application/x-asciicast"
        assert await resp.read() == raw
    status, _, _ = await term.get(f"/api/v1/terminal/sessions/{row['id']}/recording", role="admin")
    assert status == 200
    status, err, _ = await term.get(f"/api/v1/terminal/sessions/{row['id']}/recording", role="viewer")
    assert status == 403, err


async def test_a_ticket_is_used_once_and_only_by_its_user(term):
    page = await term.page()
    await term.central.terminal.grant("admin1", by="test")
    other = await term.page("admin1")
    _, answer = await page.authorize("box")
    url = f"/api/v1/terminal/ws?ticket={answer['ticket']}"
    # not admin1's ticket (refused, and used up by the attempt)
    async with other.client.get(url, headers={"Origin": other.origin, **WS_HEADERS}) as resp:
        assert resp.status == 403 and (await resp.json())["error"] == "bad_ticket"
    async with page.client.get(url, headers={"Origin": page.origin, **WS_HEADERS}) as resp:
        assert resp.status == 403 and (await resp.json())["error"] == "bad_ticket"
    _, answer = await page.authorize("box")
    async with page.ws(answer["ticket"]) as ws:
        await _until_control(ws, "started")
    async with page.client.get(f"/api/v1/terminal/ws?ticket={answer['ticket']}", headers={"Origin": page.origin, **WS_HEADERS}) as resp:
        assert resp.status == 403 and "unknown, used or expired" in (await resp.json())["detail"]
    refused = await _terminal_audit(term.central, "refused")
    assert [r["arguments"]["reason"] for r in refused][:3] == ["bad_ticket", "bad_ticket", "bad_ticket"]


async def test_refusals_are_clear_and_audited(term):
    central = term.central
    # no right: a viewer and an operator without it (HTTP)
    await term.central.storage.add_user("operator2", "operator", password_hash())
    for user in ("viewer1", "operator2"):
        page = await term.page(user)
        status, err = await page.authorize("box")
        assert status == 403 and err["error"] == "no_right", err
        assert f"central terminal grant {user}" in err["detail"]
        # ... and the WebSocket, even with a ticket someone else got
        async with page.client.get("/api/v1/terminal/ws?ticket=x", headers={"Origin": page.origin, **WS_HEADERS}) as resp:
            assert resp.status == 403 and (await resp.json())["error"] == "no_right"
    # an API token never opens a terminal
    status, err, _ = await term.request("POST", "/api/v1/servers/box/terminal", role="operator", json={})
    assert status == 403 and err["error"] == "not_a_page_session"
    # not enabled on the host
    await central.storage.add_server("other", "127.0.0.2", host_key="ssh-ed25519 AAAA", host_key_fingerprint="y")
    page = await term.page()
    status, err = await page.authorize("other")
    assert status == 409 and err["error"] == "not_enabled" and "not enabled on other" in err["detail"]
    status, err = await page.authorize("local")
    assert status == 409 and err["error"] == "not_enabled"
    status, err = await page.authorize("nosuch")
    assert status == 404 and err["error"] == "no_such_server"
    reasons = [(r["actor"], r["server_name"], r["arguments"]["reason"], r["result"])
               for r in reversed(await _terminal_audit(central, "refused"))]
    assert reasons == [("viewer1", "box", "no_right", "refused"), ("viewer1", "", "no_right", "refused"),
                       ("operator2", "box", "no_right", "refused"), ("operator2", "", "no_right", "refused"),
                       ("operator1", "box", "not_a_page_session", "refused"),
                       ("operator1", "other", "not_enabled", "refused"), ("operator1", "local", "not_enabled", "refused"),
                       ("operator1", "nosuch", "no_such_server", "refused")]


async def test_the_websocket_needs_this_centrals_origin(term):
    page = await term.page()
    _, answer = await page.authorize("box")
    for origin, expect in (("http://evil.example", 403), (None, 403), ("null", 403)):
        headers = {**WS_HEADERS, **({"Origin": origin} if origin else {})}
        async with page.client.get(f"/api/v1/terminal/ws?ticket={answer['ticket']}", headers=headers) as resp:
            body = await resp.json()
            assert resp.status == expect and body["error"] == "foreign_origin", (origin, body)
    # without a cookie, a foreign Origin is refused (and audited) before anything else
    async with term.client.get("/api/v1/terminal/ws?ticket=x", headers={**WS_HEADERS, "Origin": "http://evil.example"}) as resp:
        assert resp.status == 403 and (await resp.json())["error"] == "foreign_origin"
    async with term.client.get("/api/v1/terminal/ws?ticket=x", headers={**WS_HEADERS, "Origin": page.origin}) as resp:
        assert resp.status == 401
    # the Host allow-list holds for the WebSocket as for every route (DNS rebinding)
    async with page.client.get(f"/api/v1/terminal/ws?ticket={answer['ticket']}",
                               headers={**WS_HEADERS, "Origin": "http://rebound.example", "Host": "rebound.example"}) as resp:
        assert resp.status == 421
    refused = await _terminal_audit(term.central, "refused")
    assert [(r["actor"], r["arguments"]["reason"]) for r in refused][:4] == [
        ("anonymous", "foreign_origin"), ("operator1", "foreign_origin"), ("operator1", "foreign_origin"),
        ("operator1", "foreign_origin")]
    # the ticket was not spent on the refused attempts
    async with page.ws(answer["ticket"]) as ws:
        await _until_control(ws, "started")


@pytest.mark.parametrize("term", [{"fresh_auth": 0.0}], indirect=True)
async def test_an_old_login_enters_the_password_again(term):
    page = await term.page()
    status, err = await page.authorize("box")
    assert status == 403 and err["error"] == "fresh_auth_required" and "password again" in err["detail"]
    status, err = await page.authorize("box", password="not the password")
    assert status == 403 and err["error"] == "wrong_password"
    status, answer = await page.authorize("box", password=PASSWORD)
    assert status == 200 and answer["ticket"]
    reasons = [r["arguments"]["reason"] for r in await _terminal_audit(term.central, "refused")]
    assert reasons[:2] == ["wrong_password", "fresh_auth_required"]


@pytest.mark.parametrize("term", [{"idle_timeout": 0.6}], indirect=True)
async def test_an_idle_session_ends(term):
    page = await term.page()
    _, answer = await page.authorize("box")
    async with page.ws(answer["ticket"]) as ws:
        await _until_control(ws, "started")
        ended = await _until_control(ws, "ended")
    assert ended["reason"] == "idle" and "no input for" in ended["message"]
    end = (await _terminal_audit(term.central, "end"))[0]
    assert end["result"] == "refused" and end["arguments"]["reason"] == "idle"


@pytest.mark.parametrize("term", [{"max_duration": 1.0}], indirect=True)
async def test_a_session_ends_at_the_maximum_duration(term):
    page = await term.page()
    _, answer = await page.authorize("box")
    async with page.ws(answer["ticket"]) as ws:
        await _until_control(ws, "started")

        async def typing():  # input keeps it from idling, not from its maximum duration
            while not ws.closed:
                await ws.send_bytes(b"a")
                await asyncio.sleep(0.1)

        typist = asyncio.create_task(typing())
        ended = await _until_control(ws, "ended")
        typist.cancel()
    assert ended["reason"] == "max_duration" and "maximum duration of 1s" in ended["message"]
    end = (await _terminal_audit(term.central, "end"))[0]
    assert end["result"] == "refused" and "terminal.max_duration" in end["output"]


@pytest.mark.parametrize("term", [{"max_recording_bytes": 3000}], indirect=True)
async def test_output_over_the_recording_limit_ends_the_session(term):
    page = await term.page()
    _, answer = await page.authorize("box")
    async with page.ws(answer["ticket"]) as ws:
        await _read_until(ws, "$ ")
        await ws.send_bytes(b"blast\r")
        ended = await _until_control(ws, "ended")
    assert ended["reason"] == "recording_limit"
    row = (await term.central.terminal.sessions())[0]
    assert row["recording_bytes"] <= 3000
    cast = recording.read(term.central.config.recordings_path / row["recording"])
    assert "x" * 5000 not in cast.output()  # what was not recorded never reached the page


async def test_users_end_their_own_sessions_and_admins_anyones(term):
    central = term.central
    await central.storage.add_user("operator2", "operator", password_hash())
    await central.terminal.grant("operator2", by="test")
    mine, other, admin = await term.page(), await term.page("operator2"), await term.page("admin1")
    _, answer = await mine.authorize("box")
    async with mine.ws(answer["ticket"]) as ws:
        started = await _until_control(ws, "started")
        sid = started["session"]
        async with other.client.post(f"/api/v1/terminal/sessions/{sid}/end", headers={"X-CSRF-Token": other.csrf}) as resp:
            assert resp.status == 403 and (await resp.json())["error"] == "not_yours"
        # the admin sees who is connected where, without holding the right, and ends it
        async with admin.client.get("/api/v1/terminal") as resp:
            overview = await resp.json()
        assert overview["may_open"] is False and overview["servers"] == {"box": "deploy"}
        assert [(s["id"], s["user"], s["server"]) for s in overview["live"]] == [(sid, "operator1", "box")]
        async with admin.client.post(f"/api/v1/terminal/sessions/{sid}/end", headers={"X-CSRF-Token": admin.csrf}) as resp:
            assert resp.status == 200, await resp.text()
        ended = await _until_control(ws, "ended")
    assert ended["reason"] == "ended" and ended["message"] == "session ended by admin1"
    row = await central.terminal.session(sid)
    assert row["ended_by"] == "admin1" and row["end_reason"] == "ended"


async def test_revoking_the_right_ends_open_sessions(term):
    page = await term.page()
    _, answer = await page.authorize("box")
    async with page.ws(answer["ticket"]) as ws:
        await _until_control(ws, "started")
        status, body, _ = await term.request("DELETE", "/api/v1/users/operator1/rights/terminal")
        assert status == 200 and body["had"] is True
        ended = await _until_control(ws, "ended")
    assert ended["reason"] == "ended" and "revoked" in ended["message"]
    status, err = await page.authorize("box")
    assert status == 403 and err["error"] == "no_right"


async def test_a_restarted_central_closes_what_the_last_one_left_open(term):
    central = term.central
    sid = await central.storage.add_terminal_session(
        user_id=1, user="operator1", server_id=None, server_name="box", account="deploy", address="", started_at=1.0,
        cols=80, rows=24, recording="gone.cast")
    await central.terminal.start()
    row = await central.terminal.session(sid)
    assert row["end_reason"] == "interrupted" and row["ended_at"] is not None
    assert (await _terminal_audit(central, "end"))[0]["arguments"]["reason"] == "interrupted"


async def test_retention_prunes_rows_and_recordings(term):
    central = term.central
    page = await term.page()
    _, answer = await page.authorize("box")
    async with page.ws(answer["ticket"]) as ws:
        await _read_until(ws, "$ ")
        await ws.send_bytes(b"exit 0\r")
        await _until_control(ws, "ended")
    row = (await central.terminal.sessions())[0]
    path = central.config.recordings_path / row["recording"]
    assert await central.terminal.prune(now=row["started_at"] + 3600) == 0 and path.exists()
    assert await central.terminal.prune(now=row["started_at"] + central.config.retention.recordings + 1) == 1
    assert not path.exists() and await central.terminal.sessions() == []


def test_the_terminal_key_is_never_the_polling_key(tmp_path):
    with pytest.raises(ConfigError, match="terminal.key_path.*polling key"):
        load_config(env={"CENTRAL_DATA_DIR": str(tmp_path), "CENTRAL_TERMINAL_KEY_PATH": str(tmp_path / "id_ed25519")})
    cfg = load_config(env={"CENTRAL_DATA_DIR": str(tmp_path), "CENTRAL_TERMINAL_IDLE_TIMEOUT": "2m"})
    assert cfg.terminal.idle_timeout == 120 and cfg.terminal_key_path == tmp_path / "terminal_ed25519"


async def test_the_key_is_created_0600_and_refused_when_others_can_read_it(term):
    terminals = term.central.terminal
    assert stat.S_IMODE(terminals.key_path.stat().st_mode) == 0o600
    assert terminals.public_key().startswith("ssh-ed25519 ")
    os.chmod(terminals.key_path, 0o644)
    page = await term.page()
    status, err = await page.authorize("box")
    assert status == 409 and err["error"] == "terminal_key_exposed" and "chmod 600" in err["detail"]


# recordings

def test_recording_keeps_split_utf8_and_stays_ascii(tmp_path):
    path = tmp_path / "r.cast"
    writer = recording.CastWriter(path, width=80, height=24, env={"TERM": "xterm"}, title="t", limit=10_000)
    data = "é\x1b[31mred\x1b[0m €\n".encode()
    for i in range(len(data)):  # one byte at a time: characters split across reads
        writer.output(data[i:i + 1])
    writer.output(b"\xff bad\n")
    writer.input(b"ls\r")
    writer.resize(100, 40)
    writer.close()
    assert path.read_bytes().isascii()
    cast = recording.read(path)
    assert cast.output() == "é\x1b[31mred\x1b[0m €\n\ufffd bad\n"
    assert cast.input() == "ls\r" and cast.events[-1][1:] == ("r", "100x40")
    assert [e[0] for e in cast.events] == sorted(e[0] for e in cast.events)


def test_recording_limit_and_parse_errors(tmp_path):
    writer = recording.CastWriter(tmp_path / "r.cast", width=80, height=24, env={}, title="", limit=200)
    with pytest.raises(recording.RecordingFull):
        writer.output(b"y" * 500)
    writer.close()
    with pytest.raises(FileExistsError):  # never overwrites a recording
        recording.CastWriter(tmp_path / "r.cast", width=80, height=24, env={}, title="", limit=200)
    for text, problem in (("", "empty"), ('{"version": 1}', "not an asciicast v2"),
                          ('{"version": 2, "width": 80, "height": 24}\n[1, "x", ""]', "line 2"),
                          ('{"version": 2, "width": 80, "height": 24}\n[2, "o", "a"]\n[1, "o", "b"]', "backwards")):
        with pytest.raises(recording.BadRecording, match=problem):
            recording.parse(text)


def test_playback_keeps_timing_and_cuts_long_pauses():
    cast = recording.parse('{"version": 2, "width": 80, "height": 24}\n[0.5, "o", "a"]\n[0.7, "i", "x"]\n'
                           '[1.0, "o", "b"]\n[11.0, "o", "c"]\n')
    assert list(recording.playback(cast, speed=1, idle_limit=2)) == [(0.5, "a"), (0.5, "b"), (2.0, "c")]
    assert list(recording.playback(cast, speed=2, idle_limit=None)) == [(0.25, "a"), (0.25, "b"), (5.0, "c")]


# the CLI

def test_cli_grants_enables_lists_and_replays(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from central.cli import cli
    from central.service import Central

    import central.cli
    from rich.console import Console

    monkeypatch.setenv("CENTRAL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CENTRAL_CONFIG", raising=False)
    monkeypatch.setattr(central.cli, "console", Console(width=250))

    def run(*args):
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    assert run("init").exit_code == 0
    key = run("terminal", "key")
    assert key.exit_code == 0 and "restrict,pty ssh-ed25519 " in key.output and "(created)" in key.output
    assert "(exists)" in run("terminal", "key").output
    cfg = load_config()

    async def setup():
        central = await Central.open(cfg)
        try:
            await central.storage.add_server("web1", "10.0.0.5", host_key="ssh-ed25519 AAAA", host_key_fingerprint="x")
            users = await central.storage.list_users()
            sid = await central.storage.add_terminal_session(
                user_id=users[0]["id"], user="admin", server_id=None, server_name="web1", account="ops",
                address="", started_at=1000.0, cols=80, rows=24, recording="t.cast")
            cfg.recordings_path.mkdir(mode=0o700, parents=True, exist_ok=True)
            writer = recording.CastWriter(cfg.recordings_path / "t.cast", width=80, height=24, env={}, title="",
                                          limit=10_000)
            writer.output(b"\x1b[31mred\x1b[0m answer\r\n")
            writer.close()
            # a message holding a host's text with an escape and a fake newline
            await central.storage.end_terminal_session(sid, ended_at=1010.0, exit_status=0, end_reason="failed",
                                                     ended_by=None, message="broke: \x1b[2Jgone\nfake line",
                                                     recording_bytes=writer.bytes)
            return sid
        finally:
            await central.close()

    sid = asyncio.run(setup())
    assert run("terminal", "grant", "admin").exit_code == 0
    assert "admin" in run("terminal", "users").output
    missing_user = run("terminal", "revoke", "nobody")
    assert missing_user.exit_code == 1 and "nobody" in missing_user.output
    result = run("terminal", "enable", "web1", "--user", "ops")
    assert result.exit_code == 0 and "enabled on web1 as ops" in result.output
    assert json.loads(run("terminal", "servers", "--json").output)["web1"]["account"] == "ops"
    bad = run("terminal", "enable", "local", "--user", "ops")
    assert bad.exit_code == 1 and "no web terminal on local" in bad.output
    listing = run("terminal", "sessions")
    assert listing.exit_code == 0 and "\x1b" not in listing.output and "\\x1b[2Jgone\\x0afake" in listing.output
    rows = json.loads(run("terminal", "sessions", "--json").output)
    assert rows[0]["id"] == sid and rows[0]["duration"] == 10.0
    raw = run("terminal", "replay", str(sid), "--raw")
    assert raw.output == (cfg.recordings_path / "t.cast").read_text()
    played = run("terminal", "replay", str(sid), "--speed", "1000")
    assert played.stdout_bytes == b"\x1b[31mred\x1b[0m answer\r\n\n"
    missing = run("terminal", "replay", "999")
    assert missing.exit_code == 1 and missing.output.strip() == "Error: no terminal session 999"
    assert run("terminal", "disable", "web1").output.strip() == "terminal disabled on web1"
    audit = [r for r in json.loads(run("action", "log", "--json").output) if r["action"] == "terminal"]
    assert [r["arguments"]["event"] for r in audit] == ["disable", "enable", "grant"]


async def test_the_maintenance_round_prunes_old_recordings(config):
    from tests.helpers import wait_for

    cfg = dataclasses.replace(config, retention=dataclasses.replace(config.retention, maintenance_interval=0.2))
    api = await start_api(cfg)
    try:
        central = api.central
        cfg.recordings_path.mkdir(mode=0o700, parents=True, exist_ok=True)
        (cfg.recordings_path / "old.cast").write_text('{"version": 2, "width": 80, "height": 24}\n')
        sid = await central.storage.add_terminal_session(
            user_id=1, user="admin1", server_id=None, server_name="gone", account="ops", address="", started_at=1000.0,
            cols=80, rows=24, recording="old.cast")
        await central.storage.end_terminal_session(sid, ended_at=1001.0, exit_status=0, end_reason="exit",
                                                   ended_by=None, message="", recording_bytes=40)
        await wait_for(lambda: not (cfg.recordings_path / "old.cast").exists(), 10, "the old recording to be pruned")
        assert await central.terminal.sessions() == []
    finally:
        await api.client.close()


async def test_no_recording_no_session(term):
    recordings = term.central.config.recordings_path
    recordings.parent.mkdir(parents=True, exist_ok=True)
    recordings.write_text("not a directory")  # the recording cannot be created
    page = await term.page()
    _, answer = await page.authorize("box")
    async with page.ws(answer["ticket"]) as ws:
        error = await _until_control(ws, "error")
    assert "cannot start the recording" in error["detail"]
    assert term.central.terminal.live() == [] and await term.central.terminal.sessions() == []
    opened = (await _terminal_audit(term.central, "open"))[0]
    assert opened["result"] == "failed" and "cannot start the recording" in opened["output"]
