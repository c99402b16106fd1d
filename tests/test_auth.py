"""Users, passwords, tokens (core and CLI) and the HTTP side: sessions, CSRF, Host, login limits."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import sqlite3
import sys
import time

import aiohttp
import pytest
from click.testing import CliRunner
from cryptography import fernet

from central import auth
from central.cli import cli
from central.model import Conflict, Invalid
from tests.apiclient import PASSWORD, api, start_api  # noqa: F401


# passwords and tokens (core)

def test_scrypt_hash_is_salted_self_describing_and_verifies():
    a, b = auth.hash_password("hunter2hunter2"), auth.hash_password("hunter2hunter2")
    assert a != b
    scheme, n, r, p, salt, digest = a.split("$")
    assert (scheme, int(n), int(r), int(p)) == ("scrypt", auth.SCRYPT_N, auth.SCRYPT_R, auth.SCRYPT_P)
    assert auth.verify_password("hunter2hunter2", a) and auth.verify_password("hunter2hunter2", b)
    assert not auth.verify_password("hunter2hunter3", a)
    # a hash with other parameters still verifies (they are read from the string)
    assert auth.verify_password("pw", auth.hash_password("pw", n=2**10, r=4, p=2))
    for broken in ("", "plain", "bcrypt$1$2$3$4$5", "scrypt$x$8$1$aa$bb", a[:-4]):
        assert not auth.verify_password("hunter2hunter2", broken)


def _fail(lim, address, user, now):
    attempt = lim.reserve(address, user, now=now)
    assert isinstance(attempt, auth.LoginAttempt), f"{user}@{address} refused at {now}: wait {attempt}"
    return attempt


def test_login_limiter_backs_off_per_user_and_address():
    lim = auth.LoginLimiter(free=3, per_user=100, backoff_max=60.0)
    for _ in range(3):
        _fail(lim, "10.0.0.1", "alice", 100.0)
    # the next try waits 1 s, then 2 s, 4 s ...: the wait doubles with each further failure
    assert lim.reserve("10.0.0.1", "alice", now=100.5) == pytest.approx(0.5)
    _fail(lim, "10.0.0.1", "alice", 101.0)
    assert lim.retry_after("10.0.0.1", "alice", now=101.0) == pytest.approx(2.0)
    _fail(lim, "10.0.0.1", "alice", 103.0)
    assert lim.retry_after("10.0.0.1", "alice", now=103.0) == pytest.approx(4.0)
    for i in range(10):
        now = 200.0 + 100 * i
        _fail(lim, "10.0.0.1", "alice", now)
    assert lim.retry_after("10.0.0.1", "alice", now=now) == pytest.approx(60.0)  # capped at backoff_max
    # another address for alice, and another user from that address, are not held back
    assert lim.retry_after("10.0.0.2", "alice", now=now) == 0
    assert lim.retry_after("10.0.0.1", "bob", now=now) == 0
    # quiet for `forget` seconds: forgotten
    assert lim.retry_after("10.0.0.1", "alice", now=now + lim.forget) == 0


def test_a_right_password_gives_the_reservation_back_and_resets_the_pair():
    lim = auth.LoginLimiter(free=2, per_user=100)
    _fail(lim, "10.0.0.1", "alice", 100.0)
    lim.succeeded(_fail(lim, "10.0.0.1", "alice", 100.0), now=100.0)
    _fail(lim, "10.0.0.1", "alice", 100.0)
    _fail(lim, "10.0.0.1", "alice", 100.0)  # two free failures again after the success
    assert lim.retry_after("10.0.0.1", "alice", now=100.0) > 0


def test_the_per_user_ceiling_spares_addresses_the_user_logged_in_from():
    """Guesses from many addresses hit the user's ceiling; the admin's own address still gets in."""
    lim = auth.LoginLimiter(free=3, per_user=10)
    lim.succeeded(_fail(lim, "192.0.2.7", "admin", 50.0), now=50.0)  # the admin's usual address
    for i in range(10):
        _fail(lim, f"10.0.0.{i}", "admin", 100.0)
    assert lim.retry_after("10.0.1.1", "admin", now=100.0) > 0  # a fresh address: the ceiling holds
    assert lim.retry_after("192.0.2.7", "admin", now=100.0) == 0  # the admin is not locked out
    assert lim.retry_after("10.0.1.1", "bob", now=100.0) == 0


def test_login_limiter_memory_is_bounded():
    lim = auth.LoginLimiter(free=1, per_user=1, max_keys=100)
    for i in range(1000):
        lim.reserve(f"10.0.{i // 250}.{i % 250}", f"user{i}", now=float(i))
    assert len(lim._failures) <= 100


async def test_users_tokens_and_the_last_admin(central):
    a = central.auth
    assert await a.ensure_first_admin() is not None
    assert await a.ensure_first_admin() is None  # only when there is no user at all
    with pytest.raises(Conflict):
        await a.remove_user("admin")
    with pytest.raises(Conflict):
        await a.set_role("admin", "viewer")
    with pytest.raises(Invalid, match="too short"):
        await a.add_user("bob", "viewer", "short")
    with pytest.raises(Invalid, match="role"):
        await a.add_user("bob", "root", "long enough password")
    await a.add_user("bob", "operator", "long enough password")
    with pytest.raises(Conflict):
        await a.add_user("bob", "viewer", "long enough password")
    token, record = await a.create_token("bob", "ci job")
    assert token.startswith(auth.TOKEN_PREFIX) and len(token) > 40
    ident = await a.token_identity(token)
    assert (ident.user, ident.role, ident.via, ident.token_id) == ("bob", "operator", "token", record["id"])
    await a.flush_last_used()
    [listed] = await a.list_tokens("bob")
    assert listed["last_used"] is not None and "token_hash" not in listed
    # only the hash is stored
    db = sqlite3.connect(central.storage.path)
    stored = [r[0] for r in db.execute("SELECT token_hash FROM api_tokens")]
    db.close()
    assert stored == [auth.token_hash(token)] and token not in json.dumps(stored)
    await a.revoke_token(record["id"])
    assert await a.token_identity(token) is None
    assert await a.token_identity("central_not-a-token") is None
    await a.remove_user("bob")
    assert await a.list_tokens() == []


# CLI

def _cli(tmp_path, *args, input=None):
    runner = CliRunner()
    return runner.invoke(cli, list(args), input=input, env={"CENTRAL_DATA_DIR": str(tmp_path / "data"),
                                                             "CENTRAL_CONFIG": ""}, catch_exceptions=False)


def test_init_creates_the_first_admin_once(tmp_path):
    first = _cli(tmp_path, "init")
    assert first.exit_code == 0, first.output
    password = re.search(r"shown only this once:\n  (\S+)\n", first.output).group(1)
    second = _cli(tmp_path, "init")
    assert second.exit_code == 0 and "first user" not in second.output and password not in second.output
    db = sqlite3.connect(tmp_path / "data" / "central.db")
    (stored,) = db.execute("SELECT password_hash FROM users WHERE name = 'admin' AND role = 'admin'").fetchone()
    db.close()
    assert auth.verify_password(password, stored)


def test_cli_users_and_tokens(tmp_path):
    assert _cli(tmp_path, "init").exit_code == 0
    res = _cli(tmp_path, "user", "add", "alice", "--role", "operator", "--password-stdin", input="a long password\n")
    assert res.exit_code == 0 and "added user alice (operator)" in res.output
    res = _cli(tmp_path, "user", "add", "carol")  # no terminal, no --password-stdin
    assert res.exit_code == 1 and "--password-stdin" in res.output
    res = _cli(tmp_path, "user", "add", "dave", "--password-stdin", input="short\n")
    assert res.exit_code == 1 and "too short" in res.output and "Traceback" not in res.output
    users = json.loads(_cli(tmp_path, "user", "list", "--json").output)
    assert [(u["name"], u["role"]) for u in users] == [("admin", "admin"), ("alice", "operator")]
    assert _cli(tmp_path, "user", "passwd", "alice", "--password-stdin", input="another long one\n").exit_code == 0
    db = sqlite3.connect(tmp_path / "data" / "central.db")
    (stored,) = db.execute("SELECT password_hash FROM users WHERE name = 'alice'").fetchone()
    db.close()
    assert auth.verify_password("another long one", stored)
    res = _cli(tmp_path, "token", "create", "grafana", "--user", "alice", "--json")
    created = json.loads(res.output)
    assert created["token"].startswith("central_") and created["user"] == "alice"
    listed = json.loads(_cli(tmp_path, "token", "list", "--json").output)
    assert [t["name"] for t in listed] == ["grafana"] and "token" not in listed[0]
    assert "revoked token" in _cli(tmp_path, "token", "revoke", str(created["id"])).output
    assert json.loads(_cli(tmp_path, "token", "list", "--json").output)[0]["revoked_at"] is not None
    res = _cli(tmp_path, "token", "revoke", "999")
    assert res.exit_code == 1 and "no API token with id 999" in res.output
    res = _cli(tmp_path, "user", "remove", "admin", "--yes")
    assert res.exit_code == 1 and "last admin" in res.output
    assert _cli(tmp_path, "user", "remove", "alice", "--yes").exit_code == 0


def test_every_user_and_token_command_has_an_example():
    for group in ("user", "token"):
        for name, cmd in cli.commands[group].commands.items():
            assert "Example:" in (cmd.help or ""), f"{group} {name}"


# HTTP: tokens, sessions, CSRF

async def test_bearer_token_roles_and_revocation(api):
    status, body, _ = await api.get("/api/v1/session", role="operator")
    assert body == {"user": "operator1", "role": "operator", "via": "token", "csrf_token": None}
    status, body, _ = await api.get("/api/v1/servers", role=None, headers={"Authorization": "Bearer central_nope"})
    assert status == 401 and "invalid or revoked" in body["detail"]
    status, body, _ = await api.get("/api/v1/servers", role=None, headers={"Authorization": "Basic YTpi"})
    assert status == 401 and "Bearer" in body["detail"]
    [token] = await api.central.auth.list_tokens("viewer1")
    await api.central.auth.revoke_token(token["id"])
    status, _, _ = await api.get("/api/v1/servers", role="viewer")
    assert status == 401


async def _login(api, user="operator1", password=PASSWORD, **kw):
    return await api.request("POST", "/api/v1/login", role=None, json={"username": user, "password": password}, **kw)


async def test_session_cookie_login_csrf_and_logout(api):
    status, body, resp = await _login(api)
    assert status == 200 and body["user"] == "operator1" and body["role"] == "operator"
    csrf = body["csrf_token"]
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith("central_session=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Secure" not in cookie
    assert "operator1" not in cookie  # encrypted, not just signed
    # the cookie alone authenticates reads
    status, body, _ = await api.get("/api/v1/session", role=None)
    assert body == {"user": "operator1", "role": "operator", "via": "session", "csrf_token": csrf}
    # unsafe requests need the CSRF token too
    status, body, _ = await api.request("POST", "/api/v1/servers/local/test", role=None)
    assert status == 403 and body["error"] == "csrf_failed"
    status, body, _ = await api.request("POST", "/api/v1/servers/local/test", role=None,
                                        headers={"X-CSRF-Token": "wrong"})
    assert status == 403
    status, body, _ = await api.request("POST", "/api/v1/servers/local/test", role=None,
                                        headers={"X-CSRF-Token": csrf})
    assert status == 200 and body["ok"] is True
    # ... or as a form field
    status, body, _ = await api.request("POST", "/api/v1/servers/local/test", role=None,
                                        data={"csrf_token": csrf})
    assert status == 200
    # roles still apply to sessions
    status, body, _ = await api.request("DELETE", "/api/v1/servers/local", role=None, headers={"X-CSRF-Token": csrf})
    assert status == 403 and body["error"] == "forbidden"
    status, body, resp = await api.request("POST", "/api/v1/logout", role=None, headers={"X-CSRF-Token": csrf})
    assert status == 200 and body == {"logged_out": "operator1"}
    status, _, _ = await api.get("/api/v1/session", role=None)
    assert status == 401


async def test_bearer_requests_need_no_csrf_token_even_with_a_cookie(api):
    await _login(api, "viewer1")
    status, body, _ = await api.request("PATCH", "/api/v1/servers/local", role="admin", json={"tags": ["x"]})
    assert status == 200 and body["server"]["tags"] == ["x"]


def _saved_cookies(api) -> dict:
    return {c.key: c.value for c in api.client.session.cookie_jar}


def _restore(api, cookies: dict) -> None:
    api.client.session.cookie_jar.clear()
    api.client.session.cookie_jar.update_cookies(cookies)


async def test_a_saved_cookie_stops_working_after_logout(api):
    _, body, _ = await _login(api)
    saved = _saved_cookies(api)
    status, _, _ = await api.request("POST", "/api/v1/logout", role=None, headers={"X-CSRF-Token": body["csrf_token"]})
    assert status == 200
    _restore(api, saved)  # the attacker's copy of the cookie, taken before the logout
    status, body, _ = await api.get("/api/v1/session", role=None)
    assert status == 401
    status, _, _ = await api.request("POST", "/api/v1/servers/local/test", role=None,
                                     headers={"X-CSRF-Token": "whatever"})
    assert status == 401


async def test_the_database_holds_only_a_hash_of_the_session_id(api, config):
    await _login(api)
    rows = await api.central.storage._all("SELECT * FROM sessions")
    assert len(rows) == 1 and rows[0]["address"] == "127.0.0.1"
    assert rows[0]["expires_at"] - rows[0]["created_at"] == pytest.approx(config.http.session_max_age)
    dump = "\n".join(sqlite3.connect(config.database_path).iterdump())
    key = config.session_secret_path.read_bytes()  # the cookie's payload, decrypted, carries the id
    payload = json.loads(fernet.Fernet(base64.urlsafe_b64encode(key)).decrypt(_saved_cookies(api)["central_session"].encode()))
    sid = payload["session"]["sid"]
    assert len(sid) >= 40 and sid not in dump and auth.token_hash(sid) in dump


async def _cli_in_a_process(config, *args: str, input: str | None = None) -> str:
    """Run `central ...` as its own process on the same data directory (as an operator would)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "central", *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**os.environ, "CENTRAL_DATA_DIR": str(config.data_path),
                                               "CENTRAL_CONFIG": ""})
    out, _ = await proc.communicate(input.encode() if input else None)
    assert proc.returncode == 0, out.decode()
    return out.decode()


