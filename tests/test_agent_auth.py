"""The agent's trust boundary, against the real agent as a subprocess: only a caller holding
the host's secret is served, every answer carries the agent's proof, nothing can be replayed,
browser-shaped requests and other local users are refused, actions are logged."""

import json
import os
import pwd
import signal
import socket
import subprocess
import sys

import pytest

from tests.agentutil import (
    AGENT_PATH, Session, mac, read_raw, read_response, request, signed_request, wait_for,
    write_secret,
)

RFC4231_CASE_2 = (b"Jefe", b"what do ya want for nothing?",
                  "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")


def test_hmac_matches_rfc_4231_and_the_hmac_module(agent):
    key, message, want = RFC4231_CASE_2
    assert agent.HmacKey(key).hexdigest(message) == want
    import hashlib
    import hmac
    for key in (b"", b"k" * 32, b"k" * 64, b"k" * 65, os.urandom(200)):
        assert agent.HmacKey(key).mac("a", "b\nc") == hmac.new(key, b"a\nb\nc", hashlib.sha256).hexdigest()


def test_the_documented_test_vector(agent):
    """docs/agent-protocol.md gives one exchange with a fixed secret: both sides must agree with it."""
    with open(os.path.join(os.path.dirname(AGENT_PATH), "..", "docs", "agent-protocol.md")) as f:
        doc = f.read()
    vector = json.loads(doc.split("<!-- test-vector -->")[1].split("```json")[1].split("```")[0])
    key = agent.HmacKey(bytes.fromhex(vector["secret"]))
    assert key.mac("central-agent/1 challenge", vector["agent_nonce"], vector["central_nonce"]) == \
        vector["challenge_mac"]
    body_digest = agent._sha256_hex(b"")
    assert key.mac("central-agent/1 request", vector["agent_nonce"], vector["central_nonce"], "1", "GET",
                   "/api/health", body_digest) == vector["request_mac"]
    assert mac(vector["secret"], "central-agent/1 request", vector["agent_nonce"], vector["central_nonce"],
               "1", "GET", "/api/health", body_digest) == vector["request_mac"]


def test_challenge_then_every_request_and_answer_is_authenticated(start_agent):
    a = start_agent()
    s = a.connect()  # does the challenge and checks the agent's proof
    for path in ("/api/all", "/api/processes?sort=memory&limit=3", "/api/health"):
        status, headers, doc = request(s, "GET", path)  # checks each answer's proof
        assert status == 200, doc
        assert headers["x-agent-auth"].startswith("seq=")
    assert doc["pid"] == a.pid  # the authenticated health has the details
    status, headers, doc = request(s, "GET", "/api/nope")
    assert status == 404 and "x-agent-auth" in headers  # errors are proven too


def test_without_the_secret_nothing_but_the_public_health(start_agent):
    a = start_agent()
    s = a.connect(auth=False)
    status, headers, doc = request(s, "GET", "/api/health")
    assert status == 200 and "x-agent-auth" not in headers
    assert set(doc) == {"status", "version", "sha256", "python", "protocol", "auth"}
    assert doc["auth"] == "ready"
    for method, path in (("GET", "/api/all"), ("GET", "/api/processes"), ("GET", "/api/inventory"),
                         ("POST", "/api/actions/kill")):
        s = a.connect(auth=False)
        status, headers, doc = request(s, method, path, body={"pid": 1, "start_time": 1} if method == "POST" else None)
        assert status == 401 and doc["error"] == "unauthenticated", doc
        assert headers["connection"] == "close"
        assert s.recv(10) == b""


def wrong_secret_session(a):
    s = a.connect(auth=False)
    session = Session("ab" * 32, a.host_header)
    s.sendall(("GET /api/challenge HTTP/1.1\r\nHost: %s\r\nX-Central-Nonce: %s\r\n\r\n"
               % (a.host_header, session.cnonce)).encode())
    status, headers, raw, _ = read_raw(s)
    session.nonce = json.loads(raw.decode())["nonce"]
    return s, session, headers


