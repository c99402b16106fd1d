"""central/actions.py: validation, roles, audit, and real actions on the `local` server.

The `local` server runs the bundled agent's action code in-process, so these tests signal
real processes started here. Actions over SSH on real test hosts: test_actions_hosts.py.
"""
import asyncio
import dataclasses
import json
import os
import sys

import pytest

from central import actions
from central.actions import Cancelled, audit_log, run_action, validate
from central.model import Conflict, Forbidden, Invalid, NotFound
from tests.conftest import make_config
from tests.test_agent_actions import sleeper, start_time_of  # noqa: F401 - a fixture




async def last_audit(central):
    return (await central.storage.audit_log(limit=1))[0]


# validation (pure)

@pytest.mark.parametrize("kind,args,expected", [
    ("kill", {"pid": 1234}, {"pid": 1234, "signal": "TERM", "start_time": None}),
    ("kill", {"pid": 99, "signal": "sigkill", "start_time": 7}, {"pid": 99, "signal": "KILL", "start_time": 7}),
    ("kill", {"pid": 99, "signal": "SIGUSR1"}, {"pid": 99, "signal": "USR1", "start_time": None}),
    ("service", {"unit": "nginx", "verb": "restart"}, {"unit": "nginx", "verb": "restart"}),
    ("service", {"unit": "getty@tty1.service", "verb": "stop"}, {"unit": "getty@tty1.service", "verb": "stop"}),
    ("docker", {"container": "web-1", "verb": "start"}, {"container": "web-1", "verb": "start"}),
])
def test_valid_arguments_are_normalised(kind, args, expected):
    assert validate(kind, args) == expected


@pytest.mark.parametrize("kind,args,field", [
    ("kill", {}, "pid"),
    ("kill", {"pid": "123"}, "pid"),
    ("kill", {"pid": True}, "pid"),
    ("kill", {"pid": 0}, "pid"),
    ("kill", {"pid": -1}, "pid"),
    ("kill", {"pid": 2 ** 64}, "pid"),
    ("kill", {"pid": 12.0}, "pid"),
    ("kill", {"pid": 5, "signal": "STOP"}, "signal"),
    ("kill", {"pid": 5, "signal": "SEGV"}, "signal"),
    ("kill", {"pid": 5, "signal": 9}, "signal"),
    ("kill", {"pid": 5, "signal": "ſigterm"}, "signal"),   # upper() would make it SIGTERM
    ("kill", {"pid": 5, "signal": "TERM\n"}, "signal"),
    ("kill", {"pid": 5, "signal": None}, "signal"),
    ("kill", {"pid": 5, "start_time": -1}, "start_time"),
    ("kill", {"pid": 5, "start_time": "1"}, "start_time"),
    ("kill", {"pid": 5, "cmd": "rm"}, "unknown argument 'cmd'"),
    ("service", {"unit": "nginx", "verb": "enable"}, "verb"),
    ("service", {"unit": "nginx"}, "verb"),
    ("service", {"unit": "-H evil", "verb": "stop"}, "unit"),
    ("service", {"unit": "a b", "verb": "stop"}, "unit"),
    ("service", {"unit": "nginx\n", "verb": "stop"}, "unit"),
    ("service", {"unit": "../x", "verb": "stop"}, "unit"),
    ("service", {"unit": "x" * 201, "verb": "stop"}, "unit"),
    ("service", {"unit": "reboot.target", "verb": "start"}, "unit: only services"),
    ("service", {"unit": 5, "verb": "stop"}, "unit"),
    ("docker", {"container": "-web", "verb": "stop"}, "container"),
    ("docker", {"container": "web/../x", "verb": "stop"}, "container"),
    ("docker", {"container": "", "verb": "stop"}, "container"),
    ("docker", {"container": "web", "verb": "kill"}, "verb"),
    ("reboot", {}, "unknown action"),
])
def test_invalid_arguments_name_the_field(kind, args, field):
    with pytest.raises(Invalid) as e:
        validate(kind, args)
    assert e.value.message.startswith(field)


def test_arguments_must_be_an_object():
    with pytest.raises(Invalid, match="object"):
        validate("kill", [1234])


# the whole function on the `local` server

