"""`central server import` against real hosts: OpenSSH sshd in network namespaces with the real
agent, known_hosts files written by the real ssh-keyscan (and hashed by ssh-keygen -H),
inventories written here in each format, polled afterwards through the pinned keys."""
from __future__ import annotations

import asyncio
import json
import subprocess

import pytest
from click.testing import CliRunner

from central import servers
from central.cli import cli
from central.service import Central
from tests.conftest import make_config
from tests.hostfarm import generate_key

pytestmark = pytest.mark.hosts


def keyscan(hosts, path, hashed=False):
    """A known_hosts file for hosts, as the real ssh-keyscan writes it."""
    res = subprocess.run(["ssh-keyscan", "-T", "5", "-t", "ed25519", *[h.address for h in hosts]],
                         capture_output=True, text=True, check=True)
    assert res.stdout.count("ssh-ed25519") == len(hosts), res.stderr
    path.write_text(res.stdout)
    if hashed:
        subprocess.run(["ssh-keygen", "-H", "-f", str(path)], check=True, capture_output=True)
    return path


@pytest.fixture
def env(tmp_path, client_key, monkeypatch):
    """The CLI's environment: a data directory of its own, the key the hosts authorize."""
    values = {"CENTRAL_DATA_DIR": str(tmp_path / "data"), "CENTRAL_SSH_KEY_PATH": str(client_key.path),
              "CENTRAL_POLL_LOCAL": "false", "CENTRAL_SSH_CONNECT_TIMEOUT": "3"}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("CENTRAL_CONFIG", raising=False)
    return values


def run(*args, input=None):
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def with_central(tmp_path, client_key, fn):
    """Run fn(central) on the CLI's database."""
    import dataclasses

    cfg = make_config(tmp_path)
    cfg = dataclasses.replace(cfg, ssh=dataclasses.replace(cfg.ssh, key_path=str(client_key.path)),
                              poll=dataclasses.replace(cfg.poll, local=False))

    async def go():
        central = await Central.open(cfg)
        try:
            return await fn(central)
        finally:
            await central.close()

    return asyncio.run(go())


def hand_secrets(tmp_path, client_key, hosts):
    """What scripts/deploy-agent.sh does before a server exists: keep each host's agent secret."""
    async def go(central):
        for h in hosts:
            await servers.store_agent_secret(central, h.agent_secret, host=h.address, port=22)
    with_central(tmp_path, client_key, go)


