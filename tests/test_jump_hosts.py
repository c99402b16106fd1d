"""Hosts behind bastions: real sshd hosts on private bridges the machine has no route to,
reached only through a real sshd bastion with a leg on each (tests/hostfarm.py add_network)."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from central import fleet, servers
from central.service import Central
from tests.conftest import make_config
from tests.hostfarm import generate_key

pytestmark = pytest.mark.hosts


@pytest.fixture
async def hcentral(tmp_path, client_key):
    cfg = make_config(tmp_path)
    cfg = dataclasses.replace(cfg, ssh=dataclasses.replace(cfg.ssh, key_path=str(client_key.path)),
                              poll=dataclasses.replace(cfg.poll, local=False))
    c = await Central.open(cfg)
    yield c
    await c.close()


def machine_reaches(host) -> bool:
    """Whether the machine has a way to the host of its own: an address on the host's private
    bridge, or the host a route back to the machine (checked, never tried: a packet to a
    10.97 address would take the machine's default route off it)."""
    bridge = host.network.bridge
    own = subprocess.run(["ip", "-o", "-4", "addr", "show", "dev", bridge], capture_output=True, text=True, check=True)
    back = host.run(["ip", "route", "get", host.farm.gateway], check=False)
    return bool(own.stdout.strip()) or back.returncode == 0


def ssh_sessions_to(host) -> int:
    """Established TCP connections from the machine to the host's sshd (the real `ss`)."""
    out = subprocess.run(["ss", "-Htn", "state", "established", "dst", f"{host.address}:22"],
                         capture_output=True, text=True, check=True).stdout
    return len([line for line in out.splitlines() if line.strip()])


async def add(central, host, via=None, name=None):
    return await servers.add_server(central, name or host.name, host.address, fingerprint=host.fingerprint,
                                    agent_secret=host.agent_secret, via=via)


async def test_hosts_behind_a_bastion_share_its_one_connection_and_its_failure_is_its_own(hcentral, test_host):
    net = test_host.network()
    behind = test_host.many(3, network=net)
    assert not machine_reaches(behind[0])  # no route from the machine: only through the bastion
    bastion = test_host(extra_networks=[net], permit_open=[f"{h.address}:22" for h in behind])
    assert (await add(hcentral, bastion))["agent"]["ok"]
    # the key to confirm is fetched through the bastion
    probed = await servers.probe_new(hcentral, behind[0].name, behind[0].address, via=bastion.name)
    assert probed["fingerprint"] == behind[0].fingerprint
    for h in behind:
        result = await add(hcentral, h, via=bastion.name)
        assert result["agent"]["ok"], result
    for h in [bastion, *behind]:
        polled = await servers.poll_now(hcentral, h.name)
        assert polled["ok"], polled
        assert polled["document"]["hostname"] == h.name
    # one SSH connection from the machine to the bastion carries all three tunnels
    assert ssh_sessions_to(bastion) == 1
    assert hcentral.pool.size == 4
    with pytest.raises(servers.Conflict, match="is the bastion of"):
        await servers.remove_server(hcentral, bastion.name)

    # the bastion goes down: its hosts fail as bastion_unreachable, naming it; it fails as unreachable
    bastion.stop_sshd()
    polled = await servers.poll_now(hcentral, bastion.name)
    assert polled["ok"] is False and polled["reason"] == "unreachable"
    for h in behind:
        polled = await servers.poll_now(hcentral, h.name)
        assert polled["ok"] is False and polled["reason"] == "bastion_unreachable", polled
        assert f"unreachable via bastion {bastion.name}" in polled["error"]

    # the bastion is back but one host behind it is down: that host's own failure
    bastion.start_sshd()
    behind[0].stop_sshd()
    for s in await hcentral.storage.list_servers():
        hcentral.pool.reset_backoff(s.id)
    polled = await servers.poll_now(hcentral, behind[0].name)
    assert polled["ok"] is False and polled["reason"] == "unreachable", polled
    assert f"bastion {bastion.name} cannot reach {behind[0].address}:22" in polled["error"]
    assert (await servers.poll_now(hcentral, behind[1].name))["ok"]


@pytest.fixture(params=[0, 2], ids=["in-process", "in-workers"])
async def pcentral(tmp_path, client_key, request):
    """A serving central that polls in-process, then one that polls in two poll workers (each
    worker asks the serving process for a bastion's record and connects through it itself)."""
    cfg = make_config(tmp_path)
    cfg = dataclasses.replace(cfg, ssh=dataclasses.replace(cfg.ssh, key_path=str(client_key.path)),
                              poll=dataclasses.replace(cfg.poll, local=False, workers=request.param))
    c = await Central.open(cfg, serving=True)
    yield c
    await c.close()


async def test_a_chain_of_two_bastions(pcentral, test_host):
    hcentral = pcentral
    outer, inner = test_host.network(), test_host.network()
    (deep,) = test_host.many(1, network=inner)
    bastion2 = test_host(network=outer, extra_networks=[inner], permit_open=[f"{deep.address}:22"])
    bastion1 = test_host(extra_networks=[outer], permit_open=[f"{bastion2.address}:22"])
    assert not machine_reaches(bastion2) and not machine_reaches(deep)
    await add(hcentral, bastion1)
    await add(hcentral, bastion2, via=bastion1.name)
    await add(hcentral, deep, via=bastion2.name)
    polled = await servers.poll_now(hcentral, deep.name)
    assert polled["ok"] and polled["document"]["hostname"] == deep.name
    # a third bastion in a row is refused
    with pytest.raises(servers.Invalid, match="at most 2 bastions in a row"):
        await servers.probe_new(hcentral, "farther", deep.address, via=deep.name)
    with pytest.raises(servers.Invalid, match="loop"):
        await servers.update_server(hcentral, bastion1.name, via=bastion2.name)
    # the outer bastion down: both behind it fail as bastion_unreachable
    bastion1.stop_sshd()
    for h in (bastion2, deep):
        polled = await servers.poll_now(hcentral, h.name)
        assert polled["reason"] == "bastion_unreachable", polled


@pytest.mark.slow
async def test_a_bastion_down_is_one_alert_not_one_per_host(test_host, client_key, tmp_path):
    import asyncio

    from central.config import AlertsConfig, NotifierConfig
    from tests.test_notifiers import Receiver, wait_for

    net = await asyncio.to_thread(test_host.network)
    behind = await asyncio.to_thread(test_host.many, 2, network=net)
    bastion = await asyncio.to_thread(test_host, extra_networks=[net], permit_open=[f"{h.address}:22" for h in behind])
    receiver = await Receiver().start()
    cfg = make_config(tmp_path, local=False)
    cfg = dataclasses.replace(
        cfg, ssh=dataclasses.replace(cfg.ssh, key_path=str(client_key.path)),
        alerts=dataclasses.replace(AlertsConfig(), unreachable_after=2, tick_interval=0.5),
        notifiers=(NotifierConfig(name="ops", type="webhook", url=receiver.url, timeout=5.0, backoff=0.1),))
    central = await Central.open(cfg)
    try:
        await add(central, bastion)
        for h in behind:
            await add(central, h, via=bastion.name)
        await central.poller.start()

        async def all_online():
            return all(s.status == "online" for s in await central.storage.list_servers())
        await wait_for(all_online, timeout=30, what="every server online")

        await asyncio.to_thread(bastion.stop_sshd)

        async def firing():
            return await central.storage.list_alerts(firing_only=True)
        # the hosts' own alerts fire too (a minute after their failures began), recorded but held back
        alerts = await wait_for(lambda: _three(firing), timeout=120, what="the bastion's and its hosts' alerts")
        assert sorted((a["rule"], a["server"]) for a in alerts) == sorted(
            [("server_unreachable", bastion.name)] + [("unreachable_via_bastion", h.name) for h in behind])
        for h in behind:
            s = await central.storage.get_server(h.name)
            assert s.status_reason == "bastion_unreachable" and f"via bastion {bastion.name}" in s.last_error
        await wait_for(lambda: receiver.events() == ["firing"], timeout=15, what="the one firing notification")
        [body] = receiver.requests[-1]["body"]["alerts"]
        assert (body["rule"], body["server"]) == ("server_unreachable", bastion.name)
        assert receiver.events() == ["firing"]  # still one: nothing was sent per host
    finally:
        await central.close()
        await receiver.stop()


async def _three(firing):
    alerts = await firing()
    return alerts if len(alerts) == 3 else None


async def test_central_deploy_through_the_bastions_pooled_connection(hcentral, test_host, tmp_path, monkeypatch):
    import asyncio

    from central.deploy import Deployer, DeployOptions

    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    operator = tmp_path / "operator"
    operator_pub = generate_key(operator, "operator")
    net = await asyncio.to_thread(test_host.network)
    # a fresh host: no login user, no secret, no agent; the operator may log in as root
    (fresh,) = await asyncio.to_thread(test_host.many, 1, network=net, agent=False, login_user=False,
                                       authorized_keys=[operator_pub])
    bastion = await asyncio.to_thread(test_host, extra_networks=[net], permit_open=[f"{fresh.address}:22"])
    await add(hcentral, bastion)
    # imported (nothing connects), with its key given per row and its bastion
    inventory = f"name,host,host_key,via\n{fresh.name},{fresh.address},{fresh.host_public_key},{bastion.name}\n"
    done = await fleet.import_text(hcentral, inventory, filename="fleet.csv", dry_run=False)
    assert done["result"]["added"] == 1 and done["rows"][0]["key_source"] == "row"
    empty_config = tmp_path / "ssh_config"
    empty_config.write_text("")
    options = DeployOptions(login_user="root", identity=str(operator), pinned_host_key=True,
                            ssh_config=(str(empty_config),))
    [result] = await Deployer(hcentral, options).run([await hcentral.storage.get_server(fresh.name)])
    assert result.state == "ok", (result.step, result.message, result.hint)
    assert result.target == f"root@{fresh.address}:22 via {bastion.name}"
    assert fresh.run(["cat", "/etc/central-agent/secret"]).stdout.strip()
    polled = await servers.poll_now(hcentral, fresh.name)
    assert polled["ok"] and polled["document"]["hostname"] == fresh.name
    # deploy logged in through the central's one connection to the bastion
    assert ssh_sessions_to(bastion) == 1


def test_deploy_script_through_a_jump_host_then_import_and_poll(test_host, tmp_path, client_key, monkeypatch):
    """scripts/deploy-agent.sh --jump (ssh -J) deploys hosts only the bastion reaches; their keys
    come from ssh-keyscan run on the bastion; the inventory import then finds each secret."""
    import json
    import os

    from click.testing import CliRunner

    from central.cli import cli
    from tests.hostfarm import REPO_DIR, default_agent_path

    operator = tmp_path / "operator"
    operator_pub = generate_key(operator, "operator")
    net = test_host.network()
    fresh = test_host.many(2, network=net, agent=False, login_user=False, authorized_keys=[operator_pub])
    bastion = test_host(extra_networks=[net], authorized_keys=[operator_pub], central_keys=[client_key.public_key],
                        permit_open=[f"{h.address}:22" for h in fresh])
    # the real ssh-keyscan, on the bastion (the only place that reaches them)
    scanned = bastion.run(["ssh-keyscan", "-T", "5", "-t", "ed25519", *[h.address for h in fresh]]).stdout
    assert scanned.count("ssh-ed25519") == 2
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(bastion.known_hosts_line() + "\n" + scanned)
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(f"Host jump\n    HostName {bastion.address}\n    User root\n"
                          f"Host *\n    IdentityFile {operator}\n    IdentitiesOnly yes\n"
                          f"    UserKnownHostsFile {known_hosts}\n    GlobalKnownHostsFile /dev/null\n"
                          "    StrictHostKeyChecking yes\n    ConnectTimeout 5\n")
    data = tmp_path / "data"
    env = dict(os.environ, CENTRAL_DATA_DIR=str(data), CENTRAL_SSH_KEY_PATH=str(client_key.path),
               CENTRAL_POLL_LOCAL="false")
    env.pop("SSH_AUTH_SOCK", None)
    env.pop("CENTRAL_CONFIG", None)
    central_cli = Path(sys.executable).parent / "central"
    assert subprocess.run([str(central_cli), "init"], env=env, capture_output=True).returncode == 0
    res = subprocess.run(["bash", str(REPO_DIR / "scripts" / "deploy-agent.sh"), "--agent", str(default_agent_path()),
                          "--ssh-config", str(ssh_config), "--jump", "jump", "--central", str(central_cli),
                          "--central-key", str(client_key.public_path), "-j", "2",
                          *[f"root@{h.address}" for h in fresh]], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    for key, value in env.items():
        if key.startswith("CENTRAL_"):
            monkeypatch.setenv(key, value)
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(f"[edge]\n{bastion.name} ansible_host={bastion.address}\n[app]\n"
                         + "".join(f"{h.name} ansible_host={h.address} central_via={bastion.name}\n" for h in fresh))
    bastion_secret = bastion.agent_secret
    out = CliRunner().invoke(cli, ["server", "secret", "--host", bastion.address], input=bastion_secret)
    assert out.exit_code == 0, out.output
    out = CliRunner().invoke(cli, ["server", "import", str(inventory), "--known-hosts", str(known_hosts), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["result"] == {"added": 3, "changed": 0, "skipped": 0}
    for h in fresh:
        out = CliRunner().invoke(cli, ["poll", h.name, "--json"])
        assert out.exit_code == 0, out.output
        assert json.loads(out.output)["document"]["hostname"] == h.name
