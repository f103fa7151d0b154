#!/usr/bin/env python3
"""Backend servers that run inside a pod namespace (standalone script).

    servers.py http  --name NAME --port PORT     answers one JSON line per request:
                                                 {"pod": NAME, "peer": IP, "peer_port": N}
    servers.py sha   --port PORT                 per connection, first line decides:
                                                 "UP\\n"      read to EOF, reply "bytes=N sha256=HEX\\n"
                                                 "DOWN N\\n"  send N bytes of the pattern stream, close
    servers.py reset --port PORT                 accepts and resets at once (SO_LINGER 0)

All listen on [::] (dual stack). Nothing here resolves a name.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import socket
import socketserver
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BLOCK = 1 << 20


def pattern_block() -> bytes:
    """1 MiB of pseudo-random bytes; the bulk stream repeats it."""
    return random.Random(20240611).randbytes(BLOCK)


def pattern_sha256(nbytes: int) -> str:
    block, h = pattern_block(), hashlib.sha256()
    full, rest = divmod(nbytes, BLOCK)
    for _ in range(full):
        h.update(block)
    h.update(block[:rest])
    return h.hexdigest()


def plain(addr: str) -> str:
    return addr[7:] if addr.startswith("::ffff:") else addr


class DualStackMixin:
    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # Deliberately not HTTPServer.server_bind: it calls getfqdn(), a DNS lookup.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "backend", self.server_address[1]


class HttpServer(DualStackMixin, ThreadingHTTPServer):
    request_queue_size = 128


def http_handler(pod: str):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = json.dumps({
                "pod": pod,
                "peer": plain(self.client_address[0]),
                "peer_port": self.client_address[1],
                "path": self.path,
            }).encode() + b"\n"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):
            sys.stderr.write(f"{pod} {plain(self.client_address[0])} {fmt % args}\n")
            sys.stderr.flush()

    return Handler


class ShaHandler(socketserver.BaseRequestHandler):
    def handle(self):
        conn: socket.socket = self.request
        f = conn.makefile("rb")
        line = f.readline(64).decode(errors="replace").strip()
        if line == "UP":
            h, total = hashlib.sha256(), 0
            while True:
                chunk = f.read1(BLOCK)
                if not chunk:
                    break
                h.update(chunk)
                total += len(chunk)
            conn.sendall(f"bytes={total} sha256={h.hexdigest()}\n".encode())
        elif line.startswith("DOWN "):
            remaining = int(line.split()[1])
            view = memoryview(pattern_block())
            while remaining > 0:
                n = min(remaining, BLOCK)
                conn.sendall(view[:n])
                remaining -= n
        else:
            conn.sendall(b"error: expected UP or DOWN N\n")
        conn.shutdown(socket.SHUT_WR)
        f.close()


class ShaServer(DualStackMixin, socketserver.ThreadingTCPServer):
    pass


def serve_reset(port: int) -> None:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("::", port))
    sock.listen(128)
    print(f"reset server listening on {port}", flush=True)
    while True:
        conn, peer = sock.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        print(f"reset {plain(peer[0])}:{peer[1]}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["http", "sha", "reset"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", default="backend")
    args = ap.parse_args()
    if args.kind == "http":
        server = HttpServer(("::", args.port), http_handler(args.name))
    elif args.kind == "sha":
        server = ShaServer(("::", args.port), ShaHandler)
    else:
        serve_reset(args.port)
        return
    print(f"{args.kind} server {args.name} listening on {args.port}", flush=True)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    t.join()


if __name__ == "__main__":
    main()
