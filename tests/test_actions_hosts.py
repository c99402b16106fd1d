"""Remote actions on real test hosts: network-namespace hosts running OpenSSH and the agent.

The central talks to each host through its SSH pool and a direct-tcpip channel to the
agent, exactly as in production. Docker: no Docker engine can run on this machine kind, so
the agent's Engine-API client talks to a real HTTP server on a unix socket speaking the same
endpoints (FakeEngine from tests/test_agent_actions.py), through the whole path
central -> SSH -> agent -> unix socket.
"""
import dataclasses
import os
import threading

import pytest

from central.actions import audit_log, run_action
from central.model import Conflict, Forbidden, Invalid, NotFound, PollError
from central import servers
from central.service import Central
from tests.agentutil import wait_for
from tests.test_agent_actions import FakeEngine

pytestmark = pytest.mark.hosts


@pytest.fixture
async def central(config, client_key):
    """A Central using the key the test hosts authorize."""
    cfg = dataclasses.replace(
        config, ssh=dataclasses.replace(config.ssh, key_path=str(client_key.path)),
        actions=dataclasses.replace(config.actions, timeout=30.0))
    c = await Central.open(cfg)
    yield c
    await c.close()


async def add(central, host, poll=True):
    """Add a test host as a server (its host key pinned) and store one poll."""
    result = await servers.add_server(central, host.name, host.address, fingerprint=host.fingerprint,
                                      agent_secret=host.agent_secret)
    assert result["agent"]["ok"], result
    server = await central.storage.get_server(host.name)
    if poll:
        outcome = await central.poller.poll(server)
        assert outcome.ok, outcome.error
        await central.storage.write_polls([outcome], 3)
    return server


async def last_audit(central):
    return (await audit_log(central, limit=1))[0]


