"""The HTTP API through the real app factory: auth everywhere, roles, validation, errors, servers."""
from __future__ import annotations

import json
import time

import pytest

from central.sample import METRICS
from tests.apiclient import api, start_api, wait_online  # noqa: F401

GETS = ["/api/v1/servers", "/api/v1/servers/local", "/api/v1/servers/local/history",
        "/api/v1/servers/local/processes", "/api/v1/servers/local/inventory", "/api/v1/fleet",
        "/api/v1/status", "/api/v1/openapi.json", "/api/v1/session", "/metrics"]


async def test_every_endpoint_but_health_and_readiness_needs_auth(api):
    from central.web.keys import ENDPOINTS

    for ep in api.app[ENDPOINTS]:
        path = ep.path.replace("{name}", "local").replace("{id}", "1").replace("{container}", "web")
        status, body, resp = await api.request(ep.method, path, role=None, json={})
        if ep.path in ("/health", "/readiness", "/api/v1/login"):
            assert status != 401, ep.path
            continue
        assert status == 401, (ep.method, ep.path, status)
        assert body["error"] == "unauthorized"
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    for path in ("/health", "/readiness"):
        status, body, _ = await api.get(path, role=None)
        assert status == 200 and body["status"] in ("ok", "ready")


async def test_viewer_reads_everything(api):
    for path in GETS:
        status, body, _ = await api.get(path, role="viewer")
        assert status == 200, (path, body)


@pytest.mark.parametrize("method,path,body", [
    ("POST", "/api/v1/servers", {"name": "x", "host": "127.0.0.1"}),
    ("PATCH", "/api/v1/servers/local", {"tags": ["a"]}),
    ("DELETE", "/api/v1/servers/local", None),
    ("POST", "/api/v1/servers/local/trust", {}),
    ("POST", "/api/v1/servers/local/test", None),
])
async def test_viewer_cannot_change_anything(api, method, path, body):
    status, resp, _ = await api.request(method, path, role="viewer", json=body)
    assert status == 403
    assert resp["error"] == "forbidden" and "role" in resp["detail"]
    assert (await api.central.storage.get_server("local")).tags == ("central",)


async def test_operator_may_test_but_not_manage_servers(api):
    status, body, _ = await api.request("POST", "/api/v1/servers/local/test", role="operator")
    assert status == 200 and body["ok"] is True and body["local"] is True
    for method, path, body in (("PATCH", "/api/v1/servers/local", {"tags": ["a"]}),
                               ("DELETE", "/api/v1/servers/local", None)):
        status, _, _ = await api.request(method, path, role="operator", json=body)
        assert status == 403


async def test_admin_updates_and_deletes_a_server(api):
    await api.central.storage.add_server("web1", "127.0.0.1", port=1, tags=("prod",))
    status, body, _ = await api.request("PATCH", "/api/v1/servers/web1", json={"tags": ["prod", "eu"], "interval": 30})
    assert status == 200, body
    assert body["server"]["tags"] == ["prod", "eu"] and body["server"]["interval_s"] == 30.0
    assert "host_key" not in body["server"]
    stored = await api.central.storage.get_server("web1")
    assert stored.tags == ("prod", "eu") and stored.interval_s == 30.0
    status, body, _ = await api.request("DELETE", "/api/v1/servers/web1")
    assert status == 200 and body == {"removed": "web1"}
    assert await api.central.storage.find_server("web1") is None
    status, body, _ = await api.request("DELETE", "/api/v1/servers/web1")
    assert status == 404 and body["error"] == "not_found" and "web1" in body["detail"]


