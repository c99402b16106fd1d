"""The web terminal end to end: real Chromium, the real app, a real netns host with OpenSSH.

The host gets an account `ops` whose authorized_keys holds the terminal key as deploy installs
it (`restrict,pty`), and the polling key restricted as deploy installs it. Chromium types
into the page's xterm.js; the host's answers are read from the rendered terminal; the
recording is compared with what went over the WebSocket and replayed in the page's player.
"""
from __future__ import annotations

import asyncio
import re
import subprocess

import asyncssh
import pytest

from central import recording, servers
from central.service import restricted_key_line
from central.terminal import terminal_key_line
from tests.apiclient import PASSWORD, password_hash
from tests.helpers import wait_for
from tests.test_pages_browser import ARTIFACTS, base_url, browser, log_in, new_page, playwright_api  # noqa: F401
from tests.test_api_hosts import host_api  # noqa: F401  (fixture)

pytestmark = [pytest.mark.hosts, pytest.mark.browser]

ACCOUNT = "ops"
WS_HEADERS = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


async def shows(screen, pattern: str) -> str:
    """Wait until the rendered terminal (its rows, as a person reads them) matches pattern."""
    rx = re.compile(pattern, re.M)

    async def check():
        text = (await screen.inner_text()).replace("\xa0", " ")
        return text if rx.search(text) else None

    return await wait_for(check, 40, f"the terminal to show {pattern!r}")


def add_account(host, name: str, key_line: str | None) -> None:
    """A login account on the test host (home under the host's own /var), with key_line authorized."""
    home = f"/var/lib/{name}"
    host.run(["useradd", "--no-create-home", "--home-dir", home, "--shell", "/bin/bash", name])
    host.run(["usermod", "-p", "*", name])  # no password, not locked: sshd (without PAM) lets keys in
    host.run(["mkdir", "-p", f"{home}/.ssh"])
    if key_line:
        host.run(["sh", "-c", f"cat > {home}/.ssh/authorized_keys"], input=key_line + "\n")
    host.run(["chown", "-R", f"{name}:{name}", home])


