#!/usr/bin/env python3
"""Benchmark the agent against prometheus-node-exporter and Glances in one run.

For each scenario (the machine as it is, then with extra `sleep` processes so about 400
processes exist) and each target, on one kept-alive HTTP connection to 127.0.0.1:
  - CPU per request: utime+stime (+ waited children) of the server process from
    /proc/PID/stat, delta over N sequential requests, divided by N;
  - latency p50 / p99 of those requests; resident memory (VmRSS) after the run;
  - the size of one response body.
Glances only computes fresh data once per refresh period (-t 1), so its requests are
spaced 1.05 s apart and its CPU per request includes the background work between them:
that is what one fresh /api/4/all costs it.

With --containers N (default 20) the agent also reports N container-shaped workloads (real
cgroups and network namespaces, see BenchContainers), and its document has every section on.

Usage: python3 bench/bench_agent.py [--requests 300] [--glances-requests 25] [--target-processes 400]
       [--containers 20] [--baseline old/agent.py]
       [--python /usr/bin/python3] [--glances .venv-bench/bin/glances]
Raw results go to bench/results/agent-<time>.json; a markdown table is printed.
"""

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
AGENT = os.path.join(ROOT, "agent", "agent.py")
sys.path.insert(0, ROOT)  # central.agentauth signs the requests to the agent
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid, "rb") as f:
        data = f.read()
    fields = data[data.rfind(b")") + 2:].split()
    return sum(int(x) for x in fields[11:15]) / float(TICK)   # utime stime cutime cstime


