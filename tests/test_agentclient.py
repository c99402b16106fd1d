"""HTTP/1.1 to the agent over a kept SSH channel, against an in-process SSH host whose agent
answers what each test scripts (tests/sshharness.py): the kept channel and its one retry, size
caps, malformed answers, timeouts, the agent's authentication (done by the host with the
agent's own code) and how each failure is classified. No root needed."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from central.agentauth import new_secret
from central.agentclient import no_secret
from central.model import PollError
from tests.helpers import wait_for
from tests.sshharness import ThenClose, Unproven, agent_client, hang, http_answer, make_pool, refuse


@pytest.fixture
async def pool(config):
    p = make_pool(config, connect_timeout=0.5)
    yield p
    await p.close()


def counting(answers=None):
    """An agent answering {"n": k} to its k-th request (0-based), or answers[k] when given."""
    seen = []

    async def handler(request):
        seen.append(request)
        k = len(seen) - 1
        if answers is not None and k < len(answers):
            answer = answers[k]
            return await answer(request) if callable(answer) else answer
        return http_answer(200, {"n": k})

    return handler


async def get(client, path="/api/all", timeout=2.0):
    return await client.request("GET", path, timeout=timeout)


async def fails(client, path="/api/all", timeout=2.0) -> PollError:
    with pytest.raises(PollError) as info:
        await get(client, path, timeout)
    return info.value


async def test_requests_reuse_one_channel_and_are_well_formed(ssh_host, pool):
    host = await ssh_host(agent=counting())
    client = agent_client(pool, host.server())
    for k in range(4):
        assert await get(client) == (200, b'{"n":%d}' % k)
    status, doc = await client.request_json("POST", "/api/actions/kill", {"pid": 42, "signal": "TERM"}, timeout=2)
    assert status == 200 and doc == {"n": 4}
    assert host.channels == 1 and len(host.connections) == 1
    post = host.requests[-1]
    assert (
        post.method == "POST"
        and post.path == "/api/actions/kill"
        and json.loads(post.body) == {"pid": 42, "signal": "TERM"}
    )
    assert post.headers["content-type"] == "application/json" and post.headers["content-length"] == str(len(post.body))
    assert host.requests[0].line == b"GET /api/all HTTP/1.1" and host.requests[0].headers["content-length"] == "0"


async def test_a_kept_channel_the_agent_closed_while_idle_is_reopened(ssh_host, pool):
    # the agent closed the kept connection after its answer (idle timeout, agent restarted)
    host = await ssh_host(agent=counting([ThenClose(http_answer(200, {"n": 0}))]))
    client = agent_client(pool, host.server())
    assert await get(client) == (200, b'{"n":0}')
    await wait_for(lambda: host.channels_closed == 1, timeout=5, what="the host closing the channel")
    assert await get(client) == (200, b'{"n":1}')  # not a failed poll
    assert host.channels == 2 and len(host.requests) == 2


async def test_a_kept_channel_closed_before_answering_is_retried_once(ssh_host, pool):
    host = await ssh_host(agent=counting([http_answer(200, {"n": 0}), refuse]))
    client = agent_client(pool, host.server())
    await get(client)
    # the second request reaches the old channel, which closes unanswered: sent again on a new one
    assert await get(client) == (200, b'{"n":2}')
    assert host.channels == 2 and [r.path for r in host.requests] == ["/api/all"] * 3


async def test_only_one_retry_then_agent_down(ssh_host, pool):
    host = await ssh_host(agent=counting([http_answer(200, {"n": 0}), refuse, refuse, refuse]))
    client = agent_client(pool, host.server())
    await get(client)
    err = await fails(client)
    assert err.reason == "agent_down" and "closed the connection without answering" in err.message
    assert host.channels == 2 and len(host.requests) == 3


async def test_a_fresh_channel_closed_unanswered_is_agent_down(ssh_host, pool):
    host = await ssh_host(agent=refuse)
    err = await fails(agent_client(pool, host.server()))
    assert err.reason == "agent_down" and "without answering" in err.message
    assert host.channels == 1  # a fresh channel is not retried


async def test_connection_close_in_the_answer_drops_the_channel(ssh_host, pool):
    host = await ssh_host(agent=counting([http_answer(200, {"n": 0}, keep_alive=False)]))
    client = agent_client(pool, host.server())
    await get(client)
    await get(client)
    assert host.channels == 2


async def test_nothing_listening_on_the_agent_port_is_agent_down(ssh_host, pool):
    host = await ssh_host(agent=None)
    err = await fails(agent_client(pool, host.server()))
    assert err.reason == "agent_down" and "nothing listens on the host's 127.0.0.1:8083" in err.message


async def test_forwarding_refused_by_the_host_is_agent_down_with_a_hint(ssh_host, pool):
    host = await ssh_host(agent=counting())
    # the key's permitopen allows 8083 only: sshd refuses 8084 ("administratively prohibited")
    err = await fails(agent_client(pool, host.server(agent_port=8084)))
    assert err.reason == "agent_down" and "AllowTcpForwarding" in err.message and "permitopen" in err.message
    host.forwarding = False
    err = await fails(agent_client(pool, host.server(id=2)))
    assert err.reason == "agent_down" and "refused forwarding" in err.message
    assert host.requests == []


@pytest.mark.parametrize(
    "answer, message",
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", "not HTTP"),
        (b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 20000, "headers are too long"),
        (b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n{}", "no valid Content-Length"),
        (b"HTTP/1.1 OK 200\r\nContent-Length: 2\r\n\r\n{}", "not HTTP"),
        (ThenClose(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10), "ended after 10 of 100 bytes"),
    ],
)
async def test_malformed_answers_are_bad_payload_and_drop_the_channel(ssh_host, pool, answer, message):
    host = await ssh_host(agent=counting([answer]))
    client = agent_client(pool, host.server())
    err = await fails(client)
    assert err.reason == "bad_payload" and message in err.message, err
    assert await get(client) == (200, b'{"n":1}')  # the next request starts on a clean channel
    assert host.channels == 2


async def test_the_size_cap_refuses_a_larger_answer_and_accepts_the_limit(ssh_host, pool):
    limit = 1000
    body = b"x" * limit
    host = await ssh_host(agent=counting([http_answer(200, body + b"y"), http_answer(200, body)]))
    client = agent_client(pool, host.server(), max_bytes=limit)
    err = await fails(client)
    assert err.reason == "bad_payload" and f"is {limit + 1} bytes, over the {limit}-byte limit" in err.message
    assert await get(client) == (200, body)


async def test_agent_errors_keep_the_agents_detail(ssh_host, pool):
    host = await ssh_host(
        agent=counting(
            [
                http_answer(500, {"detail": "collector exploded"}),
                http_answer(503, b"<html>busy</html>"),
                http_answer(404, {"error": "not_found"}),
                http_answer(200, b"not json"),
            ]
        )
    )
    client = agent_client(pool, host.server())
    err = await fails(client)
    assert err.reason == "agent_error" and "answered 500: collector exploded" in err.message
    err = await fails(client)
    assert err.reason == "agent_error" and "answered 503: <html>busy</html>" in err.message
    assert await get(client) == (404, b'{"error":"not_found"}')  # a 4xx is the caller's to judge
    with pytest.raises(PollError) as info:
        await client.request_json("GET", "/api/all", timeout=2)
    assert info.value.reason == "bad_payload" and "not JSON" in info.value.message


async def test_an_agent_that_does_not_answer_times_out_and_the_next_request_recovers(ssh_host, pool):
    host = await ssh_host(agent=counting([hang]))
    client = agent_client(pool, host.server())
    err = await fails(client, timeout=0.3)
    assert err.reason == "timeout" and "did not answer GET /api/all within 0.3s" in err.message
    assert await get(client) == (200, b'{"n":1}')
    assert host.channels == 2  # the hung channel was dropped


async def test_a_host_that_never_speaks_ssh_is_unreachable_within_the_request_timeout(config, silent_port, ssh_host):
    host = await ssh_host()
    pool = make_pool(config, connect_timeout=10)  # the request's timeout is the shorter one
    try:
        err = await fails(agent_client(pool, host.server(port=silent_port)), timeout=0.3)
    finally:
        await pool.close()
    assert err.reason == "unreachable" and f"no SSH connection to 127.0.0.1:{silent_port} within 0.3s" in err.message


async def test_a_request_whose_host_has_spoken_ssh_waits_for_the_handshake_and_asks_with_its_whole_timeout(
        config, ssh_host):
    # A fleet connecting at a start: the central's loop is saturated and a healthy host's
    # handshake outlasts the poll's timeout (450-650 polls "no SSH connection within 5s" while
    # 10,000 hosts connected, bench/bench_core.py). The host answers: ssh.connect_timeout bounds
    # the handshake, and the agent then gets the poll's whole timeout.
    host = await ssh_host(agent=counting(), auth_delay=0.8)
    pool = make_pool(config, connect_timeout=5.0)
    try:
        started = time.monotonic()
        assert await get(agent_client(pool, host.server()), timeout=0.3) == (200, b'{"n":0}')
        assert time.monotonic() - started >= 0.8
        assert len(host.connections) == 1 and len(host.requests) == 1 and pool.connects == 1
    finally:
        await pool.close()


async def test_a_handshake_slower_than_the_connect_timeout_is_the_hosts_failure(config, ssh_host):
    host = await ssh_host(agent=counting(), auth_delay=5.0)
    pool = make_pool(config, connect_timeout=0.6)
    try:
        started = time.monotonic()
        err = await fails(agent_client(pool, host.server()), timeout=0.3)
        took = time.monotonic() - started
    finally:
        await pool.close()
    assert err.reason == "unreachable" and "no SSH answer from 127.0.0.1" in err.message and "within 0.6s" in err.message
    assert 0.6 <= took < 3  # the connect's own timeout (+1 s of the pool's slack), not the host's 5 s
    assert host.requests == []


async def test_a_host_that_accepts_tcp_and_never_speaks_ssh_says_so(config, silent_port, ssh_host):
    pool = make_pool(config, connect_timeout=10)
    host = await ssh_host()
    try:
        started = time.monotonic()
        err = await fails(agent_client(pool, host.server(port=silent_port)), timeout=0.3)
        assert time.monotonic() - started < 2  # not waited for: it never sent its SSH version
    finally:
        await pool.close()
    assert err.reason == "unreachable" and err.message.endswith("within 0.3s (its SSH handshake unfinished)")


async def test_ssh_failures_reach_the_caller_classified(ssh_host, pool, refused_port):
    host = await ssh_host(
        authorized=["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPz0dkaVvH2H8v6r8F+X2Xw2L5dV0aP1q2lP8dQ0yq7E"]
    )
    err = await fails(agent_client(pool, host.server()))
    assert err.reason == "auth_failed"
    err = await fails(agent_client(pool, host.server(id=2, port=refused_port)))
    assert err.reason == "unreachable"


async def test_each_channel_is_authenticated_and_each_request_signed_in_sequence(ssh_host, pool):
    # the host checks what the agent checks (its own code): a request the agent would refuse
    # never reaches the scripted handler, so every request seen here passed the agent's gate
    host = await ssh_host(agent=counting([http_answer(200, {"n": 0}), ThenClose(http_answer(200, {"n": 1}))]))
    client = agent_client(pool, host.server())
    for k in range(3):
        assert await get(client) == (200, b'{"n":%d}' % k)
    seqs = [r.headers["x-central-auth"].split()[0] for r in host.requests]
    # a new channel (after the host closed the second) starts a new challenge and sequence
    assert seqs == ["seq=1", "seq=2", "seq=1"] and host.channels == 2


async def test_an_agent_without_the_hosts_secret_is_an_impostor_and_is_sent_nothing(ssh_host, pool):
    host = await ssh_host(agent=counting(), secret=new_secret())  # a squatter's own "secret"
    err = await fails(agent_client(pool, host.server()))
    assert err.reason == "agent_impostor" and "challenge proof is wrong" in err.message, err
    assert host.requests == []  # the challenge was answered by the gate; no request followed it


async def test_an_agent_that_does_not_authenticate_is_an_impostor(ssh_host, pool):
    # an agent from before authentication: /api/challenge is an unknown path to it
    host = await ssh_host(agent=counting([http_answer(404, {"error": "not_found"})]), secret=None)
    err = await fails(agent_client(pool, host.server()))
    assert err.reason == "agent_impostor" and "gave no proof" in err.message and "404" in err.message, err
    assert [r.path for r in host.requests] == ["/api/challenge"]


async def test_an_answer_without_the_agents_proof_is_not_used(ssh_host, pool):
    # the first answer proven, the second not (something else answers on the kept channel)
    host = await ssh_host(agent=counting([http_answer(200, {"n": 0}), Unproven(http_answer(200, {"n": 1}))]))
    client = agent_client(pool, host.server())
    assert await get(client) == (200, b'{"n":0}')
    err = await fails(client)
    assert err.reason == "agent_impostor" and "carries no proof" in err.message and '"n"' not in err.message, err
    assert await get(client) == (200, b'{"n":2}')  # on a new, authenticated channel
    assert host.channels == 2


async def test_a_server_without_a_secret_needs_a_redeploy_and_its_agent_is_not_contacted(ssh_host, pool):
    host = await ssh_host(agent=counting())
    pool.agent_secret = no_secret
    err = await fails(agent_client(pool, host.server()))
    assert err.reason == "agent_needs_redeploy" and "central deploy h1" in err.message, err
    assert host.channels == 0 and len(host.connections) == 1  # SSH works; no channel to the agent


async def test_a_connection_lost_under_a_waiting_request_is_unreachable_not_agent_down(ssh_host, pool):
    host = await ssh_host(agent=counting([hang]))
    client = agent_client(pool, host.server())
    pending = asyncio.ensure_future(get(client, timeout=10))
    await wait_for(lambda: host.requests, timeout=5, what="the request reaching the agent")
    host.drop_connections()  # sshd gone (killed, machine stopped): the channel ends with it
    with pytest.raises(PollError) as info:
        await pending
    assert info.value.reason == "unreachable" and "was lost" in info.value.message, info.value


async def test_a_blackholed_host_is_connected_to_once_and_then_backs_off(config, ssh_host):
    # a connect the poll's timeout gave up on goes on (shielded) until connect_timeout, so its
    # failure starts the backoff: later polls fail at once instead of each sending a new SYN
    accepted = []

    async def swallow(reader, writer):
        accepted.append(writer)

    silent = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    pool = make_pool(config, connect_timeout=0.5, backoff_initial=60, backoff_max=60)
    host = await ssh_host()  # only for its key: the blackhole is on another port
    client = agent_client(pool, host.server(port=port))
    try:
        err = await fails(client, timeout=0.2)
        assert err.reason == "unreachable" and "within 0.2s" in err.message, err

        async def backing_off():
            err = await fails(client, timeout=0.2)
            return err if "next retry in" in err.message else None

        err = await wait_for(backing_off, timeout=10, what="the backoff after the connect timed out")
        assert err.reason == "unreachable", err
        assert len(accepted) == 1  # one TCP connection for every poll so far
    finally:
        await pool.close()
        for writer in accepted:
            writer.close()
        silent.close()
        await silent.wait_closed()


async def test_a_request_waiting_for_one_of_the_centrals_connect_slots_is_no_failure_of_its_host(
        config, ssh_host, silent_port):
    # A fleet connecting at a start: the central's handshake slots are all busy, and the time a
    # connect waits for one is the central's backlog. Counted against the request's timeout,
    # every healthy host behind the queue was recorded unreachable ("no SSH connection within
    # 5s": 8,876 polls while 10,000 hosts connected, bench/bench_core.py) and alerted on.
    host = await ssh_host(agent=counting())
    pool = make_pool(config, connect_timeout=2.0, max_concurrent_connects=1)
    try:
        stalled = asyncio.ensure_future(pool.connection(host.server(id=1, name="tarpit", port=silent_port)))
        await wait_for(lambda: pool._connect_slots.locked(), timeout=5, what="the tarpit's handshake holding the slot")
        client = agent_client(pool, host.server(id=2))
        assert await get(client, timeout=0.5) == (200, b'{"n":0}')  # asked once the slot was free
        assert stalled.done() and isinstance(stalled.exception(), PollError)  # the slot came free by its timeout
        assert len(host.requests) == 1 and len(host.connections) == 1
    finally:
        await pool.close()


async def test_a_refused_host_is_told_at_once_while_the_handshake_slots_are_busy(config, ssh_host, silent_port,
                                                                                  refused_port):
    # The TCP connect goes outside the handshake slots: a host down (or an outage's SYNs
    # unanswered) is found by its own connect, not given up on behind the queue.
    host = await ssh_host()
    pool = make_pool(config, connect_timeout=5.0, max_concurrent_connects=1)
    try:
        stalled = asyncio.ensure_future(pool.connection(host.server(id=1, name="tarpit", port=silent_port)))
        await wait_for(lambda: pool._connect_slots.locked(), timeout=5, what="the tarpit's handshake holding the slot")
        err = await fails(agent_client(pool, host.server(id=2, port=refused_port)), timeout=2.0)
        assert err.reason == "unreachable" and "refused" in err.message.lower(), err
        assert not stalled.done()  # told while the slot was still held
    finally:
        await pool.close()
