"""The core against real hosts: OpenSSH sshd in network namespaces running the real agent."""
from __future__ import annotations

import asyncio
import dataclasses
import resource
from pathlib import Path

import pytest

from central.model import PollError
from central import servers
from central.service import Central
from tests.conftest import make_config
from tests.helpers import wait_for

pytestmark = pytest.mark.hosts


@pytest.fixture
def host_config(tmp_path, client_key):
    """A config that uses the session key the test hosts authorize."""
    cfg = make_config(tmp_path)
    return dataclasses.replace(cfg, ssh=dataclasses.replace(cfg.ssh, key_path=str(client_key.path)),
                               poll=dataclasses.replace(cfg.poll, local=False))


@pytest.fixture
async def hcentral(host_config):
    c = await Central.open(host_config)
    yield c
    await c.close()


@pytest.fixture(params=[0, 2], ids=["in-process", "in-workers"])
async def pcentral(host_config, request):
    """A serving central that polls in-process, then one that polls in two poll workers (poll.workers)."""
    c = await Central.open(dataclasses.replace(host_config, poll=dataclasses.replace(host_config.poll,
                                                                                     workers=request.param)),
                           serving=True)
    yield c
    await c.close()


async def add(central: Central, host, name=None):
    result = await servers.add_server(central, name or host.name, host.address, fingerprint=host.fingerprint,
                                      agent_secret=host.agent_secret)
    return result


async def status_of(central: Central, name: str):
    s = await central.storage.get_server(name)
    return s.status, s.status_reason


async def test_add_checks_agent_and_pins_key(hcentral, test_host):
    host = test_host()
    result = await add(hcentral, host)
    assert result["agent"]["ok"] is True
    assert result["agent"]["version"]
    server = await hcentral.storage.get_server(host.name)
    assert server.host_key_fingerprint == host.fingerprint
    assert server.host_key.split()[:2] == host.host_public_key.split()[:2]


async def test_add_without_agent_still_adds_and_says_how_to_deploy(hcentral, test_host):
    host = test_host(agent=False)
    result = await add(hcentral, host)
    assert result["agent"]["ok"] is False
    assert result["agent"]["reason"] == "agent_down"
    assert "deploy-agent.sh" in result["agent"]["hint"]
    assert (await hcentral.storage.find_server(host.name)) is not None


async def test_add_with_wrong_fingerprint_stores_nothing(hcentral, test_host):
    host = test_host()
    with pytest.raises(PollError) as err:
        await servers.add_server(hcentral, host.name, host.address, fingerprint="SHA256:" + "A" * 43)
    assert err.value.reason == "host_key_mismatch"
    assert await hcentral.storage.find_server(host.name) is None


async def test_add_refused_key_is_an_error(hcentral, test_host):
    host = test_host(authorized_keys=[])
    with pytest.raises(PollError) as err:
        await add(hcentral, host)
    assert err.value.reason == "auth_failed"
    assert await hcentral.storage.find_server(host.name) is None


async def test_add_unreachable_host_is_an_error(hcentral, test_host):
    host = test_host()
    host.stop_sshd()
    with pytest.raises(PollError) as err:
        await add(hcentral, host)
    assert err.value.reason == "unreachable"
    assert await hcentral.storage.find_server(host.name) is None


async def test_poll_stores_sample_latest_and_inventory(pcentral, test_host):
    host = test_host()
    await add(pcentral, host)
    await pcentral.poller.start()
    server = await pcentral.storage.get_server(host.name)

    async def sampled():
        return await pcentral.storage.latest_samples()

    latest = (await wait_for(sampled, what="a stored sample"))[server.id]
    assert 0 <= latest["mem"] <= 100
    assert latest["procs"] >= 2
    server = await wait_for(lambda: _online(pcentral, host.name), what="online")
    assert server.hostname == host.name  # the agent reports the host's own UTS name
    assert server.agent_version and len(server.agent_sha256) == 64
    ts, doc = await pcentral.storage.latest_document(server.id)
    assert doc["hostname"] == host.name
    inv = await wait_for(lambda: pcentral.storage.inventory_latest(server.id), what="inventory")
    assert inv["hash"] == doc["inventory_hash"]
    history = await pcentral.storage.inventory_history(server.id)
    assert [h["change_type"] for h in history] == ["initial"]


