"""Helpers and fixtures for the agent tests: the agent module loaded by path, and a running agent."""

import hashlib
import hmac
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import weakref

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


PROTOCOL = "central-agent/1"
#: the authentication state of sockets made by AgentProcess.connect() (request() signs on them)
_SESSIONS = weakref.WeakKeyDictionary()


def new_secret():
    """A fresh agent secret, as deploy writes it: 64 lowercase hex digits."""
    return os.urandom(32).hex()


def write_secret(path, secret=None):
    """Write a secret file (mode 0600) and return the secret."""
    secret = secret or new_secret()
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    os.chmod(str(path), 0o600)
    return secret


def mac(secret, *fields):
    """The protocol's MAC (docs/agent-protocol.md), computed with hmac, independently of the agent."""
    return hmac.new(bytes.fromhex(secret), "\n".join(fields).encode("ascii"), hashlib.sha256).hexdigest()


class Session(object):
    """One authenticated connection's state on the client side."""

    def __init__(self, secret, host_header):
        self.secret = secret
        self.host_header = host_header
        self.nonce = None
        self.cnonce = os.urandom(16).hex()
        self.seq = 0

    def challenge(self, sock):
        """GET /api/challenge and check the agent's proof; returns the agent's nonce."""
        sock.sendall(("GET /api/challenge HTTP/1.1\r\nHost: %s\r\nX-Central-Nonce: %s\r\n\r\n"
                      % (self.host_header, self.cnonce)).encode())
        status, headers, raw, rest = read_raw(sock)
        assert status == 200 and rest == b"", (status, raw)
        self.nonce = json.loads(raw.decode())["nonce"]
        assert headers["x-agent-auth"] == "mac=" + mac(self.secret, PROTOCOL + " challenge",
                                                       self.nonce, self.cnonce)
        return self.nonce

    def sign(self, method, target, body=b"", seq=None):
        """The X-Central-Auth value for the next request (or for the given seq)."""
        if seq is None:
            self.seq += 1
            seq = self.seq
        return "seq=%d mac=%s" % (seq, mac(self.secret, PROTOCOL + " request", self.nonce, self.cnonce,
                                           str(seq), method, target, hashlib.sha256(body).hexdigest()))

    def check(self, seq, method, target, status, headers, raw):
        """Assert that a response carries the agent's proof for this request."""
        want = "seq=%d mac=%s" % (seq, mac(self.secret, PROTOCOL + " response", self.nonce, self.cnonce,
                                           str(seq), method, target, str(status),
                                           hashlib.sha256(raw).hexdigest()))
        assert headers.get("x-agent-auth") == want, (status, headers, raw[:200])


def authenticate(sock, secret, port=8083):
    """Do the challenge on a connected socket to an agent; request() then signs on it."""
    session = Session(secret, "127.0.0.1:%d" % port)
    session.challenge(sock)
    _SESSIONS[sock] = session
    return sock


class AgentProcess(object):
    """The real agent as a subprocess on 127.0.0.1 and an OS-chosen port, with its own secret
    (pass secret=None to start it without one) and a syslog socket the test can read."""

    def __init__(self, *args, secret=True):
        self.dir = tempfile.mkdtemp(prefix="agent-test-")
        self.secret_path = os.path.join(self.dir, "secret")
        self.secret = write_secret(self.secret_path) if secret else None
        self.syslog_path = os.path.join(self.dir, "log")
        self.syslog = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.syslog.bind(self.syslog_path)
        self.syslog.setblocking(False)
        self._syslog_lines = []
        self.proc = subprocess.Popen(
            [sys.executable, AGENT_PATH, "--port", "0", "--secret-file", self.secret_path,
             "--syslog-socket", self.syslog_path] + list(args),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.proc.stderr.readline().decode()
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if not m:
            self.stop()
            raise AssertionError("agent did not start: %r" % line)
        self.port = int(m.group(1))
        self.host_header = "127.0.0.1:%d" % self.port
        self.pid = self.proc.pid
        self._sockets = []

    def connect(self, timeout=5.0, auth=True):
        """A client socket to the agent, authenticated (challenge done) unless auth=False;
        closed at stop() if the test did not close it."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        self._sockets.append(s)
        if auth and self.secret:
            session = Session(self.secret, self.host_header)
            session.challenge(s)
            _SESSIONS[s] = session
        else:
            _SESSIONS[s] = Session(None, self.host_header)
        return s

    def syslog_lines(self):
        """Every line the agent sent to its syslog socket so far (text)."""
        while True:
            try:
                self._syslog_lines.append(self.syslog.recv(65536).decode("utf-8", "replace"))
            except BlockingIOError:
                return list(self._syslog_lines)

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
        self.syslog.close()
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))
        os.rmdir(self.dir)


@pytest.fixture
def start_agent():
    started = []

    def start(*args, **kwargs):
        a = AgentProcess(*args, **kwargs)
        started.append(a)
        return a

    yield start
    for a in started:
        a.stop()


def read_response(sock, buf=b""):
    """Read one HTTP response from sock; return (status, headers, json body, rest)."""
    status, headers, body, rest = read_raw(sock, buf)
    return status, headers, json.loads(body.decode()), rest


def read_raw(sock, buf=b""):
    """Read one HTTP response from sock; return (status, headers, body bytes, rest)."""
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
    return status, headers, body, rest


def signed_request(sock, method, path, body=None, headers=None, host=None, data=None):
    """The bytes of one request (body as JSON, or data as raw bytes), signed when sock is an
    authenticated agent connection; host=False sends no Host header."""
    if data is None:
        data = b"" if body is None else json.dumps(body).encode()
    session = _SESSIONS.get(sock)
    if host is None:
        host = session.host_header if session is not None else "127.0.0.1"
    head = "%s %s HTTP/1.1\r\n" % (method, path)
    if host is not False:
        head += "Host: %s\r\n" % host
    if (body is not None or data) and "Content-Type" not in (headers or {}):
        head += "Content-Type: application/json\r\n"
    if session is not None and session.secret and "X-Central-Auth" not in (headers or {}):
        head += "X-Central-Auth: %s\r\n" % session.sign(method, path, data)
    for k, v in (headers or {}).items():
        if v is not None:
            head += "%s: %s\r\n" % (k, v)
    head += "Content-Length: %d\r\n\r\n" % len(data)
    return head.encode() + data


def request(sock, method, path, body=None, headers=None, host=None):
    """Send one request on a kept-alive socket and read its response (checking the agent's
    proof on an authenticated connection, for every answer but a refusal of the request)."""
    sock.sendall(signed_request(sock, method, path, body, headers, host))
    status, hdrs, raw, rest = read_raw(sock)
    assert rest == b""
    session = _SESSIONS.get(sock)
    if session is not None and session.secret and (status < 300 or "x-agent-auth" in hdrs):
        session.check(session.seq, method, path, status, hdrs, raw)
    return status, hdrs, json.loads(raw.decode())
