"""Only the central may talk to the agent: attacks on real test hosts (sshd in a network
namespace, the real agent with the host's secret, the central's restricted login user).

Each test takes an attacker's position the issue names: a local unprivileged user of the
host, a web page in a browser on the host, a process squatting the agent's port, someone
holding the central's stolen SSH key, and someone who captured the bytes on the channel.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess

import asyncssh
import pytest

from central import servers
from central.actions import run_action
from central.config import AlertsConfig
from central.service import Central
from tests import hostfarm
from tests.agentutil import authenticate, read_raw, request, signed_request
from tests.conftest import make_config
from tests.helpers import wait_for, wait_for_sync

pytestmark = pytest.mark.hosts

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def start_time_in(host, proc):
    """Field 22 of /proc/PID/stat of a process in the host (what a kill must carry)."""
    with open("/proc/%d/stat" % proc.host_pid, "rb") as f:
        data = f.read()
    return int(data[data.rfind(b")") + 2:].split()[19])


@pytest.fixture
async def hcentral(tmp_path, client_key):
    cfg = make_config(tmp_path, local=False)
    cfg = dataclasses.replace(cfg, ssh=dataclasses.replace(cfg.ssh, key_path=str(client_key.path)),
                              alerts=dataclasses.replace(AlertsConfig(), tick_interval=0.5))
    central = await Central.open(cfg)
    yield central
    await central.close()


PROBE = r"""
import json, socket, sys
port, pid, start_time = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def ask(raw):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(raw)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode("latin-1")
body = json.dumps({"pid": pid, "start_time": start_time, "signal": "KILL"}).encode()
host = "127.0.0.1:%d" % port
print(json.dumps({
    "kill": ask(b"POST /api/actions/kill HTTP/1.1\r\nHost: " + host.encode() + b"\r\nContent-Type: application/json"
                b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body),
    "processes": ask(b"GET /api/processes?limit=1000 HTTP/1.1\r\nHost: " + host.encode() + b"\r\n\r\n"),
    "health": ask(b"GET /api/health HTTP/1.1\r\nHost: " + host.encode() + b"\r\n\r\n"),
}))
"""


def test_a_local_unprivileged_user_can_neither_act_nor_read(test_host):
    host = test_host()
    # root's process, with something secret on its command line
    victim = host.start_process(["sh", "-c", "exec sleep 1000", "sh", "--password=hunter2"])
    hostfarm._wait_for(lambda: "sleep" in host.run(["cat", "/proc/%d/comm" % victim.ns_pid]).stdout, 10, "sleep")
    out = host.run(["runuser", "-u", "nobody", "--", hostfarm.HOST_PYTHON, "-c", PROBE, str(hostfarm.AGENT_PORT),
                    str(victim.ns_pid), str(start_time_in(host, victim))])
    answers = json.loads(out.stdout)
    nobody = host.run(["id", "-u", "nobody"]).stdout.strip()
    for name, answer in answers.items():
        assert answer.startswith("HTTP/1.1 403 Forbidden"), (name, answer)
        assert "connections from uid %s (nobody) are refused" % nobody in answer
        assert "hunter2" not in answer and "sleep" not in answer
    assert victim.alive()
    lines = wait_for_sync(lambda: [x for x in host.syslog_lines() if "refused a connection" in x], 10,
                          "the refusals in the host's log")
    assert "uid %s (nobody)" % nobody in lines[0]
    # root on the host without the secret gets no further than the public health check
    with host.connect() as sock:
        status, _, doc = request(sock, "GET", "/api/processes", host="127.0.0.1:8083")
    assert status == 401 and "hunter2" not in json.dumps(doc)


ATTACK_PAGE = """<!doctype html><html><body><pre id=out>start</pre>
<form id=f method=POST action="http://127.0.0.1:8083/api/actions/kill" enctype="text/plain" target=sink>
<input name='{"pid": %(pid)d, "start_time": %(start_time)d, "signal": "KILL", "x": "' value='"}'></form>
<iframe name=sink></iframe>
<script>
const out = document.getElementById('out');
const log = (s) => { out.textContent += '\\n' + s; };
const kill = JSON.stringify({pid: %(pid)d, start_time: %(start_time)d, signal: "KILL"});
(async () => {
  // a no-cors POST whose body has no type: no Content-Type header at all
  try { await fetch('http://127.0.0.1:8083/api/actions/kill', {method: 'POST', mode: 'no-cors',
        body: new Blob([kill])}); log('blob sent'); } catch (e) { log('blob error ' + e); }
  try { await fetch('http://127.0.0.1:8083/api/actions/kill', {method: 'POST', mode: 'no-cors',
        body: kill}); log('text sent'); } catch (e) { log('text error ' + e); }
  try { const r = await fetch('http://127.0.0.1:8083/api/processes');
        log('read ' + r.status + ' ' + (await r.text())); } catch (e) { log('read error ' + e); }
  document.getElementById('f').submit();
  log('form sent');
})();
</script></body></html>
"""


@pytest.mark.browser
def test_a_web_page_in_a_browser_on_the_host_cannot_act(test_host):
    """Real Chromium inside the host's namespaces, run by root there (the worst case: the
    peer check lets root in, so the browser-request refusal and the MACs are what hold)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip("BROWSER TEST SKIPPED: %s not installed (apt-get install chromium)" % CHROMIUM)
    host = test_host()
    victim = host.start_process(["sleep", "1000"])
    hostfarm._wait_for(lambda: "sleep" in host.run(["cat", "/proc/%d/comm" % victim.ns_pid]).stdout, 10, "sleep")
    site = host.state_dir / "site"
    site.mkdir()
    (site / "attack.html").write_text(ATTACK_PAGE % {"pid": victim.ns_pid, "start_time": start_time_in(host, victim)})
    host.spawn([hostfarm.HOST_PYTHON, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(site), "8000"],
               log_name="site.log")
    hostfarm._wait_for(lambda: host.port_open(8000), 10, "the attack site")
    page = host.run([CHROMIUM] + CHROMIUM_FLAGS + [
        "--user-data-dir=/tmp/chromium", "--host-resolver-rules=MAP evil.example 127.0.0.1",
        "--virtual-time-budget=10000", "--dump-dom", "http://evil.example:8000/attack.html"], timeout=180).stdout
    assert "blob sent" in page and "form sent" in page, page  # the browser did send them
    assert "read error" in page  # and could not read the answer
    refused = wait_for_sync(lambda: (lambda lines: lines if len(lines) >= 4 else None)(
        [x for x in host.syslog_lines() if "refused" in x and "Origin" in x]), 20, "the agent's refusals")
    assert sum("POST /api/actions/kill" in x for x in refused) >= 3 and any("GET /api/processes" in x for x in refused)
    assert victim.alive()
    assert not any(" action kill" in x for x in host.syslog_lines())  # no action was even attempted

    # DNS rebinding: a name the attacker controls now resolves to the host's loopback
    rebound = host.run([CHROMIUM] + CHROMIUM_FLAGS + [
        "--user-data-dir=/tmp/chromium2", "--host-resolver-rules=MAP rebind.example 127.0.0.1",
        "--dump-dom", "http://rebind.example:8083/api/processes"], timeout=180).stdout
    assert "Host rebind.example:8083 is not this agent's address" in rebound, rebound
    assert "sleep" not in rebound


