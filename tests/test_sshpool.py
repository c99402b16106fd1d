"""The SSH pool against an in-process SSH host (tests/sshharness.py): one kept connection per
server, pinned host keys, classified failures, backoff with jitter. No root needed."""

from __future__ import annotations

import asyncio
import random
import time

import asyncssh
import pytest

from central.model import PollError
from central.sshpool import fetch_host_key
from tests.sshharness import make_pool

OTHER_KEY = asyncssh.generate_private_key("ssh-ed25519")
OTHER_KEY_LINE = " ".join(OTHER_KEY.export_public_key("openssh").decode().split()[:2])


@pytest.fixture
async def pool(config):
    p = make_pool(config, connect_timeout=0.5)
    yield p
    await p.close()


async def failure(pool, server) -> PollError:
    with pytest.raises(PollError) as info:
        await pool.connection(server)
    return info.value


async def test_one_connection_per_server_is_kept_and_shared(ssh_host, pool):
    host = await ssh_host()
    server = host.server()
    conns = await asyncio.gather(*(pool.connection(server) for _ in range(5)))
    assert len({id(c) for c in conns}) == 1 and len(host.connections) == 1
    assert await pool.connection(server) is conns[0]
    assert pool.size == 1 and pool.connects == 1


async def test_a_connection_the_host_dropped_is_reopened_on_next_use(ssh_host, pool):
    host = await ssh_host()
    server = host.server()
    first = await pool.connection(server)
    host.drop_connections()
    await first.wait_closed()
    second = await pool.connection(server)
    assert second is not first and not second.is_closed()
    assert len(host.connections) == 2 and pool.connects == 2


async def test_changed_connection_settings_reconnect_and_forget_closes(ssh_host, pool):
    a, b = await ssh_host(), await ssh_host()
    first = await pool.connection(a.server(id=7))
    # the same server id now points at another host (its address and key changed)
    moved = b.server(id=7, name=a.name)
    second = await pool.connection(moved)
    await first.wait_closed()  # the old connection is closed, not leaked
    assert second is not first and len(b.connections) == 1
    pool.forget(7)
    await second.wait_closed()
    assert pool.size == 0


async def test_host_key_mismatch_is_refused_before_authenticating(ssh_host, pool):
    host = await ssh_host()
    err = await failure(pool, host.server(host_key=OTHER_KEY_LINE))
    assert err.reason == "host_key_mismatch" and "does not match the pinned key" in err.message
    assert len(host.connections) == 1  # it connected, saw the wrong key and went no further
    assert pool.size == 0


async def test_no_pinned_key_or_an_unreadable_one_never_connects(ssh_host, pool):
    host = await ssh_host()
    err = await failure(pool, host.server(host_key=None))
    assert err.reason == "host_key_unknown" and "central server trust" in err.message
    err = await failure(pool, host.server(id=2, host_key="ssh-ed25519 not-base64!"))
    assert err.reason == "host_key_mismatch" and "cannot be read" in err.message
    assert host.connections == []


async def test_a_refused_key_is_auth_failed(ssh_host, pool):
    host = await ssh_host(authorized=[OTHER_KEY_LINE])
    err = await failure(pool, host.server())
    assert err.reason == "auth_failed" and "authentication failed" in err.message


async def test_a_missing_client_key_is_auth_failed_naming_the_file(ssh_host, pool, tmp_path):
    host = await ssh_host()
    missing = tmp_path / "nokey"
    err = await failure(pool, host.server(key_path=str(missing)))
    assert err.reason == "auth_failed" and str(missing) in err.message and "does not exist" in err.message
    assert host.connections == []


async def test_refused_and_silent_ports_are_unreachable(pool, refused_port, silent_port, ssh_host):
    host = await ssh_host()  # only for its key: nothing of it listens on these ports
    err = await failure(pool, host.server(port=refused_port))
    assert err.reason == "unreachable" and "connection refused" in err.message
    started = time.monotonic()
    err = await failure(pool, host.server(id=2, port=silent_port))
    assert err.reason == "unreachable" and f"no SSH answer from 127.0.0.1:{silent_port} within 0.5s" in err.message
    assert time.monotonic() - started < 5  # bounded by connect_timeout (+1 s of slack in the pool)


async def test_fetch_host_key_returns_what_the_host_presents(ssh_host, config, refused_port):
    host = await ssh_host()
    key = await fetch_host_key("127.0.0.1", host.port, config.ssh)
    assert key.get_fingerprint("sha256") == host.fingerprint
    with pytest.raises(PollError) as info:
        await fetch_host_key("127.0.0.1", refused_port, config.ssh)
    assert info.value.reason == "unreachable"


async def attempts_after_failures(pool, host, server, n: int) -> list[float]:
    """Call connection() until n real attempts failed; the seconds between the attempts."""
    seen = 0
    while len(host.connected_at) < n:
        err = await failure(pool, server)
        if len(host.connected_at) == seen:
            # no attempt was made: the error repeats the last one and says when it retries
            assert err.reason == "auth_failed" and "next retry in" in err.message, err
        seen = len(host.connected_at)
        await asyncio.sleep(0.005)  # polling the clock: the wait itself is what is measured
    t = host.connected_at
    return [b - a for a, b in zip(t, t[1:])]