async def test_list_filters_and_pages(api):
    for i in range(7):
        await api.central.storage.add_server(f"web{i}", "127.0.0.1", port=1, tags=("prod",) if i % 2 else ("dev",))
    await api.central.storage.update_server("web3", status="offline", status_reason="unreachable")
    status, body, _ = await api.get("/api/v1/servers?tag=prod", role="viewer")
    assert [s["name"] for s in body["servers"]] == ["web1", "web3", "web5"] and body["total"] == 3
    status, body, _ = await api.get("/api/v1/servers?status=offline")
    assert [(s["name"], s["status_reason"]) for s in body["servers"]] == [("web3", "unreachable")]
    status, body, _ = await api.get("/api/v1/servers?name=EB&limit=2&offset=2")
    assert body["total"] == 7 and body["limit"] == 2 and body["offset"] == 2
    assert [s["name"] for s in body["servers"]] == ["web2", "web3"]
    status, body, _ = await api.get("/api/v1/servers?limit=0")
    assert status == 400 and body["field"] == "limit"


async def test_list_carries_latest_key_figures(api):
    await wait_online(api)
    status, body, _ = await api.get("/api/v1/servers?name=local")
    row = body["servers"][0]
    assert row["status"] == "online" and row["sample"] is not None
    assert set(METRICS) <= set(row["sample"]) and 0 <= row["sample"]["mem"] <= 100
    status, fleet, _ = await api.get("/api/v1/fleet")
    assert fleet["total"] == 1 and fleet["online"] == 1 and fleet["alerts_firing"] == 0
    assert fleet["averages"]["mem"] == pytest.approx(row["sample"]["mem"], abs=0.01)


async def test_fleet_counts_firing_alerts_from_the_alerts_table(api):
    storage = api.central.storage
    server = await storage.get_server("local")
    now = time.time()
    await storage.save_alerts([
        {"rule": rule, "server_id": server.id, "label": "", "severity": "warning", "state": state, "summary": "",
         "started_at": now, "last_evaluated": now} for rule, state in
        (("cpu_high", "firing"), ("disk_full", "firing"), ("mem_high", "pending"), ("old", "resolved"))], [], [])
    status, body, _ = await api.get("/api/v1/fleet")
    assert (body["alerts_firing"], body["alerts_pending"]) == (2, 1)


async def test_status(api):
    await wait_online(api)
    status, body, _ = await api.get("/api/v1/status", role="viewer")
    assert body["version"] and body["uptime"] >= 0 and body["database"]["bytes"] > 0
    assert body["poller"]["servers"] == 1 and body["poller"]["polls"] >= 1
    assert body["pool"]["connections"] == 0


async def test_processes_and_inventory_of_the_local_server(api):
    await wait_online(api)
    status, body, _ = await api.get("/api/v1/servers/local/processes")
    assert status == 200 and body["count"] > 0 and body["top_cpu"]
    assert {"pid", "name", "cpu_percent", "rss"} <= set(body["top_cpu"][0])
    status, body, _ = await api.get("/api/v1/servers/local/inventory")
    assert body["latest"]["hash"] and body["history"][0]["change_type"] == "initial"
    status, body, _ = await api.get("/api/v1/servers/nope/processes")
    assert status == 404


async def test_history_picks_the_tier_and_bounds_points(api):
    storage = api.central.storage
    sid = (await storage.get_server("local")).id
    now = time.time()
    raw = [(sid, now - 3 * 3600 + i * 10, float(i % 100), 50.0, *[None] * (len(METRICS) - 2), "[]")
           for i in range(3 * 360)]
    await storage.import_samples(raw)
    hourly = [(sid, (int(now / 3600) - 24 * 20 + h) * 3600, 60, *[v for m in METRICS for v in (1.0, 2.0, 3.0)])
              for h in range(24 * 20)]
    await storage.import_rollups(3600, hourly)
    status, body, _ = await api.get("/api/v1/servers/local/history?range=2h&metrics=cpu,mem&points=200")
    assert status == 200, body
    assert body["source"] == "raw" and body["metrics"] == ["cpu", "mem"]
    assert 150 <= len(body["series"]["ts"]) <= 201 and set(body["series"]) == {"ts", "cpu", "cpu_min", "cpu_max",
                                                                              "mem", "mem_min", "mem_max"}
    status, body, _ = await api.get("/api/v1/servers/local/history?range=30d&metrics=cpu")
    assert body["source"] == "hour" and 0 < len(body["series"]["ts"]) <= 500
    # Rolled-up hours read from the hour tier; the newest, not yet rolled-up samples follow
    # from the raw tier, so the chart reaches the present.
    assert set(body["series"]["cpu"][:-2]) == {2.0}
    assert body["series"]["ts"][-1] >= now - 2 * body["step"] and body["series"]["cpu"][-1] != 2.0
    start = now - 7200
    status, body, _ = await api.get(f"/api/v1/servers/local/history?start={start}&end={start + 600}&metrics=mem")
    assert body["start"] == start and body["series"]["mem"] and set(body["series"]["mem"]) == {50.0}
    for query, field in (("metrics=cpu,bogus", "metrics"), ("range=1y", "range"), ("points=5", "points"),
                         (f"start={now}&end={now - 10}", "end")):
        status, body, _ = await api.get(f"/api/v1/servers/local/history?{query}")
        assert status == 400 and field in body["detail"], (query, body)


