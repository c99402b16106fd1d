"""The server endpoints against real test hosts (sshd in a network namespace, the real agent)."""
from __future__ import annotations

import dataclasses

import pytest

from central import servers
from tests.apiclient import start_api

pytestmark = pytest.mark.hosts


@pytest.fixture
async def host_api(config, client_key):
    cfg = dataclasses.replace(config, ssh=dataclasses.replace(config.ssh, key_path=str(client_key.path)))
    api = await start_api(cfg)
    yield api
    await api.client.close()


async def test_create_two_step_show_test_and_trust(host_api, test_host):
    api = host_api
    host = test_host()
    # deploy hands the central the host's agent secret before the server is added
    await servers.store_agent_secret(api.central, host.agent_secret, host=host.address)
    body = {"name": "h1", "host": host.address, "user": "root", "tags": ["lab"]}
    # step 1: the fingerprint to confirm, nothing stored
    status, first, _ = await api.request("POST", "/api/v1/servers", json=body)
    assert status == 200, first
    assert first["stored"] is False and first["confirm"]["fingerprint"] == host.fingerprint
    assert await api.central.storage.find_server("h1") is None
    # a wrong fingerprint pins nothing
    status, err, _ = await api.request("POST", "/api/v1/servers", json={**body, "fingerprint": "SHA256:AAAA"})
    assert status == 502 and err["reason"] == "host_key_mismatch"
    assert await api.central.storage.find_server("h1") is None
    # step 2: the confirmed fingerprint is pinned, SSH and the agent checked
    status, second, _ = await api.request("POST", "/api/v1/servers", json={**body, "fingerprint": first["confirm"]["fingerprint"]})
    assert status == 201, second
    assert second["stored"] is True and second["agent"]["ok"] is True
    assert second["server"]["host_key_fingerprint"] == host.fingerprint
    assert second["warnings"] == []
    status, shown, _ = await api.get("/api/v1/servers/h1", role="viewer")
    assert status == 200 and shown["server"]["tags"] == ["lab"] and shown["server"]["host"] == host.address
    assert "host_key" not in shown["server"]
    status, tested, _ = await api.request("POST", "/api/v1/servers/h1/test", role="operator")
    assert status == 200 and tested["ok"] is True
    # the host's key changes: trust shows the new one, then pins it when confirmed
    host.regenerate_host_key()
    status, probe, _ = await api.request("POST", "/api/v1/servers/h1/trust")
    assert status == 200 and probe["stored"] is False
    assert probe["confirm"]["fingerprint"] == host.fingerprint and probe["current"] == first["confirm"]["fingerprint"]
    assert (await api.central.storage.get_server("h1")).host_key_fingerprint == first["confirm"]["fingerprint"]
    status, trusted, _ = await api.request("POST", "/api/v1/servers/h1/trust", json={"fingerprint": host.fingerprint})
    assert status == 201 and trusted["server"]["host_key_fingerprint"] == host.fingerprint
    assert trusted["previous_fingerprint"] == first["confirm"]["fingerprint"]


async def test_the_same_host_under_a_second_name_is_added_with_a_warning(host_api, test_host):
    api = host_api
    host = test_host()
    # known under another address with the same pinned key (say, its public name)
    await api.central.storage.add_server("db-public", "192.0.2.7", host_key="x", host_key_fingerprint=host.fingerprint)
    await servers.store_agent_secret(api.central, host.agent_secret, host=host.address)
    body = {"name": "db", "host": host.address, "fingerprint": host.fingerprint}
    status, added, _ = await api.request("POST", "/api/v1/servers", json=body)
    assert status == 201, added
    assert added["warnings"] == [
        f"db has the same host key ({host.fingerprint}) as server db-public: the same host under two names is "
        "polled and alerted twice (`central server remove db` if unintended)"]
    status, again, _ = await api.request("POST", "/api/v1/servers", json={**body, "name": "db2"})
    assert status == 201, again
    assert [w.split(" as server ")[1].split(":")[0] for w in again["warnings"]] == ["db", "db-public"]
    assert again["warnings"][0].startswith(f"db2 has the same address and port ({host.address}:22) and the same "
                                           f"host key ({host.fingerprint}) as server db:")


async def test_import_dry_run_fetch_confirm_and_rerun(host_api, test_host):
    api = host_api
    a, b = test_host.many(2)
    for h in (a, b):
        await servers.store_agent_secret(api.central, h.agent_secret, host=h.address)
    known = f"{a.address} {' '.join(a.host_public_key.split()[:2])}\n"
    content = f"[web]\n{a.name} ansible_host={a.address}\n{b.name} ansible_host={b.address}\n"
    body = {"content": content, "filename": "inv.ini", "known_hosts": known}
    status, err, _ = await api.request("POST", "/api/v1/servers/import", json=body, role="operator")
    assert status == 403
    # b has no trusted key: the dry run names file, line and host
    status, plan, _ = await api.request("POST", "/api/v1/servers/import", json=body)
    assert status == 200, plan
    rows = {r["name"]: r for r in plan["rows"]}
    assert rows[a.name]["action"] == "add" and rows[a.name]["fingerprint"] == a.fingerprint
    assert rows[b.name]["action"] == "error" and rows[b.name]["error"].startswith(f"inv.ini:3: host {b.name}: no trusted host key")
    status, err, _ = await api.request("POST", "/api/v1/servers/import", json={**body, "dry_run": False})
    assert status == 400 and "nothing was stored" in err["detail"], err
    assert await api.central.storage.find_server(a.name) is None
    # fetched: b's key is shown, and applying needs the dry run's confirmation
    status, plan, _ = await api.request("POST", "/api/v1/servers/import", json={**body, "fetch": True})
    assert {r["name"]: r["key_source"] for r in plan["rows"]} == {a.name: "known_hosts", b.name: "fetched"}
    assert plan["rows"][1]["fingerprint"] == b.fingerprint and plan["confirmation"]
    status, err, _ = await api.request("POST", "/api/v1/servers/import", json={**body, "fetch": True, "dry_run": False})
    assert status == 409 and plan["confirmation"] in err["detail"]
    status, done, _ = await api.request("POST", "/api/v1/servers/import", json={
        **body, "fetch": True, "dry_run": False, "confirmation": plan["confirmation"]})
    assert status == 200 and done["result"] == {"added": 2, "changed": 0, "skipped": 0}, done
    assert (await servers.poll_now(api.central, b.name))["ok"]
    status, again, _ = await api.request("POST", "/api/v1/servers/import", json={**body, "fetch": True, "dry_run": False})
    assert status == 200 and again["result"] == {"added": 0, "changed": 0, "skipped": 2}