async def test_kill_a_real_process_on_local(central, sleeper):
    p = sleeper()
    result = await run_action(central, "cli:tester", "admin", "local", "kill", {"pid": p.pid})
    assert result["ok"] is True and result["exit_status"] == 0
    assert result["arguments"] == {"pid": p.pid, "signal": "TERM", "start_time": start_time_of(p.pid)}
    assert p.wait(10) == -15
    row = await last_audit(central)
    assert row["id"] == result["audit_id"]
    assert row == dict(row, actor="cli:tester", role="admin", server_name="local", action="kill",
                       result="ok", exit_status=0, arguments=result["arguments"])
    assert row["server_id"] == (await central.storage.get_server("local")).id
    assert "sent SIGTERM" in row["output"] and row["duration_ms"] >= 0


async def test_kill_with_a_wrong_start_time_is_refused_and_audited(central, sleeper):
    p = sleeper()
    with pytest.raises(Conflict, match="start_time"):
        await run_action(central, "cli:tester", "operator", "local", "kill",
                         {"pid": p.pid, "start_time": start_time_of(p.pid) + 1, "signal": "KILL"})
    assert p.poll() is None
    row = await last_audit(central)
    assert row["result"] == "refused" and row["arguments"]["start_time"] == start_time_of(p.pid) + 1


async def test_kill_refuses_the_central_itself_and_pid_1(central):
    with pytest.raises(Forbidden, match="agent itself"):
        await run_action(central, "cli:tester", "admin", "local", "kill", {"pid": os.getpid()})
    assert (await last_audit(central))["result"] == "refused"
    with pytest.raises(Forbidden, match="pid 1"):
        await run_action(central, "cli:tester", "admin", "local", "kill", {"pid": 1})
    assert (await last_audit(central))["result"] == "refused"


async def test_kill_of_a_pid_that_does_not_exist(central):
    with pytest.raises(NotFound, match="no process with pid"):
        await run_action(central, "cli:tester", "admin", "local", "kill", {"pid": actions.PID_MAX})
    assert (await last_audit(central))["result"] == "failed"


async def test_a_viewer_may_not_act(central, sleeper):
    p = sleeper()
    for role in ("viewer", "", None, "root"):
        with pytest.raises(Forbidden, match="may not run actions"):
            await run_action(central, "web:alice", role, "local", "kill", {"pid": p.pid})
        row = await last_audit(central)
        assert row["result"] == "refused" and row["actor"] == "web:alice"
    assert p.poll() is None


async def test_invalid_requests_are_audited(central):
    with pytest.raises(Invalid):
        await run_action(central, "cli:tester", "admin", "local", "service", {"unit": "a;b", "verb": "stop"})
    row = await last_audit(central)
    assert row["result"] == "invalid" and row["arguments"] == {"unit": "a;b", "verb": "stop"}
    assert row["output"].startswith("unit:")
    with pytest.raises(Invalid, match="no server named"):
        await run_action(central, "cli:tester", "admin", "nope", "kill", {"pid": 5})
    row = await last_audit(central)
    assert row["result"] == "invalid" and row["server_name"] == "nope" and row["server_id"] is None


async def test_hostile_argument_text_is_stored_safely(central):
    weird = {"unit": "\ud800" + "x" * 5000, "verb": float("nan"), "extra": object(), 7: [1]}
    with pytest.raises(Invalid):
        await run_action(central, "cli:\udcff", "admin", "lo\x00cal", "service", weird)
    row = await last_audit(central)
    assert row["result"] == "invalid" and len(row["arguments"]["unit"]) == 256
    assert isinstance(row["arguments"]["verb"], str) and row["arguments"]["7"] == "[1]"
    assert row["actor"] == "cli:?"


async def test_local_policy_file_applies(config, tmp_path, sleeper):
    from central.service import Central

    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"actions": {"kill": False}}))
    os.chmod(policy, 0o600)
    cfg = dataclasses.replace(config, actions=dataclasses.replace(config.actions, local_policy=str(policy)))
    central = await Central.open(cfg)
    try:
        p = sleeper()
        with pytest.raises(Forbidden, match="kill actions are disabled"):
            await run_action(central, "cli:tester", "admin", "local", "kill", {"pid": p.pid})
        assert p.poll() is None
        # central.service is protected on the central's own host
        with pytest.raises(Forbidden, match="central.service"):
            await run_action(central, "cli:tester", "admin", "local", "service", {"unit": "central", "verb": "stop"})
    finally:
        await central.close()


