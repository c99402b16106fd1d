"""Action endpoints against real processes, a real Engine-API server on a unix socket,
and systemd validation/policy (the real-unit test runs in the LXC end-to-end suite)."""

import json
import os
import re
import signal
import socketserver
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler

import pytest

from tests.agentutil import request, signed_request


def start_time_of(pid):
    with open("/proc/%d/stat" % pid, "rb") as f:
        data = f.read()
    return int(data[data.rfind(b")") + 2:].split()[19])


@pytest.fixture
def sleeper():
    children = []

    def spawn():
        p = subprocess.Popen(["sleep", "300"])
        children.append(p)
        return p

    yield spawn
    for p in children:
        if p.poll() is None:
            p.kill()
        p.wait()


@pytest.fixture
def policy_file(tmp_path):
    def write(doc, mode=0o600):
        path = tmp_path / "policy.json"
        path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        os.chmod(str(path), mode)
        return str(path)
    return write


def kill(agent_proc, **body):
    s = agent_proc.connect()
    try:
        return request(s, "POST", "/api/actions/kill", body=body)
    finally:
        s.close()


# ------------------------------------------------------------------------------- kill

def test_kill_a_real_process(start_agent, sleeper, tmp_path):
    a = start_agent("--policy", str(tmp_path / "absent.json"))
    child = sleeper()
    status, _, doc = kill(a, pid=child.pid, start_time=start_time_of(child.pid),
                          signal="TERM")
    assert status == 200, doc
    assert doc["ok"] is True and doc["exit_status"] == 0
    assert "SIGTERM" in doc["output"] and isinstance(doc["duration_ms"], float)
    assert child.wait(10) == -signal.SIGTERM


def test_kill_accepts_sig_prefixed_names(start_agent, sleeper):
    a = start_agent()
    child = sleeper()
    status, _, doc = kill(a, pid=child.pid, start_time=start_time_of(child.pid),
                          signal="SIGKILL")
    assert status == 200 and doc["ok"]
    assert child.wait(10) == -signal.SIGKILL


def test_kill_with_the_wrong_start_time_is_refused(start_agent, sleeper):
    a = start_agent()
    child = sleeper()
    status, _, doc = kill(a, pid=child.pid, start_time=start_time_of(child.pid) + 1,
                          signal="TERM")
    assert status == 409 and doc["error"] == "stale_pid"
    assert child.poll() is None                      # still alive


def test_kill_of_a_vanished_process(start_agent, sleeper):
    a = start_agent()
    child = sleeper()
    st = start_time_of(child.pid)
    child.kill()
    child.wait()
    status, _, doc = kill(a, pid=child.pid, start_time=st, signal="TERM")
    assert status == 404 and doc["error"] == "no_such_process"


@pytest.mark.parametrize("pid,why", [(1, "pid 1"), (2, "kernel thread")])
def test_kill_refuses_init_and_kernel_threads(start_agent, pid, why):
    a = start_agent()
    status, _, doc = kill(a, pid=pid, start_time=start_time_of(pid), signal="KILL")
    assert status == 403 and doc["error"] == "forbidden"
    assert why in doc["detail"]


def test_kill_refuses_a_kernel_worker_thread(start_agent):
    kworkers = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            f_ = data[data.rfind(b")") + 2:].split()
            if f_[1] == b"2":
                kworkers.append((int(d), int(f_[19])))
    assert kworkers, "no kernel threads visible"
    a = start_agent()
    pid, st = kworkers[0]
    status, _, doc = kill(a, pid=pid, start_time=st, signal="TERM")
    assert status == 403 and "kernel thread" in doc["detail"]


def test_kill_refuses_the_agent_itself(start_agent):
    a = start_agent()
    status, _, doc = kill(a, pid=a.pid, start_time=start_time_of(a.pid), signal="TERM")
    assert status == 403 and "agent itself" in doc["detail"]
    assert a.proc.poll() is None


