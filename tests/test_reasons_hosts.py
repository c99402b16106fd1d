"""Reasons that say what happened, on real hosts: when the SSH transport breaks the reason is
unreachable (or timeout), agent_down only when sshd answered and the agent did not; a
blackholed host gets backoff on connect; each state change is logged once."""
from __future__ import annotations

import dataclasses
import logging
import subprocess

import pytest

from central import servers
from central.service import Central
from tests.conftest import make_config
from tests.helpers import wait_for

pytestmark = pytest.mark.hosts

TRANSPORT = {"unreachable", "timeout"}


def host_config(tmp_path, client_key, **ssh):
    cfg = make_config(tmp_path)
    return dataclasses.replace(
        cfg, ssh=dataclasses.replace(cfg.ssh, key_path=str(client_key.path), **ssh),
        poll=dataclasses.replace(cfg.poll, local=False))


class Polled:
    """A Central polling real hosts, with every outcome of every poll recorded as it happens."""

    def __init__(self, central: Central):
        self.central = central
        self.outcomes = []
        real = central.poller.poll

        async def poll(server):
            outcome = await real(server)
            self.outcomes.append((server.name, outcome))
            return outcome

        central.poller.poll = poll

    def of(self, name, after=0):
        return [o for n, o in self.outcomes[after:] if n == name]

    async def add_online(self, host):
        await servers.add_server(self.central, host.name, host.address, fingerprint=host.fingerprint,
                                 agent_secret=host.agent_secret)
        await wait_for(lambda: any(o.ok for o in self.of(host.name)), timeout=30, what=f"{host.name} polled")

    async def failures_after(self, mark, name, n, timeout=60):
        """The reasons of the first n failed polls of name after outcome index mark."""
        def failed():
            got = [o.reason for o in self.of(name, mark) if not o.ok]
            return got[:n] if len(got) >= n else None
        return await wait_for(failed, timeout=timeout, what=f"{n} failed polls of {name}")


@pytest.fixture
async def polled(tmp_path, client_key):
    central = await Central.open(host_config(tmp_path, client_key, keepalive_interval=1.0, keepalive_count_max=2),
                                 serving=True)
    p = Polled(central)
    await central.poller.start()
    yield p
    await central.close()


async def test_stopped_sshd_is_unreachable_never_agent_down(polled, test_host, caplog):
    caplog.set_level(logging.INFO, logger="central")
    host, bystander = test_host.many(2)
    await polled.add_online(host)
    await polled.add_online(bystander)
    mark = len(polled.outcomes)
    host.stop_sshd()
    reasons = await polled.failures_after(mark, host.name, 4)
    assert set(reasons) <= TRANSPORT and "unreachable" in reasons, reasons
    server = await wait_for(lambda: _server_with(polled, host.name, status="offline"), what="offline")
    assert server.status_reason == "unreachable"
    # the server_unreachable alert fires (it did not while the reason was agent_down)
    await wait_for(lambda: _firing(polled, "server_unreachable", server.id), what="server_unreachable firing")
    host.start_sshd()
    await wait_for(lambda: _server_with(polled, host.name, status="online"), timeout=30, what="online again")
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and f"[{host.name}]" in r.getMessage()]
    assert len([m for m in lines if "polls failing: unreachable" in m]) == 1, lines
    assert len([m for m in lines if "online again" in m]) == 1, lines
    assert not [r for r in caplog.records if f"[{bystander.name}]" in r.getMessage() and r.levelno >= logging.WARNING]


async def test_stopped_agent_is_agent_down(polled, test_host):
    host = test_host()
    await polled.add_online(host)
    mark = len(polled.outcomes)
    host.stop_agent()
    reasons = await polled.failures_after(mark, host.name, 3)
    assert set(reasons) == {"agent_down"}, reasons


async def test_partition_is_never_agent_down(polled, test_host, host_farm):
    host = test_host()
    await polled.add_online(host)
    mark = len(polled.outcomes)
    subprocess.run(["ip", "link", "set", host.veth, "down"], check=True)
    try:
        # long enough for the keepalives (1 s x 2 here) to end the connection and for reconnects
        reasons = await polled.failures_after(mark, host.name, 8, timeout=90)
    finally:
        subprocess.run(["ip", "link", "set", host.veth, "up"], check=True)
    assert set(reasons) <= TRANSPORT, reasons
    assert "unreachable" in reasons, reasons
    await wait_for(lambda: _server_with(polled, host.name, status="online"), timeout=60, what="online again")


async def test_blackholed_host_gets_backoff_on_connect(tmp_path, client_key, test_host, host_farm):
    # The poll gives up after 1 s, the connect after 3 s: the connect must still fail (and back
    # off), not be cancelled with the poll and started again by the next one.
    cfg = host_config(tmp_path, client_key, connect_timeout=3.0, backoff_initial=8.0, backoff_max=8.0,
                      keepalive_interval=1.0, keepalive_count_max=2)
    cfg = dataclasses.replace(cfg, poll=dataclasses.replace(cfg.poll, timeout=1.0))
    central = await Central.open(cfg, serving=True)
    polled = Polled(central)
    attempts = []
    real_connect = central.pool._connect

    async def connect(server, *args):  # args: the bastion depth (central.sshpool)
        attempts.append(server.name)
        return await real_connect(server, *args)

    central.pool._connect = connect
    try:
        await central.poller.start()
        host = test_host()
        await polled.add_online(host)
        mark, before = len(polled.outcomes), len(attempts)
        subprocess.run(["ip", "-n", host.netns, "route", "add", "blackhole", host_farm.gateway + "/32"], check=True)
        reasons = await polled.failures_after(mark, host.name, 12, timeout=90)
        assert set(reasons) <= TRANSPORT, reasons
        failed = [o for o in polled.of(host.name, mark) if not o.ok]
        assert any("next retry in" in o.error for o in failed), [o.error for o in failed]
        # 12 polls a second apart with an 8 s backoff (at least 4 s with jitter): a few connects, not 12
        assert len(attempts) - before <= 4, len(attempts) - before
    finally:
        await central.close()


async def _server_with(polled, name, status):
    server = await polled.central.storage.get_server(name)
    return server if server.status == status else None


def _firing(polled, rule, server_id):
    return any(st.rule == rule and st.server_id == server_id and st.state == "firing"
               for st in polled.central.alerts.states.values())
