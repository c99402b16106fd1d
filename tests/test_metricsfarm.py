"""bench/metricsfarm.py (the peer bench's scrape targets) serves the captured node_exporter
body on every port, the same series with shifted values in turn, gzip when asked, and counts
what it served."""

from __future__ import annotations

import gzip
import http.client
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

BENCH = Path(__file__).resolve().parent.parent / "bench"
BODY = BENCH / "data" / "node_exporter-metrics.txt"


def samples(body: bytes) -> dict[str, float]:
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def test_every_target_serves_the_captured_body_with_its_values_shifted_in_turn():
    captured = samples(BODY.read_bytes())
    assert len(captured) > 100 and any(k.startswith("node_cpu_seconds_total{") for k in captured)
    farm = subprocess.Popen([sys.executable, str(BENCH / "metricsfarm.py"), "--body", str(BODY), "--targets", "3",
                             "--variants", "3"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        first = json.loads(farm.stdout.readline())
        assert len(set(first["ports"])) == 3 and first["pid"] == farm.pid
        for port in first["ports"]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # one kept connection, as Prometheus
            for i in range(4):
                gz = i % 2 == 1
                conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"} if gz else {})
                resp = conn.getresponse()
                raw = resp.read()
                assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/plain; version=0.0.4")
                assert (resp.getheader("Content-Encoding") == "gzip") == gz
                got = samples(gzip.decompress(raw) if gz else raw)
                assert got.keys() == captured.keys()
                shift = i % 3
                for k, v in captured.items():
                    if v == v and abs(v) != float("inf"):
                        assert got[k] == pytest.approx(v + shift, rel=1e-12, abs=1e-9), k
            conn.request("GET", "/other")
            assert conn.getresponse().status == 404
            conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", first["control"], timeout=10)
        conn.request("GET", "/count")
        assert json.loads(conn.getresponse().read()) == {"served": 12, "targets": 3}
    finally:
        farm.terminate()
        farm.wait(10)
        farm.stdout.close()
