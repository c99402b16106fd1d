"""The fleet file parsers (central/fleetfile.py): Ansible INI and YAML, ssh config, CSV, known_hosts."""
from __future__ import annotations

import subprocess

import pytest

from central import fleetfile
from central.fleetfile import FleetFileError, parse
from tests.hostfarm import fingerprint_of, generate_key

pytestmark = pytest.mark.unit

INI = """\
# the web tier
[web]
web[01:03] ansible_user=deploy
web-canary ansible_host=10.0.0.9 ansible_port=2222

[db]
db1.lan:2200 ansible_host=10.0.1.1 central_via=bastion

[prod:children]
web
db

[prod:vars]
ansible_user=ops
ansible_port=22

[edge]
bastion ansible_host=192.0.2.7
"""


def by_name(entries):
    return {e.name: e for e in entries}


def test_ansible_ini_groups_become_tags_and_vars_are_honoured():
    e = by_name(parse("inv.ini", INI))
    assert sorted(e) == ["bastion", "db1.lan", "web-canary", "web01", "web02", "web03"]
    assert e["web02"].tags == ("web", "prod")
    assert e["web02"].host == "web02" and e["web02"].port == 22  # from [prod:vars]
    assert e["web02"].user == "deploy"  # the host's own var wins over its group's
    assert (e["web-canary"].host, e["web-canary"].port, e["web-canary"].user) == ("10.0.0.9", 2222, "ops")
    assert (e["db1.lan"].host, e["db1.lan"].port, e["db1.lan"].via) == ("10.0.1.1", 2200, "bastion")
    assert e["bastion"].tags == ("edge",) and e["bastion"].port is None
    assert e["web01"].line == 3 and e["db1.lan"].line == 7


def test_ansible_ini_errors_name_file_line_and_host():
    with pytest.raises(FleetFileError) as err:
        parse("inv.ini", "[web]\nweb1 ansible_port=http\n")
    assert str(err.value) == "inv.ini:2: host web1: port 'http' is not 1-65535"
    with pytest.raises(FleetFileError, match=r"^inv.ini:3: bad section header"):
        parse("inv.ini", "[web]\nweb1\n[web\n")
    with pytest.raises(FleetFileError, match=r"^inv.ini:2: host web1: expected key=value"):
        parse("inv.ini", "[web]\nweb1 oops\n")


YAML = """\
all:
  vars:
    ansible_port: 22
  hosts:
    lonely:
  children:
    web:
      hosts:
        web[1:2]:
          ansible_user: deploy
        web-canary:
          ansible_host: 10.0.0.9
          ansible_port: 2222
      vars:
        ansible_user: ops
    prod:
      children:
        web:
        db:
          hosts:
            db1: {ansible_host: 10.0.1.1, central_via: lonely}
"""


def test_ansible_yaml_groups_children_and_vars():
    e = by_name(parse("hosts.yml", YAML))
    assert sorted(e) == ["db1", "lonely", "web-canary", "web1", "web2"]
    assert e["lonely"].tags == () and e["lonely"].port == 22
    assert set(e["web1"].tags) == {"web", "prod"} and e["web1"].user == "deploy"
    assert (e["web-canary"].host, e["web-canary"].port, e["web-canary"].user) == ("10.0.0.9", 2222, "ops")
    assert set(e["db1"].tags) == {"db", "prod"} and e["db1"].via == "lonely" and e["db1"].host == "10.0.1.1"
    assert e["web-canary"].line == 11


def test_ansible_yaml_errors_name_the_line():
    with pytest.raises(FleetFileError, match=r"^bad.yml:4: group web: unknown key 'host'"):
        parse("bad.yml", "all:\n  children:\n    web:\n      host: {a: }\n")
    with pytest.raises(FleetFileError, match=r"^bad.yml:3: not valid YAML: expected .,. or .\]."):
        parse("bad.yml", "all:\n  hosts: [unclosed\n")


SSH_CONFIG = """\
Host bastion
    HostName 192.0.2.7
    User jump

Host web1 web2 !web3
    HostName %h.internal
    ProxyJump bastion

Host db1
    HostName=10.0.1.1
    Port 2200

Host *.example.com
    User nobody

Match host foo
    User ignored

Host *
    User ops
    Port 22
"""