@pytest.mark.parametrize("payload,field", [
    ({"tags": "prod"}, "tags"),
    ({"tags": ["ok", 3]}, "tags[1]"),
    ({"port": "22"}, "port"),
    ({"port": 70000}, "port"),
    ({"interval": True}, "interval"),
    ({"colour": "red"}, "colour"),
    ({"host_key": "ssh-ed25519 AAAA"}, "host_key"),
])
async def test_bad_bodies_name_the_field(api, payload, field):
    await api.central.storage.add_server("web1", "127.0.0.1", port=1)
    status, body, _ = await api.request("PATCH", "/api/v1/servers/web1", json=payload)
    assert status == 400, body
    assert body["error"] == "invalid" and body["field"] == field and body["detail"].startswith(field + ":")
    assert (await api.central.storage.get_server("web1")).port == 1


async def test_bad_json_and_missing_body(api):
    await api.central.storage.add_server("web1", "127.0.0.1", port=1)
    status, body, _ = await api.request("PATCH", "/api/v1/servers/web1", data=b'{"tags": [',
                                        headers={"Content-Type": "application/json"})
    assert status == 400 and "not valid JSON" in body["detail"]
    status, body, _ = await api.request("PATCH", "/api/v1/servers/web1", data=b"[1, 2]",
                                        headers={"Content-Type": "application/json"})
    assert status == 400 and "expected an object" in body["detail"]
    status, body, _ = await api.request("POST", "/api/v1/servers", data=b"")
    assert status == 400 and "body required" in body["detail"]
    status, body, _ = await api.request("POST", "/api/v1/servers", json={"host": "127.0.0.1"})
    assert status == 400 and body["field"] == "name" and "required" in body["detail"]


async def test_body_over_the_limit_is_413(config):
    api = await start_api(config, max_body_bytes=2048)
    try:
        big = {"tags": ["x" * 30] * 100}
        status, body, _ = await api.request("PATCH", "/api/v1/servers/local", json=big)
        assert status == 413 and body["error"] == "request_entity_too_large" and "2048" in body["detail"]

        async def chunks():
            for _ in range(10):
                yield b" " * 1024

        status, body, _ = await api.request("PATCH", "/api/v1/servers/local", data=chunks(),
                                            headers={"Content-Type": "application/json"})
        assert status == 413 and body["error"] == "request_entity_too_large"
    finally:
        await api.client.close()


async def test_unknown_route_and_method_are_json(api):
    status, body, _ = await api.get("/api/v1/nothing")
    assert status == 404 and body["error"] == "not_found"
    status, body, resp = await api.request("PUT", "/api/v1/servers")
    assert status == 405 and body["error"] == "method_not_allowed" and "GET" in resp.headers["Allow"]


async def test_create_without_fingerprint_conflict_and_validation(api):
    status, body, _ = await api.request("POST", "/api/v1/servers", json={"name": "local", "host": "127.0.0.1"})
    assert status == 409 and body["error"] == "conflict"
    status, body, _ = await api.request("POST", "/api/v1/servers", json={"name": "-bad", "host": "127.0.0.1"})
    assert status == 400 and body["field"] == "name"


