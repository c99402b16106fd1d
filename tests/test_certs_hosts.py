"""SSH certificates against real hosts: real `ssh-keygen` CAs sign real host and user
certificates, real sshd presents them (HostCertificate) and trusts the user CA
(TrustedUserCAKeys); the central accepts, or refuses with host_cert_invalid."""
from __future__ import annotations

import dataclasses
import shutil
import subprocess

import asyncssh
import pytest

from central import fleet, servers
from central.model import PollError
from central.service import Central
from tests.conftest import make_config
from tests.hostfarm import generate_key

pytestmark = pytest.mark.hosts


def keygen(*args):
    subprocess.run(["ssh-keygen", "-q", *args], check=True, capture_output=True)


def set_sshd(host, line):
    """Add a line to the host's own sshd_config (inside the host) and restart sshd."""
    host.run(["sh", "-c", 'printf "%s\\n" "$1" >> /etc/ssh/sshd_config', "sh", line])
    host.stop_sshd()
    host.start_sshd()


def certify_host(host, ca, principals, validity="+1h"):
    """Sign the host's key with the CA and make sshd present the certificate."""
    keygen("-s", str(ca), "-I", host.name, "-h", "-n", principals, "-V", validity, str(host.host_key_path) + ".pub")
    set_sshd(host, f"HostCertificate {host.host_key_path}-cert.pub")


async def open_central(tmp_path, key_path, **ssh):
    cfg = make_config(tmp_path)
    cfg = dataclasses.replace(cfg, ssh=dataclasses.replace(cfg.ssh, key_path=str(key_path), **ssh),
                              poll=dataclasses.replace(cfg.poll, local=False))
    return await Central.open(cfg)


@pytest.fixture
def host_ca(tmp_path):
    path = tmp_path / "host_ca"
    return path, generate_key(path, "host-ca")


async def test_a_trusted_host_ca_replaces_pinning_and_refuses_expired_foreign_and_misnamed(
        test_host, tmp_path, client_key, host_ca):
    ca, ca_pub = host_ca
    good, expired, foreign, misnamed = test_host.many(4)
    certify_host(good, ca, good.address)
    certify_host(expired, ca, expired.address, validity="20200101:20200102")
    other_ca = tmp_path / "other_ca"
    generate_key(other_ca, "other-ca")
    certify_host(foreign, other_ca, foreign.address)
    certify_host(misnamed, ca, "somewhere.else")
    # the CA as a known_hosts-style file, its patterns covering all four
    ca_file = tmp_path / "ca_known_hosts"
    prefix = good.address.rsplit(".", 1)[0]
    ca_file.write_text(f"@cert-authority {prefix}.* {' '.join(ca_pub.split()[:2])}\n")
    central = await open_central(tmp_path, client_key.path, host_ca_file=str(ca_file))
    try:
        for h in (good, expired, foreign, misnamed):
            await servers.store_agent_secret(central, h.agent_secret, host=h.address)
        # an import needs no key for hosts the CA vouches for
        rows = "".join(f"{h.name},{h.address}\n" for h in (good, expired, foreign, misnamed))
        done = await fleet.import_text(central, "name,host\n" + rows, filename="fleet.csv", dry_run=False)
        assert {r["key_source"] for r in done["rows"]} == {"cert_authority"}
        assert done["result"]["added"] == 4
        polled = await servers.poll_now(central, good.name)
        assert polled["ok"] and polled["document"]["hostname"] == good.name
        assert (await central.storage.get_server(good.name)).host_key is None  # nothing pinned
        for h, words in ((expired, "Certificate expired"), (foreign, "Host CA key is not trusted"),
                         (misnamed, "Certificate principal mismatch")):
            polled = await servers.poll_now(central, h.name)
            assert polled["ok"] is False and polled["reason"] == "host_cert_invalid", (h.name, polled)
            assert words in polled["error"]
        # adding one by hand: the certificate is checked, a bad one stores nothing
        await servers.remove_server(central, good.name)
        added = await servers.add_server(central, good.name, good.address, agent_secret=good.agent_secret)
        assert added["agent"]["ok"] and added["server"]["host_key_fingerprint"] is None
        await servers.remove_server(central, expired.name)
        with pytest.raises(PollError) as err:
            await servers.add_server(central, expired.name, expired.address, agent_secret=expired.agent_secret)
        assert err.value.reason == "host_cert_invalid"
        assert await central.storage.find_server(expired.name) is None
    finally:
        await central.close()


