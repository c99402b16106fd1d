"""A stand-in for agent/agent.py that serves chosen documents (hostile ones, for robustness tests).

Serves GET /api/health, /api/all and /api/inventory on --listen/--port with the real agent's
command line (``--listen 127.0.0.1 --port 8083 [--policy FILE] [--secret-file FILE]``),
HTTP/1.1 keep-alive. ``--all FILE`` / ``--inventory FILE``: the body of /api/all /
/api/inventory is FILE's bytes, read again on every request (so a test can change it while
the central polls); without them a minimal valid document.

``--agent-module PATH`` (the real agent/agent.py): authenticate as the agent does, with the
agent's own code (its Gate: the challenge, each request's MAC and sequence number, the proof
on every answer) and the host's secret from --secret-file, so the central accepts the
documents and what is tested is what it does with them. Without it the stand-in does not
authenticate (hostfarm.py also uses it when agent/agent.py does not exist). Stdlib only,
Python 3.6+.
"""
import argparse
import hashlib
import importlib.util
import json
import platform
import socket
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn
from urllib.parse import urlsplit

VERSION = "0.0.0-standin"
STARTED = time.time()
with open(__file__, "rb") as _f:
    SHA256 = hashlib.sha256(_f.read()).hexdigest()
FILES = {}
AUTH = []  # [agent module, its Gate] when authenticating


class Server(ThreadingMixIn, HTTPServer):
    daemon_threads = True


class ChannelAuth(object):
    """One connection's authentication state, as the agent keeps it per connection."""

    def __init__(self):
        self.nonce = self.cnonce = None
        self.seq = 0
        self.peer_uid = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        BaseHTTPRequestHandler.setup(self)
        self.auth = ChannelAuth()  # one handler per connection: the channel's state

    def do_GET(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        sign = None
        if AUTH:
            agent, gate = AUTH
            headers = {k.lower(): v for k, v in self.headers.items()}
            req = agent.Request(self.command, self.path, urlsplit(self.path).path, {}, self.request_version,
                                headers, body, "close" not in headers.get("connection", "").lower())
            # the gate decides, answers the challenge and refusals itself, and signs the rest;
            # the placeholder handler is never what is sent
            status, payload, extra, sign, keep = gate.handle(self.auth, req, lambda _req: (200, None, ()))
            if sign is None:
                self.close_connection = not keep
                self.send_body(status, json.dumps(payload).encode(), extra)
                return
        if self.path in FILES:
            with open(FILES[self.path], "rb") as f:
                self.send_body(200, f.read(), sign=sign)
        elif self.path == "/api/health":
            self.send_json(200, {"status": "ok", "version": VERSION, "sha256": SHA256,
                                 "uptime": time.time() - STARTED, "python": platform.python_version()}, sign)
        elif self.path == "/api/all":
            self.send_json(200, {"agent": {"version": VERSION, "sha256": SHA256,
                                           "python": platform.python_version()},
                                 "timestamp": time.time(), "hostname": socket.gethostname()}, sign)
        elif self.path == "/api/inventory":
            self.send_json(200, {"hostname": socket.gethostname()}, sign)
        else:
            self.send_json(404, {"error": "not_found", "detail": self.path}, sign)

    def send_json(self, status, doc, sign=None):
        self.send_body(status, json.dumps(doc).encode(), sign=sign)

    def send_body(self, status, body, extra=(), sign=None):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra:
            self.send_header(name, value)
        if sign is not None:
            self.send_header("X-Agent-Auth", sign(status, body))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def load_gate(agent_path, secret_file, address):
    """The real agent's module and its Gate for this host's secret, bound to address."""
    spec = importlib.util.spec_from_file_location("central_agent", agent_path)
    agent = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(agent)
    gate = agent.Gate(secret_file, host_log=agent.HostLog(None))
    if gate.key is None:
        raise SystemExit("standin_agent: %s" % gate.key_status)
    gate.bound(address)
    return agent, gate


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8083)
    parser.add_argument("--policy")
    parser.add_argument("--all", dest="all_file", help="serve this file's bytes as /api/all")
    parser.add_argument("--inventory", help="serve this file's bytes as /api/inventory")
    parser.add_argument("--agent-module", help="the real agent/agent.py: authenticate with its code")
    parser.add_argument("--secret-file", default="/etc/central-agent/secret")
    args = parser.parse_args()
    if args.all_file:
        FILES["/api/all"] = args.all_file
    if args.inventory:
        FILES["/api/inventory"] = args.inventory
    server = Server((args.listen, args.port), Handler)
    if args.agent_module:
        AUTH.extend(load_gate(args.agent_module, args.secret_file, server.server_address))
    server.serve_forever()


if __name__ == "__main__":
    main()