def ns_threads(proc):
    """(thread id as the host's PID namespace numbers it, start time) of a host process's threads."""
    out = []
    for tid in os.listdir("/proc/%d/task" % proc.host_pid):
        base = "/proc/%d/task/%s/" % (proc.host_pid, tid)
        with open(base + "stat", "rb") as f:
            data = f.read()
        start_time = int(data[data.rfind(b")") + 2:].split()[19])
        with open(base + "status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    out.append((int(line.split()[-1]), start_time))
    return out


async def test_kill_a_real_process_with_the_start_time_the_central_saw(central, test_host):
    host = test_host()
    victim = host.start_process(["sleep", "1000"])
    bystander = host.start_process(["sleep", "1001"])
    server = await add(central, host)
    _, doc = await central.storage.latest_document(server.id)
    seen = [p for p in doc["processes"]["top_memory"] if p["pid"] == victim.ns_pid]
    assert seen, "the victim is in the stored sample"
    result = await run_action(central, "cli:tester", "admin", host.name, "kill", {"pid": victim.ns_pid})
    assert result["ok"] is True and "sent SIGTERM to %d (sleep)" % victim.ns_pid in result["output"]
    assert result["arguments"]["start_time"] == seen[0]["start_time"]
    wait_for(lambda: not victim.alive())
    assert bystander.alive() and host.agent.alive()
    row = await last_audit(central)
    assert row == dict(row, server_name=host.name, server_id=server.id, action="kill", result="ok",
                       exit_status=0, arguments=result["arguments"])


async def test_kill_a_process_started_after_the_last_poll(central, test_host):
    host = test_host()
    server = await add(central, host)
    victim = host.start_process(["sleep", "1002"])
    _, doc = await central.storage.latest_document(server.id)
    assert victim.ns_pid not in [p["pid"] for p in doc["processes"]["top_memory"]]
    result = await run_action(central, "cli:tester", "operator", host.name, "kill",
                              {"pid": victim.ns_pid, "signal": "KILL"})
    assert result["ok"] is True
    wait_for(lambda: not victim.alive())


async def test_a_reused_pid_is_refused_and_audited(central, test_host):
    host = test_host()
    victim = host.start_process(["sleep", "1000"])
    await add(central, host)
    (real,) = [p["start_time"] for p in (await servers.poll_now(central, host.name))["document"]["processes"]["top_memory"]
               if p["pid"] == victim.ns_pid]
    with pytest.raises(Conflict, match="the process you saw is gone"):
        await run_action(central, "cli:tester", "admin", host.name, "kill",
                         {"pid": victim.ns_pid, "start_time": real - 1, "signal": "KILL"})
    assert victim.alive()
    row = await last_audit(central)
    assert row["result"] == "refused" and row["arguments"]["start_time"] == real - 1
    assert "start_time %d, not %d" % (real, real - 1) in row["output"]


async def test_init_and_the_agent_and_its_threads_are_refused(central, test_host):
    host = test_host()
    await add(central, host)
    with pytest.raises(Forbidden, match="pid 1"):
        await run_action(central, "cli:tester", "admin", host.name, "kill", {"pid": 1, "signal": "KILL"})
    with pytest.raises(Forbidden, match="agent itself"):
        await run_action(central, "cli:tester", "admin", host.name, "kill", {"pid": host.agent_pid, "signal": "KILL"})
    threads = [t for t in ns_threads(host.agent) if t[0] != host.agent_pid]
    assert threads, "the agent has worker threads"
    refused = 0
    for tid, start_time in threads:
        # not in any process list, so only a caller who names the start time gets this far
        try:
            await run_action(central, "cli:tester", "admin", host.name, "kill",
                             {"pid": tid, "start_time": start_time, "signal": "KILL"})
        except Invalid as err:
            assert "is a thread of process %d" % host.agent_pid in str(err)
            refused += 1
        except NotFound:
            # a short-lived thread (a rare sampler's) ended in between: it is gone, not killed
            assert tid not in [t for t, _ in ns_threads(host.agent)]
        else:
            raise AssertionError(f"the kill of thread {tid} of the agent was not refused")
    assert refused >= 1
    assert host.agent.alive()
    results = [r["result"] for r in await audit_log(central, host.name)]
    assert results.count("invalid") == refused and results[-2:] == ["refused", "refused"], results
    # the host's sshd (our way in) is protected by the default policy, too
    sshd = host.sshd.ns_pid
    with pytest.raises(Forbidden, match="protected"):
        await run_action(central, "cli:tester", "admin", host.name, "kill", {"pid": sshd})
    assert host.sshd.alive()


async def test_viewers_and_invalid_requests_never_reach_the_host(central, test_host):
    host = test_host()
    victim = host.start_process(["sleep", "1000"])
    await add(central, host)
    host.stop_sshd()  # any attempt to reach the host would now fail as unreachable
    with pytest.raises(Forbidden, match="viewer"):
        await run_action(central, "web:vic", "viewer", host.name, "kill", {"pid": victim.ns_pid})
    for args in ({"pid": "x"}, {"pid": victim.ns_pid, "signal": "STOP"}, {"pid": victim.ns_pid, "cmd": "sh"}):
        with pytest.raises(Invalid):
            await run_action(central, "cli:tester", "admin", host.name, "kill", args)
    with pytest.raises(Invalid):
        await run_action(central, "cli:tester", "admin", host.name, "service", {"unit": "a|b", "verb": "stop"})
    rows = await audit_log(central, host.name)
    assert [r["result"] for r in rows] == ["invalid"] * 4 + ["refused"]
    assert victim.alive()
    # a valid request does try the host, and its failure is audited as an error
    with pytest.raises(PollError):
        await run_action(central, "cli:tester", "admin", host.name, "service", {"unit": "nginx", "verb": "stop"})
    row = await last_audit(central)
    assert row["result"] == "error" and row["arguments"] == {"unit": "nginx", "verb": "stop"}


async def test_the_hosts_policy_is_the_last_word(central, test_host):
    host = test_host(policy={"actions": {"kill": False}})
    os.chmod(str(host.state_dir / "agent-policy.json"), 0o600)
    victim = host.start_process(["sleep", "1000"])
    await add(central, host)
    with pytest.raises(Forbidden, match="the host's policy refuses this: kill actions are disabled"):
        await run_action(central, "cli:tester", "admin", host.name, "kill", {"pid": victim.ns_pid})
    assert victim.alive() and (await last_audit(central))["result"] == "refused"


@pytest.fixture
def engine(test_host):
    """A real HTTP server speaking the Engine API on a unix socket visible inside test hosts."""
    servers = []

    def start(host):
        path = str(host.state_dir / "docker.sock")
        server = FakeEngine(path)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return server

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_docker_restart_stop_start_through_the_whole_path(central, test_host, engine):
    host = test_host(agent=False)
    fake = engine(host)
    host.start_agent(["--docker-socket", fake.server_address])
    await add(central, host)
    result = await run_action(central, "cli:tester", "admin", host.name, "docker", {"container": "web", "verb": "restart"})
    assert result["ok"] is True and result["exit_status"] == 0
    result = await run_action(central, "cli:tester", "admin", host.name, "docker", {"container": "web", "verb": "stop"})
    assert result["ok"] is True and fake.containers["web"]["State"] == "exited"
    result = await run_action(central, "cli:tester", "admin", host.name, "docker", {"container": "db", "verb": "start"})
    assert result["ok"] is True and fake.containers["db"]["State"] == "running"
    posts = [path for method, path in fake.calls if method == "POST"]
    assert posts == ["/containers/%s/restart?t=10" % ("a" * 64), "/containers/%s/stop?t=10" % ("a" * 64),
                     "/containers/%s/start" % ("b" * 64)]
    with pytest.raises(NotFound, match="no container named ghost"):
        await run_action(central, "cli:tester", "admin", host.name, "docker", {"container": "ghost", "verb": "stop"})
    with pytest.raises(Invalid):
        await run_action(central, "cli:tester", "admin", host.name, "docker", {"container": "web;ls", "verb": "stop"})
    rows = await audit_log(central, host.name)
    assert [r["result"] for r in rows] == ["invalid", "failed", "ok", "ok", "ok"]
    assert len([1 for method, _ in fake.calls if method == "POST"]) == 3


async def test_docker_policy_patterns_on_the_host(central, test_host, engine):
    host = test_host(agent=False)
    fake = engine(host)
    policy = host.state_dir / "policy.json"
    policy.write_text('{"container_patterns": ["db*"]}')
    os.chmod(str(policy), 0o600)
    host.start_agent(["--docker-socket", fake.server_address], policy=str(policy))
    await add(central, host)
    with pytest.raises(Forbidden, match="container_patterns"):
        await run_action(central, "cli:tester", "admin", host.name, "docker", {"container": "web", "verb": "stop"})
    assert fake.containers["web"]["State"] == "running"
    assert (await run_action(central, "cli:tester", "admin", host.name, "docker",
                             {"container": "db", "verb": "start"}))["ok"] is True