async def test_create_of_an_unreachable_host_is_502_and_stores_nothing(api, unused_tcp_port):
    status, body, _ = await api.request("POST", "/api/v1/servers",
                                        json={"name": "gone", "host": "127.0.0.1", "port": unused_tcp_port})
    assert status == 502 and body["reason"] == "unreachable"
    assert await api.central.storage.find_server("gone") is None


async def test_internal_errors_are_500_json_without_traceback(api, caplog):
    async def broken():
        raise RuntimeError("secret detail /etc/shadow")

    api.central.storage.status_counts = broken
    status, body, _ = await api.get("/api/v1/fleet")
    assert status == 500 and body == {"error": "internal_error",
                                      "detail": "internal error; the central's log has the details"}
    assert "secret detail" in caplog.text  # logged with its traceback for the operator


async def test_security_headers(api):
    status, _, resp = await api.get("/api/v1/servers")
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["X-Frame-Options"] == "DENY"


async def test_responses_are_compact_json(api):
    status, text, resp = await api.request("GET", "/api/v1/fleet")
    raw = await (await api.client.get("/api/v1/fleet", headers=api.headers())).text()
    assert json.loads(raw)["total"] == 1 and ", " not in raw


async def test_a_server_removed_while_its_poll_is_queued_does_not_lose_the_batch(api):
    from central.model import PollOutcome

    storage = api.central.storage
    gone = await storage.add_server("gone", "127.0.0.1", port=1)
    stays = await storage.add_server("stays", "127.0.0.1", port=1)
    now = time.time()
    sample = dict.fromkeys(METRICS, 1.0) | {"top": []}
    batch = [PollOutcome(server_id=s.id, ts=now, duration=0.01, ok=True, doc_text="{}", sample=sample)
             for s in (gone, stays)]
    await storage.remove_server("gone")
    await storage.write_polls(batch, offline_after=3)
    assert (await storage.get_server("stays")).status == "online"
    assert stays.id in await storage.latest_samples()


def test_config_example_documents_every_key_with_its_default(monkeypatch, tmp_path):
    # the defaults, not a config.toml that happens to sit in this machine's default data dir
    monkeypatch.setenv("CENTRAL_DATA_DIR", str(tmp_path))
    import dataclasses
    import tomllib
    from pathlib import Path

    from central.config import Config, load_config

    path = Path(__file__).resolve().parent.parent / "config.example.toml"
    text = path.read_text()
    data = tomllib.loads(text)
    defaults = load_config(env={})
    for f in dataclasses.fields(Config):
        if dataclasses.is_dataclass(f.type if not isinstance(f.type, str) else getattr(defaults, f.name)):
            section = getattr(defaults, f.name)
            for key in dataclasses.fields(section):
                documented = key.name in data.get(f.name, {}) or f"# [[{f.name}.{key.name}]]" in text
                assert documented, f"[{f.name}] {key.name} is not documented"
    loaded = load_config(path, env={})
    assert dataclasses.replace(loaded, source="") == dataclasses.replace(defaults, source="")
    assert "# data_dir" in text


async def test_latest_samples_memory_matches_the_database(api):
    storage = api.central.storage
    await wait_online(api)
    await api.central.poller.stop()  # hold the data still for the comparison
    from_memory = await storage.latest_samples()
    from_db = await storage._read_latest_samples()  # noqa: SLF001 - the query the memory replaces
    sid = (await storage.get_server("local")).id
    assert set(from_memory) == set(from_db) == {sid}
    assert {k: v for k, v in from_memory[sid].items() if k != "top"} == {k: v for k, v in from_db[sid].items() if k != "top"}
    assert [list(t) for t in from_memory[sid]["top"]] == from_db[sid]["top"]
    await storage.import_samples([(sid, time.time() + 3600, *[7.0] * len(METRICS), "[]")])
    assert (await storage.latest_samples())[sid]["cpu"] == 7.0  # an import invalidates the memory
