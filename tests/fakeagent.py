"""A hostile "agent" for robustness tests: serves one misbehaviour on 127.0.0.1:PORT.

Modes (every connection, every request):
  garbage   random bytes instead of HTTP, then close
  huge      HTTP 200 with a 100 MB JSON body (Content-Length set), streamed
  trickle   a valid /api/health answer, one byte per second
  badutf8   HTTP 200, Content-Type JSON, body with invalid UTF-8 inside a string
  notjson   HTTP 200, Content-Type JSON, body that is not JSON
  hang      read the request, never answer
  close     read the request and close without answering
  error500  HTTP 500 with a JSON error body
  squatter  a plausible agent that does not know the host's secret (its proofs are wrong)
Every mode but squatter holds the host's secret (--secret-file), as a compromised host's
root could: the challenge is answered with a valid proof and every answer carries one, so
the misbehaviour itself is what the central sees. Run inside a test host by
TestHost.start_fake_agent(mode). Stdlib only.
"""
import argparse
import hashlib
import hmac
import json
import os
import re
import socket
import sys
import threading
import time

HUGE_SIZE = 100 * 1024 * 1024
PROTOCOL = "central-agent/1"
KEY = []  # the secret's bytes, when the mode knows it

SQUATTER_DOC = {"agent": {"version": "9.9.9", "sha256": "0" * 64, "python": "3.11.0"},
                "timestamp": 0, "hostname": "squatter", "uptime": 1, "cpu": None, "load": None,
                "memory": None, "filesystems": [], "disk_io": None, "network": None,
                "processes": None, "systemd": None, "docker": None, "inventory_hash": "0",
                "errors": {}}


def read_request(conn):
    """Read one request head (and ignore any body); b"" when the peer closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return b""
        data += chunk
        if len(data) > 65536:
            break
    return data


def response(status, body, content_type="application/json", length=None, proof=None):
    head = ("HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
            % (status, content_type, len(body) if length is None else length))
    if proof:
        head += "X-Agent-Auth: %s\r\n" % proof
    return (head + "\r\n").encode() + body


def mac(*fields):
    key = KEY[0] if KEY else os.urandom(32)  # without the secret: a proof that cannot verify
    return hmac.new(key, "\n".join(fields).encode(), hashlib.sha256).hexdigest()


class Channel(object):
    """One connection's protocol state: answers the challenge, proves each answer."""

    def __init__(self):
        self.nonce = os.urandom(16).hex()
        self.cnonce = "0" * 32

    def challenge(self, request):
        match = re.search(rb"(?i)x-central-nonce: *([0-9a-f]{32})", request)
        if match:
            self.cnonce = match.group(1).decode()
        return response("200 OK", json.dumps({"nonce": self.nonce, "protocol": PROTOCOL}).encode(),
                        proof="mac=" + mac(PROTOCOL + " challenge", self.nonce, self.cnonce))

    def answer(self, request, status, body):
        method, target = request.split(b" ", 2)[:2]
        match = re.search(rb"(?i)x-central-auth: *seq=([0-9]+)", request)
        seq = match.group(1).decode() if match else "1"
        proof = "seq=%s mac=%s" % (seq, mac(PROTOCOL + " response", self.nonce, self.cnonce, seq,
                                            method.decode(), target.decode(), status.split()[0],
                                            hashlib.sha256(body).hexdigest()))
        return response(status, body, proof=proof)


def serve(conn, mode):
    channel = Channel()
    with conn:
        if mode == "close":
            read_request(conn)  # then close without answering (an empty reply)
            return
        if mode == "garbage":
            read_request(conn)
            conn.sendall(os.urandom(4096))
            return
        while True:
            request = read_request(conn)
            if not request:
                return
            # what it was asked, for the tests (a squatter must only ever see the challenge)
            sys.stdout.write("REQUEST %s\n" % request.split(b"\r\n", 1)[0].decode("latin-1"))
            sys.stdout.flush()
            if mode == "hang":
                while conn.recv(4096):
                    pass
                return
            if mode == "huge":
                prefix = b'{"pad": "'
                suffix = b'"}'
                conn.sendall(response("200 OK", prefix, length=HUGE_SIZE))
                chunk = b"x" * 65536
                left = HUGE_SIZE - len(prefix) - len(suffix)
                while left > 0:
                    conn.sendall(chunk[:left])
                    left -= min(left, len(chunk))
                conn.sendall(suffix)
            elif mode == "trickle":
                data = response("200 OK", b'{"status": "ok", "version": "trickle"}')
                for i in range(len(data)):
                    conn.sendall(data[i:i + 1])
                    time.sleep(1)
            elif b" /api/challenge " in request.split(b"\r\n", 1)[0]:
                conn.sendall(channel.challenge(request))
            elif mode == "badutf8":
                conn.sendall(channel.answer(request, "200 OK", b'{"hostname": "bad\xff\xfe\xc3(", "agent": {}}'))
            elif mode == "notjson":
                conn.sendall(channel.answer(request, "200 OK", b"<html>this is not json</html>"))
            elif mode == "error500":
                conn.sendall(channel.answer(request, "500 Internal Server Error",
                                            b'{"error": "internal", "detail": "fake failure"}'))
            elif mode == "squatter":
                conn.sendall(channel.answer(request, "200 OK", json.dumps(SQUATTER_DOC).encode()))
            if b"connection: close" in request.lower():
                return


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode")
    parser.add_argument("--port", type=int, default=8083)
    parser.add_argument("--secret-file", default="/etc/central-agent/secret")
    args = parser.parse_args()
    if args.mode != "squatter":
        try:
            with open(args.secret_file) as f:
                KEY.append(bytes.fromhex(f.read().strip()))
        except (OSError, ValueError):
            pass
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", args.port))
    srv.listen(64)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve_safely, args=(conn, args.mode), daemon=True).start()


def serve_safely(conn, mode):
    try:
        serve(conn, mode)
    except OSError:
        pass  # the client gave up: that is the point of most modes


if __name__ == "__main__":
    main()
