"""Shared fixtures: a config with its own data directory, an opened Central."""
from __future__ import annotations

import dataclasses

import pytest

from central.config import Config, PollConfig, RetentionConfig, SSHConfig, load_config
from central.service import Central, ensure_key_pair

# skippolicy: under CI=true a skip fails the run; outside CI every skip is summarised loudly.
pytest_plugins = ["tests.skippolicy", "tests.hostfixtures", "tests.sshharness", "tests.pgserver", "pytester"]

from tests.agentutil import agent, start_agent  # noqa: E402,F401  (fixtures for the agent tests)


def make_config(tmp_path, **poll) -> Config:
    """A config whose data lives in tmp_path, with fast polling and quick reconnects."""
    cfg = load_config(env={"CENTRAL_DATA_DIR": str(tmp_path / "data")})
    return dataclasses.replace(
        cfg,
        data_dir=str(tmp_path / "data"),
        poll=dataclasses.replace(PollConfig(), interval=1.0, timeout=3.0, reload_interval=0.5, **poll),
        ssh=dataclasses.replace(SSHConfig(), connect_timeout=3.0, backoff_initial=0.2, backoff_max=1.0),
        retention=RetentionConfig(),
        # The suite runs as root, where actions on `local` are refused by default; tests of
        # local actions act as an operator who allowed it (tests/test_central_user.py checks
        # the default refusal, and local actions of a central that is not root).
        actions=dataclasses.replace(cfg.actions, local_as_root=True),
    )


@pytest.fixture
def config(tmp_path) -> Config:
    cfg = make_config(tmp_path)
    cfg.data_path.mkdir(parents=True, exist_ok=True)
    ensure_key_pair(cfg.key_path)
    return cfg


@pytest.fixture
async def central(config):
    c = await Central.open(config)
    yield c
    await c.close()

