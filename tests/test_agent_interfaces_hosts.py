"""The agent's inventory on real kernel interfaces: a private network namespace gets the
links containers, VMs and tunnels add, under names no list knows, and the inventory that the
agent reads from that namespace's own sysfs keeps only the stable ones."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests import hostfarm
from tests.agentutil import AGENT_PATH

pytestmark = pytest.mark.hosts

SCRIPT = """
import importlib.util, json
spec = importlib.util.spec_from_file_location("agent", %r)
agent = importlib.util.module_from_spec(spec); spec.loader.exec_module(agent)
print(json.dumps([i["name"] for i in agent.collect_inventory()["interfaces"]]))
"""


@pytest.fixture
def netns():
    """Two namespaces: the host's, and a container's for the far ends of veth pairs."""
    reason = hostfarm.missing_requirements()
    if reason:
        pytest.skip("REAL-HOST TESTS SKIPPED: " + reason)
    names = ["central-inv-%d" % os.getpid(), "central-inv-%d-c" % os.getpid()]
    for name in names:
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield names
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], check=False)


def in_ns(ns, *argv, check=True):
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=check)


def inventory_interfaces(ns):
    out = in_ns(ns, sys.executable, "-c", SCRIPT % AGENT_PATH)
    return json.loads(out.stdout)


def test_links_that_come_and_go_never_reach_the_inventory(netns):
    host, container = netns
    # a plain veth: the shape of a container's own eth0, which stays in its inventory
    in_ns(host, "ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "eth0", "netns", container)
    assert inventory_interfaces(host) == ["uplink0"]
    assert inventory_interfaces(container) == ["eth0"]
    # a workload network: a bridge whose ports are veths, named like nothing on any list
    in_ns(host, "ip", "link", "add", "wl-net", "type", "bridge")
    for i in range(3):
        in_ns(host, "ip", "link", "add", "wlp%d" % i, "type", "veth", "peer", "name", "eth%d" % (i + 1),
              "netns", container)
        in_ns(host, "ip", "link", "set", "wlp%d" % i, "master", "wl-net")
    in_ns(host, "ip", "link", "set", "wl-net", "up")
    # VM taps and VPN tuns, also under unlisted names
    in_ns(host, "ip", "tuntap", "add", "dev", "vm7nic", "mode", "tap")
    in_ns(host, "ip", "tuntap", "add", "dev", "corpvpn", "mode", "tun")
    # and the usual suspects, by name
    in_ns(host, "ip", "link", "add", "docker0", "type", "bridge")
    in_ns(host, "ip", "link", "add", "veth9f3e", "type", "veth", "peer", "name", "eth9", "netns", container)
    listed = in_ns(host, "ip", "-o", "link").stdout
    assert "wlp2" in listed and "corpvpn" in listed and "vm7nic" in listed
    assert inventory_interfaces(host) == ["uplink0"]
