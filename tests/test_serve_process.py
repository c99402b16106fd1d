"""`central serve` as a real process: one per data directory (the lock), config reload on SIGHUP."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

from tests.helpers import wait_for_sync


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
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
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
