#!/usr/bin/env python3
"""Clients that run inside a pod namespace (standalone script); print one JSON line.

    clients.py sha-up   --host H --port P --bytes N   send N bytes, shut the write side,
                                                      read the server's count and sha256
    clients.py sha-down --host H --port P --bytes N   receive N bytes, check their sha256
    clients.py idle     --host H --port P --idle K --requests M
                        open K connections that send nothing, then make M HTTP
                        requests on fresh connections while the idle ones stay open
    clients.py reuse-port --host H --port P --requests M --local-port L
                        M HTTP requests, each on a new connection from the same local
                        port, each read to the server's close; reports the pods and how
                        many SYNs this namespace retransmitted meanwhile
    clients.py keep --host H --port P --until FILE
                        an HTTP request, then (once FILE exists, at most 60 s later) a
                        second on the same connection: prints {"first": ...} after the
                        first, then whether both were answered on one connection
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import socket
import sys
import time
from pathlib import Path

from servers import BLOCK, pattern_block, pattern_sha256

TIMEOUT = 60.0


def connect(host: str, port: int) -> socket.socket:
    return socket.create_connection((host, port), timeout=TIMEOUT)


def sha_up(host: str, port: int, nbytes: int) -> dict:
    sock = connect(host, port)
    sock.sendall(b"UP\n")
    view, remaining = memoryview(pattern_block()), nbytes
    while remaining > 0:
        n = min(remaining, BLOCK)
        sock.sendall(view[:n])
        remaining -= n
    sock.shutdown(socket.SHUT_WR)
    reply = b""
    while chunk := sock.recv(4096):
        reply += chunk
    sock.close()
    expected = f"bytes={nbytes} sha256={pattern_sha256(nbytes)}"
    text = reply.decode(errors="replace").strip()
    return {"ok": text == expected, "reply": text, "expected": expected}


def sha_down(host: str, port: int, nbytes: int) -> dict:
    sock = connect(host, port)
    sock.sendall(f"DOWN {nbytes}\n".encode())
    h, total, buf = hashlib.sha256(), 0, bytearray(BLOCK)
    view = memoryview(buf)
    while n := sock.recv_into(buf):
        h.update(view[:n])
        total += n
    sock.close()
    expected = pattern_sha256(nbytes)
    got = h.hexdigest()
    return {"ok": total == nbytes and got == expected, "received": total,
            "sha256": got, "expected_sha256": expected}


def idle(host: str, port: int, n_idle: int, n_requests: int) -> dict:
    idlers = [connect(host, port) for _ in range(n_idle)]
    time.sleep(0.5)  # let the proxy accept them and wait for their first byte
    pods, errors = [], []
    for i in range(n_requests):
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.request("GET", f"/idle/{i}", headers={"Connection": "close"})
            resp = conn.getresponse()
            pods.append(json.loads(resp.read())["pod"])
        except Exception as exc:  # noqa: BLE001 - reported to the test
            errors.append(repr(exc))
        finally:
            conn.close()
    for sock in idlers:
        sock.close()
    return {"ok": not errors and len(pods) == n_requests, "pods": pods, "errors": errors}


def syn_retransmits() -> int:
    """TcpExt TCPSynRetrans of this network namespace."""
    lines = [line.split() for line in open("/proc/net/netstat", encoding="ascii")]
    for names, values in zip(lines[::2], lines[1::2]):
        if names[0] == "TcpExt:":
            return int(values[names.index("TCPSynRetrans")])
    raise RuntimeError("no TcpExt TCPSynRetrans in /proc/net/netstat")


def reuse_port(host: str, port: int, n_requests: int, local_port: int) -> dict:
    """The proxy closes first (it relays the server's close), so it holds each
    connection's TIME_WAIT when the next one arrives from the same port."""
    before = syn_retransmits()
    pods, errors = [], []
    for i in range(n_requests):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.settimeout(10)
        try:
            sock.bind(("0.0.0.0", local_port))
            sock.connect((host, port))
            sock.sendall(f"GET /reuse/{i} HTTP/1.1\r\nHost: {host}\r\n"
                         "Connection: close\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            pods.append(json.loads(data.split(b"\r\n\r\n", 1)[1])["pod"])
        except Exception as exc:  # noqa: BLE001 - reported to the test
            errors.append(repr(exc))
        finally:
            sock.close()
    return {"ok": not errors and len(pods) == n_requests, "pods": pods, "errors": errors,
            "syn_retransmits": syn_retransmits() - before}


def keep(host: str, port: int, until: str) -> dict:
    """What becomes of an established connection across a change the test
    makes meanwhile (its source leaving a Service's source ranges)."""
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    conn.request("GET", "/keep/1")
    first = conn.getresponse()
    first.read()
    sock = conn.sock
    local = sock.getsockname() if sock is not None else None
    print(json.dumps({"first": first.status, "local": local}), flush=True)
    deadline = time.monotonic() + 60
    while not Path(until).exists():
        if time.monotonic() > deadline:
            return {"ok": False, "error": f"{until} never appeared"}
        time.sleep(0.05)
    # http.client would open a new connection if the first had closed: the
    # second request must go out on the very same socket.
    if conn.sock is None or conn.sock is not sock:
        return {"ok": False, "error": "the connection closed before the second request"}
    conn.request("GET", "/keep/2")
    second = conn.getresponse()
    second.read()
    return {"ok": first.status == 200 and second.status == 200 and conn.sock is sock,
            "first": first.status, "second": second.status, "local": local}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["sha-up", "sha-down", "idle", "reuse-port", "keep"])
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--bytes", type=int, default=1 << 20)
    ap.add_argument("--idle", type=int, default=10)
    ap.add_argument("--requests", type=int, default=10)
    ap.add_argument("--local-port", type=int, default=40123)
    ap.add_argument("--until", default="")
    args = ap.parse_args()
    try:
        if args.kind == "sha-up":
            result = sha_up(args.host, args.port, args.bytes)
        elif args.kind == "sha-down":
            result = sha_down(args.host, args.port, args.bytes)
        elif args.kind == "keep":
            result = keep(args.host, args.port, args.until)
        elif args.kind == "reuse-port":
            result = reuse_port(args.host, args.port, args.requests, args.local_port)
        else:
            result = idle(args.host, args.port, args.idle, args.requests)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        result = {"ok": False, "error": repr(exc)}
    print(json.dumps(result), flush=True)
    sys.exit(0 if result.get("ok") else 1)


if __name__ == "__main__":
    main()
