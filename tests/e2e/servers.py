#!/usr/bin/env python3
"""Backend servers that run inside a pod namespace (standalone script).

    servers.py http  --name NAME --port PORT     answers one JSON line per request:
                                                 {"pod": NAME, "peer": IP, "peer_port": N}
    servers.py sha   --port PORT                 per connection, first line decides:
                                                 "UP\\n"      read to EOF, reply "bytes=N sha256=HEX\\n"
                                                 "DOWN N\\n"  send N bytes of the pattern stream, close
    servers.py reset --port PORT                 accepts and resets at once (SO_LINGER 0)
    servers.py proxyv2 --name NAME --port PORT   reads a PROXY v2 header, answers one JSON
                                                 line {"pod", "peer", "proxied_client", ...}
    servers.py udpecho --name NAME --port PORT   answers each datagram with one JSON line
                                                 {"pod": NAME, "peer": IP, "peer_port": N}

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


PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def read_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed inside the PROXY header")
        data += chunk
    return data


def parse_proxy_v2(conn: socket.socket) -> dict:
    head = read_exact(conn, 16)
    if head[:12] != PROXY_V2_SIGNATURE:
        return {"error": "no PROXY v2 signature", "first_bytes": head.hex()}
    length = struct.unpack("!H", head[14:16])[0]
    body = read_exact(conn, length)
    family = head[13] >> 4
    if family == 1:
        src, dst = socket.inet_ntop(socket.AF_INET, body[0:4]), socket.inet_ntop(socket.AF_INET, body[4:8])
        sport, dport = struct.unpack("!HH", body[8:12])
    else:
        src, dst = socket.inet_ntop(socket.AF_INET6, body[0:16]), socket.inet_ntop(socket.AF_INET6, body[16:32])
        sport, dport = struct.unpack("!HH", body[32:36])
    return {"version_command": head[12], "family_transport": head[13], "proxied_client": plain(src),
            "proxied_client_port": sport, "proxied_destination": plain(dst), "proxied_destination_port": dport}


def serve_proxyv2(name: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("::", port))
    sock.listen(128)
    print(f"proxyv2 server {name} listening on {port}", flush=True)
    while True:
        conn, peer = sock.accept()
        with conn:
            conn.settimeout(10)
            try:
                info = parse_proxy_v2(conn)
            except (OSError, ConnectionError) as exc:
                info = {"error": repr(exc)}
            info.update(pod=name, peer=plain(peer[0]), peer_port=peer[1])
            conn.sendall((json.dumps(info) + "\n").encode())
            print(json.dumps(info), flush=True)


def serve_udpecho(name: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    print(f"udpecho server {name} listening on {port}", flush=True)
    while True:
        _, peer = sock.recvfrom(2048)
        reply = {"pod": name, "peer": plain(peer[0]), "peer_port": peer[1]}
        sock.sendto((json.dumps(reply) + "\n").encode(), peer)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["http", "sha", "reset", "proxyv2", "udpecho"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", default="backend")
    args = ap.parse_args()
    if args.kind == "http":
        server = HttpServer(("::", args.port), http_handler(args.name))
    elif args.kind == "sha":
        server = ShaServer(("::", args.port), ShaHandler)
    elif args.kind == "proxyv2":
        serve_proxyv2(args.name, args.port)
        return
    elif args.kind == "udpecho":
        serve_udpecho(args.name, args.port)
        return
    else:
        serve_reset(args.port)
        return
    print(f"{args.kind} server {args.name} listening on {args.port}", flush=True)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    t.join()


if __name__ == "__main__":
    main()