async def test_backoff_doubles_up_to_the_cap_with_equal_jitter(ssh_host, config):
    host = await ssh_host(authorized=[OTHER_KEY_LINE])
    pool = make_pool(config, backoff_initial=0.05, backoff_max=0.4)
    try:
        gaps = await attempts_after_failures(pool, host, host.server(), 6)
    finally:
        await pool.close()
    # retry n waits between half and all of min(0.4, 0.05 * 2**(n-1)), plus the connect itself
    # (and whatever a busy machine adds: the upper bound only says it does retry)
    for gap, delay in zip(gaps, (0.05, 0.1, 0.2, 0.4, 0.4)):
        assert delay / 2 <= gap <= delay + 0.5, (gaps, delay)
    assert min(gaps[3:]) > max(gaps[:1])  # it really backs off


async def test_jitter_spreads_a_fleet_that_failed_at_once(ssh_host, config):
    random.seed(12)  # the jitter's draws: these 8 span 0.15 s of the 0.2 s window
    hosts = [await ssh_host(authorized=[OTHER_KEY_LINE]) for _ in range(8)]
    servers = [h.server(id=i) for i, h in enumerate(hosts)]
    pool = make_pool(config, backoff_initial=0.4, backoff_max=0.4)
    failed_at = {}

    async def fail(server):
        await failure(pool, server)
        failed_at[server.id] = time.monotonic()

    try:
        await asyncio.gather(*(fail(s) for s in servers))  # the whole fleet lost its network at once
        deadline = time.monotonic() + 5
        while any(len(h.connected_at) < 2 for h in hosts) and time.monotonic() < deadline:
            # every server asks at once, as the poller's tasks do; only those due connect
            await asyncio.gather(*(_try(pool, s) for s in servers))
            await asyncio.sleep(0.005)
    finally:
        await pool.close()
    waits = [h.connected_at[1] - failed_at[s.id] for h, s in zip(hosts, servers)]
    assert min(waits) >= 0.2 - 0.01, waits  # nobody retried before half the delay
    assert max(waits) - min(waits) > 0.08, waits  # not in lockstep


async def _try(pool, server):
    try:
        await pool.connection(server)
    except PollError:
        pass


async def test_reset_backoff_allows_an_immediate_retry(ssh_host, config):
    host = await ssh_host(authorized=[OTHER_KEY_LINE])
    pool = make_pool(config, backoff_initial=60, backoff_max=60)
    try:
        server = host.server()
        await failure(pool, server)
        err = await failure(pool, server)
        assert "next retry in" in err.message and len(host.connected_at) == 1
        pool.reset_backoff(server.id)
        err = await failure(pool, server)
        assert "next retry in" not in err.message and len(host.connected_at) == 2
    finally:
        await pool.close()


@pytest.mark.parametrize(
    "exc, reason, text",
    [
        (asyncssh.HostKeyNotVerifiable("no match"), "host_key_mismatch", "does not match the pinned key (no match)"),
        (asyncssh.PermissionDenied("denied"), "auth_failed", "SSH authentication failed: denied"),
        (asyncio.TimeoutError(), "timeout", "timed out"),
        (asyncssh.ConnectionLost("reset by peer"), "unreachable", "SSH disconnected: reset by peer"),
        (ConnectionRefusedError(111, "Connection refused"), "unreachable", "connection refused (is sshd running?)"),
        (OSError(113, "No route to host"), "unreachable", "No route to host"),
        (asyncssh.ChannelOpenError(2, "refused"), "unreachable", "SSH error: refused"),
        (ValueError("odd"), "unreachable", "ValueError: odd"),
        (PollError("agent_down", "kept as it is"), "agent_down", "kept as it is"),
    ],
)
def test_classify_maps_each_exception_to_its_reason(exc, reason, text):
    from central.failures import classify

    err = classify(exc)
    assert err.reason == reason and text in err.message, err


async def test_a_host_that_drops_the_connection_during_the_handshake_is_unreachable(ssh_host, pool):
    host = await ssh_host()
    host.drop_on_connect = True
    err = await failure(pool, host.server())
    assert err.reason == "unreachable", err


async def test_a_service_started_without_a_user_in_its_environment_still_connects(ssh_host, config, monkeypatch):
    # asyncssh reads getpass.getuser() at every connect; without LOGNAME/USER/LNAME/USERNAME that
    # is a password-database lookup each time, so the pool names the user once, as getuser would
    import getpass
    import os
    import pwd

    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)
    p = make_pool(config, connect_timeout=2)
    try:
        assert os.environ["LOGNAME"] == pwd.getpwuid(os.getuid()).pw_name == getpass.getuser()
        host = await ssh_host()
        assert not (await p.connection(host.server())).is_closed()
    finally:
        await p.close()
    monkeypatch.setenv("USER", "operator-set")
    monkeypatch.delenv("LOGNAME")
    make_pool(config)
    assert "LOGNAME" not in os.environ and os.environ["USER"] == "operator-set"


