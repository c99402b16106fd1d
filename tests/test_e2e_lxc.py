"""End to end on real Debian LXC containers with systemd, using only the user-facing commands:
scripts/deploy-agent.sh, `central init|server add|serve|server list|poll|action|alert`.

Two clones with their own host keys on a private bridge; the agent is deployed by the
script, the central polls them, restarts a real systemd service in one, sees the other go
offline (unreachable, with an alert) when its container stops and come back when it starts.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests import hostfarm, lxc
from tests.helpers import wait_for_sync

pytestmark = pytest.mark.lxc

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "scripts" / "deploy-agent.sh"
MIB = 1024 * 1024

# Fast polling and quick failure detection, so the run stays well under the budget. A
# stopped container's address stops answering ARP, so connecting fails with "no route to
# host" after about 3 s: the timeouts are longer, or a connect would end as "timeout" first.
CONFIG = """\
[poll]
interval = "1s"
timeout = "6s"
offline_after = 2
reload_interval = "1s"

[ssh]
connect_timeout = "8s"
keepalive_interval = "1s"
keepalive_count_max = 2
backoff_initial = "0.5s"
backoff_max = "2s"

[alerts]
unreachable_after = 2
tick_interval = "1s"
"""


class Operator:
    """Runs the commands an operator types, with central's data in its own directory."""

    def __init__(self, tmp_path: Path):
        self.data = tmp_path / "data"
        self.data.mkdir()
        (self.data / "config.toml").write_text(CONFIG)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CENTRAL_")}
        self.env["CENTRAL_DATA_DIR"] = str(self.data)
        self.env.pop("SSH_AUTH_SOCK", None)
        self.env["PYTHONPATH"] = str(REPO)

    def central(self, *args, check=True, timeout=60) -> subprocess.CompletedProcess:
        res = subprocess.run([sys.executable, "-m", "central", *args], capture_output=True, text=True,
                             env=self.env, timeout=timeout, cwd=str(REPO))
        if check:
            assert res.returncode == 0, f"central {' '.join(args)}: {res.stdout}{res.stderr}"
        return res

    def servers(self) -> dict:
        return {r["name"]: r for r in json.loads(self.central("server", "list", "--json").stdout)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host_key_fingerprint(container) -> str:
    """What an operator reads on the host itself (console, lxc-attach)."""
    out = container.attach(["ssh-keygen", "-lf", "/etc/ssh/ssh_host_ed25519_key.pub"]).stdout
    return out.split()[1]


def scan_known_hosts(container, fingerprint: str, path: Path) -> None:
    """ssh-keyscan the host and keep the key only if it matches the fingerprint read on it."""
    line = subprocess.run(["ssh-keyscan", "-t", "ed25519", container.address], capture_output=True,
                          text=True, timeout=30, check=True).stdout.strip()
    scanned = subprocess.run(["ssh-keygen", "-lf", "-"], input=line, capture_output=True, text=True,
                             check=True).stdout.split()[1]
    assert scanned == fingerprint
    with path.open("a") as fh:
        fh.write(line + "\n")


def main_pid(container, unit: str) -> int:
    return int(container.attach(["systemctl", "show", "-p", "MainPID", "--value", unit]).stdout)


def test_deploy_add_serve_act_and_lose_a_container(lxc_container, tmp_path):
    started = time.monotonic()
    operator_key = tmp_path / "operator_ed25519"
    hostfarm.generate_key(operator_key, "operator")
    op_pub = Path(str(operator_key) + ".pub").read_text()
    web, db = lxc_container("e2e-web", authorized_keys=[op_pub]), lxc_container("e2e-db", authorized_keys=[op_pub])
    assert web.fingerprint != db.fingerprint

    op = Operator(tmp_path)
    init = op.central("init")
    assert "The central's public key" in init.stdout

    # 1. the agent goes out with the operator's own ssh access
    known_hosts = tmp_path / "known_hosts"
    fingerprints = {}
    for c in (web, db):
        fingerprints[c.name] = host_key_fingerprint(c)
        scan_known_hosts(c, fingerprints[c.name], known_hosts)
    res = subprocess.run(["bash", str(DEPLOY), "--central-key", str(op.data / "id_ed25519.pub"),
                          "--identity", str(operator_key), "--ssh-opt", f"UserKnownHostsFile={known_hosts}",
                          "--ssh-opt", "StrictHostKeyChecking=yes", "--ssh-opt", "GlobalKnownHostsFile=/dev/null",
                          "--service-pattern", lxc.ECHO_UNIT, "--watch-unit", lxc.ECHO_UNIT,
                          "root@" + web.address, "root@" + db.address],
                         capture_output=True, text=True, timeout=180, env=op.env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 of 2 hosts deployed" in res.stdout and res.stdout.count("systemd") >= 2

    # 2. add both, pinning the fingerprints read on the hosts
    for c in (web, db):
        added = op.central("server", "add", c.name, c.address, "--tag", "e2e",
                           "--host-key-fingerprint", fingerprints[c.name])
        assert f"host key {fingerprints[c.name]} pinned" in added.stdout and "answers" in added.stdout, added.stdout

    # 3. serve; both turn online with figures from inside the containers
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    serve = subprocess.Popen([sys.executable, "-m", "central", "serve", "--port", str(port)], env=op.env,
                             cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_sync(lambda: _answers(port) or serve.poll() is not None, 30, "central serve to answer")
        assert serve.poll() is None, (tmp_path / "serve.log").read_text()

        def both_online():
            rows = op.servers()
            return rows if all(rows[c.name]["status"] == "online" and rows[c.name]["sample"]
                               for c in (web, db)) else None

        rows = wait_for_sync(both_online, 60, "both containers online", interval=0.5)
        for c in (web, db):
            assert rows[c.name]["hostname"] == c.name
            polled = json.loads(op.central("poll", c.name, "--json").stdout)
            memory = polled["document"]["memory"]
            assert memory["total"] == 256 * MIB, memory  # the container's limit, not the machine's
            assert memory["source"].startswith("cgroup")
            assert polled["document"]["hostname"] == c.name

        # 4. restart a real systemd service in one container from the CLI
        before = main_pid(web, lxc.ECHO_UNIT)
        acted = op.central("action", "service", web.name, lxc.ECHO_UNIT, "restart", "--yes", "--json")
        assert json.loads(acted.stdout)["ok"] is True, acted.stdout
        after = wait_for_sync(lambda: main_pid(web, lxc.ECHO_UNIT) not in (0, before) and
                              main_pid(web, lxc.ECHO_UNIT), 20, "a new MainPID")
        assert after != before
        log_rows = json.loads(op.central("action", "log", web.name, "--json").stdout)
        assert log_rows[0]["action"] == "service" and log_rows[0]["result"] == "ok"

        # 5. stop one container: offline, unreachable, an alert; start it: online again
        db.kill()

        seen = []

        def db_unreachable():
            row = op.servers()[db.name]
            seen.append((row["status"], row["status_reason"], row["last_error"]))
            return row if row["status"] == "offline" and row["status_reason"] == "unreachable" else None

        try:
            wait_for_sync(db_unreachable, 60, "e2e-db offline (unreachable)", interval=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; states seen: {sorted(set(seen))}") from None
        assert op.servers()[web.name]["status"] == "online"

        def db_alert():
            alerts = json.loads(op.central("alert", "list", "--firing", "--json").stdout)
            return [a for a in alerts if a["server"] == db.name and a["rule"] == "server_unreachable"]

        [alert] = wait_for_sync(db_alert, 30, "the server_unreachable alert", interval=0.5)
        assert alert["severity"] == "critical"

        db.start()
        wait_for_sync(lambda: op.servers()[db.name]["status"] == "online", 90, "e2e-db back online", interval=0.5)
        wait_for_sync(lambda: not db_alert(), 30, "the alert to resolve", interval=0.5)
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(20)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait(5)
        log.close()
    assert serve.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
    elapsed = time.monotonic() - started
    print(f"e2e on LXC took {elapsed:.1f}s (clone+deploy+serve+action+stop/start)")


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False
