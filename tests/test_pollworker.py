"""Poll workers (central.pollworker, poll.workers): real worker processes polling in-process SSH
hosts (tests/sshharness.py) for a serving Central of the test's own. What a poll's outcome is
in a worker, every failure's reason included, is tests/test_poller.py's (each case in-process
and in a worker); tests/test_core_hosts.py polls real sshd hosts through workers. Here: what
only workers have (the share of the fleet, a killed or orphaned worker, the stop, the secret
asked at each channel open, their log records, what their frames may hold)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import pickle
import signal

import pytest

from central import pollworker, servers, views
from central.agentauth import new_secret
from central.config import ConfigError, load_config
from central.model import PollOutcome
from central.service import Central
from tests.helpers import wait_for
from tests.sshharness import HARNESS_SECRET, AgentAuth, document_agent, hang, http_answer


async def open_central(config, workers=2, **poll):
    """A serving Central without the local server, polling in `workers` worker processes."""
    cfg = dataclasses.replace(config, poll=dataclasses.replace(config.poll, local=False, workers=workers, **poll))
    return await Central.open(cfg, serving=True)


@pytest.fixture
async def wcentral(config):
    c = await open_central(config)
    yield c
    await c.close()


async def stored(central, host, secret=HARNESS_SECRET):
    """The host as the central stores it (its key pinned, its agent secret kept)."""
    server = await central.storage.add_server(host.name, "127.0.0.1", port=host.port, agent_port=host.agent_port,
                                              host_key=host.host_key_line, host_key_fingerprint=host.fingerprint,
                                              agent_secret=secret)
    return server


def workers_of(central):
    return central.transports.ssh.workers.workers


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_two_workers_share_the_fleet_and_the_status_counts_their_connections(wcentral, ssh_host, agent_document):
    hosts = [await ssh_host(agent=document_agent(agent_document), name=f"h{i}") for i in range(1, 5)]
    ids = [(await stored(wcentral, h)).id for h in hosts]
    await wcentral.poller.start()

    async def all_online():
        states = [(await wcentral.storage.get_server(h.name)).status for h in hosts]
        return all(s == "online" for s in states)

    await wait_for(all_online, timeout=20, what="every host online")
    for sid in ids:
        ts, doc = await wcentral.storage.latest_document(sid)
        assert doc["hostname"] == agent_document["hostname"]
    pids = [w.proc.pid for w in workers_of(wcentral)]
    assert len(set(pids)) == 2 and os.getpid() not in pids and all(alive(p) for p in pids)
    # each host connected once, from the worker of its share (id modulo 2), never from this process
    assert [len(h.connections) for h in hosts] == [1, 1, 1, 1]
    assert wcentral.pool.size == 0

    async def counted():
        status = await views.central_status(wcentral)
        return status if status["pool"]["connections"] == 4 else None

    status = await wait_for(counted, timeout=10, what="the workers' connections in the status")
    by_index = {w["index"]: w for w in status["pool"]["workers"]}
    assert sorted(by_index) == [0, 1]
    for index, worker in by_index.items():
        assert worker["running"] and worker["pid"] == pids[index] and worker["restarts"] == 0
        assert worker["connections"] == sum(1 for sid in ids if sid % 2 == index)
        assert worker["last_exit"] is None
    assert status["pool"]["connects"] == 4


async def test_a_killed_worker_fails_its_polls_under_way_and_the_next_poll_starts_another(
        wcentral, ssh_host, agent_document, caplog):
    caplog.set_level(logging.WARNING)
    good = document_agent(agent_document)
    agents = {"now": hang}

    async def agent(request):
        return await agents["now"](request)

    host = await ssh_host(agent=agent)
    server = await wcentral.storage.get_server((await stored(wcentral, host)).name)
    polling = asyncio.create_task(wcentral.poller.poll(server))
    await wait_for(lambda: bool(host.requests), timeout=10, what="the poll under way in the worker")
    worker = workers_of(wcentral)[server.id % 2]
    pid = worker.proc.pid
    os.kill(pid, signal.SIGKILL)  # the worker this test's central started
    outcome = await polling
    assert not outcome.ok and outcome.reason == "central_error", outcome
    assert outcome.error == f"poll worker {worker.index} (pid {pid}) ended during the poll (killed by SIGKILL)"
    ended = [r.getMessage() for r in caplog.records if r.name == "central.pollworker" and r.levelno == logging.ERROR]
    assert any(m.startswith(f"poll worker {worker.index} (pid {pid}) ended (killed by SIGKILL)") for m in ended), ended
    # the first death: the next poll starts a new worker at once
    agents["now"] = good
    outcome = await wcentral.poller.poll(server)
    assert outcome.ok, outcome
    assert worker.proc.pid != pid and worker.restarts == 1 and worker.exited == "killed by SIGKILL"
    # dying young again: its share waits RESTART_INITIAL, and its polls say so
    os.kill(worker.proc.pid, signal.SIGKILL)
    await wait_for(lambda: worker.figures()["running"] is False, timeout=10, what="the second death noticed")
    outcome = await wcentral.poller.poll(server)
    assert not outcome.ok and outcome.reason == "central_error"
    assert outcome.error.startswith(f"poll worker {worker.index} exited (killed by SIGKILL); starting it again in "), outcome

    async def polled_again():
        again = await wcentral.poller.poll(server)
        return again if again.ok else None

    await wait_for(polled_again, timeout=10, what="a poll once the backoff passed")
    assert worker.restarts == 2
    assert wcentral.poller.errors_by_reason["central_error"] >= 2


async def test_a_secret_stored_later_is_asked_for_at_the_next_channel_open(wcentral, ssh_host, agent_document):
    host = await ssh_host(agent=document_agent(agent_document))
    server = await wcentral.storage.get_server((await stored(wcentral, host)).name)
    assert (await wcentral.poller.poll(server)).ok
    # the agent is redeployed with a new secret: the worker's next channel proves the old one fails
    fresh = new_secret()
    host._auth = AgentAuth(fresh, host.agent_port)
    host.drop_connections()
    outcome = await wcentral.poller.poll(server)
    assert not outcome.ok and outcome.reason == "agent_impostor", outcome
    # the deploy stores the new secret: the worker's connection is forgotten, the next channel
    # opens with the secret it asks the serving process for
    connects = len(host.connections)
    await servers.store_agent_secret(wcentral, fresh, name=server.name)
    outcome = await wcentral.poller.poll(server)
    assert outcome.ok, outcome
    assert len(host.connections) == connects + 1


async def test_a_workers_log_records_are_logged_by_the_serving_process(wcentral, ssh_host, agent_document, caplog):
    caplog.set_level(logging.WARNING)
    real = document_agent(agent_document)

    async def agent(request):
        if request.path == "/api/inventory":
            return http_answer(500, {"detail": "boom"})
        return await real(request)

    host = await ssh_host(agent=agent, name="logged")
    server = await wcentral.storage.get_server((await stored(wcentral, host)).name)
    outcome = await wcentral.poller.poll(server)
    assert outcome.ok and "inventory" not in outcome.extra
    records = [r for r in caplog.records if r.getMessage() == "[logged] inventory fetch failed: agent_error: the agent answered 500: boom"]
    assert len(records) == 1, [r.getMessage() for r in caplog.records]
    assert records[0].name == "central.transport" and records[0].levelno == logging.WARNING
    assert records[0].processName == f"poll-worker-{server.id % 2}"


async def test_a_clean_stop_ends_the_workers_and_stores_no_failure(config, ssh_host, agent_document):
    central = await open_central(config)
    hosts = [await ssh_host(agent=document_agent(agent_document), name=f"s{i}") for i in range(1, 3)]
    for h in hosts:
        await stored(central, h)
    outcomes = []

    async def record(batch, by_id):
        outcomes.extend(batch)

    central.poller.hooks.append(record)
    await central.poller.start()
    await wait_for(lambda: len({o.server_id for o in outcomes if o.ok}) == 2, timeout=20, what="both hosts polled")
    pids = [w.proc.pid for w in workers_of(central)]
    # systemd stops a unit by signalling all of its processes: a worker waits to be closed
    os.kill(pids[0], signal.SIGTERM)
    await central.close()
    assert not any(alive(p) for p in pids)
    assert [w.proc.returncode for w in workers_of(central)] == [0, 0]
    assert all(o.ok for o in outcomes), [(o.reason, o.error) for o in outcomes if not o.ok]


async def test_a_worker_whose_serving_process_is_gone_exits(wcentral, ssh_host, agent_document):
    host = await ssh_host(agent=document_agent(agent_document))
    server = await wcentral.storage.get_server((await stored(wcentral, host)).name)
    assert (await wcentral.poller.poll(server)).ok
    worker = workers_of(wcentral)[server.id % 2]
    proc = worker.proc
    worker._writer.transport.abort()  # the worker's socket at end of file, as when this process dies
    await asyncio.wait_for(proc.wait(), 10)
    assert proc.returncode == 0
    assert worker.figures()["running"] is False


def test_a_frame_from_a_worker_holds_plain_values_and_outcomes_only():
    outcome = PollOutcome(server_id=3, ts=1.0, duration=0.1, ok=True, doc_text="{}", extra={"facts": {"a": [1.5]}})
    assert pollworker.loads_from_worker(pickle.dumps(("outcome", 7, outcome))) == ("outcome", 7, outcome)
    for hostile in (os.system, dataclasses.replace, pollworker.PollWorkers):
        with pytest.raises(pickle.UnpicklingError, match="a poll worker sent a frame naming"):
            pollworker.loads_from_worker(pickle.dumps(("outcome", 1, hostile)))


async def test_a_frame_longer_than_the_bound_is_refused_before_it_is_read(config):
    big_config = dataclasses.replace(config, poll=dataclasses.replace(config.poll, max_response_bytes=16 * 1024 * 1024))
    assert pollworker.frame_bound(config) == pollworker.MAX_FRAME
    reader = asyncio.StreamReader()
    reader.feed_data((pollworker.MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(ValueError, match="a frame of"):
        await pollworker.receive(reader)
    # a config whose documents may be bigger: its bound grows with them
    reader = asyncio.StreamReader()
    reader.feed_data((pollworker.MAX_FRAME + 1).to_bytes(4, "big") + b"x")
    reader.feed_eof()
    with pytest.raises(asyncio.IncompleteReadError):  # read, not refused (then the stream ends)
        await pollworker.receive(reader, limit=pollworker.frame_bound(big_config))
    reader = asyncio.StreamReader()
    reader.feed_data(pollworker.frame(("stats", 1, 2, [0.0, 0.0, 0.0])))
    assert await pollworker.receive(reader, pollworker.loads_from_worker) == ("stats", 1, 2, [0.0, 0.0, 0.0])


@pytest.mark.parametrize("value", ["-1", "65", "two"])
def test_poll_workers_out_of_range_is_a_config_error(tmp_path, value):
    with pytest.raises(ConfigError, match="poll.workers"):
        load_config(env={"CENTRAL_DATA_DIR": str(tmp_path), "CENTRAL_POLL_WORKERS": value})


async def test_a_cli_central_starts_no_worker(config):
    cfg = dataclasses.replace(config, poll=dataclasses.replace(config.poll, local=False, workers=2))
    central = await Central.open(cfg)
    try:
        assert central.transports.ssh.workers is None
    finally:
        await central.close()


def test_a_worker_is_given_only_the_polling_settings(config):
    cfg = dataclasses.replace(config, storage=dataclasses.replace(config.storage, url="postgresql://u:pw@db/c"),
                              telegram=dataclasses.replace(config.telegram, token_file="/etc/central/bot"))
    given = pollworker.polling_config(cfg)
    assert given.poll == cfg.poll and given.ssh == cfg.ssh and given.key_path == cfg.key_path
    assert given.storage.url == "" and given.telegram.token_file == "" and given.notifiers == ()
    assert given.terminal_key_path != cfg.key_path


async def test_a_bug_inside_a_worker_fails_that_poll_as_central_error_with_the_workers_traceback(
        wcentral, ssh_host, agent_document, caplog):
    host = await ssh_host(agent=document_agent(agent_document))
    server = await wcentral.storage.get_server((await stored(wcentral, host)).name)
    # a record no stored server can have (the database's agent port is an integer): the worker's poll raises
    broken = dataclasses.replace(server, agent_port="eighty")
    outcome = await wcentral.poller._poll_surviving(broken)
    assert not outcome.ok and outcome.reason == "central_error"
    assert outcome.error == "AttributeError: 'str' object has no attribute 'to_bytes'"  # the worker's own exception
    logged = [r for r in caplog.records if r.getMessage() == "[h1] poll failed inside a poll worker"]
    assert len(logged) == 1
    shown = logged[0].exc_info[1]
    assert "raised in the poll worker:" in str(shown) and "in poll_once" in str(shown)
    # the worker survives its poll's bug: the server's next, good poll works
    assert (await wcentral.poller.poll(server)).ok


async def test_a_worker_imports_the_serving_processes_code_never_a_central_in_the_working_directory(
        config, ssh_host, agent_document, tmp_path, monkeypatch):
    planted = tmp_path / "cwd" / "central"
    planted.mkdir(parents=True)
    (planted / "__init__.py").write_text("raise SystemExit('the planted package ran')\n")
    monkeypatch.chdir(planted.parent)
    central = await open_central(config, workers=1)
    try:
        host = await ssh_host(agent=document_agent(agent_document))
        server = await central.storage.get_server((await stored(central, host)).name)
        outcome = await central.poller.poll(server)
        assert outcome.ok, outcome
    finally:
        await central.close()


@pytest.mark.parametrize("workers", [0, 1])
async def test_a_big_fleet_polled_in_process_is_told_of_poll_workers_at_start(config, monkeypatch, caplog, workers,
                                                                              refused_port):
    from central import poller

    caplog.set_level(logging.WARNING)
    monkeypatch.setattr(poller, "WORKERS_HINT_AT", 3)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    central = await open_central(config, workers=workers)
    try:
        for i in range(3):
            await central.storage.add_server(f"s{i}", "127.0.0.1", port=refused_port)  # loopback only
        await central.poller.start()
        hints = [r.getMessage() for r in caplog.records if "poll.workers spreads them" in r.getMessage()]
        assert hints == (["3 SSH servers are polled by this one process, on one of the machine's 2 cores: poll.workers "
                          "spreads them over more (docs/scaling.md, \"Poll workers\")"] if not workers else [])
    finally:
        await central.close()


async def test_a_hung_worker_is_killed_and_its_polls_fail_then_another_one_polls(
        config, ssh_host, agent_document, monkeypatch, caplog):
    caplog.set_level(logging.WARNING)
    monkeypatch.setattr(pollworker, "HUNG_AFTER", 1.0)
    central = await open_central(config, workers=1)
    try:
        host = await ssh_host(agent=document_agent(agent_document))
        server = await central.storage.get_server((await stored(central, host)).name)
        assert (await central.poller.poll(server)).ok
        worker = workers_of(central)[0]
        pid = worker.proc.pid
        os.kill(pid, signal.SIGSTOP)  # the worker this test's central started: it answers nothing now
        outcome = await central.poller.poll(server)
        assert not outcome.ok and outcome.reason == "central_error"
        assert outcome.error == f"poll worker 0 (pid {pid}) ended during the poll (hung, killed by SIGKILL)"
        assert any(r.getMessage().startswith(f"poll worker 0 (pid {pid}) sent nothing for ") for r in caplog.records)
        outcome = await central.poller.poll(server)
        assert outcome.ok and worker.proc.pid != pid and worker.restarts == 1
    finally:
        await central.close()
