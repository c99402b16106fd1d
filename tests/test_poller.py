"""The poller against in-process SSH hosts (tests/sshharness.py): what each kind of failure
becomes in a poll's outcome, the inventory fetch, and the schedule (phases spread over the
interval, missed slots skipped rather than burst). No root needed."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json

import asyncssh
import pytest

from central.agentauth import new_secret
from central.poller import phase
from central.servers import add_server
from central.service import Central
from tests.helpers import wait_for
from tests.sshharness import HARNESS_SECRET, Unproven, cleaned, document_agent, hang, http_answer, refuse

OTHER_KEY_LINE = " ".join(
    asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().split()[:2]
)


async def open_central(config, timeout, connect_timeout, workers=0):
    """A Central without the local server (only the hosts a test adds), with these timeouts;
    workers: poll.workers, a serving central's (central.pollworker) that poll in processes of their own."""
    return await Central.open(
        dataclasses.replace(
            config,
            poll=dataclasses.replace(config.poll, local=False, timeout=timeout, workers=workers),
            ssh=dataclasses.replace(config.ssh, connect_timeout=connect_timeout),
        ),
        serving=bool(workers),
    )


# Each poll's outcome must be the same whether the serving process polls or a poll worker does.
WHERE = pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "in-a-worker"])


@pytest.fixture
async def central(config):
    """Timeouts long enough for a loaded machine, for every case that must not time out."""
    c = await open_central(config, timeout=3.0, connect_timeout=5.0)
    yield c
    await c.close()


@pytest.fixture(params=[0, 1], ids=["in-process", "in-a-worker"])
async def either_central(config, request):
    """`central`, polling in-process and then in a poll worker."""
    c = await open_central(config, timeout=3.0, connect_timeout=5.0, workers=request.param)
    yield c
    await c.close()



def answering(status, body):
    async def handler(request):
        return http_answer(status, body)

    return handler


async def stored(central, host, secret=HARNESS_SECRET, **changes):
    """The host's Server as the central stores it, with the agent secret deploy hands over
    (the poller's agent client reads it from storage; None: none), with changes applied."""
    server = await central.storage.add_server(
        host.name,
        "127.0.0.1",
        port=host.port,
        agent_port=host.agent_port,
        host_key=host.host_key_line,
        host_key_fingerprint=host.fingerprint,
        agent_secret=secret,
    )
    return host.server(id=server.id, **changes)


async def poll(central, server):
    outcome = await central.poller.poll(server)
    assert outcome.server_id == server.id and outcome.duration >= 0
    return outcome


@pytest.mark.parametrize(
    "case, reason, message",
    [
        ("refused", "unreachable", "connection refused"),
        ("silent", "unreachable", "within"),
        ("foreign key", "auth_failed", "authentication failed"),
        ("other host key", "host_key_mismatch", "does not match the pinned key"),
        ("no host key", "host_key_unknown", "central server trust"),
        ("no agent", "agent_down", "nothing listens"),
        ("closes", "agent_down", "without answering"),
        ("500", "agent_error", "answered 500"),
        ("404", "agent_error", "GET /api/all answered 404"),
        ("not json", "bad_payload", ""),
        ("not a document", "bad_payload", "timestamp: missing"),
        ("oversized", "bad_payload", "byte limit"),
        ("hangs", "timeout", "did not answer GET /api/all within 0.6s"),
        ("squatter", "agent_impostor", "does not hold the host's secret"),
        ("no secret", "agent_needs_redeploy", "central deploy"),
    ],
)
@WHERE
async def test_each_failure_becomes_its_reason(
    config, ssh_host, agent_document, refused_port, silent_port, case, reason, message, workers
):
    # short timeouts only where the case waits for one to pass (a silent port, a hung agent)
    hasty = reason == "timeout" or case == "silent"
    central = await open_central(config, timeout=0.6 if hasty else 3.0, connect_timeout=0.4 if hasty else 5.0,
                                 workers=workers)
    try:
        await _check_failure(central, ssh_host, agent_document, refused_port, silent_port, case, reason, message)
    finally:
        await central.close()


