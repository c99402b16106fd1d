"""What authenticating the agent adds to one poll: CPU time on the central and on the agent.

The central's share per poll is signing the request (an HMAC over a short text) and checking
the agent's proof on the answer (SHA-256 of the body, then an HMAC), with the real code
(central.agentauth.AgentSession). The agent's share is the same with its builtin _sha256
HMAC (agent.HmacKey). The body is a real /api/all document from the agent on this machine
(typically 20-40 KB), plus fixed 20 KB and 40 KB bodies for comparison. A new channel's
challenge (once per channel, not per poll) is measured too. CPU time (process_time), best of
5 rounds; the machine's load is printed with the figures.

Run: PYTHONPATH=$PWD python3 bench/bench_agent_auth.py [--rounds 5] [--n 20000]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from central.agentauth import PROTOCOL, AgentSession, new_secret  # noqa: E402
from central.bundled import agent_module  # noqa: E402


def best(fn, n: int, rounds: int) -> float:
    """Best CPU seconds per call over rounds of n calls."""
    out = []
    for _ in range(rounds):
        t0 = time.process_time()
        for _ in range(n):
            fn()
        out.append((time.process_time() - t0) / n)
    return min(out)


def agent_answer(key, session: AgentSession, body: bytes) -> dict:
    """The X-Agent-Auth header the agent sends for this body (computed like the agent does)."""
    agent = agent_module()
    proof = agent.HmacKey(key).mac(PROTOCOL + " response", session.nonce, session.cnonce, str(session.seq),
                                   "GET", "/api/all", "200", agent._sha256_hex(body))
    return {"x-agent-auth": f"seq={session.seq} mac={proof}"}


def measure(body: bytes, n: int, rounds: int) -> dict:
    secret = new_secret()
    key = bytes.fromhex(secret)
    session = AgentSession(secret)
    session.nonce = os.urandom(16).hex()
    agent = agent_module()
    agent_key = agent.HmacKey(key)

    sign = best(lambda: session.sign("GET", "/api/all", b""), n, rounds)
    # verify against a real proof for the current seq
    session.seq = 1
    headers = agent_answer(key, session, body)
    verify = best(lambda: session.verify("GET", "/api/all", 200, headers, body), max(n // 4, 100), rounds)
    sha_only = best(lambda: hashlib.sha256(body).hexdigest(), max(n // 4, 100), rounds)
    parse = best(lambda: json.loads(body), max(n // 20, 50), rounds) if body.startswith(b"{") else None
    agent_side = best(lambda: agent_key.mac(PROTOCOL + " response", session.nonce, session.cnonce, "1", "GET",
                                            "/api/all", "200", agent._sha256_hex(body)), max(n // 20, 50), rounds)
    agent_request = best(lambda: agent_key.mac(PROTOCOL + " request", session.nonce, session.cnonce, "1", "GET",
                                               "/api/all", agent._sha256_hex(b"")), max(n // 4, 100), rounds)

    def challenge():
        s = AgentSession(secret)
        nonce = "ab" * 16
        proof = agent_key.mac(PROTOCOL + " challenge", nonce, s.cnonce)
        s.challenge_request("127.0.0.1:8083")
        s.accept_challenge(200, {"x-agent-auth": "mac=" + proof}, json.dumps({"nonce": nonce}).encode())
    new_channel = best(challenge, max(n // 10, 100), rounds)
    return {"body_bytes": len(body), "central_sign_us": sign * 1e6, "central_verify_us": verify * 1e6,
            "central_per_poll_us": (sign + verify) * 1e6, "sha256_of_body_us": sha_only * 1e6,
            "json_parse_us": None if parse is None else parse * 1e6, "central_new_channel_us": new_channel * 1e6,
            "agent_per_poll_us": (agent_side + agent_request) * 1e6}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--n", type=int, default=20000)
    args = p.parse_args()
    agent = agent_module()
    collector = agent.Collector()
    time.sleep(0.3)
    real = json.dumps(collector.all(), separators=(",", ":")).encode()
    bodies = [("real /api/all", real), ("20 KB", b"x" * 20480), ("40 KB", b"x" * 40960)]
    results = []
    for label, body in bodies:
        r = measure(body, args.n, args.rounds)
        r["body"] = label
        results.append(r)
    load = os.getloadavg()
    cpus = os.cpu_count()
    print(f"machine: {cpus} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"(uptime); Python {sys.version.split()[0]}; CPU time, best of {args.rounds}\n")
    print("| body | bytes | central: sign | central: verify | central per poll | of which SHA-256 of body "
          "| (json.loads of the body) | central: new channel | agent per poll |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['body']} | {r['body_bytes']} | {r['central_sign_us']:.1f} µs | {r['central_verify_us']:.1f} µs "
              f"| **{r['central_per_poll_us']:.1f} µs** | {r['sha256_of_body_us']:.1f} µs | "
              f"{'-' if r['json_parse_us'] is None else '%.0f µs' % r['json_parse_us']} "
              f"| {r['central_new_channel_us']:.1f} µs | {r['agent_per_poll_us']:.0f} µs |")
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "agent_auth.json").write_text(json.dumps({"load": load, "cpus": cpus, "results": results}, indent=1))


if __name__ == "__main__":
    main()