@pytest.mark.parametrize("how", ["password change", "logout everywhere", "user removed"])
async def test_a_password_change_logout_or_removal_ends_sessions_from_another_process(api, config, how):
    await _login(api, "viewer1")
    assert (await api.get("/api/v1/session", role=None))[0] == 200
    if how == "password change":
        out = await _cli_in_a_process(config, "user", "passwd", "viewer1", "--password-stdin",
                                      input="a brand new password\n")
    elif how == "logout everywhere":
        out = await _cli_in_a_process(config, "user", "logout", "viewer1")
        assert out.strip() == "ended 1 session of viewer1"
    else:
        out = await _cli_in_a_process(config, "user", "remove", "viewer1", "--yes")
    status, _, _ = await api.get("/api/v1/session", role=None)
    assert status == 401, out


async def test_other_users_sessions_survive_a_password_change(api, config):
    await _login(api, "viewer1")
    await api.central.auth.set_password("operator1", "a brand new password")
    assert (await api.get("/api/v1/session", role=None))[1]["user"] == "viewer1"


async def test_an_expired_session_is_refused(config):
    api = await start_api(config, session_max_age=60.0)
    try:
        await _login(api)
        await api.central.storage._write([("UPDATE sessions SET expires_at = ?", (time.time() - 1,))])
        assert (await api.get("/api/v1/session", role=None))[0] == 401
    finally:
        await api.client.close()