async def _check_failure(central, ssh_host, agent_document, refused_port, silent_port, case, reason, message):
    agents = {
        "no agent": None,
        "closes": refuse,
        "500": answering(500, {"detail": "boom"}),
        "404": answering(404, {"error": "not_found"}),
        "not json": answering(200, b"<html>"),
        "not a document": answering(200, {"hello": "world"}),
        "hangs": hang,
        "oversized": answering(200, {"pad": "x" * (central.config.poll.max_response_bytes + 1)}),
    }
    agent = agents.get(case, document_agent(agent_document))
    host = await ssh_host(
        agent=agent,
        authorized=[OTHER_KEY_LINE] if case == "foreign key" else None,
        secret=new_secret() if case == "squatter" else HARNESS_SECRET,
    )
    changes = {
        "refused": {"port": refused_port},
        "silent": {"port": silent_port},
        "other host key": {"host_key": OTHER_KEY_LINE},
        "no host key": {"host_key": None},
    }.get(case, {})
    server = await stored(central, host, None if case == "no secret" else HARNESS_SECRET, **changes)
    outcome = await poll(central, server)
    assert not outcome.ok and outcome.reason == reason, (outcome.reason, outcome.error)
    assert message in outcome.error and outcome.doc_text is None and outcome.sample is None
    assert central.poller.errors_by_reason == {reason: 1}


async def test_a_good_poll_carries_the_document_its_figures_and_the_inventory_once(either_central, ssh_host,
                                                                                   agent_document):
    central = either_central
    host = await ssh_host(agent=document_agent(agent_document, inventory={"hostname": "h1", "os": {"id": "debian"}}))
    server = await stored(central, host)
    outcome = await poll(central, server)
    assert outcome.ok and outcome.reason is None and central.poller.polls == 1
    # what the host sent, its text cleaned (a real process list may hold a command line with a
    # newline in it: the central's tests start such processes)
    assert json.loads(outcome.doc_text) == cleaned(agent_document)
    assert outcome.hostname == agent_document["hostname"]
    assert outcome.sample["mem"] == pytest.approx(agent_document["memory"]["percent"])
    assert outcome.agent_sha256 == agent_document["agent"]["sha256"]
    # a new inventory hash: the inventory is fetched with the poll
    assert [r.path for r in host.requests] == ["/api/all", "/api/inventory"]
    assert outcome.extra["inventory"] == {"hostname": "h1", "os": {"id": "debian"}}
    # the hash already known: no second fetch
    known = dataclasses.replace(server, inventory_hash=outcome.inventory_hash)
    outcome = await poll(central, known)
    assert outcome.ok and "inventory" not in outcome.extra
    assert [r.path for r in host.requests] == ["/api/all", "/api/inventory", "/api/all"]


async def test_an_inventory_without_the_agents_proof_fails_the_poll(central, ssh_host, agent_document):
    real = document_agent(agent_document)

    async def agent(request):
        answer = await real(request)
        return Unproven(answer) if request.path == "/api/inventory" else answer

    host = await ssh_host(agent=agent)
    outcome = await poll(central, await stored(central, host))
    assert not outcome.ok and outcome.reason == "agent_impostor", (outcome.reason, outcome.error)
    assert outcome.error.startswith("inventory: ") and outcome.doc_text is None


def test_phases_spread_a_fleet_over_the_interval_and_stay_put():
    interval = 10.0
    phases = [phase(sid, interval) for sid in range(1, 4001)]
    assert all(0 <= p < interval for p in phases)
    assert phases == [phase(sid, interval) for sid in range(1, 4001)]  # stable across calls
    slots = collections.Counter(phases)
    # 0.25 s slots (one event-loop wake-up each), all 40 used, none holding a burst
    assert all(p % 0.25 == 0 for p in phases) and len(slots) == 40
    assert max(slots.values()) < 2 * 4000 / 40 and min(slots.values()) > 4000 / 40 / 2
    # a short interval still spreads (not quantised below 4 slots)
    short = {phase(sid, 0.5) for sid in range(1, 200)}
    assert len(short) > 100 and all(0 <= p < 0.5 for p in short)