def rss_bytes(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return None


def process_count():
    return sum(1 for d in os.listdir("/proc") if d.isdigit())


def wait_http(port, path, deadline=60.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.2)
    raise RuntimeError("nothing answered on port %d%s" % (port, path))


class Auth(object):
    """The central's side of the agent's authentication on one kept connection (the agent
    targets need it; the others get no headers)."""

    def __init__(self, conn, secret):
        self.session = None
        if secret:
            from central.agentauth import AgentSession
            self.session = AgentSession(secret)
            conn.request("GET", "/api/challenge", headers={"X-Central-Nonce": self.session.cnonce})
            resp = conn.getresponse()
            body = resp.read()
            self.session.accept_challenge(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)

    def headers(self, path):
        return {"X-Central-Auth": self.session.sign("GET", path, b"")} if self.session else {}


def measure(pid, port, path, n, spacing=0.0, warmup=3, secret=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    auth = Auth(conn, secret)
    size = 0
    for _ in range(warmup):
        conn.request("GET", path, headers=auth.headers(path))
        body = conn.getresponse().read()
        size = len(body)
        if spacing:
            time.sleep(spacing)
    lat = []
    cpu0 = cpu_seconds(pid)
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", path, headers=auth.headers(path))
        resp = conn.getresponse()
        body = resp.read()
        lat.append(time.perf_counter() - t0)
        assert resp.status == 200, resp.status
        if spacing:
            time.sleep(spacing)
    cpu1 = cpu_seconds(pid)
    conn.close()
    lat.sort()
    return {"requests": n, "cpu_ms_per_request": (cpu1 - cpu0) * 1000.0 / n,
            "p50_ms": lat[len(lat) // 2] * 1000.0,
            "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000.0,
            "rss_bytes": rss_bytes(pid), "body_bytes": size}


class Target(object):
    def __init__(self, name, argv, port, path, env=None, secret=None, cwd=None):
        self.name, self.argv, self.port, self.path = name, argv, port, path
        self.secret = secret
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=env, cwd=cwd)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_targets(args):
    targets = []
    # the agent serves only requests signed with its secret (docs/agent-protocol.md)
    secret = os.urandom(32).hex()
    secret_file = os.path.join(HERE, "results", "agent-secret")
    os.makedirs(os.path.dirname(secret_file), exist_ok=True)
    fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, (secret + "\n").encode())
    os.close(fd)
    auth = ["--secret-file", secret_file, "--syslog-socket", ""]
    port = free_port()
    targets.append(Target("agent", [args.python, AGENT, "--port", str(port),
                                    "--policy", "/nonexistent"] + auth, port, "/api/all", secret=secret))
    # The same agent started from its compiled bytecode (no compile at start-up).
    pyc = os.path.join(HERE, "results", "agent.pyc")
    os.makedirs(os.path.dirname(pyc), exist_ok=True)
    subprocess.check_call([args.python, "-c", "import py_compile, sys; "
                           "py_compile.compile(sys.argv[1], cfile=sys.argv[2], doraise=True)",
                           AGENT, pyc])
    port = free_port()
    targets.append(Target("agent (.pyc)", [args.python, pyc, "--port", str(port),
                                           "--policy", "/nonexistent"] + auth, port, "/api/all", secret=secret))
    # As deploy runs it: `python3 -m agent` in its directory, bytecode compiled beforehand.
    deployed = os.path.join(HERE, "results", "deployed")
    os.makedirs(deployed, exist_ok=True)
    with open(AGENT, "rb") as src, open(os.path.join(deployed, "agent.py"), "wb") as dst:
        dst.write(src.read())
    subprocess.check_call([args.python, "-c", "import py_compile, sys; py_compile.compile(sys.argv[1], doraise=True)",
                           os.path.join(deployed, "agent.py")])
    port = free_port()
    targets.append(Target("agent (-m, deployed)", [args.python, "-m", "agent", "--port", str(port),
                                                   "--policy", "/nonexistent"] + auth, port, "/api/all",
                          secret=secret, cwd=deployed))
    if args.baseline:
        # another agent.py (e.g. `git show main:agent/agent.py`), measured in the same run
        port = free_port()
        targets.append(Target("agent (baseline)", [args.python, args.baseline, "--port", str(port),
                                                   "--policy", "/nonexistent"] + auth, port, "/api/all",
                              secret=secret))
    if os.path.exists(args.node_exporter):
        port = free_port()
        targets.append(Target("node_exporter", [args.node_exporter,
                                                "--web.listen-address=127.0.0.1:%d" % port],
                              port, "/metrics"))
    else:
        print(f"bench_agent: {args.node_exporter} is missing (Debian package prometheus-node-exporter): "
              "no node_exporter column", file=sys.stderr)
    if args.glances and os.path.exists(args.glances):
        port = free_port()
        targets.append(Target("glances", [args.glances, "-w", "--bind", "127.0.0.1",
                                          "--port", str(port), "--disable-webui", "-t", "1",
                                          "--disable-check-update"],
                              port, "/api/4/all"))
    for t in targets:
        wait_http(t.port, "/api/health" if t.secret else t.path)
    return targets


class BenchContainers:
    """N container-shaped workloads the agent finds as LXC containers: for each, a `sleep` in a
    network namespace of its own (`unshare --net`) moved into a real cgroup
    lxc.payload.central-bench-I on every mounted hierarchy, so the agent's container collector
    reads what it reads for real LXC containers (cgroup files, the process's net/dev). Removed
    (processes ended by PID, cgroups rmdir'ed) by close()."""

    def __init__(self, n):
        import importlib.util
        spec = importlib.util.spec_from_file_location("bench_agent_module", AGENT)
        agent = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(agent)
        roots = agent.cgroup_roots()
        self.hierarchies = sorted(set(os.path.realpath(d) for d in roots["v1"].values())
                                  | ({roots["v2"]} if roots["v2"] else set()))
        self.procs, self.dirs = [], []
        for i in range(n):
            p = subprocess.Popen(["unshare", "--net", "sleep", "3600"])
            self.procs.append(p)
            for h in self.hierarchies:
                d = os.path.join(h, "lxc.payload.central-bench-%d" % i)
                try:
                    os.makedirs(d, exist_ok=True)
                    with open(os.path.join(d, "cgroup.procs"), "w") as f:
                        f.write(str(p.pid))
                    self.dirs.append(d)
                except OSError:
                    pass  # a hierarchy that takes no new cgroups here (the unified one on a hybrid host)

    def close(self):
        for p in self.procs:
            p.kill()  # by PID: only what this script started
        for p in self.procs:
            p.wait()
        for d in reversed(self.dirs):
            for _ in range(50):
                try:
                    os.rmdir(d)
                    break
                except OSError:
                    time.sleep(0.02)  # the killed process leaves the cgroup a moment later


def run_scenario(targets, args):
    out = {"processes": process_count()}
    for t in targets:
        if t.name == "glances":
            out[t.name] = measure(t.proc.pid, t.port, t.path, args.glances_requests,
                                  spacing=1.05, warmup=2)
        else:
            out[t.name] = measure(t.proc.pid, t.port, t.path, args.requests, secret=t.secret)
    return out


def measure_doc(target):
    """One signed GET of the target's document, its body."""
    conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=30)
    try:
        signer = Auth(conn, target.secret)
        conn.request("GET", target.path, headers=signer.headers(target.path))
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def table(results):
    rows = ["| scenario | target | CPU ms/request | vs node_exporter | vs Glances | p50 ms | "
            "p99 ms | RSS MB | body KB |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for sc in results["scenarios"]:
        ne = sc.get("node_exporter", {}).get("cpu_ms_per_request")
        gl = sc.get("glances", {}).get("cpu_ms_per_request")
        for name in ("agent", "agent (.pyc)", "agent (-m, deployed)", "agent (baseline)", "node_exporter",
                     "glances"):
            r = sc.get(name)
            if not r:
                continue
            cpu = r["cpu_ms_per_request"]
            rows.append("| %d processes | %s | %.2f | %s | %s | %.2f | %.2f | %.1f | %.1f |" % (
                sc["processes"], name, cpu,
                "%.2f" % (cpu / ne) if ne else "-", "%.2f" % (cpu / gl) if gl else "-",
                r["p50_ms"], r["p99_ms"], r["rss_bytes"] / 1048576.0, r["body_bytes"] / 1024.0))
    return "\n".join(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--glances-requests", type=int, default=25)
    p.add_argument("--target-processes", type=int, default=400,
                   help="spawn sleep processes until about this many exist (second scenario)")
    p.add_argument("--python", default="/usr/bin/python3" if os.path.exists("/usr/bin/python3")
                   else sys.executable)
    p.add_argument("--containers", type=int, default=20,
                   help="container-shaped cgroups (with a netns each) for the agent to report (0: none)")
    p.add_argument("--baseline", metavar="AGENT_PY",
                   help="also measure this agent.py (started as a script), for a before/after in one run")
    p.add_argument("--node-exporter", default="/usr/bin/prometheus-node-exporter")
    p.add_argument("--glances", default=os.path.join(ROOT, ".venv-bench", "bin", "glances"))
    args = p.parse_args()

    results = {"time": time.time(), "python": args.python,
               "python_version": subprocess.check_output(
                   [args.python, "-c", "import sys; print(sys.version.split()[0])"]
               ).decode().strip(),
               "cpus": os.cpu_count(), "kernel": os.uname().release, "scenarios": []}
    containers = BenchContainers(args.containers) if args.containers else None
    results["containers"] = args.containers
    targets = start_targets(args)
    sleepers = []
    try:
        results["scenarios"].append(run_scenario(targets, args))
        if args.target_processes:
            for _ in range(max(0, args.target_processes - process_count())):
                sleepers.append(subprocess.Popen(["sleep", "3600"]))
            results["scenarios"].append(run_scenario(targets, args))
        # what the agent's new sections hold in the last document
        body = json.loads(measure_doc(targets[0]))
        results["sections"] = {k: body.get(k) and {kk: (len(vv) if isinstance(vv, list) else vv)
                                                  for kk, vv in body[k].items()}
                               for k in ("containers", "sensors", "smart", "gpus")}
    finally:
        if containers is not None:
            containers.close()
        for s in sleepers:
            s.kill()          # by PID: only the processes this script started
        for s in sleepers:
            s.wait()
        for t in targets:
            t.stop()
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    path = os.path.join(HERE, "results", "agent-%d.json" % int(results["time"]))
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print("raw results: %s" % path)
    print("python for the agent: %s (%s); %d CPUs; kernel %s\n" % (
        args.python, results["python_version"], results["cpus"], results["kernel"]))
    print(table(results))
    print("\nnew sections in the agent's last document: %s" % json.dumps(results.get("sections")))


if __name__ == "__main__":
    main()
