"""The central does not need root: scripts/start-central.sh run as root creates a system user and
runs the central as that user; the `local` collector and local actions work unprivileged; a
central that does run as root refuses actions on its own host.

The script tests need root (they create and remove a system user named ctest-*). The central
user must be able to run Python and read the checkout, which the suite's own interpreter (often
under /root) may not allow: the tests build a venv from Debian's /usr/bin/python3 that reaches
this checkout and the suite's packages through a .pth file, in a directory anyone may enter.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

from central import actions
from central.model import Forbidden
from central.service import Central
from tests.helpers import wait_for_sync
from tests.test_start_central import SCRIPT, alive, free_port, health, venv  # noqa: F401  (venv: fixture)

SYSTEM_PYTHON = "/usr/bin/python3"


def needs_root() -> None:
    if os.geteuid() == 0:
        return
    reason = f"these tests create a system user and need root, running as uid {os.geteuid()}"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip("ROOT TESTS SKIPPED: " + reason)


@pytest.fixture(scope="module")
def open_dir():
    """A directory every user may enter (pytest's tmp_path is 0700 under /tmp/pytest-of-root)."""
    path = Path(tempfile.mkdtemp(prefix="central-user-test-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def shared_venv(open_dir):
    """A venv any user can run that imports this checkout and the suite's packages."""
    needs_root()
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.fail(f"{SYSTEM_PYTHON} is missing (apt-get install python3 python3-venv)")
    path = open_dir / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(path)], check=True, capture_output=True, timeout=120)
    import central

    repo = Path(central.__file__).resolve().parent.parent
    packages = Path(__import__("aiohttp").__file__).resolve().parent.parent
    [site] = list(path.glob("lib/python3*/site-packages"))
    (site / "suite.pth").write_text(f"{packages}\n{repo}\n")
    return path


@pytest.fixture
def system_user():
    """A fresh user name for the script to create; the user is removed after the test."""
    needs_root()
    name = "ctest-" + secrets.token_hex(4)
    yield name
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return
    # userdel refuses while a process of the user exists (a central still exiting, a zombie
    # not yet reaped by init)
    wait_for_sync(lambda: not processes_of(uid), 30, f"the processes of {name} to end")
    res = subprocess.run(["userdel", name], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"userdel {name}: {res.stderr}"


def processes_of(uid: int) -> list[int]:
    """Pids whose real uid is uid (zombies included)."""
    pids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            for line in status.read_text().splitlines():
                if line.startswith("Uid:"):
                    if int(line.split()[1]) == uid:
                        pids.append(int(status.parent.name))
                    break
        except OSError:  # gone meanwhile
            continue
    return pids


@pytest.fixture
def data_dir(open_dir):
    path = open_dir / ("data-" + secrets.token_hex(4))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def script(shared_venv):
    """script(*args, data=..., user=..., **env) runs start-central.sh as root; every central it started is stopped after."""
    started: list[int] = []

    def environment(data: Path, user: str, **env) -> dict:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CENTRAL_")}
        # the `central` command goes next to the data directory, never to /usr/local/bin
        environ.update({"CENTRAL_DATA_DIR": str(data), "CENTRAL_USER": user, "CENTRAL_VENV": str(shared_venv),
                        "PYTHON": SYSTEM_PYTHON, "CENTRAL_BIN_DIR": str(data.parent / f"bin-{data.name}")}, **env)
        return environ

    def run(*args, data: Path, user: str, **env):
        res = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                             env=environment(data, user, **env), timeout=240)
        pid_file = data / "central.pid"
        if pid_file.exists():
            started.append(int(pid_file.read_text()))
        return res

    run.environment = environment
    run.started = started
    yield run
    for pid in started:
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
            wait_for_sync(lambda p=pid: not alive(p), 20, f"central {pid} to stop")


def uids_of(pid: int) -> list[int]:
    """Real, effective, saved and filesystem uid of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError(f"no Uid line for {pid}")


def mode_and_owner(path: Path) -> tuple[str, str]:
    st = path.stat()
    return oct(st.st_mode & 0o777), pwd.getpwuid(st.st_uid).pw_name


def admin_password(output: str) -> str:
    match = re.search(r"shown only this once:\n\s+(\S+)", output)
    assert match, output
    return match.group(1)


class Api:
    """Minimal JSON client for a central started by the script (a session cookie, its CSRF token)."""

    def __init__(self, port: int, password: str):
        self.base = f"http://127.0.0.1:{port}"
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        self.csrf = self.call("POST", "/api/v1/login", {"username": "admin", "password": password})[1]["csrf_token"]

    def call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", "X-CSRF-Token": getattr(self, "csrf", "")})
        try:
            with self.opener.open(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


def test_as_root_the_script_runs_the_central_as_its_own_user(script, system_user, data_dir):
    port = free_port()
    res = script("--port", str(port), "--background", data=data_dir, user=system_user)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"created system user {system_user} (no login shell, home {data_dir})" in res.stdout
    pid = int((data_dir / "central.pid").read_text())
    assert f"central is running (pid {pid}, user {system_user}) at http://127.0.0.1:{port}/" in res.stdout
    assert health(port)["status"] == "ok"
    user = pwd.getpwnam(system_user)
    # the serving process itself (no wrapper in between) has the user's uid, all four of them
    assert uids_of(pid) == [user.pw_uid] * 4
    assert user.pw_dir == str(data_dir) and user.pw_shell.endswith("nologin") and user.pw_uid < 1000
    # its files are its own, and nobody else's to read
    assert mode_and_owner(data_dir) == ("0o700", system_user)
    for name in ("central.db", "central.db-wal", "central.db-shm", "id_ed25519", "session.key", "central.log"):
        assert mode_and_owner(data_dir / name) == ("0o600", system_user), name

    # root's `central` command works from a bare shell, and leaves the central's files its own
    wrapper = data_dir.parent / f"bin-{data_dir.name}" / "central"
    assert f"the central command: {wrapper} (for {data_dir}, from any shell)" in res.stdout
    try:
        listed = subprocess.run([str(wrapper), "user", "list", "--json"], capture_output=True, text=True,
                                env={"PATH": "/usr/bin:/bin", "HOME": "/root"}, cwd="/", timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert [u["name"] for u in json.loads(listed.stdout)] == ["admin"]
        for name in ("central.db", "central.db-wal", "central.db-shm"):
            assert mode_and_owner(data_dir / name) == ("0o600", system_user), name
    finally:
        shutil.rmtree(wrapper.parent, ignore_errors=True)

    api = Api(port, admin_password(res.stdout))

    # the local collector works unprivileged: `local` comes online with a full document
    def local_online():
        status, body = api.call("GET", "/api/v1/servers/local")
        return status == 200 and body["server"]["status"] == "online" and body

    detail = wait_for_sync(local_online, 60, "local to come online")
    doc = detail["latest"]["document"]
    assert doc["processes"]["count"] > 10 and doc["processes"]["top_cpu"] and doc["filesystems"]
    assert doc["errors"] in ({}, None, [])
    with api.opener.open(api.base + "/servers/local", timeout=30) as resp:
        assert resp.status == 200 and b'data-pid="' in resp.read()

    # local actions act with the user's rights: its own process yes, root's no (and root's lives)
    own = subprocess.Popen(["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
                            "sleep", "300"])
    roots = subprocess.Popen(["sleep", "300"])
    try:
        status, body = api.call("POST", "/api/v1/servers/local/actions", {"action": "kill", "arguments": {"pid": own.pid}})
        assert status == 200 and body["ok"] is True, body
        assert own.wait(timeout=20) == -signal.SIGTERM
        status, body = api.call("POST", "/api/v1/servers/local/actions", {"action": "kill", "arguments": {"pid": roots.pid}})
        assert body.get("ok") is not True, body
        assert roots.poll() is None
    finally:
        for p in (own, roots):
            if p.poll() is None:
                p.kill()
                p.wait()

    res = script("--stop", data=data_dir, user=system_user)
    assert res.returncode == 0 and f"stopped central (pid {pid})" in res.stdout
    assert not alive(pid)


def test_a_root_owned_install_is_handed_over_and_served_in_the_foreground(script, system_user, data_dir, shared_venv):
    """An install from before (data dir and files owned by root) is chowned to the user, with a message."""
    env = script.environment(data_dir, "root")
    init = subprocess.run([str(shared_venv / "bin" / "python"), "-P", "-m", "central", "init"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    assert mode_and_owner(data_dir / "central.db")[1] == "root"
    port = free_port()
    proc = subprocess.Popen(["bash", str(SCRIPT), "--port", str(port)], env=script.environment(data_dir, system_user),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    script.started.append(proc.pid)
    try:
        wait_for_sync(lambda: _answers(port) or proc.poll() is not None, 120, "the foreground central to answer")
        assert proc.poll() is None, proc.stdout.read()
        # exec all the way down: the script's own pid is now the central, running as the user
        assert uids_of(proc.pid) == [pwd.getpwnam(system_user).pw_uid] * 4
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert f"{data_dir} belongs to root: giving it to {system_user} (chown -R)" in out
    assert f"as user {system_user} (Ctrl-C stops it)" in out
    for path in [data_dir, *data_dir.rglob("*")]:
        assert mode_and_owner(path)[1] == system_user, path
    assert mode_and_owner(data_dir / "central.db")[0] == "0o600"


def _answers(port: int) -> bool:
    try:
        return health(port)["status"] == "ok"
    except OSError:
        return False


def test_a_checkout_the_user_cannot_read_is_a_clear_error(script, system_user, data_dir, venv):  # noqa: F811
    """The suite's venv lives under a private directory: the script says so instead of failing later."""
    res = script("--port", str(free_port()), "--background", data=data_dir, user=system_user, CENTRAL_VENV=str(venv),
                 PYTHON=sys.executable)
    assert res.returncode == 1
    assert f"start-central.sh: user {system_user} cannot run {venv}/bin/python" in res.stderr
    assert not (data_dir / "central.pid").exists()


def test_unprivileged_the_docker_collector_says_unavailable_rather_than_failing(open_dir, shared_venv):
    """A docker socket the central's user may not use (root's 0660 socket): no containers, no collector error."""
    needs_root()
    import socket

    sock_path = open_dir / ("docker-" + secrets.token_hex(4) + ".sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    server.listen(1)
    sock_path.chmod(0o660)
    try:
        code = ("import json, sys; from central.bundled import agent_module; "
                "print(json.dumps(agent_module().collect_docker(sys.argv[1], timeout=2)))")
        res = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                              str(shared_venv / "bin" / "python"), "-P", "-c", code, str(sock_path)],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout) == {"available": False, "containers": []}
    finally:
        server.close()
        sock_path.unlink()


async def test_as_root_actions_on_local_are_refused_by_default(config, sleeper):  # noqa: F811
    """A central running as root refuses local actions (audited), unless actions.local_as_root says yes."""
    needs_root()
    cfg = dataclasses.replace(config, actions=dataclasses.replace(config.actions, local_as_root=False))
    central = await Central.open(cfg)
    try:
        p = sleeper()
        with pytest.raises(Forbidden, match="the central runs as root, so actions on its own host"):
            await actions.run_action(central, "cli:tester", "admin", "local", "kill", {"pid": p.pid})
        assert p.poll() is None
        [row] = await actions.audit_log(central, "local", limit=1)
        assert row["result"] == "refused" and "actions.local_as_root" in row["output"]
    finally:
        await central.close()
    central = await Central.open(config)  # the suite's config says local_as_root = true
    try:
        result = await actions.run_action(central, "cli:tester", "admin", "local", "kill", {"pid": p.pid})
        assert result["ok"] is True and p.wait(timeout=10) == -signal.SIGTERM
    finally:
        await central.close()


from tests.test_agent_actions import sleeper  # noqa: E402,F401  (fixture)
