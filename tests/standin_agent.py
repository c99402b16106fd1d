"""A stand-in for agent/agent.py that serves chosen documents (hostile ones, for robustness tests).

Serves GET /api/health, /api/all and /api/inventory on --listen/--port with the real agent's
command line (``--listen 127.0.0.1 --port 8083 [--policy FILE]``), HTTP/1.1 keep-alive.
``--all FILE`` / ``--inventory FILE``: the body of /api/all / /api/inventory is FILE's bytes,
read again on every request (so a test can change it while the central polls); without them
a minimal valid document. Stdlib only, Python 3.6+. hostfarm.py also uses it when
agent/agent.py does not exist.
"""
import argparse
import hashlib
import json
import platform
import socket
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn

VERSION = "0.0.0-standin"
STARTED = time.time()
with open(__file__, "rb") as _f:
    SHA256 = hashlib.sha256(_f.read()).hexdigest()
FILES = {}


class Server(ThreadingMixIn, HTTPServer):
    daemon_threads = True


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path in FILES:
            with open(FILES[self.path], "rb") as f:
                self.send_body(200, f.read())
        elif self.path == "/api/health":
            self.send_json(200, {"status": "ok", "version": VERSION, "sha256": SHA256,
                                 "uptime": time.time() - STARTED, "python": platform.python_version()})
        elif self.path == "/api/all":
            self.send_json(200, {"agent": {"version": VERSION, "sha256": SHA256,
                                           "python": platform.python_version()},
                                 "timestamp": time.time(), "hostname": socket.gethostname()})
        elif self.path == "/api/inventory":
            self.send_json(200, {"hostname": socket.gethostname()})
        else:
            self.send_json(404, {"error": "not_found", "detail": self.path})

    def send_json(self, status, doc):
        self.send_body(status, json.dumps(doc).encode())

    def send_body(self, status, body):
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
    parser.add_argument("--all", dest="all_file", help="serve this file's bytes as /api/all")
    parser.add_argument("--inventory", help="serve this file's bytes as /api/inventory")
    args = parser.parse_args()
    if args.all_file:
        FILES["/api/all"] = args.all_file
    if args.inventory:
        FILES["/api/inventory"] = args.inventory
    Server((args.listen, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
