"""One hostile host never hurts another: real netns hosts, a stand-in agent serving a chosen document.

Each test runs a hostile host (tests/standin_agent.py serving one kind of document from issue
13) beside a good host and bystanders running the real agent, all polled by the real central
through real sshd. Every sample the good host and the bystanders produce is stored, the
hostile host gets its own reason naming the field, the page and the API answer 200 with
bounded bodies, and no raw control character reaches a log line or an alert summary.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import time

import pytest

from central import servers
from central.hosttext import UNSAFE_RE, is_clean
from tests.apiclient import PASSWORD, start_api
from tests.hostfarm import STANDIN_AGENT

pytestmark = pytest.mark.hosts

BYSTANDERS = 3
POLLS = 4  # ok polls each well-behaved host must have stored before the checks
BODY_CAP = 200_000  # every page and API body of the hostile host stays under this many bytes
NAN, INF = "__NaN__", "__Infinity__"  # placeholders for the bare NaN / Infinity tokens


def base(hostname: str) -> dict:
    """A valid /api/all document (every section present)."""
    proc = {"pid": 42, "start_time": 100, "user": "root", "name": "worker", "cmdline": "worker --run",
            "cpu_percent": 12.5, "rss": 1 << 20}
    return {
        "agent": {"version": "1.0.0", "sha256": "0" * 64, "python": "3.11.7"},
        "timestamp": time.time(), "hostname": hostname, "uptime": 1000.0,
        "cpu": {"percent": 5.0, "user": 3.0, "system": 2.0, "iowait": 0.0, "steal": 0.0, "count": 2,
                "per_core": [5.0, 5.0], "limit": None, "source": "proc"},
        "load": {"load1": 0.1, "load5": 0.2, "load15": 0.3},
        "memory": {"total": 1 << 31, "available": 1 << 30, "used": 1 << 30, "percent": 50.0,
                   "swap_total": 0, "swap_used": 0, "swap_percent": 0.0, "source": "proc"},
        "filesystems": [{"device": "/dev/vda1", "mountpoint": "/", "fstype": "ext4", "total": 10**10,
                         "used": 10**9, "free": 9 * 10**9, "percent": 10.0, "inodes_total": 1000,
                         "inodes_used": 10, "inodes_percent": 1.0}],
        "disk_io": {"read_rate": 0.0, "write_rate": 0.0, "devices": []},
        "network": {"rx_rate": 10.0, "tx_rate": 10.0, "interfaces": [{"name": "eth0", "rx_bytes": 1, "tx_bytes": 1}]},
        "processes": {"count": 10, "top_cpu": [proc], "top_memory": [proc]},
        "systemd": {"available": True, "failed": [], "watched": {}},
        "docker": {"available": False, "containers": []},
        "inventory_hash": "f" * 64,
        "errors": {},
    }


INVENTORY = {"hostname": "hostile", "os": {"id": "debian", "name": "Debian GNU/Linux", "version_id": "12",
                                           "pretty_name": "Debian GNU/Linux 12 (bookworm)"},
             "kernel": "6.1.0", "arch": "x86_64", "virtualization": "none",
             "cpu": {"model": "x", "count": 2, "limit": None}, "memory_total": 1 << 31,
             "block_devices": [], "filesystems": [], "interfaces": []}


def body(doc: dict) -> bytes:
    text = json.dumps(doc, separators=(",", ":"))
    return text.replace(f'"{NAN}"', "NaN").replace(f'"{INF}"', "Infinity").encode()


def patched(name: str, section: str, **fields) -> dict:
    doc = base(name)
    doc[section] = dict(doc[section], **fields)
    return doc


CONTROL_HOSTNAME = "evil\x00\x1b[31mhost\r\n2026-01-01 00:00:00 CRITICAL forged line\u202e"
# kind: (/api/all document, /api/inventory document or None, the hostile host's expected
# reason fragment; None means the document is accepted, cleaned and cut)
KINDS = {
    "count_1e300": (lambda n: patched(n, "processes", count=1e300), None,
                    "processes.count: 1e+300 is out of range"),
    "count_10e19": (lambda n: patched(n, "processes", count=10**19), None,
                    "processes.count: 10000000000000000000 is out of range"),
    "nan": (lambda n: patched(n, "cpu", percent=NAN), None, "cpu.percent: NaN is not a finite number"),
    "infinity": (lambda n: patched(n, "load", load1=INF), None, "load.load1: Infinity is not a finite number"),
    "rollup_1e308": (lambda n: patched(n, "network", rx_rate=1e308), None, "network.rx_rate: 1e+308 is out of range"),
    "string_os": (lambda n: base(n), dict(INVENTORY, os="Debian"), "inventory.os: expected an object, got a string"),
    "negative_memory": (lambda n: patched(n, "memory", used=-(1 << 30)), None, "memory.used: -1073741824 is out of range"),
    # 2.8 MB: under the agent client's 4 MiB read limit, over the document cap
    "top_200000": (lambda n: patched(n, "processes", top_cpu=[{"pid": i + 1} for i in range(200_000)]),
                   None, "document: 2"),
    "hostname_1mb": (lambda n: dict(base(n), hostname="h" * 10**6), None, "document: 1"),
    "hostname_300kb": (lambda n: dict(base(n), hostname="h" * 300_000), None, None),
    "control_characters": (lambda n: dict(
        base(n), hostname=CONTROL_HOSTNAME, errors={"dock\x00er": "permission\x1b[0m denied\n"},
        filesystems=[{"device": "/dev/vdb\x07", "mountpoint": "/srv\x1b]0;owned\x07", "fstype": "ext4",
                      "total": 100, "used": 99, "free": 1, "percent": 99.0}],
        processes={"count": 1, "top_cpu": [{"pid": 7, "start_time": 1, "name": "\x1b[2Jkworker\x00",
                                            "cmdline": "a\nb\tc\x9b", "cpu_percent": 1.0, "rss": 1}]}),
        None, None),
}


@pytest.fixture
async def hostile_api(config, client_key):
    cfg = dataclasses.replace(
        config, ssh=dataclasses.replace(config.ssh, key_path=str(client_key.path)),
        poll=dataclasses.replace(config.poll, local=False),
        alerts=dataclasses.replace(config.alerts, disk_full_for=0.0))
    api = await start_api(cfg)
    yield api
    await api.client.close()


def stored(db, pairs) -> set:
    """Which of the (server_id, ts) pairs have a row in samples (read by a second connection)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = con.execute("SELECT server_id, ts FROM samples").fetchall()
    finally:
        con.close()
    return set(pairs) & set(rows)