async def _online(central, name):
    s = await central.storage.get_server(name)
    return s if s.status == "online" else None


async def polled_host(central, test_host):
    """A new test host, added and polled until online."""
    host = test_host()
    await add(central, host)
    await central.poller.start()
    await wait_for(lambda: _online(central, host.name), what="online")
    return host


async def wait_status(central, name, status, reason):
    """Wait until the server's (status, reason) is the one given."""

    async def reached():
        return await status_of(central, name) == (status, reason)

    await wait_for(reached, what=f"{status}/{reason}")


async def test_sshd_stop_goes_offline_and_back_online(pcentral, test_host):
    host = await polled_host(pcentral, test_host)
    host.stop_sshd()
    await wait_status(pcentral, host.name, "offline", "unreachable")
    host.start_sshd()
    await wait_for(lambda: _online(pcentral, host.name), what="back online")


async def test_host_key_change_stops_polling_until_trusted(pcentral, test_host):
    host = await polled_host(pcentral, test_host)
    host.regenerate_host_key()
    await wait_status(pcentral, host.name, "error", "host_key_mismatch")
    server = await pcentral.storage.get_server(host.name)
    polled_at = server.last_poll
    # Polling has stopped: several intervals pass without another attempt.
    await _sleep_intervals(pcentral, 3)
    assert (await pcentral.storage.get_server(host.name)).last_poll == polled_at

    with pytest.raises(PollError):
        await servers.trust_server(pcentral, host.name, "SHA256:" + "B" * 43)
    await servers.trust_server(pcentral, host.name, host.fingerprint)
    server = await wait_for(lambda: _online(pcentral, host.name), what="online after trust")
    assert server.host_key_fingerprint == host.fingerprint


async def _sleep_intervals(central, n):
    """Let n poll intervals pass (what is asserted is that nothing happens meanwhile)."""
    await asyncio.sleep(n * central.config.poll.interval)


async def test_agent_stopped_is_its_own_reason(pcentral, test_host):
    host = await polled_host(pcentral, test_host)
    host.stop_agent()
    await wait_status(pcentral, host.name, "error", "agent_down")
    host.start_agent()
    await wait_for(lambda: _online(pcentral, host.name), what="online again")


HOSTILE = {
    "garbage": "bad_payload",
    "huge": "bad_payload",
    "trickle": "timeout",
    "badutf8": "bad_payload",
    "notjson": "bad_payload",
    "hang": "timeout",
    "close": "agent_down",
    "error500": "agent_error",
}


async def test_hostile_agents_are_classified_and_isolated(pcentral, test_host):
    good = test_host()
    bad = test_host.many(len(HOSTILE), agent=False)
    await add(pcentral, good)
    for host, mode in zip(bad, HOSTILE):
        host.start_fake_agent(mode)
        await add(pcentral, host)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    await pcentral.poller.start()

    async def all_classified():
        out = {}
        for host, mode in zip(bad, HOSTILE):
            s = await pcentral.storage.get_server(host.name)
            if s.status_reason is None:
                return None
            out[mode] = s.status_reason
        return out

    reasons = await wait_for(all_classified, timeout=30, what="every hostile agent classified")
    assert reasons == HOSTILE
    good_server = await pcentral.storage.get_server(good.name)
    assert good_server.status == "online"
    samples = await pcentral.storage.samples(good_server.id, 0, 2e10)
    assert len(samples) >= 2
    # A 100 MB answer is refused by its Content-Length, never read into memory (in a poll
    # worker: the worker's peak stays far under it).
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown_kb < 50 * 1024
    workers = pcentral.transports.ssh.workers
    for worker in workers.workers if workers is not None else ():
        status = Path(f"/proc/{worker.proc.pid}/status").read_text()
        peak_kb = int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM:")).split()[1])
        assert peak_kb < 100 * 1024, (worker.index, peak_kb)
