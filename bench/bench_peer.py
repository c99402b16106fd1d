"""Peer benchmark: a real Prometheus scraping N loopback node_exporter targets, next to the
central polling N loopback SSH hosts, at the same N and interval, one after the other.

- Central: exactly bench/bench_core.py's run (bench/central_driver.py: the real Central ->
  Poller -> SSHPool -> AgentClient -> Storage on SQLite, against bench/loopfarm.py answering
  with a real agent's documents); CPU per stored poll over the window, max RSS.
- Prometheus: Debian's /usr/bin/prometheus started by hand (never as a service) with its own
  config and a temporary --storage.tsdb.path, listening on 127.0.0.1 only, scraping N targets
  of bench/metricsfarm.py (one process, N ports on 127.0.0.1) that answer a captured
  node_exporter body (bench/data/node_exporter-metrics.txt; --capture re-captures it from a
  real prometheus-node-exporter run by hand on a free loopback port). After every target
  was scraped once plus one interval, its CPU (/proc/PID/stat, every thread) over the window
  is divided by the scrapes the farm answered in that window; RSS from /proc/PID/status.

Usage: PYTHONPATH=$PWD .venv/bin/python bench/bench_peer.py [--hosts 1000 2000] [--interval 10]
       [--measure-intervals 3] [--repeat 2] [--capture]
Raw JSON goes to bench/results/peer-<time>.json; a markdown table is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "bench"))

import bench_core  # noqa: E402
from bench_core import AES, fmt, free_port, machine_busy, proc_cpu, stop  # noqa: E402

BODY = REPO / "bench" / "data" / "node_exporter-metrics.txt"
PROMETHEUS = "/usr/bin/prometheus"
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"


def http_get(port: int, path: str, timeout: float = 10, headers: dict | None = None) -> bytes:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def wait_http(port: int, path: str, deadline: float = 60) -> None:
    end = time.monotonic() + deadline
    while True:
        try:
            http_get(port, path, timeout=2)
            return
        except OSError:
            if time.monotonic() > end:
                raise RuntimeError(f"nothing answered on 127.0.0.1:{port}{path}")
            time.sleep(0.2)


def capture(path: Path, binary: str) -> None:
    """One /metrics body of a real node_exporter, run by hand on a free loopback port."""
    port = free_port()
    proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(port, "/metrics")
        time.sleep(1)  # a second scrape, so rate-like collectors have a previous value
        body = http_get(port, "/metrics")
    finally:
        stop(proc)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)


def series_count(body: bytes) -> tuple[int, int]:
    """(sample lines, metric families) of a text-format body."""
    lines = body.decode().splitlines()
    samples = sum(1 for ln in lines if ln and not ln.startswith("#"))
    families = sum(1 for ln in lines if ln.startswith("# TYPE "))
    return samples, families


def status_kb(pid: int) -> dict:
    """VmRSS and VmHWM (kB) of a process."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0])
    return out


def prom_metrics(port: int) -> dict:
    """The Prometheus self-metrics this bench reads (summed over labels)."""
    want = ("prometheus_target_interval_length_seconds_count", "prometheus_tsdb_head_series",
            "prometheus_tsdb_head_samples_appended_total", "prometheus_target_scrapes_sample_out_of_order_total",
            "prometheus_target_scrape_pools_failed_total", "go_goroutines")
    out = {k: 0.0 for k in want}
    for line in http_get(port, "/metrics").decode().splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in out:
            out[name] += float(line.rsplit(" ", 1)[1])
    return out