async def test_a_port_squatter_is_detected_and_never_polled(hcentral, test_host):
    host = await asyncio.to_thread(test_host)
    await servers.add_server(hcentral, host.name, host.address, fingerprint=host.fingerprint, agent_secret=host.agent_secret)
    server = await hcentral.storage.get_server(host.name)
    await hcentral.poller.start()
    await wait_for(lambda: _status(hcentral, host.name, "online"), 30, "online")
    await hcentral.poller.stop()

    # the agent goes down (a restart, a crash) and something else takes its port
    await asyncio.to_thread(host.start_fake_agent, "squatter")
    squatter = host.agent
    await hcentral.poller.start()
    reason = await wait_for(lambda: _reason(hcentral, host.name, "agent_impostor"), 30, "agent_impostor")
    assert "does not hold the host's secret" in reason.last_error
    alerts = await wait_for(lambda: hcentral.storage.list_alerts(firing_only=True, server_id=server.id), 30,
                            "the impostor alert")
    assert [(a["rule"], a["severity"]) for a in alerts] == [("agent_impostor", "critical")]
    # never polled: the squatter only ever saw challenges, nothing of it was stored
    asked = [line for line in hostfarm._tail(host.agent_log_path, 100000).splitlines() if line.startswith("REQUEST")]
    assert asked and all(line.startswith("REQUEST GET /api/challenge ") for line in asked), asked
    now = await hcentral.storage.get_server(host.name)
    assert now.hostname == host.name and now.agent_version != "9.9.9"
    _, doc = await hcentral.storage.latest_document(server.id)
    assert doc["hostname"] == host.name

    # the real agent refuses to start while the port is taken, and says who holds it
    refused = await asyncio.to_thread(host.spawn, [hostfarm.HOST_PYTHON, str(host.farm.visible(host.farm.agent_path)),
                                                   "--port", str(hostfarm.AGENT_PORT)], "agent-2.log")
    assert await asyncio.to_thread(refused.wait, 30) == 1
    log = (host.state_dir / "agent-2.log").read_text()
    assert "refusing to start: port 8083 on 127.0.0.1 is already taken by another process" in log
    assert "pid %d (python3)" % squatter.ns_pid in log and "agent_impostor" in log

    # the squatter leaves, the agent comes back: polled again, the alert resolves
    await asyncio.to_thread(host.start_agent)
    await wait_for(lambda: _status(hcentral, host.name, "online"), 30, "online again")
    await wait_for(lambda: _no_firing(hcentral, server.id), 30, "the alert to resolve")