async def test_ca_in_config_only_covers_its_patterns(test_host, tmp_path, client_key, host_ca):
    ca, ca_pub = host_ca
    inside, outside = test_host.many(2)
    certify_host(inside, ca, inside.address)
    certify_host(outside, ca, outside.address)
    central = await open_central(tmp_path, client_key.path, host_cas=(f"{inside.address} {ca_pub}",))
    try:
        await servers.add_server(central, inside.name, inside.address, agent_secret=inside.agent_secret)
        assert (await servers.poll_now(central, inside.name))["ok"]
        # the CA is not trusted for the other address: without a confirmed key nothing is added
        with pytest.raises(servers.Invalid, match="fingerprint must be confirmed"):
            await servers.add_server(central, outside.name, outside.address, agent_secret=outside.agent_secret)
    finally:
        await central.close()


async def test_the_central_logs_in_with_a_user_certificate_restricted_to_forwarding(test_host, tmp_path, client_key):
    user_ca = tmp_path / "user_ca"
    generate_key(user_ca, "user-ca")
    # the host trusts the user CA and has no authorized_keys line for the central at all
    host = test_host(central_keys=[])
    # as docs/deploying.md says: the central's Match block names a principals file (deploy writes
    # `none`), whose line restricts a certificate as the authorized_keys line restricts the key
    host.run(["sh", "-c", "printf '%s\\n' 'restrict,port-forwarding,permitopen=\"127.0.0.1:8083\",command=\"/bin/false\" central'"
              " > /etc/central-agent/principals && sed -i 's|AuthorizedPrincipalsFile none|AuthorizedPrincipalsFile "
              "/etc/central-agent/principals|' /etc/ssh/sshd_config.d/central-agent.conf"])
    assert "AuthorizedPrincipalsFile /etc/central-agent/principals" in host.run(
        ["cat", "/etc/ssh/sshd_config.d/central-agent.conf"]).stdout
    set_sshd(host, f"TrustedUserCAKeys {host.farm.visible(str(user_ca) + '.pub')}")  # /tmp is the host's own
    key = tmp_path / "central_key"
    shutil.copy(client_key.path, key)
    shutil.copy(client_key.public_path, str(key) + ".pub")
    key.chmod(0o600)
    keygen("-s", str(user_ca), "-I", "central@test", "-n", "central", "-O", "clear",
           "-O", "permit-port-forwarding", "-O", "force-command=/bin/false", "-V", "+1h", str(key) + ".pub")
    cert = tmp_path / "central_key-cert.pub"
    assert cert.exists()
    central = await open_central(tmp_path, key)  # <key>-cert.pub is found next to the key
    try:
        added = await servers.add_server(central, host.name, host.address, fingerprint=host.fingerprint,
                                         agent_secret=host.agent_secret)
        assert added["agent"]["ok"], added
        assert (await servers.poll_now(central, host.name))["ok"]
    finally:
        await central.close()
    # what the certificate allows: the forward to the agent, no command, no other forward
    async with asyncssh.connect(host.address, username="central", config=None, agent_path=None,
                                client_keys=[(asyncssh.read_private_key(str(key)), asyncssh.read_certificate(str(cert)))],
                                known_hosts=([asyncssh.import_public_key(host.host_public_key)], [], [])) as conn:
        shell = await conn.run("echo shell-works", check=False)
        assert "shell-works" not in (shell.stdout or "") and shell.exit_status != 0
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.open_connection("127.0.0.1", 22)
    # without the certificate the same key is refused (no authorized_keys line)
    cert.unlink()
    central = await open_central(tmp_path, key)
    try:
        polled = await servers.poll_now(central, host.name)
        assert polled["ok"] is False and polled["reason"] == "auth_failed"
    finally:
        await central.close()