async def test_stop_connecting_gives_up_connects_under_way_and_those_waiting_for_a_slot(
        ssh_host, config, silent_port):
    # Polls wait for a connect through asyncio.shield, so cancelling them at a stop left the
    # connects going (10,000 refused hosts kept the event loop busy through the stop's flush).
    host = await ssh_host()
    pool = make_pool(config, connect_timeout=60.0, max_concurrent_connects=2)
    try:
        servers = [host.server(id=i, name=f"h{i}", port=silent_port) for i in range(1, 6)]
        polls = [asyncio.ensure_future(pool.connection(s)) for s in servers]
        for _ in range(100):  # until two connect and three wait for a slot
            await asyncio.sleep(0.01)
            if sum(1 for e in pool._entries.values() if e.connecting is not None) == 5:
                break
        connects = [pool._entries[s.id].connecting for s in servers]
        assert all(c is not None and not c.done() for c in connects)
        for p in polls:  # what Poller.stop does to the polls: they stop waiting, the connects go on
            p.cancel()
        await asyncio.gather(*polls, return_exceptions=True)
        assert not any(c.done() for c in connects)
        await asyncio.wait_for(pool.stop_connecting(), 5)
        results = await asyncio.gather(*connects, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        assert all(pool._entries[s.id].connecting is None for s in servers)
    finally:
        await pool.close()


async def test_an_address_literal_is_dialled_without_the_resolver_and_a_name_with_it(ssh_host, pool, monkeypatch):
    host = await ssh_host()
    loop = asyncio.get_running_loop()
    asked = []
    resolve = loop.getaddrinfo

    async def getaddrinfo(name, *args, **kwargs):
        asked.append(name)
        return await resolve(name, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    await pool.connection(host.server())
    assert asked == []  # 127.0.0.1: no thread, no resolver
    await pool.connection(host.server(id=2, host="localhost"))
    assert asked == ["localhost"] and pool.connects == 2


class _Counted:
    """A log argument that counts how often it is turned to text."""

    def __init__(self):
        self.texts = 0

    def __str__(self):
        self.texts += 1
        return "counted"


def test_asyncssh_records_below_the_level_are_not_built_and_those_above_are_logged_as_before(caplog):
    import logging

    import central.sshpool  # noqa: F401 - installs the check

    arg = _Counted()
    with caplog.at_level(logging.WARNING, logger="asyncssh"):
        asyncssh.logging.logger.info("opening %s", arg)
        asyncssh.logging.logger.get_child(context="conn=1").info("opening %s", arg)
    assert arg.texts == 0 and caplog.records == []
    with caplog.at_level(logging.INFO, logger="asyncssh"):
        asyncssh.logging.logger.get_child(context="conn=1").info("opening %s at %s", arg, ("10.0.0.5", 22))
    assert arg.texts > 0  # by the handlers that format it
    assert [r.getMessage() for r in caplog.records] == ["[conn=1] opening counted at 10.0.0.5, port 22"]


def test_the_asyncssh_names_the_logging_checks_wrap_still_exist():
    # if asyncssh renames them the checks are silently left out (its logging as slow as before)
    import central.sshpool  # noqa: F401

    assert asyncssh.logging.SSHLogger.log._central_checked, "asyncssh.logging.SSHLogger.log is not wrapped"
    assert asyncssh.packet.SSHPacketLogger._log_packet._central_checked, \
        "asyncssh.packet.SSHPacketLogger._log_packet is not wrapped"


async def test_asyncssh_packet_logging_still_logs_each_packet_at_debug_level_3(ssh_host, pool, caplog):
    import logging

    host = await ssh_host()
    with caplog.at_level(logging.DEBUG, logger="asyncssh"):
        await pool.connection(host.server())
        quiet = [r.getMessage() for r in caplog.records if "Sent MSG_" in r.getMessage()]
        asyncssh.set_debug_level(3)
        try:
            await pool.connection(host.server(id=2))
        finally:
            asyncssh.set_debug_level(1)
    sent = [r.getMessage() for r in caplog.records if "Sent MSG_" in r.getMessage()]
    assert quiet == [] and any("MSG_KEXINIT" in m for m in sent) and any("MSG_USERAUTH_REQUEST" in m for m in sent)


@pytest.mark.parametrize("host", ["127.0.0.1", "10.1.2.3", "::1", "2001:db8::5"])
def test_an_address_literal_is_answered_as_getaddrinfo_would(host):
    import socket

    from central.sshpool import _address_literal

    assert _address_literal(host, 2222) == socket.getaddrinfo(host, 2222, type=socket.SOCK_STREAM)


@pytest.mark.parametrize("host", ["localhost", "web1.example.org", "127.1", "fe80::1%eth0", "10.0.0.300", ""])
def test_a_name_or_an_unusual_literal_goes_to_the_resolver(host):
    from central.sshpool import _address_literal

    assert _address_literal(host, 22) is None