def test_a_wrong_secret_is_refused_and_the_agent_proof_does_not_verify(start_agent):
    a = start_agent()
    s, session, headers = wrong_secret_session(a)
    # the agent's proof is made with the real secret: a client with another one sees a mismatch
    assert headers["x-agent-auth"] != "mac=" + mac(session.secret, "central-agent/1 challenge",
                                                   session.nonce, session.cnonce)
    s.sendall(("GET /api/all HTTP/1.1\r\nHost: %s\r\nX-Central-Auth: %s\r\n\r\n"
               % (a.host_header, session.sign("GET", "/api/all"))).encode())
    status, _, doc, _ = read_response(s)
    assert status == 401 and "MAC is wrong" in doc["detail"]
    assert any("MAC is wrong" in line for line in wait_for(a.syslog_lines))


def test_replays_are_refused_on_the_same_and_on_a_new_connection(start_agent):
    a = start_agent()
    s = a.connect()
    captured = signed_request(s, "POST", "/api/actions/kill", body={"pid": 999999, "start_time": 1})
    s.sendall(captured)
    status, _, doc, _ = read_response(s)
    assert status == 404  # authenticated; no such process
    s.sendall(captured)  # the same bytes again on the same connection
    status, _, doc, _ = read_response(s)
    assert status == 401 and "replayed" in doc["detail"]
    # on a fresh connection with its own challenge the captured MAC is bound to the old nonce
    t = a.connect()
    t.sendall(captured)
    status, _, doc, _ = read_response(t)
    assert status == 401 and "MAC is wrong" in doc["detail"]
    # and without a challenge at all
    u = a.connect(auth=False)
    u.sendall(captured)
    status, _, doc, _ = read_response(u)
    assert status == 401 and "no challenge" in doc["detail"]


def test_a_tampered_body_or_path_is_refused(start_agent):
    a = start_agent()
    s = a.connect()
    good = signed_request(s, "POST", "/api/actions/kill", body={"pid": 999999, "start_time": 1})
    s.sendall(good.replace(b"999999", b"999998"))
    assert read_response(s)[0] == 401
    s = a.connect()
    good = signed_request(s, "GET", "/api/processes?limit=1")
    s.sendall(good.replace(b"limit=1", b"limit=9"))
    assert read_response(s)[0] == 401


def test_no_secret_file_or_a_readable_one_refuses_everything(start_agent, tmp_path):
    a = start_agent(secret=False)
    s = a.connect(auth=False)
    status, _, doc = request(s, "GET", "/api/health")
    assert status == 200 and doc["auth"].startswith("no secret file")
    s.sendall(b"GET /api/challenge HTTP/1.1\r\nHost: %s\r\nX-Central-Nonce: %s\r\n\r\n"
              % (a.host_header.encode(), b"0" * 32))
    status, _, doc, _ = read_response(s)
    assert status == 503 and doc["error"] == "no_secret"
    readable = tmp_path / "secret"
    write_secret(readable)
    os.chmod(str(readable), 0o644)
    b = start_agent("--secret-file", str(readable))
    status, _, doc = request(b.connect(auth=False), "GET", "/api/health")
    assert "mode 644" in doc["auth"]


def test_sighup_rereads_the_secret(start_agent):
    a = start_agent()
    old = a.connect()
    new_secret = write_secret(a.secret_path)
    os.kill(a.pid, signal.SIGHUP)
    wait_for(lambda: any("secret reloaded" in line for line in a.syslog_lines()))
    a.secret = new_secret
    s = a.connect()
    assert request(s, "GET", "/api/all")[0] == 200
    old.sendall(signed_request(old, "GET", "/api/all"))  # signed with the old secret
    assert read_response(old)[0] == 401


@pytest.mark.parametrize("headers, why", [
    ({"Origin": "http://evil.example"}, "Origin"),
    ({"Origin": "null"}, "Origin"),
    ({"Sec-Fetch-Site": "cross-site"}, "sec-fetch-site"),
    ({"Sec-Fetch-Mode": "no-cors"}, "sec-fetch-mode"),
])
def test_browser_shaped_requests_are_refused(start_agent, headers, why):
    a = start_agent()
    s = a.connect()
    status, _, doc = request(s, "POST", "/api/actions/kill", body={"pid": 999999, "start_time": 1},
                             headers=headers)
    assert status == 403 and why in doc["detail"], doc


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8083", "127.0.0.1",
                                  "localhost", "127.0.0.2:8083", False])