async def test_polls_keep_their_phase_and_a_slow_host_skips_missed_slots(central, ssh_host, agent_document):
    interval = central.config.poll.interval
    assert interval == 1.0
    slow_seconds = 1.5  # longer than the interval, shorter than the timeout
    fast_agent = document_agent(agent_document)

    async def slow_agent(request):
        if request.path == "/api/all":
            await asyncio.sleep(slow_seconds)  # the agent under test is slow; this is its work
        return await fast_agent(request)

    fast = await ssh_host(agent=fast_agent, name="fast")
    slow = await ssh_host(agent=slow_agent, name="slow")
    servers = {}
    for host in (fast, slow):
        added = await add_server(
            central, host.name, "127.0.0.1", port=host.port, fingerprint=host.fingerprint, agent_secret=host.secret
        )
        servers[host.name] = added["server"]["id"]
    await central.poller.start()

    def polls(host):
        return [r.at for r in host.requests if r.path == "/api/all"]

    await wait_for(lambda: len(polls(slow)) >= 3, timeout=20, what="3 polls of the slow host")
    for host in (fast, slow):
        starts = polls(host)
        offset = phase(servers[host.name], interval)
        for t in starts[1:]:  # the first one also waited for the SSH connection
            # on its phase; the slack is for a busy machine (the next slot is a whole second away)
            assert abs((t - offset + 0.5) % interval - 0.5) < 0.3, (host.name, t % interval, offset)
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        expected = interval if host is fast else 2 * interval  # a 1.5 s poll misses one slot
        # (without the skip the slow host's next poll would start at once: a 1.5 s gap)
        assert gaps and all(abs(g - expected) < 0.3 for g in gaps[1:] or gaps), (host.name, gaps)
    assert len(polls(fast)) >= 4


async def test_a_bug_in_one_poll_fails_that_poll_and_the_server_keeps_being_polled(central, ssh_host, agent_document, caplog):
    # A fault injected inside the central (not the host): the transport raises an exception no
    # poll failure is, twice. The server's loop survives it: the polls fail as central_error
    # (logged with the traceback once, not at every interval), and the next one succeeds.
    host = await ssh_host(agent=document_agent(agent_document))
    added = await add_server(
        central, host.name, "127.0.0.1", port=host.port, fingerprint=host.fingerprint, agent_secret=host.secret
    )
    transport = central.poller.transports.of_kind(added["server"]["kind"])
    real_document = transport.document
    faults = []

    async def faulty_document(server):
        if len(faults) < 2:
            faults.append(server.name)
            raise RuntimeError("injected fault")
        return await real_document(server)

    transport.document = faulty_document
    stored_outcomes = []

    async def record(batch, by_id):
        stored_outcomes.extend((o.ok, o.reason, o.error) for o in batch)

    central.poller.hooks.append(record)
    await central.poller.start()
    await wait_for(lambda: any(ok for ok, _, _ in stored_outcomes), timeout=15, what="a good poll after the faults")
    assert stored_outcomes[:2] == [(False, "central_error", "RuntimeError: injected fault")] * 2, stored_outcomes
    assert all(ok for ok, _, _ in stored_outcomes[2:]), stored_outcomes
    assert central.poller.errors_by_reason.get("central_error") == 2
    server = await central.storage.get_server(host.name)
    assert server.status == "online" and server.status_reason is None, server
    tracebacks = [r for r in caplog.records if "poll failed inside the central" in r.getMessage()]
    assert len(tracebacks) == 1 and tracebacks[0].exc_info[0] is RuntimeError