async def test_form_login_redirects_to_a_local_path_only(api):
    for target, expected in (("/servers/web1", "/servers/web1"), ("//evil.example/x", "/"), ("https://evil.example", "/")):
        async with api.client.post("/api/v1/login", allow_redirects=False,
                                   data={"username": "viewer1", "password": PASSWORD, "next": target}) as resp:
            assert resp.status == 303 and resp.headers["Location"] == expected
            assert "central_session=" in resp.headers["Set-Cookie"]


async def test_cross_site_login_is_refused(api):
    status, body, _ = await _login(api, headers={"Origin": "https://evil.example"})
    assert status == 403 and body["error"] == "csrf_failed"


async def test_wrong_password_and_unknown_user_look_alike(api):
    s1, b1, _ = await _login(api, password="wrong password!")
    s2, b2, _ = await _login(api, user="nobody")
    assert s1 == s2 == 401 and b1 == b2


async def test_login_attempts_back_off(config):
    api = await start_api(config, login_attempts=3)
    try:
        for _ in range(3):
            assert (await _login(api, password="wrong password!"))[0] == 401
        status, body, resp = await _login(api)  # even the right password, until the wait is over
        assert status == 429 and body["error"] == "too_many_attempts" and int(resp.headers["Retry-After"]) >= 1
        status, _, _ = await _login(api, user="viewer1")  # another user from this address: not held back
        assert status == 200
    finally:
        await api.client.close()