def test_ini_import_with_hashed_known_hosts_dry_run_apply_rerun_and_poll(test_host, tmp_path, client_key, env):
    hosts = test_host.many(3)
    kh = keyscan(hosts, tmp_path / "known_hosts", hashed=True)
    assert hosts[0].address not in kh.read_text()  # hashed entries only
    inv = tmp_path / "inventory.ini"
    inv.write_text("[web]\n" + "".join(f"{h.name} ansible_host={h.address} ansible_user=deploy\n" for h in hosts[:2])
                   + "\n[db]\n" + f"{hosts[2].name} ansible_host={hosts[2].address}\n"
                   + "\n[prod:children]\nweb\ndb\n")
    assert run("init").exit_code == 0

    dry = run("server", "import", str(inv), "--known-hosts", str(kh), "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.output)
    assert plan["summary"] == {"add": 3, "change": 0, "skip": 0, "error": 0}
    rows = {r["name"]: r for r in plan["rows"]}
    for h in hosts:
        assert rows[h.name]["fingerprint"] == h.fingerprint and rows[h.name]["key_source"] == "known_hosts"
        assert rows[h.name]["user"] == "central"  # ansible_user is who deploys, not the central's login
    assert rows[hosts[0].name]["tags"] == ["web", "prod"]
    assert plan["confirmation"] is None
    assert json.loads(run("server", "list", "--json").output) == []  # a dry run stores nothing

    hand_secrets(tmp_path, client_key, hosts)
    applied = run("server", "import", str(inv), "--known-hosts", str(kh))
    assert applied.exit_code == 0, applied.output
    assert "imported: 3 added, 0 changed, 0 skipped" in applied.output

    async def poll_all(central):
        out = {}
        for h in hosts:
            out[h.name] = await servers.poll_now(central, h.name)
        return out

    polled = with_central(tmp_path, client_key, poll_all)
    for h in hosts:
        assert polled[h.name]["ok"], polled[h.name]
        assert polled[h.name]["document"]["hostname"] == h.name

    again = run("server", "import", str(inv), "--known-hosts", str(kh), "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["summary"] == {"add": 0, "change": 0, "skip": 3, "error": 0}
    assert json.loads(again.output)["result"] == {"added": 0, "changed": 0, "skipped": 3}

    # a host moves to another group: only its tags change, its pinned key stays
    inv.write_text(inv.read_text().replace("[db]\n", "[db]\n").replace("\n[prod:children]\nweb\ndb\n", "\n[prod:children]\nweb\n"))
    changed = json.loads(run("server", "import", str(inv), "--known-hosts", str(kh), "--json").output)
    assert changed["summary"] == {"add": 0, "change": 1, "skip": 2, "error": 0}
    (row,) = [r for r in changed["rows"] if r["action"] == "change"]
    assert row["name"] == hosts[2].name and row["changes"] == ["tags"] and row["key_source"] == "pinned"
    shown = json.loads(run("server", "show", hosts[2].name, "--json").output)
    assert shown["server"]["tags"] == ["db"]


def test_host_without_trusted_key_is_an_error_naming_file_line_and_host_and_nothing_is_stored(
        test_host, tmp_path, client_key, env):
    a, b = test_host.many(2, agent=False)
    kh = keyscan([a], tmp_path / "known_hosts")
    inv = tmp_path / "hosts.yml"
    inv.write_text(f"all:\n  hosts:\n    {a.name}:\n      ansible_host: {a.address}\n"
                   f"    {b.name}:\n      ansible_host: {b.address}\n")
    assert run("init").exit_code == 0
    res = run("server", "import", str(inv), "--known-hosts", str(kh))
    assert res.exit_code == 1
    assert f"{inv}:5: host {b.name}: no trusted host key for {b.address}" in res.output
    assert "nothing was stored" in res.output
    assert json.loads(run("server", "list", "--json").output) == []
    # --skip-errors imports the other one
    res = run("server", "import", str(inv), "--known-hosts", str(kh), "--skip-errors")
    assert res.exit_code == 0 and "1 added, 0 changed, 1 skipped" in res.output
    assert [s["name"] for s in json.loads(run("server", "list", "--json").output)] == [a.name]


def test_fetched_keys_need_one_confirmation_of_the_whole_table(test_host, tmp_path, client_key, env):
    hosts = test_host.many(2)
    cfg = tmp_path / "ssh_config"
    cfg.write_text("".join(f"Host {h.name}\n    HostName {h.address}\n    User admin\n\n" for h in hosts)
                   + "Host *.wild\n    User nobody\n")
    assert run("init").exit_code == 0
    dry = json.loads(run("server", "import", str(cfg), "--fetch-host-keys", "--dry-run", "--json").output)
    assert dry["summary"]["add"] == 2
    assert {r["name"]: r["fingerprint"] for r in dry["rows"]} == {h.name: h.fingerprint for h in hosts}
    assert {r["key_source"] for r in dry["rows"]} == {"fetched"}
    digest = dry["confirmation"]
    assert digest
    # without a terminal and without the digest nothing is trusted
    res = run("server", "import", str(cfg), "--fetch-host-keys")
    assert res.exit_code == 1 and f"--confirm {digest}" in res.output
    res = run("server", "import", str(cfg), "--fetch-host-keys", "--confirm", "0" * 16)
    assert res.exit_code == 1 and "must be confirmed" in res.output
    assert json.loads(run("server", "list", "--json").output) == []
    hand_secrets(tmp_path, client_key, hosts)
    res = run("server", "import", str(cfg), "--fetch-host-keys", "--confirm", digest)
    assert res.exit_code == 0, res.output
    polled = with_central(tmp_path, client_key, lambda c: servers.poll_now(c, hosts[1].name))
    assert polled["ok"], polled


def test_known_hosts_key_that_is_not_the_hosts_is_pinned_and_refused_on_connect(test_host, tmp_path, client_key, env):
    host = test_host(agent=False)
    other = generate_key(tmp_path / "other").split()
    kh = tmp_path / "known_hosts"
    kh.write_text(f"{host.address} {other[0]} {other[1]}\n")
    csv = tmp_path / "fleet.csv"
    csv.write_text(f"name,host,tags\n{host.name},{host.address},csv\n")
    assert run("init").exit_code == 0
    assert run("server", "import", str(csv), "--known-hosts", str(kh)).exit_code == 0
    result = with_central(tmp_path, client_key, lambda c: servers.poll_now(c, host.name))
    assert result["ok"] is False and result["reason"] == "host_key_mismatch"
    # the file now says the real key: the import refuses to re-pin silently
    keyscan([host], kh)
    res = run("server", "import", str(csv), "--known-hosts", str(kh))
    assert res.exit_code == 1
    assert f"{csv}:2: host {host.name}: known_hosts says {host.fingerprint}" in res.output
    assert "central server trust" in res.output


def test_deploy_script_and_central_deploy_take_the_same_inventory(test_host, tmp_path, client_key, env, monkeypatch):
    import os
    import sys
    from pathlib import Path

    from tests.hostfarm import REPO_DIR, default_agent_path

    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    operator = tmp_path / "operator"
    operator_pub = generate_key(operator, "operator")
    hosts = test_host.many(3, agent=False, login_user=False, authorized_keys=[operator_pub])
    kh = keyscan(hosts, tmp_path / "known_hosts", hashed=True)
    empty = tmp_path / "ssh_config"
    empty.write_text("")
    inv = tmp_path / "inventory.ini"
    inv.write_text("[web]\n" + "".join(f"{h.name} ansible_host={h.address}\n" for h in hosts)
                   + "[web:vars]\nansible_user=root\n")
    assert run("init").exit_code == 0
    central_cli = Path(sys.executable).parent / "central"
    res = subprocess.run(["bash", str(REPO_DIR / "scripts" / "deploy-agent.sh"), "--agent", str(default_agent_path()),
                          "--inventory", str(inv), "--ssh-config", str(empty), "--identity", str(operator),
                          "--ssh-opt", f"UserKnownHostsFile={kh}", "--ssh-opt", "StrictHostKeyChecking=yes",
                          "--central", str(central_cli), "--central-key", str(client_key.public_path), "-j", "3"],
                         env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    for h in hosts:
        assert f"[{h.name}] done" in res.stderr  # progress per host, named as the inventory names it
    imported = run("server", "import", str(inv), "--known-hosts", str(kh))
    assert imported.exit_code == 0 and "3 added" in imported.output, imported.output
    for h in hosts:
        polled = json.loads(run("poll", h.name, "--json").output)
        assert polled["ok"] and polled["document"]["hostname"] == h.name
    # central deploy reads the same file: the same hosts, each as the file's user, in parallel
    res = run("deploy", "--inventory", str(inv), "--identity", str(operator), "--known-hosts", str(kh),
              "--ssh-config", str(empty), "-j", "3", "--json")
    assert res.exit_code == 0, res.output
    done = json.loads(res.output)
    assert sorted(r["server"] for r in done) == sorted(h.name for h in hosts)
    assert {r["state"] for r in done} == {"ok"}
    assert {r["target"] for r in done} == {f"root@{h.address}:22" for h in hosts}
    # a host the file names that was never imported is refused by name and line
    inv.write_text(inv.read_text().replace("[web:vars]", "ghost ansible_host=10.98.0.250\n[web:vars]"))
    res = run("deploy", "--inventory", str(inv), "--identity", str(operator))
    assert res.exit_code == 1 and f"{inv}:5: host ghost is not a server" in res.output
