#!/usr/bin/env python3
"""A tiny HTTP CONNECT proxy on loopback for tests/system/tls.sh (stdlib only).

    connect_proxy.py --port-file FILE --allow NAME:PORT=127.0.0.1:PORT [--allow ...]

Listens on 127.0.0.1 (a free port, written to --port-file once listening).
A CONNECT to an allowed NAME:PORT is tunnelled to its loopback address; any
other request is refused with 403. So a client that uses this proxy resolves
no name itself and can reach nothing but the allowed loopback targets.
One line per request on stdout: "allow NAME:PORT" or "deny <request line>".
"""

import argparse
import os
import socket
import sys
import threading


def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def log(line):
    print(line, flush=True)


def handle(conn, allow):
    with conn:
        conn.settimeout(30)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk or len(head) > 65536:
                return
            head += chunk
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        target = parts[1].lower() if len(parts) == 3 and parts[0] == "CONNECT" else None
        if target not in allow:
            log(f"deny {line}")
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        try:
            upstream = socket.create_connection(allow[target], timeout=10)
        except OSError as e:
            log(f"fail {target}: {e}")
            conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        log(f"allow {target}")
        with upstream:
            conn.settimeout(None)
            upstream.settimeout(None)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            rest = head.split(b"\r\n\r\n", 1)[1]
            if rest:
                upstream.sendall(rest)
            t = threading.Thread(target=pump, args=(upstream, conn), daemon=True)
            t.start()
            pump(conn, upstream)
            t.join()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--allow", action="append", default=[], help="NAME:PORT=127.0.0.1:PORT")
    args = ap.parse_args()
    allow = {}
    for a in args.allow:
        name, addr = a.split("=", 1)
        host, port = addr.rsplit(":", 1)
        if not host.startswith("127."):
            sys.exit(f"--allow {a}: targets must be on 127.0.0.0/8")
        allow[name.lower()] = (host, int(port))
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{srv.getsockname()[1]}\n")
    os.rename(tmp, args.port_file)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn, allow), daemon=True).start()


if __name__ == "__main__":
    main()