async def _status(central, name, status):
    return (await central.storage.get_server(name)).status == status


async def _reason(central, name, reason):
    server = await central.storage.get_server(name)
    return server if server.status_reason == reason else None


async def _no_firing(central, server_id):
    return not await central.storage.list_alerts(firing_only=True, server_id=server_id)


async def test_a_server_without_a_secret_needs_a_redeploy_and_is_not_asked(hcentral, test_host):
    host = await asyncio.to_thread(test_host)
    added = await servers.add_server(hcentral, host.name, host.address, fingerprint=host.fingerprint)  # no secret
    assert added["agent"]["reason"] == "agent_needs_redeploy" and "central deploy" in added["agent"]["hint"]
    server = await hcentral.storage.get_server(host.name)
    await hcentral.poller.start()
    now = await wait_for(lambda: _reason(hcentral, host.name, "agent_needs_redeploy"), 30, "agent_needs_redeploy")
    assert now.status == "error" and f"central deploy {host.name}" in now.last_error
    alerts = await wait_for(lambda: hcentral.storage.list_alerts(firing_only=True, server_id=server.id), 30, "alert")
    assert [(a["rule"], a["severity"]) for a in alerts] == [("agent_needs_redeploy", "warning")]
    # its agent was never contacted: no refusal in the host's log
    assert not [x for x in host.syslog_lines() if "refused" in x]


