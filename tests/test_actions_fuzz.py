"""Fuzz every action argument (hypothesis, bounded) on a real test host; nothing outside the policy runs.

The host's agent runs under a narrow policy: kill allowed (but processes named sentinel-*
protected), services matching fuzzok-* only, the container "db" only. systemctl is a
recording stub (`--systemctl`, only as a recorder here) and docker a real HTTP server on a
unix socket (FakeEngine). Three paths are fuzzed: run_action (the central side), the CLI
(`central action ...` through click's CliRunner) and the agent itself (HTTP POSTs to the
real agent on the host's 127.0.0.1). Afterwards: the sentinels, sshd and the agent live,
and the recorders saw only allowed names. Through the central every refusal is a clean
domain error (400/403/404/409) with its audit row.
"""
import asyncio
import dataclasses
import json
import os
import re
import shutil
import threading

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from central.actions import run_action
from central.cli import cli
from central.model import Conflict, Forbidden, Invalid, NotFound
from central import servers
from central.service import Central
from tests.agentutil import request
from tests.test_agent_actions import FakeEngine

pytestmark = pytest.mark.hosts

ALLOWED_UNIT = re.compile(r"fuzzok-[A-Za-z0-9@._:-]*\.service")
POLICY = {"service_patterns": ["fuzzok-*"], "container_patterns": ["db"],
          "protected_processes": ["sentinel-*", "sshd", "python3"]}