def shell_attempt(host, key_path, user: str) -> subprocess.CompletedProcess:
    """Real OpenSSH asking for a shell command (and a PTY) with key_path as user."""
    argv = host.ssh_argv(key_path, user=user, options=("RequestTTY=force",)) + ["id; echo SHELL-OPENED"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


@pytest.fixture
async def setup(host_api, test_host, client_key):  # noqa: F811
    """(api, host, server name): the host added (key pinned), terminal key installed for ops."""
    api = host_api
    central = api.central
    line, _ = central.terminal.ensure_key()
    host = await asyncio.to_thread(test_host, authorized_keys=[restricted_key_line(client_key.public_key)])
    await asyncio.to_thread(add_account, host, ACCOUNT, terminal_key_line(line))
    await servers.add_server(central, "box", host.address, user="root", fingerprint=host.fingerprint)
    await central.terminal.enable("box", ACCOUNT, by="test")
    await central.terminal.grant("operator1", by="test")
    await central.storage.add_user("operator2", "operator", password_hash())
    return api, host, "box"


async def test_chromium_types_into_a_real_hosts_shell_and_the_recording_replays_it(setup, browser, client_key):  # noqa: F811
    api, host, name = setup
    page = await new_page(browser, api)
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base_url(api))
    frames: list[bytes] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(payload)
                                          if isinstance(payload, bytes) else None))
    await log_in(page, api, "operator1", f"/servers/{name}/terminal")
    await page.click("#term-open button[type=submit]")
    card = page.locator("#terminal-card")
    await playwright_api.expect(card).to_have_attribute("data-state", "connected")
    screen = page.locator("#terminal .xterm-rows")
    await playwright_api.expect(page.locator("#terminal-live tbody tr[data-session]")).to_contain_text("operator1")

    await page.locator("#terminal").click()
    await page.keyboard.type("hostname\n")
    await shows(screen, rf"^{re.escape(host.name)}\s*$")
    await page.keyboard.type("id\n")
    uid = (await asyncio.to_thread(host.run, ["id", "-u", ACCOUNT])).stdout.strip()
    await shows(screen, rf"^uid={uid}\({ACCOUNT}\) gid=")

    # paste (Ctrl+Shift+V) from the clipboard, copy (Ctrl+Shift+C) the selection back
    await page.evaluate("navigator.clipboard.writeText('echo pasted-$((6*7))')")
    await page.keyboard.press("Control+Shift+V")
    await shows(screen, r"\$ echo pasted-\$\(\(6\*7\)\)\s*$")  # the paste reads the clipboard asynchronously
    await page.keyboard.press("Enter")
    await shows(screen, r"^pasted-42\s*$")
    await page.evaluate("window.centralTerminal.selectAll()")
    await page.keyboard.press("Control+Shift+C")
    copied = await page.evaluate("navigator.clipboard.readText()")
    assert f"uid={uid}({ACCOUNT})" in copied and "pasted-42" in copied

    # a smaller window resizes the PTY on the host
    await page.set_viewport_size({"width": 900, "height": 600})
    await page.wait_for_function("window.centralTerminal.cols < 100")
    cols, rows = await page.evaluate("[window.centralTerminal.cols, window.centralTerminal.rows]")
    await page.keyboard.type("stty size\n")
    await shows(screen, rf"^{rows} {cols}\s*$")

    # who is connected where
    status, overview, _ = await api.get("/api/v1/terminal", role="admin")
    assert [(s["user"], s["server"], s["account"]) for s in overview["live"]] == [("operator1", name, ACCOUNT)]
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "terminal.png"), full_page=True)
    live_text = (await screen.inner_text()).replace("\xa0", " ")

    await page.keyboard.type("exit 7\n")
    await playwright_api.expect(card).to_have_attribute("data-state", "closed")
    await playwright_api.expect(page.locator("#term-message")).to_contain_text("exited with status 7")
    assert page.errors == []  # no script errors, no CSP violations (xterm.js styles included)

    # the recording holds exactly the bytes the page received, and the input typed
    [row] = await api.central.terminal.sessions()
    assert (row["user"], row["server_name"], row["account"], row["exit_status"], row["end_reason"]) == \
        ("operator1", name, ACCOUNT, 7, "exit")
    cast = recording.read(api.central.config.recordings_path / row["recording"])
    assert cast.output().encode() == b"".join(frames)
    assert "hostname\r" in cast.input() and "id\r" in cast.input() and "echo pasted-$((6*7))" in cast.input()
    assert f"uid={uid}({ACCOUNT})" in cast.output() and re.search(rf"\r{re.escape(host.name)}\r\n", cast.output())
    audit = [r for r in await api.central.storage.audit_log(name) if r["action"] == "terminal"]
    assert [(r["arguments"]["event"], r["result"], r["exit_status"]) for r in audit] == [("end", "ok", 7), ("open", "ok", None), ("enable", "ok", None)]

    # the player replays it: the same screen as the live terminal had
    await page.click("#term-recording")
    await page.wait_for_url(f"{base_url(api)}/terminal/sessions/{row['id']}")
    player = page.locator("#player")
    await playwright_api.expect(player).to_have_attribute("data-state", "paused")
    await page.select_option("#speed", "16")
    await page.click("#play")
    await playwright_api.expect(player).to_have_attribute("data-state", "done")
    replayed = (await page.locator("#player .xterm-rows").inner_text()).replace("\xa0", " ")
    for line in (host.name, f"uid={uid}({ACCOUNT})", "pasted-42", f"{rows} {cols}"):
        assert line in replayed and line in live_text
    await page.screenshot(path=str(ARTIFACTS / "terminal-replay.png"), full_page=True)
    # pause and restart work
    await page.click("#restart")
    await page.select_option("#speed", "0.5")
    await page.click("#play")
    await playwright_api.expect(player).to_have_attribute("data-state", "playing")
    await page.click("#play")
    await playwright_api.expect(player).to_have_attribute("data-state", "paused")
    await page.goto(base_url(api) + "/terminal")
    await playwright_api.expect(page.locator(f'#terminal-sessions tr[data-session="{row["id"]}"]')).to_contain_text("exit")
    await page.screenshot(path=str(ARTIFACTS / "terminal-sessions.png"), full_page=True)
    assert page.errors == []


async def test_one_click_ends_a_session_and_an_admin_ends_anyones(setup, browser):  # noqa: F811
    api, host, name = setup
    page = await new_page(browser, api)
    await log_in(page, api, "operator1", f"/servers/{name}/terminal")
    card = page.locator("#terminal-card")
    await page.click("#term-open button[type=submit]")
    await playwright_api.expect(card).to_have_attribute("data-state", "connected")
    await page.click("#term-end")
    await playwright_api.expect(card).to_have_attribute("data-state", "closed")
    await playwright_api.expect(page.locator("#term-message")).to_contain_text("session ended from the page")

    # a second session, ended by an admin (who holds no terminal right) from the sessions page
    await page.click("#term-open button[type=submit]")
    await playwright_api.expect(card).to_have_attribute("data-state", "connected")
    admin = await new_page(browser, api)
    await log_in(admin, api, "admin1", "/terminal")
    live = admin.locator("#terminal-live tbody tr[data-session]")
    await playwright_api.expect(live).to_contain_text("operator1")
    await playwright_api.expect(live).to_contain_text(name)
    await live.locator("button[data-end-session]").click()
    await admin.locator("dialog#modal #modal-ok").click()
    await playwright_api.expect(admin.locator("#terminal-live tbody tr.empty")).to_have_count(1)
    await playwright_api.expect(card).to_have_attribute("data-state", "closed")
    await playwright_api.expect(page.locator("#term-message")).to_contain_text("session ended by admin1")
    reasons = [(s["end_reason"], s["ended_by"]) for s in await api.central.terminal.sessions()]
    assert reasons == [("ended", "admin1"), ("closed", "operator1")]
    assert page.errors == [] and admin.errors == []


