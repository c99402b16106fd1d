"""`central serve` as a real process: one per data directory (the lock), config reload on SIGHUP."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

from tests.helpers import stop_process, wait_for_sync


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serving:
    """An initialised data directory with its config file, and `central serve` processes on it."""

    def __init__(self, tmp_path):
        self.data = tmp_path / "data"
        self.config = tmp_path / "central.toml"
        self.config.write_text("[poll]\nlocal = false\n")
        self.env = dict(os.environ, CENTRAL_DATA_DIR=str(self.data), CENTRAL_CONFIG=str(self.config))
        self.procs: list[subprocess.Popen] = []
        self.logs = tmp_path
        init = self.run("init")
        assert init.returncode == 0, init.stderr

    def run(self, *args, timeout=120):
        return subprocess.run([sys.executable, "-m", "central", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def start(self, port: int | None = None) -> tuple[subprocess.Popen, int]:
        port = port or free_port()
        log = open(self.logs / f"serve-{len(self.procs)}.log", "w+")
        proc = subprocess.Popen([sys.executable, "-m", "central", "-v", "serve", "--port", str(port)],
                                env=self.env, stdout=log, stderr=subprocess.STDOUT, text=True)
        proc.log = log
        self.procs.append(proc)
        return proc, port

    def start_answering(self) -> tuple[subprocess.Popen, int]:
        proc, port = self.start()
        wait_for_sync(lambda: self.answers(port) or proc.poll() is not None, 60, "central serve to answer")
        assert proc.poll() is None, self.output(proc)
        return proc, port

    @staticmethod
    def answers(port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return True
        except OSError:
            return False

    @staticmethod
    def output(proc) -> str:
        proc.log.flush()
        proc.log.seek(0)
        return proc.log.read()

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc, 20)
            proc.log.close()


@pytest.fixture
def serving(tmp_path):
    s = Serving(tmp_path)
    yield s
    s.stop()


def test_a_second_serve_on_the_same_data_directory_refuses_naming_the_first(serving):
    first, port = serving.start_answering()
    second, _ = serving.start()
    assert second.wait(60) == 1
    out = serving.output(second).strip()
    assert out.count("\n") == 0, out
    assert out == (f"Error: central serve already runs on {serving.data} (pid {first.pid} holds "
                   f"{serving.data / 'serve.lock'}); stop it first (two would poll and notify twice)")
    assert first.poll() is None and serving.answers(port)
    # the lock lives as long as the process: once the first has ended, a new one starts
    first.send_signal(signal.SIGTERM)
    assert first.wait(30) == 0
    third, third_port = serving.start_answering()
    assert (serving.data / "serve.lock").read_text().strip() == str(third.pid)
    # however it ends: killed outright, its lock goes with it (the kernel releases a flock)
    third.kill()
    third.wait(30)
    fourth, _ = serving.start_answering()
    assert (serving.data / "serve.lock").read_text().strip() == str(fourth.pid)


def _api(port: int, token: str, path: str):
    import json

    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_sighup_reloads_rules_notifiers_and_retention_and_refuses_a_bad_file(serving):
    import json

    proc, port = serving.start_answering()
    created = serving.run("token", "create", "reload-test", "--user", "admin", "--json")
    assert created.returncode == 0, created.stderr
    token = json.loads(created.stdout)["token"]
    assert _api(port, token, "/api/v1/notifiers")["notifiers"] == []

    def sighup_and_wait(*markers: str) -> str:
        # every line the reload logs (they may reach the pipe one read apart)
        before = len(serving.output(proc))
        proc.send_signal(signal.SIGHUP)

        def logged():
            out = serving.output(proc)[before:]
            return all(m in out for m in markers) and out

        return wait_for_sync(logged, 30, f"{markers!r} in the log")

    good = ('[poll]\nlocal = false\n[retention]\nraw = "24h"\n'
            '[[alerts.rules]]\nname = "load_high"\nmetric = "load.1"\nop = ">"\nthreshold = 50\n'
            '[[notifiers]]\nname = "ops"\ntype = "webhook"\nurl = "http://127.0.0.1:9/hook"\n')
    serving.config.write_text(good)
    log = sighup_and_wait("notifier ops added", "alert rule load_high added", "retention.raw: 172800s -> 86400s")
    where = f"config reloaded from {serving.config}: "
    assert where + "alert rule load_high added" in log
    assert where + "retention.raw: 172800s -> 86400s" in log
    assert "restart" not in log  # --port from the command line is kept, not a change
    assert [n["name"] for n in _api(port, token, "/api/v1/notifiers")["notifiers"]] == ["ops"]

    # a bad file is refused with the reason, and the running config stays
    serving.config.write_text(good.replace('metric = "load.1"', 'metric = "load.one"'))
    log = sighup_and_wait("config reload refused")
    assert (f'config reload refused, the running config is kept: {serving.config}: alerts.rules[1] ("load_high")'
            f".metric: unknown metric 'load.one'") in log
    assert [n["name"] for n in _api(port, token, "/api/v1/notifiers")["notifiers"]] == ["ops"]
    assert proc.poll() is None

    # removing, and a setting that needs a restart
    serving.config.write_text('[poll]\nlocal = false\ninterval = "30s"\n')
    log = sighup_and_wait("notifier ops removed", "alert rule load_high removed", "retention.raw: 86400s -> 172800s",
                          "poll changed: takes effect at the next restart")
    assert where + "alert rule load_high removed" in log
    assert where + "retention.raw: 86400s -> 172800s" in log
    assert where + "poll changed: takes effect at the next restart" in log
    assert _api(port, token, "/api/v1/notifiers")["notifiers"] == []
    # back to the file it started with: nothing to do
    serving.config.write_text("[poll]\nlocal = false\n")
    log = sighup_and_wait("nothing changed")
    assert where + "nothing changed" in log and "restart" not in log
    assert proc.poll() is None and serving.answers(port)