def test_ssh_config_hosts_with_first_value_winning_and_wildcards_skipped():
    e = by_name(parse("config", SSH_CONFIG))
    assert sorted(e) == ["bastion", "db1", "web1", "web2"]
    assert (e["bastion"].host, e["bastion"].user, e["bastion"].port) == ("192.0.2.7", "jump", 22)
    assert (e["web1"].host, e["web1"].user, e["web1"].via) == ("web1.internal", "ops", "bastion")
    assert (e["db1"].host, e["db1"].port, e["db1"].user) == ("10.0.1.1", 2200, "ops")
    assert e["web2"].line == 5


def test_ssh_config_detected_and_bad_port_named():
    assert fleetfile.detect_format("fleet/ssh_config", SSH_CONFIG) == "ssh-config"
    with pytest.raises(FleetFileError, match=r"^c:3: host a: port 'x' is not 1-65535"):
        parse("c", "Host a\n  HostName 10.0.0.1\n  Port x\n")


def test_csv_columns_tags_and_per_row_keys():
    text = ("name,host,port,user,tags,host_key,via\n"
            "web1,10.0.0.1,,,web prod,SHA256:abc,\n"
            "# a comment row\n"
            "db1,10.0.1.1,2200,ops,db;prod,ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl,web1\n")
    e = by_name(parse("fleet.csv", text))
    assert e["web1"].tags == ("web", "prod") and e["web1"].host_key == "SHA256:abc" and e["web1"].port is None
    assert e["db1"].port == 2200 and e["db1"].via == "web1" and e["db1"].line == 4
    with pytest.raises(FleetFileError, match=r"^f.csv:1: unknown column\(s\) address"):
        parse("f.csv", "name,address\nweb1,10.0.0.1\n")
    with pytest.raises(FleetFileError, match=r"^f.csv:3: host web1: named twice \(first on line 2\)"):
        parse("f.csv", "name,host\nweb1,10.0.0.1\nweb1,10.0.0.2\n")


def test_range_expansion():
    assert fleetfile.expand_range("web[08:10].lan") == ["web08.lan", "web09.lan", "web10.lan"]
    assert fleetfile.expand_range("db-[a:c]") == ["db-a", "db-b", "db-c"]
    assert fleetfile.expand_range("n[1:5:2]") == ["n1", "n3", "n5"]


def test_known_hosts_plain_hashed_ports_revoked_and_cas(tmp_path):
    keys = [generate_key(tmp_path / f"k{i}") for i in range(4)]
    plain = tmp_path / "known_hosts"
    plain.write_text(
        f"10.0.0.1,web1 {' '.join(keys[0].split()[:2])}\n"
        f"[10.0.0.2]:2222 {' '.join(keys[1].split()[:2])}\n"
        f"10.0.0.3 {' '.join(keys[2].split()[:2])}\n"
        f"@revoked * {' '.join(keys[2].split()[:2])}\n"
        f"@cert-authority *.lan,!evil.lan {' '.join(keys[3].split()[:2])}\n")
    hashed = tmp_path / "hashed"
    hashed.write_text(plain.read_text())
    # real ssh-keygen -H hashes the host names (it keeps marker lines as they are)
    subprocess.run(["ssh-keygen", "-H", "-f", str(hashed)], check=True, capture_output=True)
    assert "|1|" in hashed.read_text() and "10.0.0.1" not in hashed.read_text()
    for path in (plain, hashed):
        known = fleetfile.parse_known_hosts(str(path), path.read_text())
        assert fleetfile.trusted_keys(known, "10.0.0.1", 22) == [" ".join(keys[0].split()[:2])]
        assert fleetfile.trusted_keys(known, "10.0.0.2", 2222) == [" ".join(keys[1].split()[:2])]
        assert fleetfile.trusted_keys(known, "10.0.0.2", 22) == []
        assert fleetfile.trusted_keys(known, "10.0.0.3", 22) == []  # revoked
        assert fleetfile.trusted_cas(known, "a.lan", 22) == [" ".join(keys[3].split()[:2])]
        assert fleetfile.trusted_cas(known, "evil.lan", 22) == []
    assert fleetfile.key_fingerprint(keys[0]) == fingerprint_of(keys[0])


def test_known_hosts_bad_line_is_named():
    with pytest.raises(FleetFileError, match=r"^kh:2: host web1: not a public key line"):
        fleetfile.parse_known_hosts("kh", "# c\nweb1 ssh-foo AAAA\n")
    with pytest.raises(FleetFileError, match=r"^kh:1: host web1: the key's blob is not a ssh-rsa key"):
        fleetfile.parse_known_hosts("kh", "web1 ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")
