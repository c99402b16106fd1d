"""scripts/start-central.sh end to end: venv, first-start init, serving, port in use, stop."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import wait_for_sync

pytestmark = pytest.mark.slow  # installs a venv and starts the central: tens of seconds

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "start-central.sh"


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A venv that sees this interpreter's packages, so installing central downloads nothing."""
    path = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(path)], check=True,
                   capture_output=True, timeout=120)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (not yet reaped by anyone) is gone for our purposes
    return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower() if Path(f"/proc/{pid}").exists() else False


@pytest.fixture
def start(tmp_path):
    """start(*args, data=..., **env) runs the script; every central it started is stopped after."""
    started: list[int] = []

    def run(*args, data: Path = tmp_path / "data", **env):
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CENTRAL_")}
        # As root the script would run the central as a system user of its own, which cannot
        # read this suite's private venvs: here it stays root (tests/test_central_user.py tests that).
        # The `central` command goes to a directory of the test's, never /usr/local/bin.
        environ.update({"CENTRAL_DATA_DIR": str(data), "PYTHON": sys.executable, "CENTRAL_USER": "root",
                        "CENTRAL_BIN_DIR": str(tmp_path / "bin")}, **env)
        res = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=environ,
                             timeout=240)
        pid_file = data / "central.pid"
        if pid_file.exists():
            started.append(int(pid_file.read_text()))
        return res

    yield run
    for pid in started:
        if alive(pid):
            os.kill(pid, signal.SIGTERM)


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
        return json.loads(resp.read())


def test_first_start_in_a_venv_serves_refuses_a_busy_port_and_stops_by_pid(start, venv, tmp_path):
    port = free_port()
    data = tmp_path / "data"
    res = start("--port", str(port), "--background", CENTRAL_VENV=str(venv))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"installing central into {venv}" in res.stdout
    assert f"first start: initialising {data}" in res.stdout
    assert 'restrict,port-forwarding,permitopen="127.0.0.1:8083",command="/bin/false" ssh-ed25519 ' in res.stdout
    pid = int((data / "central.pid").read_text())
    assert f"central is running (pid {pid}) at http://127.0.0.1:{port}/" in res.stdout
    assert health(port)["status"] == "ok"
    assert (data / "central.db").exists() or any(data.glob("*.db"))
    # the central runs this checkout, from the venv
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[0].decode().startswith(str(venv))

    # the `central` command works from a shell that knows nothing of the install
    wrapper = tmp_path / "bin" / "central"
    assert f"the central command: {wrapper} (for {data}, from any shell)" in res.stdout
    bare = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    listed = subprocess.run([str(wrapper), "server", "list", "--json"], capture_output=True, text=True, env=bare,
                            cwd="/", timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert [r["name"] for r in json.loads(listed.stdout)] == ["local"]
    # CENTRAL_DATA_DIR still picks another directory (never initialised: refused)
    elsewhere = subprocess.run([str(wrapper), "server", "list"], capture_output=True, text=True, timeout=60,
                               env={**bare, "CENTRAL_DATA_DIR": str(tmp_path / "nothing")})
    assert elsewhere.returncode == 1 and "is not a central data directory" in elsewhere.stderr
    # a `central` the script did not write is never replaced
    os.kill(pid, signal.SIGTERM)
    wait_for_sync(lambda: not alive(pid), 20, "central to exit on SIGTERM")
    wrapper.write_text("#!/bin/sh\necho mine\n")
    res = start("--port", str(port), "--background", CENTRAL_VENV=str(venv))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"warning: {wrapper} exists and was not written by this script: left as it is" in res.stderr
    assert wrapper.read_text() == "#!/bin/sh\necho mine\n"
    assert f"the central command: {venv}/bin/central (with CENTRAL_DATA_DIR={data})" in res.stdout
    wrapper.unlink()
    pid = int((data / "central.pid").read_text())

    # the same data dir again: already running
    res = start("--port", str(port), "--background", CENTRAL_VENV=str(venv))
    assert res.returncode == 1
    assert f"central already runs from {data} (pid {pid})" in res.stderr
    # another data dir on the same port: the port is in use, nothing is initialised
    other = tmp_path / "other"
    res = start("--port", str(port), "--background", data=other, CENTRAL_VENV=str(venv))
    assert res.returncode == 1
    assert f"start-central.sh: port {port} on 127.0.0.1 is in use; stop what runs there or pass --port" \
        in res.stderr
    assert "installing" not in res.stdout and not other.exists()

    # stopped by the PID the script wrote
    os.kill(pid, signal.SIGTERM)
    wait_for_sync(lambda: not alive(pid), 20, "central to exit on SIGTERM")

    # second start: venv and database reused, no init
    res = start("--port", str(port), "--background", CENTRAL_VENV=str(venv))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "installing" not in res.stdout and "first start" not in res.stdout
    second = int((data / "central.pid").read_text())
    assert second != pid and health(port)["status"] == "ok"
    res = start("--stop", CENTRAL_VENV=str(venv))
    assert res.returncode == 0 and f"stopped central (pid {second})" in res.stdout
    assert not alive(second) and not (data / "central.pid").exists()


def test_no_venv_runs_this_checkout_with_the_current_interpreter(start, tmp_path):
    port = free_port()
    res = start("--no-venv", "--port", str(port), "--background")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "virtual environment" not in res.stdout and "installing central" not in res.stdout
    pid = int((tmp_path / "data" / "central.pid").read_text())
    assert health(port)["status"] == "ok"
    res = start("--no-venv", "--stop")
    assert res.returncode == 0 and f"stopped central (pid {pid})" in res.stdout
    assert not alive(pid)


def test_bad_input_is_one_clear_line(start, tmp_path):
    res = start("--port", "http")
    assert res.returncode == 1
    assert res.stderr.strip() == "start-central.sh: --port must be a port number (1-65535), not 'http'"
    res = start("--frobnicate")
    assert res.returncode == 2 and "unknown option --frobnicate" in res.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[http]\nport = -1\n")
    res = start("--no-venv", CENTRAL_CONFIG=str(bad))
    assert res.returncode == 1 and "invalid configuration" in res.stderr and "http.port" in res.stderr
    res = start("--help")
    assert res.returncode == 0 and "--background" in res.stdout