def ssh(host, key, *args, user="central", timeout=20):
    return subprocess.run(host.ssh_argv(key.path, user=user, options=["ExitOnForwardFailure=yes"]) + list(args),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


async def open_unix_socket_as_central(host, key, path):
    async with asyncssh.connect(host.address, username="central", client_keys=[str(key.path)], config=[],
                                known_hosts=str(host.write_known_hosts(host.state_dir / "kh-unix"))) as conn:
        try:
            await conn.open_unix_connection(path)
        except asyncssh.ChannelOpenError as exc:
            return "refused" if exc.reason == "open failed" else exc.reason
        return "opened"


def test_the_stolen_central_key_can_reach_the_agent_port_and_nothing_else(test_host, client_key, tmp_path):
    """The real OpenSSH client with the central's key, as its login user: no -R (so no port
    squatting), no -W or -L elsewhere, no streamlocal, no tunnel, no shell or TTY; polling works."""
    operator = tmp_path / "operator"
    hostfarm.generate_key(operator, "operator")
    host = test_host(authorized_keys=[operator.with_suffix(".pub").read_text()],
                     central_keys=[client_key.public_key])
    host.stop_agent()  # the moment a squatter would want: the agent's port is free
    for forward in (["-R", "127.0.0.1:8083:127.0.0.1:22"], ["-R", "0.0.0.0:9999:127.0.0.1:22"],
                    ["-R", "/tmp/central-squat.sock:127.0.0.1:22"]):
        res = ssh(host, client_key, "-N", *forward)
        assert res.returncode == 255 and "forwarding failed" in res.stderr, (forward, res.stderr)
    assert not host.port_open(hostfarm.AGENT_PORT) and not host.port_open(9999)
    assert host.run(["test", "-e", "/tmp/central-squat.sock"], check=False).returncode != 0
    host.start_agent()
    for target in ("127.0.0.1:22", "%s:22" % host.farm.gateway, "127.0.0.1:8084"):
        res = ssh(host, client_key, "-W", target)
        assert res.returncode == 255 and "stdio forwarding failed" in res.stderr, (target, res.stderr)
        address, port = target.split(":")
        assert "to connect to host %s port %s, but the request was denied" % (address, port) in \
            hostfarm._tail(host.sshd_log_path, 4000)
    # direct-streamlocal: no unix socket on the host either (this one exists: the agent's syslog)
    assert asyncio.run(open_unix_socket_as_central(host, client_key, str(host.syslog_path))) == "refused"
    assert "refused streamlocal port forward" in hostfarm._tail(host.sshd_log_path, 4000)
    res = ssh(host, client_key, "-o", "Tunnel=point-to-point", "-w", "any", "-N")
    assert res.returncode == 255 and "tunnel" in res.stderr.lower(), res.stderr
    res = ssh(host, client_key, "id; touch /tmp/owned")
    # ForceCommand runs through the login user's shell, nologin: it says no and runs nothing
    assert res.returncode != 0 and "uid=" not in res.stdout and "not available" in res.stdout
    res = ssh(host, client_key, "-tt", "id")
    assert "uid=" not in res.stdout
    assert host.run(["test", "-e", "/tmp/owned"], check=False).returncode != 0
    res = ssh(host, client_key, "hostname", user="root")  # and not root's door
    assert res.returncode == 255 and "Permission denied" in res.stderr
    effective = host.run(["sshd", "-T", "-C", "user=central,host=x,addr=10.0.0.1,laddr=127.0.0.1,lport=22"]).stdout
    for setting in ("x11forwarding no", "allowagentforwarding no", "permittty no", "permituserrc no",
                    "gatewayports no", "forcecommand /bin/false", "permitlisten none", "permitopen 127.0.0.1:8083"):
        assert setting in effective.splitlines(), setting
    # what it can still do: reach the agent's port, where the agent wants the secret
    res = subprocess.run(host.ssh_argv(client_key.path, user="central") + ["-W", "127.0.0.1:8083"],
                         input=b"GET /api/all HTTP/1.1\r\nHost: 127.0.0.1:8083\r\nConnection: close\r\n\r\n",
                         capture_output=True, timeout=20)
    assert res.stdout.startswith(b"HTTP/1.1 401") and b"X-Central-Auth is missing" in res.stdout


async def test_a_captured_request_or_answer_cannot_be_replayed(hcentral, test_host):
    """A relay in the host records a real poll; replaying the request to the agent, or an old
    signed answer to the central, fails."""
    host = await asyncio.to_thread(test_host)
    rec = host.state_dir / "capture"
    rec.mkdir()
    relay = hostfarm.TESTS_DIR / "relay.py"
    relay_proc = await asyncio.to_thread(host.spawn, [hostfarm.HOST_PYTHON, str(host.farm.visible(relay)), "8084",
                                                      "8083", str(rec), "record"], "relay.log")
    await asyncio.to_thread(hostfarm._wait_for, lambda: host.port_open(8084), 10, "the relay")
    # root: the central's restricted user may only open 127.0.0.1:8083, the relay sits on 8084
    await servers.add_server(hcentral, host.name, host.address, user="root", agent_port=8084,
                              fingerprint=host.fingerprint, agent_secret=host.agent_secret)
    polled = await servers.poll_now(hcentral, host.name)
    assert polled["ok"], polled
    # the connection that carried the poll (others: the relay's own port probe, add's check)
    [polled_conn] = [f for f in rec.glob("c2a-*.bin") if b"GET /api/all " in f.read_bytes()]
    captured = polled_conn.read_bytes()
    requests = [r for r in captured.split(b"GET ") if r]
    assert requests[0].startswith(b"/api/challenge") and requests[1].startswith(b"/api/all")

    def replay(raw, challenge):
        with host.connect() as sock:
            if challenge:
                authenticate(sock, host.agent_secret)
            sock.sendall(raw)
            status, _, body, _ = read_raw(sock)
        return status, json.loads(body)

    for challenge in (True, False):
        status, doc = await asyncio.to_thread(replay, b"GET " + requests[1], challenge)
        assert status == 401, doc
        assert ("MAC is wrong" if challenge else "no challenge") in doc["detail"]

    # the relay now swaps the agent's fresh answer for the one it recorded
    await asyncio.to_thread(relay_proc.stop)
    await asyncio.to_thread(host.spawn, [hostfarm.HOST_PYTHON, str(host.farm.visible(relay)), "8084", "8083",
                                         str(rec), "replay-response:" + polled_conn.stem.split("-")[1]],
                                        "relay-2.log")
    await asyncio.to_thread(hostfarm._wait_for, lambda: host.port_open(8084), 10, "the relay")
    hcentral.pool.forget((await hcentral.storage.get_server(host.name)).id)
    polled = await servers.poll_now(hcentral, host.name)
    assert polled["ok"] is False and polled["reason"] == "agent_impostor", polled
    assert "wrong proof" in polled["error"]


def test_browser_shaped_requests_and_untyped_actions_are_refused_on_the_host(test_host):
    host = test_host()
    victim = host.start_process(["sleep", "1000"])
    body = {"pid": victim.ns_pid, "start_time": 0}
    cases = [({"Origin": "http://evil.example"}, None, 403, "Origin"),
             ({"Sec-Fetch-Site": "cross-site"}, None, 403, "sec-fetch-site"),
             ({}, "evil.example:8083", 403, "Host evil.example:8083")]
    for headers, host_header, status, why in cases:
        with authenticate(host.connect(), host.agent_secret) as sock:  # a refusal closes it
            got, _, doc = request(sock, "POST", "/api/actions/kill", body=body, headers=headers, host=host_header)
        assert got == status and why in doc["detail"], doc
    with authenticate(host.connect(), host.agent_secret) as sock:
        raw = signed_request(sock, "POST", "/api/actions/kill", body=body)
        sock.sendall(raw.replace(b"Content-Type: application/json\r\n", b""))
        status, _, doc, _ = read_raw(sock)
    assert status == 400 and b"Content-Type: application/json" in doc
    assert victim.alive()


async def test_an_action_through_the_central_is_in_the_hosts_log(hcentral, test_host):
    host = await asyncio.to_thread(test_host)
    victim = await asyncio.to_thread(host.start_process, ["sleep", "1000"])
    await asyncio.to_thread(hostfarm._wait_for, lambda: "sleep" in host.run(
        ["cat", "/proc/%d/comm" % victim.ns_pid]).stdout, 10, "sleep")
    await servers.add_server(hcentral, host.name, host.address, fingerprint=host.fingerprint, agent_secret=host.agent_secret)
    result = await run_action(hcentral, "alice\x1b[2J", "operator", host.name, "kill",
                              {"pid": victim.ns_pid, "start_time": start_time_in(host, victim)})
    assert result["ok"]
    uid = host.run(["id", "-u", "central"]).stdout.strip()
    [line] = await wait_for(lambda: [x for x in host.syslog_lines() if "action kill" in x], 10, "the log line")
    assert "pid=%d" % victim.ns_pid in line and "by uid %s (central)" % uid in line
    assert "requested_by=\"alice\\\\u001b[2J\"" in line and "\x1b" not in line
    assert "-> ok exit_status=0: sent SIGTERM to %d (sleep)" % victim.ns_pid in line


def test_farm_hosts_look_deployed(test_host):
    """The farm's deployed-looking host: secret root-only, login user without shell or home."""
    host = test_host()
    assert host.run(["stat", "-c", "%U %a", "/etc/central-agent/secret"]).stdout.split() == ["root", "600"]
    assert host.run(["cat", "/etc/central-agent/secret"]).stdout.strip() == host.agent_secret
    entry = host.run(["getent", "passwd", "central"]).stdout.strip().split(":")
    assert entry[4] == hostfarm.CENTRAL_USER_MARKER and entry[6] == "/usr/sbin/nologin"