SETTINGS = settings(max_examples=120, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

STUB = """#!/usr/bin/python3
import json, sys
with open(%r, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1] == "show":
    print("Id=" + sys.argv[-1]); print("Names=" + sys.argv[-1])
else:
    print("recorded")
"""

anything = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-3, max_value=40),
    st.floats(allow_nan=True), st.text(max_size=40), st.binary(max_size=10).map(lambda b: b.decode("latin-1")),
    st.sampled_from(["TERM", "KILL", "sigterm", "STOP", "fuzzok-1", "fuzzok-a.service", "nginx", "ssh",
                     "db", "web", "start", "stop", "restart", "enable", "fuzzok-1\n", "-H", "../db", "db\x00",
                     "fuzzok-*", "*", "sentinel-sleep"]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
KIND_KEYS = {"kill": ("pid", "signal", "start_time"), "service": ("unit", "verb"), "docker": ("container", "verb")}


def bodies(pids=(), start_times=()):
    """A kind and an argument dict: each known key absent, plausible or anything; sometimes an extra key."""
    plausible = {
        "pid": st.sampled_from(list(pids) + [1, 2, 3, 4194304]),
        "start_time": st.sampled_from(list(start_times) + [0, 1]),
        "signal": st.sampled_from(["TERM", "KILL", "HUP", "SIGUSR1", "STOP", "SEGV"]),
        "unit": st.sampled_from(["fuzzok-1", "fuzzok-a.service", "nginx", "ssh", "systemd-logind", "fuzzok-1\n",
                                 "fuzzok-@x", "-fuzzok", "fuzzok-1.socket"]),
        "container": st.sampled_from(["db", "web", "bbbbbbbbbbbb", "ghost", "db\n"]),
        "verb": st.sampled_from(["start", "stop", "restart", "enable", "kill"]),
        "extra": anything,
    }

    def args_for(kind):
        keys = KIND_KEYS[kind]
        full = st.fixed_dictionaries({k: plausible[k] for k in keys})
        one_odd = st.tuples(full, st.sampled_from(keys + ("extra",)), anything).map(lambda t: dict(t[0], **{t[1]: t[2]}))
        one_missing = st.tuples(full, st.sampled_from(keys)).map(lambda t: {k: v for k, v in t[0].items() if k != t[1]})
        random = st.fixed_dictionaries({}, optional={k: anything for k in keys + ("extra",)})
        return st.one_of(full, one_odd, one_missing, random)

    return st.sampled_from(sorted(KIND_KEYS)).flatmap(lambda kind: st.tuples(st.just(kind), args_for(kind)))


def start_time_of(proc):
    with open("/proc/%d/stat" % proc.host_pid, "rb") as f:
        data = f.read()
    return int(data[data.rfind(b")") + 2:].split()[19])


@pytest.fixture
def fuzz_host(test_host):
    """A host with the narrow policy, the systemctl recorder, a FakeEngine and sentinels."""
    host = test_host(agent=False)
    log = host.state_dir / "systemctl.log"
    stub = host.state_dir / "systemctl"
    stub.write_text(STUB % str(log))
    os.chmod(str(stub), 0o755)
    policy = host.state_dir / "policy.json"
    policy.write_text(json.dumps(POLICY))
    os.chmod(str(policy), 0o600)
    engine = FakeEngine(str(host.state_dir / "docker.sock"))
    thread = threading.Thread(target=engine.serve_forever, daemon=True)
    thread.start()
    sentinel_exe = host.state_dir / "sentinel-sleep"
    shutil.copy("/bin/sleep", str(sentinel_exe))
    host.start_agent(["--systemctl", str(stub), "--docker-socket", engine.server_address], policy=str(policy))
    host.sentinels = [host.start_process([str(sentinel_exe), "1000"]) for _ in range(3)]
    host.engine = engine
    host.systemctl_calls = lambda: [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    yield host
    engine.shutdown()
    engine.server_close()
    thread.join()


def check_nothing_outside_the_policy_ran(host):
    assert all(s.alive() for s in host.sentinels), "a protected sentinel died"
    assert host.agent.alive() and host.sshd.alive()
    for call in host.systemctl_calls():
        if call[0] == "show":
            assert call[:4] == ["show", "--property=Id", "--property=Names", "--"] and len(call) == 5
        else:
            assert call[0] in ("start", "stop", "restart") and call[1:3] == ["--no-ask-password", "--"]
            assert len(call) == 4 and ALLOWED_UNIT.fullmatch(call[3]), call
    for method, path in host.engine.calls:
        assert method == "GET" or path.startswith("/containers/%s/" % ("b" * 64)), path


def check_the_allowed_actions_did_run(host):
    assert any(call[0] != "show" for call in host.systemctl_calls()), "no allowed service action ran"
    assert any(method == "POST" for method, _ in host.engine.calls), "no allowed docker action ran"


def central_config(config, client_key):
    return dataclasses.replace(config, ssh=dataclasses.replace(config.ssh, key_path=str(client_key.path)),
                               actions=dataclasses.replace(config.actions, timeout=30.0))


def test_fuzz_run_action(fuzz_host, config, client_key):
    host = fuzz_host
    victims = [host.start_process(["sleep", "1000"]) for _ in range(3)]
    loop = asyncio.new_event_loop()
    central = loop.run_until_complete(Central.open(central_config(config, client_key)))
    outcomes = {}
    try:
        loop.run_until_complete(servers.add_server(central, host.name, host.address, fingerprint=host.fingerprint))

        pids = [v.ns_pid for v in victims] + [s.ns_pid for s in host.sentinels] + [host.agent_pid]

        def newest_audit_id() -> int:
            rows = loop.run_until_complete(central.storage.audit_log(limit=1))
            return rows[0]["id"] if rows else 0

        @SETTINGS
        @given(body=bodies(pids, [start_time_of(v) for v in victims]),
               role=st.sampled_from(["admin", "operator", "operator", "viewer"]))
        def example(body, role):
            kind, args = body
            before = newest_audit_id()
            try:
                result = loop.run_until_complete(run_action(central, "fuzz", role, host.name, kind, args))
                outcome = "ok" if result["ok"] else "failed"
            except (Invalid, Forbidden, Conflict, NotFound) as exc:
                outcome = {Invalid: "invalid", Forbidden: "refused", Conflict: "refused", NotFound: "failed"}[type(exc)]
                assert exc.status in (400, 403, 404, 409)
            rows = loop.run_until_complete(central.storage.audit_log(host.name, limit=1))
            added = [r for r in loop.run_until_complete(central.storage.audit_log(limit=5)) if r["id"] > before]
            assert len(added) == 1 and added[0] == rows[0] and rows[0]["result"] == outcome
            assert outcome != "ok" or role != "viewer"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

        example()
    finally:
        loop.run_until_complete(central.close())
        loop.close()
    check_nothing_outside_the_policy_ran(host)
    check_the_allowed_actions_did_run(host)
    assert {"invalid", "refused", "failed", "ok"} <= set(outcomes), outcomes


def test_fuzz_the_cli(fuzz_host, config, client_key, tmp_path):
    host = fuzz_host
    cfg = central_config(config, client_key)

    async def setup():
        central = await Central.open(cfg)
        try:
            await servers.add_server(central, host.name, host.address, fingerprint=host.fingerprint)
        finally:
            await central.close()

    asyncio.run(setup())
    env = {"CENTRAL_DATA_DIR": cfg.data_dir, "CENTRAL_SSH_KEY_PATH": str(client_key.path), "CENTRAL_CONFIG": ""}
    text = st.one_of(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                             min_size=1, max_size=30).filter(lambda t: not t.startswith("-")),
                     st.sampled_from(["fuzzok-1", "db", "web", "ssh", "restart", "stop", "7", "1", "KILL"]))

    @settings(max_examples=40, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(kind=st.sampled_from(["kill", "service", "docker"]), a=text, b=text, signal=text)
    def example(kind, a, b, signal):
        args = ["action", kind, host.name, a] + ([b] if kind != "kill" else ["--signal", signal]) + ["--yes", "--json"]
        before = len(CliRunner().invoke(cli, ["action", "log", host.name, "--json", "--limit", "1000"], env=env).output)
        res = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
        assert res.exit_code in (0, 1), res.output
        if res.exit_code == 1 and not res.output.lstrip().startswith("{"):
            lines = res.output.strip().splitlines()
            assert len(lines) >= 1 and lines[-1].startswith("Error: "), res.output
        log = CliRunner().invoke(cli, ["action", "log", host.name, "--json", "--limit", "1000"], env=env).output
        assert len(log) > before  # one more audit row

    example()
    check_nothing_outside_the_policy_ran(host)


def test_fuzz_the_agent_directly(fuzz_host):
    host = fuzz_host
    victims = [host.start_process(["sleep", "1000"]) for _ in range(3)]
    pids = [v.ns_pid for v in victims] + [s.ns_pid for s in host.sentinels] + [host.agent_pid]
    start_times = [start_time_of(p) for p in victims + host.sentinels + [host.agent]]
    sock = host.connect()
    statuses = {}
    try:
        @SETTINGS
        @given(body=bodies(pids, start_times))
        def example(body):
            kind, args = body
            status, _, doc = request(sock, "POST", "/api/actions/" + kind, body=args)
            assert status in (200, 400, 403, 404, 409), (status, doc)
            if status == 200:
                assert set(doc) == {"ok", "exit_status", "output", "duration_ms"}
            else:
                assert set(doc) == {"error", "detail"} and doc["detail"]
            statuses[status] = statuses.get(status, 0) + 1

        example()
    finally:
        sock.close()
    check_nothing_outside_the_policy_ran(host)
    check_the_allowed_actions_did_run(host)
    assert {200, 400, 403, 404, 409} <= set(statuses), statuses
