"""central/fleet.py on a real SQLite database, with keys given per row (nothing is contacted):
plans, bastion chains, idempotent re-runs, refusals that store nothing; and the ssh config an
inventory becomes."""
from __future__ import annotations

import pytest

from central import fleet, fleetfile
from central.model import Invalid
from central.service import Central
from tests.hostfarm import generate_key

pytestmark = pytest.mark.unit


@pytest.fixture
async def central(config):
    import dataclasses

    c = await Central.open(dataclasses.replace(config, poll=dataclasses.replace(config.poll, local=False)))
    yield c
    await c.close()


@pytest.fixture
def keys(tmp_path):
    return [" ".join(generate_key(tmp_path / f"k{i}").split()[:2]) for i in range(6)]


def csv(rows):
    return "name,host,host_key,via,tags\n" + "".join(",".join(r) + "\n" for r in rows)


async def test_plan_apply_rerun_and_change(central, keys):
    text = csv([("b1", "10.0.0.1", keys[0], "", "edge"), ("app1", "10.1.0.1", keys[1], "b1", "app"),
                ("app2", "10.1.0.2", keys[2], "b1", "app")])
    out = await fleet.import_text(central, text, filename="f.csv")
    assert out["summary"] == {"add": 3, "change": 0, "skip": 0, "error": 0} and out["result"] is None
    assert await central.storage.list_servers() == []
    out = await fleet.import_text(central, text, filename="f.csv", dry_run=False)
    assert out["result"] == {"added": 3, "changed": 0, "skipped": 0}
    b1 = await central.storage.get_server("b1")
    app1 = await central.storage.get_server("app1")
    assert app1.via == b1.id and app1.host_key == keys[1] and app1.tags == ("app",)
    assert app1.host_key_fingerprint == fleetfile.key_fingerprint(keys[1])
    again = await fleet.import_text(central, text, filename="f.csv", dry_run=False)
    assert again["result"] == {"added": 0, "changed": 0, "skipped": 3}
    # app2 leaves its bastion and moves: a new address takes the row's key again
    moved = text.replace(f"app2,10.1.0.2,{keys[2]},b1,app", f"app2,10.2.0.2,{keys[3]},,app db")
    out = await fleet.import_text(central, moved, filename="f.csv", dry_run=False)
    (row,) = [r for r in out["rows"] if r["action"] == "change"]
    assert row["name"] == "app2" and row["changes"] == ["host", "tags", "via"]
    app2 = await central.storage.get_server("app2")
    assert (app2.host, app2.host_key, app2.via, app2.tags) == ("10.2.0.2", keys[3], None, ("app", "db"))


async def test_bastion_chains_loops_and_refusals_store_nothing(central, keys):
    text = csv([("b1", "10.0.0.1", keys[0], "b3", ""), ("b2", "10.0.0.2", keys[1], "b1", ""),
                ("b3", "10.0.0.3", keys[2], "b2", ""), ("deep", "10.0.0.4", keys[3], "c2", ""),
                ("c1", "10.0.0.5", keys[4], "", ""), ("c2", "10.0.0.6", keys[5], "c3", ""),
                ("c3", "10.0.0.7", keys[0], "c1", ""), ("bad", "10.0.0.8", keys[1], "", "no spaces!")])
    out = await fleet.import_text(central, text, filename="f.csv")
    rows = {r["name"]: r for r in out["rows"]}
    assert "its bastions loop (b1 -> b3 -> b2 -> b1)" in rows["b1"]["error"]
    assert rows["deep"]["error"] == "f.csv:5: host deep: deep -> c2 -> c3 -> c1: at most 2 bastions in a row"
    assert rows["c2"]["action"] == "add" and rows["c1"]["action"] == "add"
    assert rows["bad"]["error"].startswith("f.csv:9: host bad: invalid tag 'spaces!'")
    with pytest.raises(Invalid, match="cannot be imported; nothing was stored"):
        await fleet.import_text(central, text, filename="f.csv", dry_run=False)
    assert await central.storage.list_servers() == []
    out = await fleet.import_text(central, text, filename="f.csv", dry_run=False, skip_errors=True)
    assert out["result"]["added"] == 3  # c1, c2, c3
    # a bastion with hosts behind it is not removed
    from central import servers
    from central.model import Conflict

    with pytest.raises(Conflict, match="c1 is the bastion of c3"):
        await servers.remove_server(central, "c1")


def test_ssh_config_for_an_inventory():
    entries = fleetfile.parse("inv.ini", "[edge]\nb1 ansible_host=192.0.2.9 ansible_port=2222\n"
                                         "[app]\napp1 ansible_host=10.1.0.1 ansible_user=deploy central_via=b1\n")
    assert fleetfile.ssh_config_for(entries, "/home/op/.ssh/config").splitlines()[1:] == [
        "Host b1", "    HostName 192.0.2.9", "    Port 2222",
        "Host app1", "    HostName 10.1.0.1", "    User deploy", "    ProxyJump b1",
        "Host *", "    Include /home/op/.ssh/config"]


async def test_a_bad_host_ca_setting_is_one_error_at_start(config):
    import dataclasses

    bad = dataclasses.replace(config, ssh=dataclasses.replace(config.ssh, host_cas=("*.lan ssh-ed25519 AAAA",)))
    with pytest.raises(Invalid, match=r"^ssh.host_cas:1: host \*.lan: the key's blob is not a ssh-ed25519 key$"):
        await Central.open(bad)
    missing = dataclasses.replace(config, ssh=dataclasses.replace(config.ssh, host_ca_file="/nonexistent/ca"))
    with pytest.raises(Invalid, match="ssh.host_ca_file: cannot read /nonexistent/ca"):
        await Central.open(missing)
