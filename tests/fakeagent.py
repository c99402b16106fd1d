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
Run inside a test host by TestHost.start_fake_agent(mode). Stdlib only.
"""
import argparse
import os
import socket
import threading
import time

HUGE_SIZE = 100 * 1024 * 1024


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


def response(status, body, content_type="application/json", length=None):
    head = ("HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
            % (status, content_type, len(body) if length is None else length))
    return head.encode() + body


def serve(conn, mode):
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
            elif mode == "badutf8":
                conn.sendall(response("200 OK", b'{"hostname": "bad\xff\xfe\xc3(", "agent": {}}'))
            elif mode == "notjson":
                conn.sendall(response("200 OK", b"<html>this is not json</html>"))
            elif mode == "error500":
                conn.sendall(response("500 Internal Server Error",
                                      b'{"error": "internal", "detail": "fake failure"}'))
            if b"connection: close" in request.lower():
                return


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode")
    parser.add_argument("--port", type=int, default=8083)
    args = parser.parse_args()
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
