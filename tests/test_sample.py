"""Agent documents are untrusted: shape checks and defensive figure extraction."""
from __future__ import annotations

import json
import math

import pytest

from central.model import PollError
from central.sample import extract_sample, parse_document

GOOD = {
    "timestamp": 1.0, "hostname": "h",
    "cpu": {"percent": 12.5}, "memory": {"percent": 40.0, "swap_percent": 0.0},
    "load": {"load1": 0.5, "load5": 0.4, "load15": 0.3},
    "filesystems": [{"percent": 20.0}, {"percent": 91.5}, {"percent": None}],
    "network": {"rx_rate": 100.0, "tx_rate": 50.0}, "disk_io": {"read_rate": 1.0, "write_rate": 2.0},
    "processes": {"count": 42, "top_cpu": [{"pid": 7, "name": "x" * 100, "cpu_percent": 50.0, "rss": 1024}] * 7},
}


def test_extracts_key_figures():
    doc, text = parse_document(json.dumps(GOOD).encode())
    s = extract_sample(doc)
    assert (s["cpu"], s["mem"], s["disk"], s["procs"], s["net_rx"]) == (12.5, 40.0, 91.5, 42, 100.0)
    assert len(s["top"]) == 5 and s["top"][0] == [7, "x" * 64, 50.0, 1024.0]


@pytest.mark.parametrize("body, message", [
    (b"\xff\xfe", "not UTF-8"),
    (b"{not json", "not JSON"),
    (b"[1, 2]", "document: expected an object, got a list"),
    (b'{"hostname": "h"}', "timestamp: missing"),
    (b'{"timestamp": 1, "hostname": 5}', "hostname: expected a string, got 5"),
    (b'{"timestamp": 1, "hostname": "h", "cpu": [1]}', "cpu: expected an object, got a list"),
    (b"[" * 100000 + b"]" * 100000, "not JSON"),
])
def test_bad_documents_are_bad_payload(body, message):
    with pytest.raises(PollError) as err:
        parse_document(body)
    assert err.value.reason == "bad_payload"
    assert message in err.value.message


def test_hostile_values_become_none():
    doc = dict(GOOD, cpu={"percent": "100"}, memory={"percent": True}, load={"load1": float("nan")},
               processes={"count": 1e400, "top_cpu": [{"pid": "1"}, "x", {"pid": True}]})
    s = extract_sample(doc)
    assert s["cpu"] is None and s["mem"] is None and s["load1"] is None
    assert s["procs"] is None and s["top"] == []
    assert not any(isinstance(v, float) and math.isnan(v) for v in s.values())
