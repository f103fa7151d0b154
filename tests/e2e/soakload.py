#!/usr/bin/env python3
"""Load for the soak (tests/soak), run inside the client namespace.

    soakload.py tcp --host H --port P --seconds S --rate R   HTTP GET, one connection each
    soakload.py udp --host H --port P --seconds S --rate R   a DNS query, a new socket each
    soakload.py l7  --host H --port P --seconds S --rate R   HTTP/1.1 GETs on one kept-alive
                                                             connection (a new one after an error)

Bounded: at most S*R requests, and S seconds (plus one timeout). Prints one
JSON line: totals, failures by reason, and per-10-second buckets."""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import time
from collections import Counter

TIMEOUT = 3.0
BUCKET = 10


def http_get(host: str, port: int) -> str:
    try:
        s = socket.create_connection((host, port), timeout=TIMEOUT)
    except ConnectionRefusedError:
        return "connect_refused"
    except socket.timeout:
        return "connect_timeout"
    except OSError as e:
        return f"connect_{e.errno}"
    try:
        s.settimeout(TIMEOUT)
        s.sendall(b"GET /soak HTTP/1.0\r\nHost: soak\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        if not data:
            return "empty_reply"
        status = data.split(b"\r\n", 1)[0]
        return "ok" if b" 200 " in status else "bad_status"
    except ConnectionResetError:
        return "reset"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return f"io_{e.errno}"
    finally:
        s.close()


class KeepAlive:
    """One HTTP/1.1 connection reused for every request (L7: per-request
    balancing on one client connection)."""

    def __init__(self, host: str, port: int):
        self.host, self.port, self.conn = host, port, None

    def get(self) -> str:
        import http.client
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)
            self.conn.request("GET", "/soak-l7", headers={"Host": "soak"})
            resp = self.conn.getresponse()
            resp.read()
            if resp.will_close:
                self.close()
            return "ok" if resp.status == 200 else f"status_{resp.status}"
        except ConnectionResetError:
            self.close()
            return "reset"
        except socket.timeout:
            self.close()
            return "timeout"
        except (OSError, http.client.HTTPException) as e:
            self.close()
            return type(e).__name__

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def dns_query(host: str, port: int, name: str) -> str:
    qid = int.from_bytes(os.urandom(2), "big")
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    packet = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(TIMEOUT)
    try:
        s.sendto(packet, (host, port))
        while True:
            reply, _ = s.recvfrom(4096)
            if len(reply) >= 12 and struct.unpack("!H", reply[:2])[0] == qid:
                answers = struct.unpack("!H", reply[6:8])[0]
                return "ok" if answers > 0 else "no_answer"
    except socket.timeout:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:
        return f"io_{e.errno}"
    finally:
        s.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["tcp", "udp", "l7"])
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--rate", type=float, default=20)
    ap.add_argument("--name", default="web.e2e.svc.cluster.local")
    args = ap.parse_args()
    start = time.monotonic()
    limit = int(args.seconds * args.rate) + 1
    reasons: Counter[str] = Counter()
    buckets: dict[int, list[int]] = {}
    sent = 0
    keepalive = KeepAlive(args.host, args.port)
    while sent < limit:
        now = time.monotonic() - start
        if now >= args.seconds:
            break
        due = start + sent / args.rate
        if due > time.monotonic():
            time.sleep(due - time.monotonic())
        if args.kind == "tcp":
            result = http_get(args.host, args.port)
        elif args.kind == "l7":
            result = keepalive.get()
        else:
            result = dns_query(args.host, args.port, args.name)
        sent += 1
        reasons[result] += 1
        b = buckets.setdefault(int(now // BUCKET), [0, 0])
        b[0] += 1
        b[1] += result != "ok"
    failed = sent - reasons["ok"]
    print(json.dumps({"kind": args.kind, "sent": sent, "ok": reasons["ok"], "failed": failed,
                      "reasons": {k: v for k, v in reasons.items() if k != "ok"},
                      "buckets": {str(k * BUCKET): v for k, v in sorted(buckets.items())}}),
          flush=True)


if __name__ == "__main__":
    main()