def test_a_foreign_or_missing_host_is_refused(start_agent, host):
    a = start_agent()
    s = a.connect()
    status, _, doc = request(s, "GET", "/api/health", host=host)
    assert status == 403 and "Host" in doc["detail"], doc


def test_actions_need_the_json_content_type(start_agent):
    a = start_agent()
    s = a.connect()
    # a no-cors fetch sends a JSON body with no Content-Type at all
    raw = signed_request(s, "POST", "/api/actions/kill", body={"pid": 999999, "start_time": 1})
    raw = raw.replace(b"Content-Type: application/json\r\n", b"")
    s.sendall(raw)
    status, _, doc, _ = read_response(s)
    assert status == 400 and "Content-Type: application/json" in doc["detail"]
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        status, _, doc = request(s, "POST", "/api/actions/kill", body={"pid": 999999, "start_time": 1},
                                 headers={"Content-Type": ctype})
        assert status == 400, ctype
    status, _, doc = request(s, "POST", "/api/actions/kill", body={"pid": 999999, "start_time": 1},
                             headers={"Content-Type": "application/json; charset=utf-8"})
    assert status == 404  # accepted, and no such process


def test_actions_are_logged_with_who_what_and_result_escaped(start_agent):
    a = start_agent()
    s = a.connect()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        with open("/proc/%d/stat" % sleeper.pid) as f:
            start_time = int(f.read().rsplit(")", 1)[1].split()[19])
        status, _, doc = request(s, "POST", "/api/actions/kill", body={
            "pid": sleeper.pid, "start_time": start_time, "requested_by": "alice\n\x1b[31mforged"})
        assert status == 200 and doc["ok"]
    finally:
        sleeper.kill()
        sleeper.wait()
    request(s, "POST", "/api/actions/service", body={"unit": "ssh.service", "verb": "stop"})
    lines = wait_for(lambda: [x for x in a.syslog_lines() if "action " in x] if len(
        [x for x in a.syslog_lines() if "action " in x]) >= 2 else None)
    kill = next(x for x in lines if "action kill" in x)
    assert kill.startswith("<85>central-agent[%d]: " % a.pid)  # authpriv.notice
    assert "pid=%d" % sleeper.pid in kill and "by uid 0 (root)" in kill and "-> ok exit_status=0" in kill
    assert "\n" not in kill and "\x1b" not in kill and "alice\\\\n\\\\u001b[31mforged" in kill, kill
    service = next(x for x in lines if "action service" in x)
    assert service.startswith("<84>") and "refused 403 forbidden" in service  # authpriv.warning


def test_other_local_users_cannot_connect(start_agent):
    """The peer socket's owner decides: nobody is refused before any byte is read."""
    a = start_agent()
    probe = ("import socket,sys\n"
             "s=socket.create_connection(('127.0.0.1',%d));s.sendall(b'GET /api/health HTTP/1.1\\r\\n"
             "Host: %s\\r\\n\\r\\n');sys.stdout.write(s.recv(4096).decode())" % (a.port, a.host_header))
    nobody = pwd.getpwnam("nobody")

    def as_nobody():
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)

    # the system python: nobody cannot reach a virtualenv's interpreter under /root
    out = subprocess.run(["/usr/bin/python3", "-c", probe], preexec_fn=as_nobody, capture_output=True,
                         text=True, timeout=30)
    assert out.stdout.startswith("HTTP/1.1 403"), out
    assert "connections from uid %d (nobody) are refused" % nobody.pw_uid in out.stdout
    assert any("refused a connection" in x for x in wait_for(a.syslog_lines))


def test_a_taken_port_is_refused_with_the_holder_named(tmp_path):
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen(1)
    port = squatter.getsockname()[1]
    log = tmp_path / "log"
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(str(log))
    try:
        p = subprocess.run([sys.executable, AGENT_PATH, "--port", str(port), "--syslog-socket", str(log),
                            "--secret-file", str(tmp_path / "none")], capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 1
        assert "port %d on 127.0.0.1 is already taken by another process (uid 0 (root), pid %d" % (
            port, os.getpid()) in p.stderr, p.stderr
        assert "agent_impostor" in sink.recv(65536).decode()
    finally:
        squatter.close()
        sink.close()
