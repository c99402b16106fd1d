"""The server list's JSON text for limit=1000: json.dumps of the whole answer against
central.web.answers.ServerRows (row texts kept between builds), CPU per answer, same run. Each of
20 successive answers has 2 % of its rows with new figures (one poll batch's worth at 1,000
hosts polled every 10 s) and every row's freshness (seen_ago) moved.

    python3 bench/bench_api_rows.py
"""
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from central.model import METRICS  # noqa: E402
from central.web.answers import ServerRows, _dumps  # noqa: E402


def row(i, t):
    s = {"ts": t, **{m: random.random() * 100 for m in METRICS}, "top": [[1, "systemd", 0.1, 12000000], [812, "nginx", 3.2, 40000000]]}
    d = {"id": i, "name": "fake%04d" % i, "kind": "ssh", "host": "127.0.0.1", "port": 22, "user": "central", "key_path": None,
         "agent_port": 8083, "tags": ["rack1", "bench"], "interval_s": None, "host_key_fingerprint": "SHA256:" + "x" * 43,
         "status": "online", "status_reason": None, "last_error": None, "consecutive_failures": 0, "last_seen": t, "last_poll": t,
         "poll_duration": 0.01, "agent_version": "1.0", "agent_sha256": "a" * 64, "hostname": "h%d" % i, "inventory_hash": "b" * 64,
         "created_at": 1.0, "sample": s, "agent_outdated": False}
    return d


base = [row(i, 1000.0) for i in range(1000)]
samples = [r.pop("sample") for r in base]


def answer(k):
    rows = []
    for i, r in enumerate(base):
        d = dict(r)
        if i % 50 == k % 50:
            samples[i] = dict(samples[i], ts=samples[i]["ts"] + 10)
        d["sample"] = samples[i]
        d.update({"stale": False, "seen_ago": round(random.random() * 10, 1), "status_text": None})
        rows.append(d)
    return {"servers": rows, "total": 1000, "limit": 1000, "offset": 0}


answers = [answer(k) for k in range(20)]
enc = ServerRows()
for f, name in ((_dumps, "json.dumps"), (enc.encode, "ServerRows"), (_dumps, "json.dumps"), (enc.encode, "ServerRows")):
    t = time.process_time()
    for a in answers:
        f(a)
    print(name, "%.1f ms per 1000-row answer" % ((time.process_time() - t) / len(answers) * 1000))
assert enc.encode(answers[3]) == _dumps(answers[3])
