"""/metrics: Prometheus text that promtool accepts, with fleet, poll and process metrics."""
from __future__ import annotations

import asyncio
import os
import re

import pytest

from central import metrics
from central.poller import Histogram
from tests import tools
from tests.apiclient import api, start_api  # noqa: F401
from tests.helpers import wait_for


def test_histogram_buckets_are_cumulative():
    h = Histogram(buckets=(0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)
    assert h.cumulative() == [(0.1, 2), (1.0, 3), (float("inf"), 4)]
    assert h.count == 4 and h.sum == pytest.approx(3.65)


def test_process_stats_from_proc_self():
    stats = metrics.process_stats()
    assert stats["cpu_seconds"] > 0 and stats["resident_bytes"] > 10_000_000
    assert stats["open_fds"] >= 3 and abs(stats["start_time"] - _ps_start()) < 2


def _ps_start() -> float:
    import time

    with open("/proc/uptime") as fh:
        uptime = float(fh.read().split()[0])
    with open("/proc/self/stat") as fh:
        start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
    return time.time() - uptime + start_ticks / os.sysconf("SC_CLK_TCK")


async def _metrics_text(api, role="viewer"):
    status, text, resp = await api.get("/metrics", role=role)
    assert status == 200, text
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return text


async def test_metrics_content(api):
    await api.central.storage.add_server("web1", "127.0.0.1", port=1)

    async def local_sampled():
        server = await api.central.storage.get_server("local")
        sample = (await api.central.storage.latest_samples()).get(server.id)
        # The first poll may come within one clock tick of the baseline: no CPU figure yet.
        return server.status == "online" and sample and sample["cpu"] is not None

    await wait_for(local_sampled, what="a local sample with a CPU figure")
    text = await _metrics_text(api)
    assert 'central_server_up{server="local"} 1' in text
    assert 'central_server_up{server="web1"} 0' in text
    mem = re.search(r'^central_server_memory_percent\{server="local"\} (\S+)$', text, re.M)
    assert mem and 0 < float(mem.group(1)) <= 100
    # the first poll of a fresh collector may have no CPU figure yet: then there is no line
    cpu = re.search(r'^central_server_cpu_percent\{server="local"\} (\S+)$', text, re.M)
    assert cpu and 0 <= float(cpu.group(1)) <= 100
    assert 'central_server_cpu_percent{server="web1"}' not in text  # no figures for a server never seen
    count = int(re.search(r"^central_poll_duration_seconds_count (\d+)$", text, re.M).group(1))
    inf = int(re.search(r'^central_poll_duration_seconds_bucket\{le="\+Inf"\} (\d+)$', text, re.M).group(1))
    assert count >= 1 and inf == count
    for reason in ("unreachable", "timeout", "host_key_mismatch"):
        assert re.search(rf'^central_poll_errors_total{{reason="{reason}"}} \d+$', text, re.M)
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
                 "process_start_time_seconds"):
        assert re.search(rf"^{name} [0-9.e+]+$", text, re.M), name


async def test_poll_errors_are_counted_by_reason(api, unused_tcp_port):
    server = await api.central.storage.add_server("refuses", "127.0.0.1", port=unused_tcp_port,
                                                  host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPz0dkaVvH2H8v6r8F+X2Xw2L5dV0aP1q2lP8dQ0yq7E",
                                                  host_key_fingerprint="SHA256:x")
    outcome = await api.central.poller.poll(server)
    assert outcome.reason == "unreachable"
    text = await _metrics_text(api)
    assert int(re.search(r'^central_poll_errors_total\{reason="unreachable"\} (\d+)$', text, re.M).group(1)) >= 1


async def test_promtool_accepts_the_metrics(api):
    promtool = tools.require("promtool", "the Debian package prometheus")
    await api.central.poller.wait_flushed()
    text = await _metrics_text(api)
    proc = await asyncio.create_subprocess_exec(promtool, "check", "metrics", stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate(text.encode())
    assert proc.returncode == 0, out.decode()
    assert out.decode().strip() == "", out.decode()  # not even lint warnings


async def test_metrics_need_auth_unless_configured(api, config):
    status, _, _ = await api.get("/metrics", role=None)
    assert status == 401
    open_api = await start_api(config, metrics_auth=False)
    try:
        status, text, _ = await open_api.get("/metrics", role=None)
        assert status == 200 and "central_server_up" in text
        status, _, _ = await open_api.get("/api/v1/servers", role=None)
        assert status == 401  # only /metrics opens up
    finally:
        await open_api.client.close()
