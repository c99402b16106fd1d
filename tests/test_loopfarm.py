"""bench/loopfarm.py (the benchmark's loopback host farm) still serves a real agent's answers
through the channel code it shares with the test harness (tests/sshserver.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import asyncssh

from central.model import Server
from tests.sshharness import agent_client, make_pool, public_key_line

FARM = Path(__file__).resolve().parent.parent / "bench" / "loopfarm.py"


async def test_the_farm_answers_with_the_real_agents_documents(config, start_agent, tmp_path):
    agent = start_agent()
    key = asyncssh.generate_private_key("ssh-ed25519")
    (tmp_path / "farm_key").write_bytes(key.export_private_key())
    farm = subprocess.Popen(
        [
            sys.executable,
            str(FARM),
            "--host-key",
            str(tmp_path / "farm_key"),
            "--authorized-keys",
            str(config.key_path) + ".pub",
            "--agent",
            f"127.0.0.1:{agent.port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    pool = make_pool(config)
    try:
        port = json.loads(farm.stdout.readline())["port"]
        client = agent_client(pool, Server(id=1, name="f1", host="127.0.0.1", port=port, host_key=public_key_line(key)))
        for _ in range(2):  # the second on the kept channel
            status, doc = await client.request_json("GET", "/api/all", timeout=10)
            assert status == 200 and isinstance(doc["hostname"], str) and doc["agent"]["sha256"]
        status, health = await client.request_json("GET", "/api/health", timeout=10)
        assert status == 200 and health["pid"] == agent.pid
        assert client.channels_opened == 1
    finally:
        await pool.close()
        farm.terminate()
        farm.wait(10)
        farm.stdout.close()
