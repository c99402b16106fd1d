"""pytest fixtures for real test hosts (tests/hostfarm.py) and LXC containers (tests/lxc.py).

Enable with ``pytest_plugins = ["tests.hostfixtures"]`` in tests/conftest.py.

- ``host_farm``: the session's HostFarm (skipped, with the reason, when the machine cannot
  run test hosts: not root, no sshd, no ``ip netns``; under CI=true that skip fails the run,
  see tests/skippolicy.py).
- ``client_key``: the central's ed25519 key pair (session), authorized on factory hosts.
- ``test_host``: factory; ``test_host(name=None, **add_host_kwargs)`` -> TestHost,
  ``test_host.many(n, **kwargs)`` -> [TestHost]. Hosts are removed when the test ends.
- ``lxc_farm`` / ``lxc_container``: see tests/lxc.py.
"""
import collections
import itertools

import pytest

from tests import hostfarm
from tests.skippolicy import allowed_in_ci

KeyPair = collections.namedtuple("KeyPair", "path public_path public_key fingerprint")

_names = itertools.count(1)


@pytest.fixture(scope="session")
def host_farm():
    """One HostFarm for the session; skips loudly if this machine cannot run test hosts."""
    reason = hostfarm.missing_requirements()
    if reason:
        pytest.skip("REAL-HOST TESTS NOT RUN: " + reason)
    farm = hostfarm.HostFarm()
    yield farm
    farm.close()


@pytest.fixture(scope="session")
def client_key(tmp_path_factory):
    """The central's key pair: .path (private), .public_path, .public_key (line), .fingerprint."""
    path = tmp_path_factory.mktemp("central-key") / "id_ed25519"
    public_key = hostfarm.generate_key(path, "central-test")
    return KeyPair(path, path.with_name(path.name + ".pub"), public_key,
                   hostfarm.fingerprint_of(public_key))


class HostFactory:
    """Creates hosts on the session farm (authorizing client_key by default) for one test."""

    def __init__(self, farm, client_key):
        self.farm = farm
        self.client_key = client_key
        self.created = []
        self.networks = []

    def network(self):
        """A private network (HostFarm.add_network), removed after the test."""
        net = self.farm.add_network()
        self.networks.append(net)
        return net

    def _kwargs(self, kwargs):
        kwargs.setdefault("authorized_keys", [self.client_key.public_key])
        return kwargs

    def __call__(self, name=None, **kwargs):
        """One host (add_host keyword arguments: agent, authorized_keys, policy, ...)."""
        return self.many([name], **kwargs)[0]

    def many(self, names, **kwargs):
        """Several hosts at once; names is a count or a list of names (None: generated)."""
        if isinstance(names, int):
            names = [None] * names
        names = [n or "t%d-%d" % (self.farm.subnet_index, next(_names)) for n in names]
        hosts = self.farm.add_hosts(names, **self._kwargs(kwargs))
        self.created += hosts
        return hosts

    def cleanup(self):
        for host in self.created:
            if host.name in self.farm.hosts:
                self.farm.remove_host(host.name)
        for net in self.networks:
            self.farm.remove_network(net)


@pytest.fixture
def test_host(host_farm, client_key):
    """Factory fixture: test_host(name=None, agent=True, ...) -> TestHost, removed after the test."""
    factory = HostFactory(host_farm, client_key)
    yield factory
    factory.cleanup()


def pytest_configure(config):
    config.addinivalue_line("markers", "lxc: needs real LXC containers (tests/lxc.py)")
    config.addinivalue_line("markers", "hosts: needs real netns test hosts (tests/hostfarm.py)")


@pytest.fixture(scope="session")
def lxc_farm():
    """The session's LxcFarm (base built once and cached; clones on a private bridge).

    Skips when LXC is unusable here (a failure under CI=true) or the Debian mirror is
    unreachable (the one skip CI allows); any other failure to build the base is an error.
    """
    from tests import lxc

    reason = lxc.missing_requirements()
    if reason:
        pytest.skip("LXC TESTS NOT RUN: " + reason)
    try:
        farm = lxc.LxcFarm()
    except lxc.MirrorUnreachable as exc:
        # The one skip CI accepts: the base container is built from the Debian package
        # mirror, and a mirror outage is not a fault of the code under test.
        allowed_in_ci("LXC TESTS NOT RUN, PACKAGE MIRROR UNREACHABLE (allowed in CI): %s" % exc)
    yield farm
    farm.close()


@pytest.fixture
def lxc_container(lxc_farm, client_key):
    """Factory: lxc_container(name=None, authorized_keys=[client_key], memory="256M",
    start=True) -> tests.lxc.Container, destroyed after the test."""
    made = []

    def make(name=None, authorized_keys=None, **kwargs):
        if authorized_keys is None:
            authorized_keys = [client_key.public_key]
        container = lxc_farm.clone(name, authorized_keys=authorized_keys, **kwargs)
        made.append(container)
        return container

    yield make
    for container in made:
        container.destroy()
        lxc_farm.containers.pop(container.lxc_name, None)
