"""Remote write against a real Prometheus (Debian's package, scripts/test.sh installs it)
started with --web.enable-remote-write-receiver on loopback: a central polling in-process SSH
hosts sends every stored sample, and Prometheus' HTTP API returns them with the labels of
/metrics (server, tags) and the stored values; a receiver that is away is retried with
backoff until it takes everything; the memory bound drops the oldest, counted; a batch the
receiver refuses for good (4xx) is counted failed and not retried."""
from __future__ import annotations

import dataclasses
import socket
import subprocess
import time

import aiohttp
import pytest

from central.config import RemoteWriteConfig
from central.model import METRICS, PollOutcome, Server
from central.remotewrite import RemoteWriter, RemoteWriteSettings, encode_write_request, tags_label
from tests import tools
from tests.apiclient import start_api, wait_online
from tests.helpers import wait_for
from tests.sshharness import HARNESS_SECRET, document_agent

PROMETHEUS = "/usr/bin/prometheus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    def __init__(self, tmp_path, port: int):
        self.tmp_path, self.port = tmp_path, port
        self.base = f"http://127.0.0.1:{port}"
        self.write_url = self.base + "/api/v1/write"
        self.proc = None

    async def start(self) -> None:
        tools.require(PROMETHEUS, "the Debian package prometheus")
        conf = self.tmp_path / "prometheus.yml"
        conf.write_text("global:\n  scrape_interval: 1h\nscrape_configs: []\n")
        data = self.tmp_path / "prom-data"
        data.mkdir(exist_ok=True)
        self.log = open(self.tmp_path / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={conf}", f"--storage.tsdb.path={data}", "--web.enable-remote-write-receiver",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self.log, stderr=subprocess.STDOUT)
        async with aiohttp.ClientSession() as session:
            async def ready():
                if self.proc.poll() is not None:
                    raise AssertionError("prometheus exited: " + (self.tmp_path / "prometheus.log").read_text()[-1000:])
                try:
                    async with session.get(self.base + "/-/ready") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False
            await wait_for(ready, timeout=60, what="prometheus to be ready")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.log.close()

    async def raw(self, selector: str, at: float, window: str = "1h") -> list[dict]:
        """The raw samples of the selector over the window before `at` (a range-vector query)."""
        async with aiohttp.ClientSession() as session:
            async with session.get(self.base + "/api/v1/query", params={"query": f"{selector}[{window}]",
                                                                       "time": f"{at:.3f}"}) as r:
                body = await r.json()
                assert r.status == 200 and body["status"] == "success", body
                return body["data"]["result"]


@pytest.fixture
async def prometheus(tmp_path):
    p = Prometheus(tmp_path, free_port())
    await p.start()
    yield p
    p.stop()


def outcome(server_id: int, ts: float, cpu: float) -> PollOutcome:
    sample = {m: None for m in METRICS} | {"cpu": cpu, "procs": 42}
    return PollOutcome(server_id=server_id, ts=ts, duration=0.01, ok=True, doc_text="{}", sample=sample)


def server(id: int, name: str, tags=()) -> Server:
    return Server(id=id, name=name, host="10.0.0.1", tags=tuple(tags), created_at=0.0)


async def test_a_central_sends_every_stored_sample_with_the_labels_of_metrics(config, prometheus, ssh_host,
                                                                             agent_document):
    config = dataclasses.replace(config, remote_write=RemoteWriteConfig(url=prometheus.write_url, batch_size=50))
    api = await start_api(config)
    try:
        central = api.central
        host = await ssh_host(agent=document_agent(agent_document))
        srv = await central.storage.add_server(
            host.name, "127.0.0.1", port=host.port, agent_port=host.agent_port, host_key=host.host_key_line,
            host_key_fingerprint=host.fingerprint, agent_secret=HARNESS_SECRET, tags=["web", "prod"])
        await wait_online(api, host.name)
        for _ in range(3):
            await central.poller.wait_flushed()
        await central.poller.stop()  # no more samples from here on
        await central.remote_write.wait_drained()
        stored_samples = await central.storage.samples(srv.id, 0, time.time() + 1)
        assert len(stored_samples) >= 2
        status, text, _ = await api.get("/metrics")
        assert status == 200
        assert f"central_remote_write_samples_sent_total {central.remote_write.sent}" in text
        assert "central_remote_write_samples_dropped_total 0" in text
        assert "central_remote_write_samples_failed_total 0" in text
    finally:
        await api.client.close()
    [series] = await prometheus.raw(f'central_server_memory_percent{{server="{host.name}"}}', time.time())
    assert series["metric"] == {"__name__": "central_server_memory_percent", "server": host.name, "tags": ",prod,web,"}
    got = [(round(float(ts) * 1000), float(v)) for ts, v in series["values"]]
    want = [(int(s["ts"] * 1000), s["mem"]) for s in stored_samples]
    assert got[:len(want)] == want  # every stored sample, at its time, with its value
    [procs] = await prometheus.raw(f'central_server_processes{{server="{host.name}"}}', time.time())
    assert float(procs["values"][0][1]) == stored_samples[0]["procs"]
    local = await prometheus.raw('central_server_cpu_percent{server="local"}', time.time())
    assert local and local[0]["metric"]["tags"] == ",central,"


async def test_a_receiver_that_is_away_gets_everything_once_it_is_back(tmp_path):
    port = free_port()
    prom = Prometheus(tmp_path, port)
    rw = RemoteWriter(RemoteWriteSettings(url=prom.write_url, batch_size=7, backoff_initial=0.05, backoff_max=0.2))
    await rw.start()
    try:
        now = time.time()
        by_id = {1: server(1, "a", ["x"]), 2: server(2, "b")}
        rw.add([outcome(1, now - 60 + i, float(i)) for i in range(10)] + [outcome(2, now - 30, 5.0)], by_id)
        await rw.wait_attempts(3)  # nobody listens yet: retried, nothing lost
        assert rw.sent == 0 and rw.dropped == 0 and rw.failed == 0 and "ClientConnectorError" in rw.last_error
        await prom.start()
        await rw.wait_sent(22)
        await rw.wait_drained()
        assert rw.status() | {"failed_requests": 0} == {"sent": 22, "failed": 0, "dropped": 0, "queued": 0,
                                                        "failed_requests": 0, "capacity": 100_000}
        [a] = await prom.raw('central_server_cpu_percent{server="a"}', now)
        assert [float(v) for _, v in a["values"]] == [float(i) for i in range(10)] and a["metric"]["tags"] == ",x,"
        [b] = await prom.raw('central_server_processes{server="b"}', now)
        assert b["values"] == [[pytest.approx(now - 30, abs=0.001), "42"]] and "tags" not in b["metric"]
    finally:
        await rw.stop()
        prom.stop()


async def test_the_memory_bound_drops_the_oldest_and_counts_them():
    rw = RemoteWriter(RemoteWriteSettings(url="http://127.0.0.1:1/api/v1/write", max_samples=10))
    rw.add([outcome(1, 1000.0 + i, float(i)) for i in range(15)], {1: server(1, "a")})
    assert rw.dropped == 20 and len(rw.queue) == 10  # two samples (cpu, procs) per outcome
    assert [v for _, ts, v in rw.queue if ts == 1014000] == [14.0, 42.0]  # the newest stay
    rw.add([outcome(9, 2000.0, 1.0)], {})  # a server removed meanwhile: nothing queued
    assert rw.dropped == 20 and len(rw.queue) == 10


async def test_a_batch_the_receiver_refuses_for_good_is_counted_failed_not_retried(prometheus):
    rw = RemoteWriter(RemoteWriteSettings(url=prometheus.write_url, backoff_initial=0.05))
    await rw.start()
    try:
        now = time.time()
        rw.add([outcome(1, now, 3.0)], {1: server(1, "a")})
        await rw.wait_sent(2)
        # three hours older than what Prometheus holds: out of its bounds, HTTP 400
        rw.add([outcome(1, now - 3 * 3600, 1.0)], {1: server(1, "a")})
        await rw.wait_drained()
        assert (rw.failed, rw.sent, rw.failed_requests) == (2, 2, 0) and rw.last_error.startswith("HTTP 400")
        rw.add([outcome(1, now + 1, 4.0)], {1: server(1, "a")})  # the next batch goes through
        await rw.wait_sent(4)
        [a] = await prometheus.raw('central_server_cpu_percent{server="a"}', now + 1, window="5h")
        assert [float(v) for _, v in a["values"]] == [3.0, 4.0]
    finally:
        await rw.stop()


def test_the_write_request_encoding():
    labels = (("__name__", "m"), ("server", "é"))
    body = encode_write_request({labels: [(2, 1.5), (1, -1.0)]})
    # WriteRequest.timeseries (1) > TimeSeries: two labels, then samples oldest first
    assert body[0] == 0x0A and body[1] == len(body) - 2
    assert b"\x0a\x08__name__\x12\x01m" in body
    assert b"\x0a\x06server\x12\x02" + "é".encode() in body  # label values as UTF-8
    assert body.index(b"\x10\x01") < body.index(b"\x10\x02")
    assert tags_label(["web", "prod"]) == ",prod,web," and tags_label([]) == ""
