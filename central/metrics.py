"""The Prometheus text exposition of /metrics: fleet key figures, poll statistics, own process.

Pure formatting over data the caller gathered (no HTTP here). Key figures are exported only for
servers that are online: a stale figure from an unreachable host would look current.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

from .model import METRICS, ONLINE, REASONS, Server
from .poller import Histogram

# sample column -> (metric name, help text), from central.model.METRICS
SERVER_METRICS = {m.column: (m.prom, m.help) for m in METRICS.values()}
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v: float) -> str:
    if v == float("inf"):
        return "+Inf"
    return repr(float(v)) if isinstance(v, float) else str(v)


def _family(out: list[str], name: str, kind: str, help_: str) -> None:
    out.append(f"# HELP {name} {help_}")
    out.append(f"# TYPE {name} {kind}")


def process_stats(proc: str = "/proc") -> dict:
    """The central's own CPU seconds, resident bytes, open fds and start time, from /proc/self."""
    ticks = os.sysconf("SC_CLK_TCK")
    with open(f"{proc}/self/stat", "rb") as fh:
        stat = fh.read().decode()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    utime, stime, starttime = int(fields[11]), int(fields[12]), int(fields[19])
    rss_pages = int(fields[21])
    boot = 0.0
    with open(f"{proc}/stat") as fh:
        for line in fh:
            if line.startswith("btime "):
                boot = float(line.split()[1])
                break
    with open(f"{proc}/self/limits") as fh:
        max_fds = next((int(line.split()[3]) for line in fh if line.startswith("Max open files")
                        and line.split()[3].isdigit()), None)
    return {
        "cpu_seconds": (utime + stime) / ticks,
        "resident_bytes": rss_pages * os.sysconf("SC_PAGE_SIZE"),
        "open_fds": len(os.listdir(f"{proc}/self/fd")),
        "max_fds": max_fds,
        "start_time": boot + starttime / ticks,
    }


def render(servers: Sequence[Server], latest: Mapping[int, dict], *, durations: Histogram,
           errors_by_reason: Mapping[str, int], polls: int, alerts_firing: int,
           process: Mapping[str, float | None], storage: Mapping | None = None, failed_writes: int = 0,
           remote_write: Mapping | None = None) -> str:
    """The whole /metrics page (storage: central.writer.Writer.status())."""
    out: list[str] = []
    _family(out, "central_server_up", "gauge", "1 if the server's last poll succeeded (status online), else 0.")
    for s in servers:
        out.append(f'central_server_up{{server="{_label(s.name)}"}} {1 if s.status == ONLINE else 0}')
    online = [s for s in servers if s.status == ONLINE and s.id in latest]
    for column, (name, help_) in SERVER_METRICS.items():
        _family(out, name, "gauge", help_)
        for s in online:
            value = latest[s.id].get(column)
            if value is not None:
                out.append(f'{name}{{server="{_label(s.name)}"}} {_num(value)}')
    _family(out, "central_server_last_seen_timestamp_seconds", "gauge", "When the server last answered a poll.")
    for s in servers:
        if s.last_seen:
            out.append(f'central_server_last_seen_timestamp_seconds{{server="{_label(s.name)}"}} {_num(s.last_seen)}')
    _family(out, "central_poll_duration_seconds", "histogram", "How long polls took, failed ones included.")
    for bound, count in durations.cumulative():
        out.append(f'central_poll_duration_seconds_bucket{{le="{_num(bound)}"}} {count}')
    out.append(f"central_poll_duration_seconds_sum {_num(durations.sum)}")
    out.append(f"central_poll_duration_seconds_count {durations.count}")
    _family(out, "central_poll_errors_total", "counter", "Failed polls by reason.")
    for reason in sorted(set(REASONS) | set(errors_by_reason)):
        out.append(f'central_poll_errors_total{{reason="{_label(reason)}"}} {errors_by_reason.get(reason, 0)}')
    _family(out, "central_polls_total", "counter", "Successful polls.")
    out.append(f"central_polls_total {polls}")
    _family(out, "central_alerts_firing", "gauge", "Alerts firing now.")
    out.append(f"central_alerts_firing {alerts_firing}")
    if storage is not None:
        _family(out, "central_storage_up", "gauge", "1 if poll outcomes can be written to the database, else 0.")
        out.append(f"central_storage_up {1 if storage['ok'] else 0}")
        _family(out, "central_storage_buffered_outcomes", "gauge",
                "Poll outcomes waiting in memory to be written (database.outage_buffer at most).")
        out.append(f"central_storage_buffered_outcomes {storage['buffered']}")
        _family(out, "central_storage_buffer_capacity", "gauge", "How many poll outcomes the outage buffer holds.")
        out.append(f"central_storage_buffer_capacity {storage['buffer_capacity']}")
        _family(out, "central_storage_dropped_outcomes_total", "counter",
                "Poll outcomes dropped, oldest first, because the outage buffer was full.")
        out.append(f"central_storage_dropped_outcomes_total {storage['dropped']}")
        _family(out, "central_storage_failed_writes_total", "counter", "Write attempts of poll outcomes that failed.")
        out.append(f"central_storage_failed_writes_total {failed_writes}")
    if remote_write is not None:
        for key, kind, help_ in (
            ("sent", "counter", "Samples the remote-write receiver accepted."),
            ("failed", "counter", "Samples in batches the remote-write receiver refused for good (HTTP 4xx)."),
            ("dropped", "counter", "Samples dropped, oldest first, because the remote-write queue was full."),
        ):
            _family(out, f"central_remote_write_samples_{key}_total", kind, help_)
            out.append(f"central_remote_write_samples_{key}_total {remote_write[key]}")
        _family(out, "central_remote_write_failed_requests_total", "counter",
                "Remote-write requests that failed and were retried (no connection, timeout, 5xx, 429).")
        out.append(f"central_remote_write_failed_requests_total {remote_write['failed_requests']}")
        _family(out, "central_remote_write_queued_samples", "gauge",
                "Samples waiting in memory to be sent (remote_write.max_samples at most).")
        out.append(f"central_remote_write_queued_samples {remote_write['queued']}")
    _family(out, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.")
    out.append(f"process_cpu_seconds_total {_num(process['cpu_seconds'])}")
    _family(out, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.")
    out.append(f"process_resident_memory_bytes {process['resident_bytes']}")
    _family(out, "process_open_fds", "gauge", "Number of open file descriptors.")
    out.append(f"process_open_fds {process['open_fds']}")
    if process.get("max_fds") is not None:
        _family(out, "process_max_fds", "gauge", "Maximum number of open file descriptors.")
        out.append(f"process_max_fds {process['max_fds']}")
    _family(out, "process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.")
    out.append(f"process_start_time_seconds {_num(process['start_time'])}")
    return "\n".join(out) + "\n"