async def test_without_the_right_there_is_no_terminal_http_or_websocket(setup, browser):  # noqa: F811
    api, host, name = setup
    for user in ("viewer1", "operator2"):
        page = await new_page(browser, api)
        await log_in(page, api, user, f"/servers/{name}/terminal")
        await playwright_api.expect(page.locator("#term-refusal")).to_contain_text(f"{user} may not open terminals")
        assert await page.locator("#term-open").count() == 0
        # the API refuses, from the page's own session (HTTP)...
        answer = await page.evaluate(f"""async () => {{
            const r = await fetch('/api/v1/servers/{name}/terminal', {{method: 'POST', credentials: 'same-origin',
              headers: {{'Content-Type': 'application/json', 'X-CSRF-Token': document.querySelector('meta[name=csrf-token]').content}},
              body: '{{}}'}});
            return [r.status, await r.json()];
        }}""")
        assert answer[0] == 403 and answer[1]["error"] == "no_right"
        # ... and the WebSocket (opened with the page's cookie) never opens
        closed = await page.evaluate("""() => new Promise((resolve) => {
            const ws = new WebSocket(`ws://${location.host}/api/v1/terminal/ws?ticket=x`);
            ws.onopen = () => resolve('opened');
            ws.onclose = (ev) => resolve('closed ' + ev.code);
        })""")
        assert closed.startswith("closed"), closed
        if user == "viewer1":
            await page.screenshot(path=str(ARTIFACTS / "terminal-refused.png"), full_page=True)
        await page.context.close()
    refused = [(r["actor"], r["arguments"]["reason"]) for r in await api.central.storage.audit_log(limit=50)
               if r["action"] == "terminal" and r["arguments"]["event"] == "refused"]
    assert refused[::-1] == [("viewer1", "no_right")] * 2 + [("operator2", "no_right")] * 2


async def test_a_foreign_origin_is_refused_and_the_polling_key_opens_no_shell(setup, client_key):
    api, host, name = setup
    # a logged-in page session with a ticket, but a WebSocket from another origin
    async with api.client.post("/api/v1/login", json={"username": "operator1", "password": PASSWORD}) as resp:
        csrf = (await resp.json())["csrf_token"]
    async with api.client.post(f"/api/v1/servers/{name}/terminal", json={}, headers={"X-CSRF-Token": csrf}) as resp:
        ticket = (await resp.json())["ticket"]
    async with api.client.get(f"/api/v1/terminal/ws?ticket={ticket}",
                              headers={**WS_HEADERS, "Origin": "http://evil.example"}) as resp:
        assert resp.status == 403 and (await resp.json())["error"] == "foreign_origin"
    [refusal] = [r for r in await api.central.storage.audit_log(limit=20)
                 if r["action"] == "terminal" and r["arguments"].get("reason") == "foreign_origin"]
    assert refusal["actor"] == "operator1" and "evil.example" in refusal["output"]

    # the polling key: no shell as root, none as the terminal account (real OpenSSH)
    for user in ("root", ACCOUNT):
        attempt = await asyncio.to_thread(shell_attempt, host, client_key.path, user)
        assert "SHELL-OPENED" not in attempt.stdout and "uid=" not in attempt.stdout, (user, attempt)
        assert attempt.returncode != 0
    # the terminal key opens one for ops, and forwards nothing (not even to the agent)
    key_path = api.central.terminal.key_path
    attempt = await asyncio.to_thread(shell_attempt, host, key_path, ACCOUNT)
    assert "SHELL-OPENED" in attempt.stdout and f"({ACCOUNT})" in attempt.stdout
    assert "SHELL-OPENED" not in (await asyncio.to_thread(shell_attempt, host, key_path, "root")).stdout
    server = await api.central.storage.get_server(name)
    async with asyncssh.connect(host.address, username=ACCOUNT, client_keys=[str(key_path)],
                                known_hosts=([asyncssh.import_public_key(server.host_key)], [], []), config=None,
                                agent_path=None) as conn:
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.open_connection("127.0.0.1", 8083)
    assert (await servers.test_server(api.central, name))["ok"] is True  # polling still works