@pytest.mark.parametrize("body,field", [
    ({"pid": "123", "start_time": 1, "signal": "TERM"}, "pid"),
    ({"pid": True, "start_time": 1, "signal": "TERM"}, "pid"),
    ({"pid": 1.5, "start_time": 1, "signal": "TERM"}, "pid"),
    ({"pid": -5, "start_time": 1, "signal": "TERM"}, "pid"),
    ({"start_time": 1, "signal": "TERM"}, "pid"),
    ({"pid": 1234, "signal": "TERM"}, "start_time"),
    ({"pid": 1234, "start_time": False, "signal": "TERM"}, "start_time"),
    ({"pid": 1234, "start_time": 1, "signal": "NOPE"}, "signal"),
    ({"pid": 1234, "start_time": 1, "signal": 9}, "signal"),
])
def test_kill_bad_arguments_are_400_naming_the_field(start_agent, body, field):
    a = start_agent()
    status, _, doc = kill(a, **body)
    assert status == 400 and doc["error"] == "bad_request"
    assert doc["detail"].startswith(field + ":")


def test_kill_body_must_be_a_json_object(start_agent):
    a = start_agent()
    s = a.connect()
    for raw in (b"not json", b"[1,2]"):
        s.sendall(signed_request(s, "POST", "/api/actions/kill", data=raw))
        from tests.agentutil import read_response
        status, _, doc, _ = read_response(s)
        assert status == 400 and doc["detail"].startswith("body")
    # A browser-style form post (cross-site request) is not accepted.
    status, _, doc = request(s, "POST", "/api/actions/kill", body={"pid": 5},
                             headers={"Content-Type": "text/plain"})
    assert status == 400 and "application/json" in doc["detail"]
    s.close()


def test_kill_policy_refusals(start_agent, sleeper, policy_file):
    child = sleeper()
    st = start_time_of(child.pid)
    a = start_agent("--policy", policy_file({"actions": {"kill": False}}))
    status, _, doc = kill(a, pid=child.pid, start_time=st, signal="TERM")
    assert status == 403 and "disabled" in doc["detail"]
    b = start_agent("--policy", policy_file({"kill_signals": ["HUP"]}))
    status, _, doc = kill(b, pid=child.pid, start_time=st, signal="KILL")
    assert status == 403 and "kill_signals" in doc["detail"]
    c = start_agent("--policy", policy_file({"protected_processes": ["sle*"]}))
    status, _, doc = kill(c, pid=child.pid, start_time=st, signal="TERM")
    assert status == 403 and "protected" in doc["detail"]
    assert child.poll() is None


@pytest.mark.parametrize("content,mode,reason", [
    ("{not json", 0o600, "Expecting"),
    ('{"actions": {"kill": "yes"}}', 0o600, "boolean"),
    ('{"surprise": 1}', 0o600, "unknown key"),
    ('{}', 0o666, "writable by group or others"),
])
def test_an_invalid_policy_file_refuses_everything(start_agent, sleeper, policy_file,
                                                   content, mode, reason):
    child = sleeper()
    a = start_agent("--policy", policy_file(content, mode))
    status, _, doc = kill(a, pid=child.pid, start_time=start_time_of(child.pid),
                          signal="TERM")
    assert status == 403 and "invalid" in doc["detail"] and reason in doc["detail"]
    s = a.connect()
    health = request(s, "GET", "/api/health")[2]
    s.close()
    assert reason in health["policy"]
    assert child.poll() is None


# ------------------------------------------------------------------------- systemd

def service(agent_proc, **body):
    s = agent_proc.connect()
    try:
        return request(s, "POST", "/api/actions/service", body=body)
    finally:
        s.close()


@pytest.mark.parametrize("unit", ["-H evil", "--force", "a b", "foo;rm -rf /", "x" * 300, "",
                                  "../etc/passwd", "nginx\n", 5, None])
