"""Stand-in for agent/agent.py while the real agent is not in the repository yet.

Serves GET /api/health and a minimal GET /api/all on --listen/--port, with the real agent's
command line (``--listen 127.0.0.1 --port 8083 [--policy FILE]``). hostfarm.py uses it only
when agent/agent.py does not exist.
"""
import argparse
import hashlib
import json
import platform
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "0.0.0-standin"
STARTED = time.time()
with open(__file__, "rb") as _f:
    SHA256 = hashlib.sha256(_f.read()).hexdigest()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/api/health":
            doc = {"status": "ok", "version": VERSION, "sha256": SHA256,
                   "uptime": time.time() - STARTED, "python": platform.python_version()}
            self.send_json(200, doc)
        elif self.path == "/api/all":
            doc = {"agent": {"version": VERSION, "sha256": SHA256,
                             "python": platform.python_version()},
                   "timestamp": time.time(), "hostname": socket.gethostname()}
            self.send_json(200, doc)
        else:
            self.send_json(404, {"error": "not_found", "detail": self.path})

    def send_json(self, status, doc):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8083)
    parser.add_argument("--policy")
    args = parser.parse_args()
    ThreadingHTTPServer((args.listen, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