async def test_local_actions_can_be_switched_off(config, sleeper):
    from central.service import Central

    cfg = dataclasses.replace(config, actions=dataclasses.replace(config.actions, local=False))
    central = await Central.open(cfg)
    try:
        p = sleeper()
        with pytest.raises(Forbidden, match="actions.local = false"):
            await run_action(central, "cli:tester", "admin", "local", "kill", {"pid": p.pid})
        assert p.poll() is None and (await last_audit(central))["result"] == "refused"
    finally:
        await central.close()


async def test_confirmation_sees_the_process_and_a_no_sends_nothing(central, sleeper):
    p = sleeper()
    seen = []

    async def no(preview):
        seen.append(preview)
        return False

    with pytest.raises(Cancelled):
        await run_action(central, "cli:tester", "admin", "local", "kill", {"pid": p.pid, "signal": "KILL"}, confirm=no)
    assert p.poll() is None
    assert seen[0]["process"]["name"] == "sleep" and seen[0]["process"]["cmdline"] == "sleep 300"
    assert seen[0]["text"].startswith("send SIGKILL to pid %d (sleep" % p.pid)
    assert await central.storage.audit_log() == []


async def test_audit_log_filters_and_pages(central, sleeper):
    for _ in range(5):
        with pytest.raises(Invalid):
            await run_action(central, "cli:t", "admin", "local", "kill", {"pid": 0})
    with pytest.raises(Invalid):
        await run_action(central, "cli:t", "admin", "other", "kill", {"pid": 0})
    rows = await audit_log(central)
    assert len(rows) == 6 and rows[0]["server_name"] == "other"
    local = await audit_log(central, "local", limit=2)
    assert [r["server_name"] for r in local] == ["local", "local"]
    older = await audit_log(central, "local", limit=10, before_id=local[-1]["id"])
    assert len(older) == 3 and all(r["id"] < local[-1]["id"] for r in older)
    for bad in ({"limit": 0}, {"limit": 5000}, {"limit": "5"}, {"before_id": "x"}):
        with pytest.raises(Invalid):
            await audit_log(central, **bad)


def test_output_is_cut_to_the_configured_bytes_keeping_the_end():
    text = "é" * 5000 + "the end"
    cut = actions._clip_tail(text, 4096)
    assert len(cut.encode()) <= 4096 and cut.endswith("the end") and cut.startswith("…")


async def test_concurrent_actions_and_audit_rows(central, sleeper):
    procs = [sleeper() for _ in range(5)]
    results = await asyncio.gather(*(run_action(central, "cli:t", "admin", "local", "kill", {"pid": p.pid})
                                     for p in procs))
    assert all(r["ok"] for r in results)
    assert [p.wait(10) for p in procs] == [-15] * 5
    assert len(await audit_log(central)) == 5


def test_config_defaults():
    cfg = make_config(__import__("pathlib").Path("/nonexistent"))
    assert cfg.actions.timeout == 120.0 and cfg.actions.output_max_bytes == 4096
    assert cfg.actions.local is True and cfg.actions.local_policy == "/etc/central-agent.json"


def test_the_agent_and_the_central_allow_the_same_signals():
    from central.bundled import agent_module

    assert set(actions.SIGNALS) == set(agent_module().DEFAULT_POLICY["kill_signals"])
    assert sys.modules["central_agent"].VERBS == actions.VERBS


async def test_a_kernel_thread_is_refused_on_local(central):
    kthreads = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            fields = data[data.rfind(b")") + 2:].split()
            if int(fields[6]) & 0x00200000:  # PF_KTHREAD
                kthreads.append(int(entry))
    assert kthreads, "no kernel threads visible"
    for pid in kthreads[:3]:
        with pytest.raises(Forbidden, match="kernel thread %d" % pid):
            await run_action(central, "cli:tester", "admin", "local", "kill", {"pid": pid, "signal": "KILL"})
        assert (await last_audit(central))["result"] == "refused"
