"""A TCP relay inside a test host between the central's channel and the agent: the position
of an attacker who can see or change the bytes, for the replay tests. Stdlib only.

  relay.py LISTEN AGENT DIR record           pass everything; save connection N's bytes as
                                             DIR/c2a-N.bin (to the agent) and DIR/a2c-N.bin
  relay.py LISTEN AGENT DIR replay-response:N  pass the challenge and its answer, then answer the
                                             next request with the second answer recorded in
                                             DIR/a2c-N.bin (an old, genuinely signed answer)
"""
import os
import socket
import sys
import threading


def split_responses(data):
    """The HTTP responses in data (each head plus Content-Length body)."""
    out = []
    while data:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            break
        head = data[:end].decode("latin-1").lower()
        length = 0
        for line in head.split("\r\n"):
            if line.startswith("content-length:"):
                length = int(line.split(":", 1)[1])
        out.append(data[:end + 4 + length])
        data = data[end + 4 + length:]
    return out


def pipe(src, dst, record, host_from=None, host_to=None):
    try:
        while True:
            chunk = src.recv(65536)
            if not chunk:
                break
            if host_from:  # the Host header is the agent's own (it is not under the MAC)
                chunk = chunk.replace(host_from, host_to)
            record.write(chunk)
            record.flush()
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def replay_answers(agent, client, old_answer):
    """Pass the first answer (the challenge), swap the second for the recorded one."""
    buf, passed = b"", 0
    try:
        while True:
            chunk = agent.recv(65536)
            if not chunk:
                break
            buf += chunk
            answers = split_responses(buf)
            complete = sum(len(a) for a in answers)
            for answer in answers:
                client.sendall(answer if passed != 1 else old_answer)
                passed += 1
            buf = buf[complete:]
    except OSError:
        pass
    finally:
        client.close()


def main():
    listen, agent_port, where, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", listen))
    srv.listen(16)
    n = 0
    while True:
        client, _ = srv.accept()
        n += 1
        agent = socket.create_connection(("127.0.0.1", agent_port))
        c2a = open(os.path.join(where, "c2a-%d.bin" % n), "wb")
        threading.Thread(target=pipe, args=(client, agent, c2a, b"Host: 127.0.0.1:%d\r\n" % listen,
                                            b"Host: 127.0.0.1:%d\r\n" % agent_port), daemon=True).start()
        if mode == "record":
            a2c = open(os.path.join(where, "a2c-%d.bin" % n), "wb")
            threading.Thread(target=pipe, args=(agent, client, a2c), daemon=True).start()
        else:
            with open(os.path.join(where, "a2c-%s.bin" % mode.split(":")[1]), "rb") as f:
                old = split_responses(f.read())[1]
            threading.Thread(target=replay_answers, args=(agent, client, old), daemon=True).start()


if __name__ == "__main__":
    main()