def test_service_unit_names_are_strict(start_agent, unit):
    a = start_agent("--systemctl", "/bin/false")
    status, _, doc = service(a, unit=unit, verb="restart")
    assert status == 400 and doc["detail"].startswith("unit:")


def test_service_verb_is_checked(start_agent):
    a = start_agent()
    status, _, doc = service(a, unit="nginx.service", verb="enable")
    assert status == 400 and doc["detail"].startswith("verb:")


@pytest.mark.parametrize("unit", ["ssh", "sshd.service", "systemd-journald", "dbus.service",
                                  "getty@tty1.service", "central-agent"])
def test_default_policy_protects_the_path_into_the_host(start_agent, unit):
    a = start_agent("--policy", "/nonexistent/policy.json")
    status, _, doc = service(a, unit=unit, verb="stop")
    assert status == 403 and "protected" in doc["detail"]


def test_service_patterns_and_switch(start_agent, policy_file):
    a = start_agent("--policy", policy_file({"service_patterns": ["nginx*", "app-*.service"]}))
    status, _, doc = service(a, unit="postgresql", verb="restart")
    assert status == 403 and "service_patterns" in doc["detail"]
    b = start_agent("--policy", policy_file({"actions": {"service": False}}))
    status, _, doc = service(b, unit="nginx", verb="restart")
    assert status == 403 and "disabled" in doc["detail"]


def test_missing_systemctl_is_a_clean_error(start_agent, tmp_path):
    a = start_agent("--systemctl", str(tmp_path / "no-systemctl"))
    status, _, doc = service(a, unit="nginx.service", verb="restart")
    assert status == 503 and doc["error"] == "unavailable"
    assert "systemctl" in doc["detail"]


def test_systemctl_gets_an_argv_list_and_only_services(start_agent, tmp_path):
    # Extra evidence beside the LXC end-to-end test: what exactly is executed.
    log = tmp_path / "argv.json"
    fake = tmp_path / "systemctl"
    fake.write_text("#!%s\nimport json, sys\nopen(%r, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
                    "print('done'); sys.exit(3 if 'fail.service' in sys.argv and sys.argv[1] != 'show' else 0)\n"
                    % (sys.executable, str(log)))
    os.chmod(str(fake), 0o755)
    a = start_agent("--systemctl", str(fake))
    status, _, doc = service(a, unit="nginx", verb="restart")
    assert status == 200 and doc == dict(doc, ok=True, exit_status=0, output="done\n")
    status, _, doc = service(a, unit="reboot.target", verb="start")
    assert status == 200
    status, _, doc = service(a, unit="fail.service", verb="stop")
    assert status == 200 and doc["ok"] is False and doc["exit_status"] == 3
    calls = [json.loads(l) for l in log.read_text().splitlines()]
    calls = [c for c in calls if c[0] != "show"]  # alias resolution: tests/test_agent_action_holes.py
    assert calls == [["restart", "--no-ask-password", "--", "nginx.service"],
                     ["start", "--no-ask-password", "--", "reboot.target.service"],
                     ["stop", "--no-ask-password", "--", "fail.service"]]


# -------------------------------------------------------------------------- docker

class FakeEngine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """A real HTTP server on a unix socket speaking the Engine API calls the agent uses."""

    daemon_threads = True

    def __init__(self, path):
        self.calls = []
        self.containers = {
            "web": {"Id": "a" * 64, "Names": ["/web"], "Image": "nginx:1",
                    "State": "running", "Status": "Up 2 hours"},
            "db": {"Id": "b" * 64, "Names": ["/db"], "Image": "postgres:16",
                   "State": "exited", "Status": "Exited (0) 1 hour ago"},
        }
        socketserver.UnixStreamServer.__init__(self, path, EngineHandler)


class EngineHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_json(self, status, doc=None):
        body = b"" if doc is None else json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.server.calls.append(("GET", self.path))
        if self.path.startswith("/containers/json"):
            self.send_json(200, list(self.server.containers.values()))
        else:
            self.send_json(404, {"message": "page not found"})

    def do_POST(self):
        self.server.calls.append(("POST", self.path))
        m = re.match(r"^/containers/([^/]+)/(start|stop|restart)(\?t=\d+)?$", self.path)
        found = [c for c in self.server.containers.values() if m and c["Id"] == m.group(1)]
        if not found:
            self.send_json(404, {"message": "No such container"})
            return
        c, verb = found[0], m.group(2)
        if verb == "start" and c["State"] == "running":
            self.send_json(304)
            return
        c["State"] = "exited" if verb == "stop" else "running"
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def engine(tmp_path):
    path = str(tmp_path / "docker.sock")
    server = FakeEngine(path)
    t = threading.Thread(target=server.serve_forever)
    t.start()
    yield server
    server.shutdown()
    server.server_close()
    t.join()


def docker(agent_proc, **body):
    s = agent_proc.connect()
    try:
        return request(s, "POST", "/api/actions/docker", body=body)
    finally:
        s.close()


def test_docker_containers_are_listed_through_the_engine_api(start_agent, engine):
    a = start_agent("--docker-socket", engine.server_address)
    s = a.connect()
    status, _, doc = request(s, "GET", "/api/docker")
    assert status == 200 and doc["available"] is True
    assert doc["containers"][1] == {"name": "web", "id": "a" * 12, "image": "nginx:1",
                                    "state": "running", "status": "Up 2 hours"}
    status, _, doc = request(s, "GET", "/api/all")
    assert [c["name"] for c in doc["docker"]["containers"]] == ["db", "web"]
    s.close()


def test_docker_restart_stop_start(start_agent, engine):
    a = start_agent("--docker-socket", engine.server_address)
    status, _, doc = docker(a, container="web", verb="restart")
    assert status == 200 and doc["ok"] is True and doc["exit_status"] == 0
    assert ("POST", "/containers/%s/restart?t=10" % ("a" * 64)) in engine.calls
    status, _, doc = docker(a, container="web", verb="stop")
    assert doc["ok"] and engine.containers["web"]["State"] == "exited"
    status, _, doc = docker(a, container="bbbbbbbbbbbb", verb="start")   # by short id
    assert doc["ok"] and engine.containers["db"]["State"] == "running"
    status, _, doc = docker(a, container="db", verb="start")             # already running
    assert status == 200 and doc["ok"] is True and "already" in doc["output"]


def test_docker_unknown_container_and_bad_names(start_agent, engine):
    a = start_agent("--docker-socket", engine.server_address)
    status, _, doc = docker(a, container="ghost", verb="restart")
    assert status == 404 and doc["error"] == "no_such_container"
    for name in ("-rm", "../x", "a/b", "web?x=1", "x" * 200, 7):
        status, _, doc = docker(a, container=name, verb="restart")
        assert status == 400 and doc["detail"].startswith("container:"), name
    status, _, doc = docker(a, container="web", verb="kill")
    assert status == 400 and doc["detail"].startswith("verb:")
    assert not [c for c in engine.calls if c[0] == "POST"]


def test_docker_policy(start_agent, engine, policy_file):
    a = start_agent("--docker-socket", engine.server_address,
                    "--policy", policy_file({"container_patterns": ["web*"],
                                             "protected_containers": ["web-db"]}))
    status, _, doc = docker(a, container="db", verb="stop")
    assert status == 403 and "container_patterns" in doc["detail"]
    status, _, doc = docker(a, container="web", verb="stop")
    assert status == 200 and doc["ok"]
    b = start_agent("--docker-socket", engine.server_address,
                    "--policy", policy_file({"actions": {"docker": False}}))
    status, _, doc = docker(b, container="web", verb="start")
    assert status == 403 and "disabled" in doc["detail"]


def test_docker_without_a_socket(start_agent, tmp_path):
    a = start_agent("--docker-socket", str(tmp_path / "none.sock"))
    status, _, doc = docker(a, container="web", verb="restart")
    assert status == 503 and doc["error"] == "unavailable"