async def test_the_periodic_reload_rereads_servers_only_after_a_write_other_than_polls(config, tmp_path):
    """Poll batches change no setting the poller reads, so the 5 s reload skips the server list
    while only they wrote; a change here (API/CLI in this process) or by another process (the
    CLI's own connection) is picked up at the next reload, and write_polls sees new servers."""
    import sqlite3

    from central.model import PollOutcome

    c = await Central.open(dataclasses.replace(config, poll=dataclasses.replace(config.poll, local=False)))
    try:
        a = await c.storage.add_server("a", "10.0.0.1")
        await c.poller.reload()
        before = c.poller._servers[a.id]  # noqa: SLF001
        hooks = []
        c.poller.reload_hooks.append(lambda: hooks.append(1))
        for ts in (1.0, 2.0):
            await c.storage.write_polls([PollOutcome(server_id=a.id, ts=ts, duration=0.1, ok=True,
                                                     sample={"cpu": 1.0})], offline_after=3)
        await c.poller.reload(force=False)
        assert c.poller._servers[a.id] is before and hooks == [1]  # noqa: SLF001 - not re-read, hooks still run
        await c.storage.update_server("a", tags=["web"])  # a change through this process
        await c.poller.reload(force=False)
        assert c.poller._servers[a.id].tags == ("web",)  # noqa: SLF001
        con = sqlite3.connect(c.storage.location)  # another process's commit (the CLI)
        con.execute("UPDATE servers SET port = 2222 WHERE name = 'a'")
        con.execute("INSERT INTO servers (name, kind, host, port, user, agent_port, tags, status, created_at)"
                    " VALUES ('b', 'ssh', '10.0.0.2', 22, 'central', 8083, '[]', 'unknown', 0)")
        con.commit()
        b_id = con.execute("SELECT id FROM servers WHERE name = 'b'").fetchone()[0]
        con.close()
        await c.poller.reload(force=False)
        assert c.poller._servers[a.id].port == 2222 and b_id in c.poller._servers  # noqa: SLF001
        # write_polls knows b (its cached ids follow the other process's commit): b's poll is stored
        await c.storage.write_polls([PollOutcome(server_id=b_id, ts=3.0, duration=0.1, ok=True,
                                                 sample={"cpu": 2.0})], offline_after=3)
        assert [s["ts"] for s in await c.storage.samples(b_id, 0, 10)] == [3.0]
        await c.storage.remove_server("b")  # and a removed one's queued poll is dropped, not the batch
        await c.storage.write_polls([PollOutcome(server_id=b_id, ts=4.0, duration=0.1, ok=True, sample={"cpu": 2.0}),
                                     PollOutcome(server_id=a.id, ts=4.0, duration=0.1, ok=True, sample={"cpu": 3.0})],
                                    offline_after=3)
        assert [s["ts"] for s in await c.storage.samples(a.id, 0, 10)] == [1.0, 2.0, 4.0]
    finally:
        await c.close()


async def test_a_stop_gives_up_the_connects_under_way(config, ssh_host, silent_port):
    # the polls wait for their connects through a shield: cancelled, they left the connects
    # going through the stop's flush (10,000 refused hosts kept the event loop busy with them)
    central = await open_central(config, timeout=30.0, connect_timeout=60.0)
    try:
        host = await ssh_host()
        for i in range(3):
            await central.storage.add_server(f"tarpit{i}", "127.0.0.1", port=silent_port, host_key=host.host_key_line,
                                             host_key_fingerprint=host.fingerprint, agent_secret=HARNESS_SECRET)
        await central.poller.start()
        entries = central.pool._entries
        await wait_for(lambda: sum(1 for e in entries.values() if e.connecting is not None) == 3, timeout=20,
                       what="three connects under way")
        connects = [e.connecting for e in entries.values()]
        await central.poller.stop()
        assert all(c.done() and c.cancelled() for c in connects)
        assert central.poller.writer.buffered == 0
    finally:
        await central.close()