async def test_parallel_guesses_are_limited_before_the_password_is_checked(config, monkeypatch):
    """100 parallel wrong passwords for one user: only the allowance is ever checked (401), the rest 429."""
    checked = []
    real_verify = auth.verify_password
    monkeypatch.setattr(auth, "verify_password", lambda pw, stored: checked.append(pw) or real_verify(pw, stored))
    api = await start_api(config, login_attempts=5, login_attempts_per_user=50)
    try:
        results = await asyncio.gather(*(_login(api, user="admin1", password=f"guess number {i}") for i in range(100)))
        statuses = sorted(status for status, _, _ in results)
        assert statuses == [401] * 5 + [429] * 95
        assert len(checked) == 5  # scrypt ran five times, not a hundred
    finally:
        await api.client.close()


async def _login_from(api, address: str, user: str, password: str = PASSWORD):
    """A login whose TCP connection comes from address (any 127.x.y.z reaches the test server)."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.post(api.client.make_url("/api/v1/login"),
                                json={"username": user, "password": password}) as resp:
            return resp.status


async def test_nobody_locks_the_admin_out_from_another_address(config):
    api = await start_api(config, login_attempts=3, login_attempts_per_user=6)
    try:
        assert await _login_from(api, "127.0.0.2", "admin1") == 200  # the admin's own address, once
        # an attacker from one address is stopped after its allowance ...
        assert [await _login_from(api, "127.0.0.3", "admin1", "wrong password!") for _ in range(4)] == [401] * 3 + [429]
        # ... and from several addresses, at the user's ceiling
        assert [await _login_from(api, "127.0.0.4", "admin1", "wrong password!") for _ in range(3)] == [401] * 3
        assert await _login_from(api, "127.0.0.5", "admin1", "wrong password!") == 429
        # the admin still logs in: from a new address before the ceiling, from a known one after it
        assert await _login_from(api, "127.0.0.2", "admin1") == 200
        assert await _login_from(api, "127.0.0.6", "admin1") == 429
    finally:
        await api.client.close()


async def test_secure_cookie_when_configured(config):
    api = await start_api(config, cookie_secure=True)
    try:
        _, _, resp = await _login(api)
        assert "Secure" in resp.headers["Set-Cookie"]
    finally:
        await api.client.close()


async def test_session_secret_file_is_created_0600_and_reused(api, config):
    path = config.session_secret_path
    assert path.stat().st_mode & 0o777 == 0o600 and len(path.read_bytes()) == 32
    _, body, _ = await _login(api)
    api2 = await start_api(config)  # a restart: the same secret decrypts the old cookie
    try:
        api2.client.session.cookie_jar.update_cookies(
            {c.key: c.value for c in api.client.session.cookie_jar})
        status, body, _ = await api2.get("/api/v1/session", role=None)
        assert status == 200 and body["user"] == "operator1"
    finally:
        await api2.client.close()


# Host header allow-list

@pytest.mark.parametrize("host,ok", [
    ("127.0.0.1:9083", True), ("localhost:9083", True), ("[::1]:9083", True), ("10.1.2.3", True),
    ("central.example.com", True), ("a.lan.example", True), ("evil.example", False),
    ("central.example.com.evil.example", False), ("", False),
])
async def test_host_allow_list(config, host, ok):
    api = await start_api(config, allowed_hosts=("central.example.com", "*.lan.example"))
    try:
        status, body, _ = await api.get("/api/v1/fleet", headers={"Host": host})
        if ok:
            assert status == 200, body
        else:
            assert status == 421 and body["error"] == "misdirected_request"
        status, _, _ = await api.get("/health", role=None, headers={"Host": host or "x"})
        assert status == 200  # probes reach health whatever Host they use
    finally:
        await api.client.close()