@pytest.mark.parametrize("kind", list(KINDS))
async def test_hostile_document_hurts_nobody(kind, hostile_api, test_host, caplog):
    api, central = hostile_api, hostile_api.central
    make_all, inventory, expected = KINDS[kind]
    hostile, good, *bystanders = test_host.many(2 + BYSTANDERS)
    all_path, inv_path = hostile.state_dir / "all.json", hostile.state_dir / "inventory.json"
    all_path.write_bytes(body(make_all(hostile.name)))
    inv_path.write_bytes(json.dumps(inventory or dict(INVENTORY, hostname=hostile.name)).encode())
    hostile.start_agent(agent_path=STANDIN_AGENT, argv_extra=["--all", str(all_path), "--inventory", str(inv_path)])
    caplog.set_level(logging.DEBUG, logger="central")

    produced: list[tuple[int, float]] = []  # ok outcomes of the well-behaved hosts, as polled
    real_poll = central.poller.poll
    ids: dict[str, int] = {}

    async def poll(server):
        outcome = await real_poll(server)
        if outcome.ok and server.name != hostile.name:
            produced.append((outcome.server_id, outcome.ts))
        return outcome

    central.poller.poll = poll
    for host in (hostile, good, *bystanders):
        # deploy hands the central each host's agent secret; the stand-in proves it with the agent's code
        result = await servers.add_server(central, host.name, host.address, fingerprint=host.fingerprint,
                                          agent_secret=host.agent_secret)
        ids[host.name] = result["server"]["id"]

    async def settled():
        counts = {sid: 0 for name, sid in ids.items() if name != hostile.name}
        for sid, _ in produced:
            counts[sid] += 1
        hostile_server = await central.storage.get_server(hostile.name)
        return min(counts.values()) >= POLLS and hostile_server.status != "unknown" and hostile_server
    deadline = time.monotonic() + 90
    server = None
    while time.monotonic() < deadline and not server:
        await central.poller.wait_flushed()
        server = await settled()
    assert server, f"not settled: {len(produced)} good polls, hostile {await central.storage.get_server(hostile.name)}"
    central.poller.poll = real_poll
    await central.poller.wait_flushed()
    await central.poller.wait_flushed()

    # The good host and every bystander kept every sample they produced.
    missing = set(produced) - stored(central.storage.path, produced)
    assert not missing, f"{len(missing)} of {len(produced)} samples of well-behaved hosts were lost"
    for name in (good.name, *(b.name for b in bystanders)):
        assert (await central.storage.get_server(name)).status == "online"

    # The hostile host has its own reason, naming the field; or its document was cleaned and cut.
    server = await central.storage.get_server(hostile.name)
    if expected is not None:
        assert (server.status, server.status_reason) == ("error", "bad_payload"), server
        assert expected in server.last_error
        assert await central.storage.latest_document(server.id) is None
    else:
        assert server.status == "online", server
        assert server.hostname and len(server.hostname) <= 255 and is_clean(server.hostname)
        _, doc = await central.storage.latest_document(server.id)
        assert len(json.dumps(doc)) < BODY_CAP
    if kind == "control_characters":
        assert server.hostname == "evil[31mhost2026-01-01 00:00:00 CRITICAL forged line"
    if kind == "hostname_300kb":
        assert server.hostname == "h" * 254 + "\u2026"

    # Pages and API answer 200 with bounded bodies, rollups included.
    await central.storage.rollup(now=time.time() + 3 * 3600, lag=0)
    name = hostile.name
    for path in (f"/api/v1/servers/{name}", f"/api/v1/servers/{name}/processes", f"/api/v1/servers/{name}/inventory",
                 f"/api/v1/servers/{name}/history?range=24h", f"/api/v1/servers/{name}/history?range=7d",
                 f"/api/v1/servers/{good.name}/history?range=7d", "/api/v1/servers", "/api/v1/fleet", "/api/v1/alerts"):
        async with api.client.get(path, headers=api.headers("viewer")) as resp:
            text = await resp.read()
            assert resp.status == 200, (path, text[:300])
            assert len(text) < BODY_CAP, (path, len(text))
    async with api.client.post("/api/v1/login", json={"username": "viewer1", "password": PASSWORD}) as resp:
        assert resp.status == 200
    for path in (f"/servers/{name}", "/", "/alerts"):
        async with api.client.get(path, allow_redirects=False) as resp:
            text = await resp.read()
            assert resp.status == 200, (path, text[:300])
            assert len(text) < BODY_CAP, (path, len(text))

    # No raw control character in a log line or an alert summary.
    dirty = [r.getMessage() for r in caplog.records if UNSAFE_RE.search(r.getMessage())]
    assert not dirty, dirty[:3]
    async with api.client.get("/api/v1/alerts", headers=api.headers("viewer")) as resp:
        alerts = (await resp.json())["alerts"]
    assert all(is_clean(a["summary"]) for a in alerts), [a["summary"] for a in alerts]
    if kind == "control_characters":
        assert any(a["rule"] == "disk_almost_full" and "/srv]0;owned on" in a["summary"] for a in alerts), alerts
