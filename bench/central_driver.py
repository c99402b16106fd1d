"""Runs the REAL central (Central -> Poller -> SSHPool -> AgentClient -> Storage) in its own
process against a given list of servers and measures its CPU per stored poll.

It serves exactly what `central serve` serves: the aiohttp app of central.web.app.create_app on
a loopback port, with its start-up and shutdown contexts (Central.open(serving=True), the
poller, the terminal, the garbage-collector policy of central/gcpolicy.py). Every GC pause in
the window is measured (gc.callbacks), and so is the time the clean stop takes.

Usage: python3 bench/central_driver.py SPEC.json   (written by bench/bench_core.py)

SPEC: {"data_dir", "key_path", "interval", "ciphers": [...], "servers": [{"name", "host",
"port", "host_key"}], "warmup_timeout", "measure_intervals", "profile": null | "cprofile"}
and, for one of several centrals sharing the fleet (cluster.enabled on one PostgreSQL, the design
of central/cluster.py): "storage_url", "member", "members" (how many members to wait for; the
servers are already stored), "sync" (after the warm-up print {"event": "ready"} and wait for a
line on stdin, so the members measure the same window).

Prints JSON lines on stdout: {"event": "window_start"}, {"event": "window_end"}, then one
{"event": "result", ...}; bench_core.py samples the farm's and agents' CPU between the first two.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import gc
import json
import resource
import socket
import sys
import time

from aiohttp import web

from procstat import peak_rss_kb, proc_cpu
from central.config import ClusterConfig, PollConfig, SSHConfig, StorageConfig, load_config
from central import poller as poller_module
from central.poller import phase
from central.service import Central
from central.web.app import create_app
from central.web.keys import CENTRAL, GC_POLICY


def emit(obj: dict) -> None:
    """One JSON line to the orchestrator."""
    print(json.dumps(obj), flush=True)


def pct(values: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of values."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def cpu_now() -> tuple[float, float]:
    """(user, system) CPU seconds of this process, every thread (aiosqlite's included)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def poll_workers(central: Central):
    """The central's poll workers (poll.workers; None without, or before that code)."""
    return getattr(central.transports.ssh, "workers", None)


def worker_pids(workers) -> list[int]:
    """The pids of the running poll workers."""
    return [w.proc.pid for w in workers.workers if w.proc is not None and w.proc.returncode is None] if workers else []


def failure_kind(o) -> str:
    """A failed outcome's reason, the first words of its error and its closing parenthesis (what
    part of a connect was unfinished): the key the warm-up's failures are counted by."""
    error = o.error or ""
    note = f" ({error.rsplit('(', 1)[1]}" if error.endswith(")") else ""
    return f"{o.reason}: {' '.join(error.split()[:4])}{note}"


async def full_collection(policy) -> dict:
    """The collection of everything the GC policy makes when due (GCPolicy.full: unfreeze,
    collect, freeze again), timed at the fleet's steady state after the window: its pause, the
    objects it walked and the garbage it freed."""
    await asyncio.sleep(0)
    t0 = time.perf_counter()
    blocks = sys.getallocatedblocks()  # the policy's count: its cost
    count_ms = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    frozen = gc.get_freeze_count()  # a walk of the frozen list: what counting the objects would cost
    walk_ms = (time.perf_counter() - t0) * 1000
    tracked = frozen + len(gc.get_objects())
    freed = []

    def count(phase_, info):
        if phase_ == "stop":
            freed.append(info.get("collected", 0))

    gc.callbacks.append(count)
    t0, c0 = time.perf_counter(), time.thread_time()
    if hasattr(policy, "full"):
        policy.full()
    else:  # a checkout from before GCPolicy.full: its settle() with the hourly collection due
        policy._last_full = float("-inf")
        policy.settle()
    took, cpu = time.perf_counter() - t0, time.thread_time() - c0
    gc.callbacks.remove(count)
    return {"gc_full_ms": took * 1000, "gc_full_cpu_ms": cpu * 1000, "gc_full_objects": tracked,
            "gc_full_freed": sum(freed),
            "gc_count_ms": count_ms, "gc_blocks": blocks, "gc_blocks_after": sys.getallocatedblocks(),
            "gc_freeze_count_ms": walk_ms}


async def back_to_back(central: Central, server, n: int = 1000) -> dict:
    """CPU per poll with no idle time between polls (the cost at a high poll rate), split into
    the agent request alone, the whole Poller.poll, and Poller.store in batches of 100."""
    from central.sample import parse_document
    poller = central.poller
    client = central.pool.agent_client(server, central.config.poll.max_response_bytes)
    for _ in range(50):
        await poller.poll(server)
    # Best of 3: other processes on the machine only ever add to a figure.
    request = parse = poll = store = float("inf")
    ok = True
    for _rep in range(3):
        t = sum(cpu_now())
        for _ in range(n):
            status, body = await client.request("GET", "/api/all", timeout=5)
        request = min(request, sum(cpu_now()) - t)
        t = sum(cpu_now())
        for _ in range(n):
            parse_document(body)
        parse = min(parse, sum(cpu_now()) - t)
        outcomes = []
        t = sum(cpu_now())
        for _ in range(n):
            outcomes.append(await poller.poll(server))
        poll = min(poll, sum(cpu_now()) - t)
        for i, o in enumerate(outcomes):  # distinct sample keys, as n servers would have
            o.ts += i * 1e-3
        t = sum(cpu_now())
        for i in range(0, n, 100):
            await poller.store(outcomes[i:i + 100])
        store = min(store, sum(cpu_now()) - t)
        ok = ok and all(o.ok for o in outcomes)
    ms = 1000 / n
    return {"b2b_request_ms": request * ms, "b2b_parse_ms": parse * ms, "b2b_poll_ms": poll * ms,
            "b2b_store_ms": store * ms, "b2b_total_ms": (poll + store) * ms,
            "b2b_ok": ok}


async def serve(cfg) -> tuple[web.AppRunner, Central]:
    """What `central serve` runs (central.web.app.run_app), on an AppRunner so this process can
    measure it and stop it when done."""
    runner = web.AppRunner(create_app(cfg), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, cfg.http.listen, cfg.http.port).start()
    return runner, runner.app[CENTRAL]


async def first_serve(cfg, n_servers: int, timeout: float) -> float | None:
    """Serve until every server was polled once, then stop; seconds it took (None: not in timeout)."""
    t0 = time.time()
    runner, central = await serve(cfg)
    seen: set[int] = set()

    async def record(outcomes, servers):
        seen.update(o.server_id for o in outcomes if o.ok)

    central.poller.hooks.append(record)
    while len(seen) < n_servers and time.time() < t0 + timeout:
        await asyncio.sleep(0.5)
    took = time.time() - t0 if len(seen) >= n_servers else None
    await runner.cleanup()
    return took


async def run(spec: dict) -> dict:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    interval = float(spec["interval"])
    cfg = load_config(env={"CENTRAL_DATA_DIR": spec["data_dir"]})
    cfg = dataclasses.replace(
        cfg, data_dir=spec["data_dir"],
        poll=dataclasses.replace(PollConfig(), interval=interval, local=False,
                                 **({"workers": spec["workers"]} if spec.get("workers") else {})),
        ssh=dataclasses.replace(SSHConfig(), key_path=spec["key_path"], ciphers=tuple(spec["ciphers"]),
                                **({"max_concurrent_connects": spec["max_connects"]} if spec.get("max_connects") else {})),
    )
    members = int(spec.get("members") or 0)
    if members:
        cfg = dataclasses.replace(cfg, storage=dataclasses.replace(StorageConfig(), url=spec["storage_url"]),
                                  cluster=dataclasses.replace(ClusterConfig(), enabled=True, member=spec["member"]))
    if spec.get("phase_quantum") is not None:
        poller_module.PHASE_QUANTUM = spec["phase_quantum"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        cfg = dataclasses.replace(cfg, http=dataclasses.replace(cfg.http, port=sock.getsockname()[1]))
    if not members:
        setup = await Central.open(cfg)  # the servers first, as `central server add` would have stored them
        for s in spec["servers"]:
            await setup.storage.add_server(s["name"], s["host"], port=s["port"], host_key=s["host_key"],
                                           host_key_fingerprint=s.get("fingerprint"), agent_secret=s["agent_secret"])
        await setup.close()
    n = len(spec["servers"])
    records: list[tuple[int, float, float, bool, float]] = []  # sid, ts, duration, ok, stored_at
    seen_ok: set[int] = set()

    async def record(outcomes, servers):
        now = time.time()
        for o in outcomes:
            records.append((o.server_id, o.ts, o.duration, o.ok, now, None if o.ok else failure_kind(o)))
            if o.ok:
                seen_ok.add(o.server_id)

    first_contact = None
    if spec.get("restart") and not members:
        # a restart of a central whose fleet it knows (the common start): a first serve polls
        # every server once (fetching and storing each one's inventory, as for a new fleet) and
        # stops; the measured serve below then starts on that database
        first_contact = await first_serve(cfg, n_servers=len(spec["servers"]), timeout=3 * spec["warmup_timeout"])
    t_start = time.time()
    runner, central = await serve(cfg)
    central.poller.hooks.append(record)
    pauses: list[tuple[int, float]] = []  # (generation, seconds) of each collection in the window
    gc_t0 = [0.0, 0.0]
    pause_cpu: list[float] = []  # the same collections' CPU seconds (the rest of a pause: the process waiting for a core)
    collected: list[int] = []  # the same collections' unreachable objects freed (their deallocation is in the pause)
    young: list[int] = []  # the same collections' objects walked (counted before the pause is timed)
    gc_walks = [0]
    count_walks = bool(spec.get("gc_walks"))
    walk_kinds: list[tuple[str, int]] = []  # the biggest walk's most common types of object

    def gc_pause(phase_, info):
        if phase_ == "start":
            # what the collection walks: the objects of the generations it collects
            # (--gc-walks: get_objects costs about what the collection does)
            gc_walks[0] = (sum(len(gc.get_objects(g)) for g in range(info["generation"] + 1))
                           if measuring[0] and count_walks else 0)
            if gc_walks[0] > max(young, default=0) and gc_walks[0] > 20_000:  # the biggest walk so far: what it holds
                kinds = collections.Counter(type(o).__name__ for g in range(info["generation"] + 1)
                                            for o in gc.get_objects(g))
                walk_kinds[:] = kinds.most_common(8)
            gc_t0[0], gc_t0[1] = time.perf_counter(), time.thread_time()
        elif measuring[0]:
            pauses.append((info["generation"], time.perf_counter() - gc_t0[0]))
            pause_cpu.append(time.thread_time() - gc_t0[1])
            collected.append(info.get("collected", 0))
            young.append(gc_walks[0])

    measuring = [False]
    gc.callbacks.append(gc_pause)
    # Warm-up: every server connected and polled once (a cluster member: every server of its
    # share, once all members are live), then one more full interval.
    membership = central.membership

    def warm() -> bool:
        if membership is None:
            return len(seen_ok) >= n
        return len(membership.members) >= members and bool(membership.owned) and membership.owned <= seen_ok

    deadline = time.time() + spec["warmup_timeout"]
    while not warm() and time.time() < deadline:
        await asyncio.sleep(0.5)
    connected_after = time.time() - t_start
    all_connected = warm()
    # while connecting: polls failed (a host up but failed behind the central's own queue is a
    # false alarm) and how late the polls of hosts already connected started
    warm_records = records[:]
    warmup_failed = sum(1 for r in warm_records if not r[3])
    warmup_reasons = collections.Counter(r[5] for r in warm_records if not r[3])
    warmup_lags = [((r[1] - phase(r[0], interval)) % interval) * 1000 for r in warm_records if r[3]]
    # hosts that failed poll.offline_after times in a row while connecting: each one a false
    # "offline" (and its alert) on a real fleet
    streak: dict[int, int] = {}
    went_offline: set[int] = set()
    for r in sorted(warm_records, key=lambda r: r[1]):
        streak[r[0]] = 0 if r[3] else streak.get(r[0], 0) + 1
        if streak[r[0]] >= cfg.poll.offline_after:
            went_offline.add(r[0])
    if membership is not None:
        n = len(membership.owned)
    if spec.get("sync"):
        emit({"event": "ready", "connected_after_s": connected_after})
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await asyncio.sleep(interval)
    profiler = None
    if spec.get("profile") == "cprofile":
        import cProfile
        profiler = cProfile.Profile()
    emit({"event": "window_start"})
    workers = poll_workers(central)
    wpids = worker_pids(workers)

    def worker_long_pauses() -> tuple[int, int]:
        return (sum(w.gc.get("long_pauses", 0) for w in workers.workers),
                sum(w.gc.get("long_pauses_cpu", 0) for w in workers.workers)) if workers else (0, 0)

    wl0 = worker_long_pauses()
    w0, c0, p0, r0, k0 = time.time(), cpu_now(), time.process_time(), len(records), proc_cpu(wpids)
    measuring[0] = True
    if profiler:
        profiler.enable()
    await asyncio.sleep(interval * spec["measure_intervals"])
    if profiler:
        profiler.disable()
    w1, c1, p1, k1 = time.time(), cpu_now(), time.process_time(), proc_cpu(wpids)
    await asyncio.sleep(1.5)  # the workers' figures of the window's end (sent every second)
    wl1 = worker_long_pauses()
    workers_hwm = peak_rss_kb(wpids)
    workers_gc_ms = max((max(w.gc.get("pause_max", [0])) for w in workers.workers), default=0) * 1000 if workers else None
    workers_gc_cpu_ms = (max((max(w.gc.get("pause_cpu_max", [0])) for w in workers.workers), default=0) * 1000
                         if workers else None)
    measuring[0] = False
    emit({"event": "window_end"})
    stored = [r for r in records[r0:] if r[4] < w1]
    ok = [r for r in stored if r[3]]
    failed = len(stored) - len(ok)
    durations = [r[2] * 1000 for r in ok]
    lags = [((r[1] - phase(r[0], interval)) % interval) * 1000 for r in ok]
    to_store = [(r[4] - r[1]) * 1000 for r in ok]
    server0 = await central.storage.get_server(spec["servers"][0]["name"])
    cipher = next((e.conn.get_extra_info("send_cipher") for e in central.pool._entries.values() if e.conn is not None),
                  "in the workers" if wpids else None)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    profile_path = None
    if profiler:
        profile_path = spec["data_dir"] + "/profile.pstats"
        profiler.dump_stats(profile_path)
    full_gc = await full_collection(runner.app[GC_POLICY])
    extra = int(spec.get("stop_backlog") or 0)
    if extra:  # a real backlog at stop: copies of a real poll's outcome, spread over every server
        sample = await central.poller.poll(await central.storage.get_server(spec["servers"][0]["name"]))
        ids = [sv.id for sv in await central.storage.list_servers() if sv.kind == "ssh"]
        for k in range(extra):
            central.poller.writer.put(dataclasses.replace(sample, server_id=ids[k % len(ids)], ts=sample.ts - 1 - k * 1e-3,
                                                          extra=dict(sample.extra)))
    backlog = central.poller.writer.buffered
    t_stop = time.perf_counter()
    await central.poller.stop()
    stop_s = time.perf_counter() - t_stop
    b2b = await back_to_back(central, server0)
    await runner.cleanup()  # the rest of serve's shutdown: terminal, alerts, notifiers, pool, database
    gc.callbacks.remove(gc_pause)
    gen2 = [t for g, t in pauses if g == 2]
    cpu = (c1[0] - c0[0]) + (c1[1] - c0[1]) + (k1 - k0)
    return {
        "event": "result", "hosts": n, "interval": interval, "window_s": w1 - w0, **full_gc,
        "connected_after_s": connected_after, "all_connected": all_connected, "member": spec.get("member"),
        "restart": bool(first_contact is not None or spec.get("restart")), "first_contact_s": first_contact,
        "warmup_polls_failed": warmup_failed, "warmup_hosts_offline": len(went_offline), "warmup_failed_reasons": dict(warmup_reasons), "warmup_lag_ms_p99": pct(warmup_lags, 0.99),
        "cipher": cipher, "ciphers_offered": spec["ciphers"],
        "polls_stored": len(ok), "polls_failed": failed, "polls_per_s": len(ok) / (w1 - w0),
        "cpu_s": cpu, "user_s": c1[0] - c0[0], "sys_s": c1[1] - c0[1], "process_time_s": p1 - p0,
        # poll.workers: the workers' CPU (in cpu_s too), peak RSS each, longest GC pause of any
        "workers": len(wpids), "workers_cpu_s": k1 - k0, "workers_maxrss_kb": workers_hwm,
        "workers_gc_pause_ms_max": workers_gc_ms, "workers_gc_pause_cpu_ms_max": workers_gc_cpu_ms,
        # the workers' collections that paused over 100 ms in the window (and of CPU)
        "workers_gc_long_pauses": wl1[0] - wl0[0], "workers_gc_long_pauses_cpu": wl1[1] - wl0[1],
        "cpu_ms_per_poll": cpu / len(ok) * 1000 if ok else None,
        "cpu_core_fraction": cpu / (w1 - w0),
        "duration_ms_p50": pct(durations, 0.5), "duration_ms_p99": pct(durations, 0.99),
        "lag_ms_p50": pct(lags, 0.5), "lag_ms_p99": pct(lags, 0.99),
        "start_to_stored_ms_p50": pct(to_store, 0.5), "start_to_stored_ms_p99": pct(to_store, 0.99),
        "gc_collections": len(pauses), "gc_pause_ms_max": max((t for _, t in pauses), default=0) * 1000,
        "gc_gen2_collections": len(gen2), "gc_gen2_pause_ms_max": max(gen2, default=0) * 1000,
        "gc_pauses_over_100ms": sum(1 for _, t in pauses if t > 0.1),
        "gc_pause_cpu_ms_max": max(pause_cpu, default=0) * 1000,
        # the longest collection: its generation and how many objects it freed
        "gc_biggest_walk_kinds": walk_kinds,
        "gc_freed": sum(collected),  # cyclic garbage the window's collections found
        "gc_longest": ({"generation": pauses[i][0], "collected": collected[i], "walked": young[i]}
                       if (i := max(range(len(pauses)), key=lambda k: pauses[k][1], default=-1)) >= 0 else None),
        "stop_s": stop_s, "backlog_at_stop": backlog,
        "stop_unwritten": getattr(central.poller.writer, "unwritten_at_stop", 0),  # older code: no deadline
        # outcomes dropped from the writer's full buffer since start (a writer behind the polls)
        "writer_dropped": getattr(central.poller.writer, "dropped", None),
        "maxrss_kb": maxrss, **b2b, "profile": profile_path,
    }


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    emit(asyncio.run(run(spec)))


if __name__ == "__main__":
    main()
