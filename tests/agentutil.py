"""Helpers and fixtures for the agent tests: the agent module loaded by path, and a running agent."""

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGENT_PATH = os.path.join(ROOT, "agent", "agent.py")
DATA = os.path.join(ROOT, "tests", "data")


def load_agent():
    """Import agent/agent.py from its path, the way the central does."""
    spec = importlib.util.spec_from_file_location("central_agent_under_test", AGENT_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def agent():
    return load_agent()


def wait_for(predicate, timeout=10.0, interval=0.02):
    """Poll predicate until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within %.1f s" % timeout)
        time.sleep(interval)


class AgentProcess(object):
    """The real agent as a subprocess on 127.0.0.1 and an OS-chosen port."""

    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [sys.executable, AGENT_PATH, "--port", "0"] + list(args),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.proc.stderr.readline().decode()
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if not m:
            self.stop()
            raise AssertionError("agent did not start: %r" % line)
        self.port = int(m.group(1))
        self.pid = self.proc.pid
        self._sockets = []

    def connect(self, timeout=5.0):
        """A client socket to the agent (closed at stop() if the test did not close it)."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        self._sockets.append(s)
        return s

    def stop(self):
        for s in self._sockets:
            s.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def start_agent():
    started = []

    def start(*args):
        a = AgentProcess(*args)
        started.append(a)
        return a

    yield start
    for a in started:
        a.stop()


def read_response(sock, buf=b""):
    """Read one HTTP response from sock; return (status, headers, json body, rest)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response head (got %r)" % buf)
        buf += chunk
    head, _, buf = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    length = int(headers["content-length"])
    while len(buf) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        buf += chunk
    body, rest = buf[:length], buf[length:]
    return status, headers, json.loads(body.decode()), rest


def request(sock, method, path, body=None, headers=None):
    """Send one request on a kept-alive socket and read its response."""
    data = b"" if body is None else json.dumps(body).encode()
    head = "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n" % (method, path)
    if body is not None and "Content-Type" not in (headers or {}):
        head += "Content-Type: application/json\r\n"
    for k, v in (headers or {}).items():
        head += "%s: %s\r\n" % (k, v)
    head += "Content-Length: %d\r\n\r\n" % len(data)
    sock.sendall(head.encode() + data)
    status, hdrs, doc, rest = read_response(sock)
    assert rest == b""
    return status, hdrs, doc