def prom_query(port: int, q: str) -> float | None:
    data = json.loads(http_get(port, "/api/v1/query?query=" + urllib.parse.quote(q)))
    res = data["data"]["result"]
    return float(res[0]["value"][1]) if res else None


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_prometheus(workdir: Path, n: int, interval: float, measure_intervals: int, variants: int,
                   binary: str, settle: float = 0.0) -> dict:
    """Prometheus scraping n farm targets; CPU per scrape over the window and RSS."""
    run_dir = workdir / f"prom-{n}"
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "tsdb").mkdir(parents=True)
    farm = subprocess.Popen([sys.executable, str(REPO / "bench" / "metricsfarm.py"), "--body", str(BODY),
                             "--targets", str(n), "--variants", str(variants)],
                            stdout=subprocess.PIPE, stderr=open(run_dir / "metricsfarm.log", "w"), text=True)
    prom = None
    load0 = os.getloadavg()
    try:
        first = json.loads(farm.stdout.readline())
        control = first["control"]
        targets = [f"127.0.0.1:{p}" for p in first["ports"]]
        cfg = run_dir / "prometheus.yml"
        # JSON is YAML: no YAML library needed
        cfg.write_text(json.dumps({
            "global": {"scrape_interval": f"{interval:g}s", "scrape_timeout": f"{min(interval, 10):g}s",
                       "evaluation_interval": "1m"},
            "scrape_configs": [{"job_name": "node", "static_configs": [{"targets": targets}]}],
        }))
        port = free_port()
        prom = subprocess.Popen([binary, f"--config.file={cfg}", f"--storage.tsdb.path={run_dir / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                                stdout=subprocess.DEVNULL, stderr=open(run_dir / "prometheus.log", "w"),
                                cwd=run_dir)
        t_start = time.time()
        wait_http(port, "/-/ready")

        def served(key: str = "served") -> int:
            return json.loads(http_get(control, "/count"))[key]

        # Warm-up as the central driver's: every target answered once, then one more interval.
        deadline = time.time() + 120
        while served("targets") < n and time.time() < deadline:
            if prom.poll() is not None:
                raise RuntimeError(f"prometheus exited; see {run_dir / 'prometheus.log'}")
            time.sleep(0.5)
        all_scraped_after = time.time() - t_start
        time.sleep(interval + settle)
        m0, s0, c0, f0, b0, w0 = prom_metrics(port), served(), proc_cpu([prom.pid]), proc_cpu([farm.pid]), machine_busy(), time.time()
        time.sleep(interval * measure_intervals)
        c1, f1, b1, w1, s1 = proc_cpu([prom.pid]), proc_cpu([farm.pid]), machine_busy(), time.time(), served()
        mem = status_kb(prom.pid)
        m1 = prom_metrics(port)
        up = prom_query(port, "sum(up)")
        samples_per_scrape = prom_query(port, "avg(scrape_samples_scraped)")
        load1 = os.getloadavg()
        scrapes = s1 - s0
        cpu = c1 - c0
        win = w1 - w0
        return {
            "name": f"prometheus-{n}", "hosts": n, "interval": interval, "window_s": win,
            "all_scraped_after_s": all_scraped_after, "scrapes": scrapes,
            "scrapes_prometheus_counted": m1["prometheus_target_interval_length_seconds_count"]
            - m0["prometheus_target_interval_length_seconds_count"],
            "samples_appended": m1["prometheus_tsdb_head_samples_appended_total"] - m0["prometheus_tsdb_head_samples_appended_total"],
            "head_series": m1["prometheus_tsdb_head_series"], "up": up, "samples_per_scrape": samples_per_scrape,
            "cpu_s": cpu, "cpu_ms_per_scrape": cpu / scrapes * 1000 if scrapes else None,
            "cpu_core_fraction": cpu / win, "farm_ms_per_scrape": (f1 - f0) / scrapes * 1000 if scrapes else None,
            "rss_kb": mem.get("VmRSS"), "hwm_kb": mem.get("VmHWM"), "uptime_s": time.time() - t_start,
            "machine_busy_cores": (b1[0] - b0[0]) / (b1[1] - b0[1]) * os.cpu_count(),
            "load_start": load0, "load_end": load1,
        }
    finally:
        if prom is not None:
            stop(prom)
        stop(farm)


def run_central(workdir: Path, n: int, farm_port: int, farm_key: str, key: Path, others, interval: float,
                measure_intervals: int) -> dict:
    load0 = os.getloadavg()
    r = bench_core.run_driver(workdir, f"central-{n}", bench_core.loop_servers(n, farm_port, farm_key), AES, key,
                              others, interval, measure_intervals)
    r.update(load_start=load0, load_end=os.getloadavg())
    return r


def markdown(results: dict) -> str:
    b = results["body"]
    out = [f"Run {results['started']} UTC on {results['cpus']} cores, {results['prometheus_version']}; interval "
           f"{results['interval']:g} s, window {results['measure_intervals']} intervals after warm-up (every host/target "
           f"answered once + one interval). Captured node_exporter body: {b['bytes']} bytes, {b['samples']} series in "
           f"{b['families']} families (+5 per target Prometheus adds itself); {results['variants']} value variants. "
           "`bench/bench_peer.py`.", "",
           "| rep | N | central CPU ms/poll | Prometheus CPU ms/scrape | central / Prometheus | polls / scrapes | "
           "central max RSS MB | Prometheus RSS (peak) MB | RSS central / Prometheus | core share central / Prometheus | "
           "farm side ms per poll / scrape | machine busy cores central / Prometheus | load 1 min (start-end) central ; Prometheus |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in results["rows"]:
        c, p = row["central"], row["prometheus"]
        ratio = c["cpu_ms_per_poll"] / p["cpu_ms_per_scrape"] if p["cpu_ms_per_scrape"] else None
        c_rss, p_rss = c["maxrss_kb"] / 1024, p["rss_kb"] / 1024
        out.append(
            f"| {row['rep']} | {row['hosts']} | **{fmt(c['cpu_ms_per_poll'])}** | **{fmt(p['cpu_ms_per_scrape'])}** | "
            f"**{ratio:.2f}** | {c['polls_stored']} / {p['scrapes']} | {c_rss:.0f} | {p_rss:.0f} ({p['hwm_kb'] / 1024:.0f}) | "
            f"{c_rss / p_rss:.2f} | {c['cpu_core_fraction']:.3f} / {p['cpu_core_fraction']:.3f} | "
            f"{fmt(c['others_ms_per_poll'])} / {fmt(p['farm_ms_per_scrape'])} | "
            f"{c['machine_busy_cores']:.2f} / {p['machine_busy_cores']:.2f} | "
            f"{c['load_start'][0]:.2f}-{c['load_end'][0]:.2f} ; {p['load_start'][0]:.2f}-{p['load_end'][0]:.2f} |")
    out.append("")
    for row in results["rows"]:
        p = row["prometheus"]
        out.append(f"- rep {row['rep']}, N {row['hosts']}: Prometheus counted {p['scrapes_prometheus_counted']:.0f} scrape "
                   f"intervals (the farm {p['scrapes']}), appended {p['samples_appended']:.0f} samples "
                   f"({p['samples_appended'] / p['scrapes']:.0f} per scrape), head series {p['head_series']:.0f}, "
                   f"sum(up) {p['up']:.0f}, all targets scraped {p['all_scraped_after_s']:.0f} s after start, RSS read "
                   f"{p['uptime_s']:.0f} s after start; central: all connected after {row['central']['connected_after_s']:.0f} s, "
                   f"{row['central']['polls_failed']} failed polls.")
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, nargs="+", default=[1000, 2000])
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--measure-intervals", type=int, default=3)
    p.add_argument("--repeat", type=int, default=1, help="run every N this many times (central, then Prometheus)")
    p.add_argument("--variants", type=int, default=8, help="value variants of the body the targets rotate through")
    p.add_argument("--capture", action="store_true", help=f"re-capture {BODY.relative_to(REPO)} from a real node_exporter")
    p.add_argument("--node-exporter", default=NODE_EXPORTER)
    p.add_argument("--prometheus", default=PROMETHEUS)
    p.add_argument("--skip-central", action="store_true")
    p.add_argument("--prom-settle", type=float, default=0.0,
                   help="extra seconds Prometheus scrapes before its window (its head memory grows with the samples)")
    p.add_argument("--report", metavar="JSON", help="print the table of a saved run and exit")
    args = p.parse_args()
    if args.report:
        print(markdown(json.loads(Path(args.report).read_text())))
        return
    if not os.path.exists(args.prometheus):
        sys.exit(f"bench_peer: {args.prometheus} is missing (Debian package prometheus; scripts/test.sh installs it)")
    if args.capture or not BODY.exists():
        if not os.path.exists(args.node_exporter):
            sys.exit(f"bench_peer: {args.node_exporter} is missing (Debian package prometheus-node-exporter) and "
                     f"{BODY.relative_to(REPO)} must be captured")
        capture(BODY, args.node_exporter)
    raise_nofile()
    body = BODY.read_bytes()
    samples, families = series_count(body)
    version = subprocess.run([args.prometheus, "--version"], capture_output=True, text=True)
    results = {"started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "cpus": os.cpu_count(),
               "prom_settle": args.prom_settle, "command": " ".join(sys.argv[1:]),
               "interval": args.interval, "measure_intervals": args.measure_intervals, "variants": args.variants,
               "prometheus_version": (version.stdout or version.stderr).splitlines()[0].split(" (")[0],
               "body": {"bytes": len(body), "samples": samples, "families": families}, "rows": []}
    workdir = Path(tempfile.mkdtemp(prefix="bench-peer-"))
    agent = cfarm = None
    try:
        if not args.skip_central:
            (workdir / "no-policy.json").write_text('{"actions": {"kill": false, "service": false, "docker": false}}')
            key = workdir / "central_key"
            bench_core.ensure_key_pair(key)
            bench_core.SECRET.append(os.urandom(32).hex())
            fd = os.open(str(workdir / "agent-secret"), os.O_WRONLY | os.O_CREAT, 0o600)
            os.write(fd, (bench_core.SECRET[0] + "\n").encode())
            os.close(fd)
            agent, agent_port = bench_core.start_agent(workdir)
            cfarm, farm_port, farm_key = bench_core.start_farm(workdir, Path(str(key) + ".pub"), [agent_port], 1.0)
        for rep in range(1, args.repeat + 1):
            for n in args.hosts:
                row = {"rep": rep, "hosts": n}
                if not args.skip_central:
                    print(f"rep {rep}: central, {n} hosts", flush=True)
                    row["central"] = run_central(workdir, n, farm_port, farm_key, key, [cfarm.pid, agent.pid],
                                                 args.interval, args.measure_intervals)
                print(f"rep {rep}: prometheus, {n} targets", flush=True)
                row["prometheus"] = pr = run_prometheus(workdir, n, args.interval, args.measure_intervals, args.variants,
                                                        args.prometheus, args.prom_settle)
                print(f"  prometheus-{n}: {fmt(pr['cpu_ms_per_scrape'])} ms CPU/scrape, {pr['scrapes']} scrapes, RSS "
                      f"{pr['rss_kb'] / 1024:.0f} MB (peak {pr['hwm_kb'] / 1024:.0f}), machine {pr['machine_busy_cores']:.2f} "
                      f"cores busy, load {pr['load_start'][0]:.2f}-{pr['load_end'][0]:.2f}", flush=True)
                results["rows"].append(row)
    finally:
        if cfarm is not None:
            stop(cfarm)
        if agent is not None:
            stop(agent)
    out = bench_core.save_results("peer", results)
    print(f"\nraw results: {out}\n")
    if not args.skip_central:
        print(markdown(results))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
