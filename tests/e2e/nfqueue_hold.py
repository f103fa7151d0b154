"""Holds the first packet of an NFQUEUE queue until told to let it go:
`python3 nfqueue_hold.py QUEUE RELEASE` prints `bound`, then `held` when
the first packet arrives, waits for the file RELEASE to exist, accepts
that packet (it goes on through the hooks after the queueing rule, with
the ruleset of that moment) and prints `released`; later packets are
accepted at once. Ends 120 s after it started.

A test uses it to put a ruleset change between two netfilter hooks of one
packet, deterministically (nfnetlink_queue by hand: no library needed).
"""

from __future__ import annotations

import os
import select
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS = 1, 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
NF_ACCEPT = 1


def attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def message(msg: int, queue: int, body: bytes, seq: int, ack: bool) -> bytes:
    nfgen = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue))
    flags = NLM_F_REQUEST | (NLM_F_ACK if ack else 0)
    payload = nfgen + body
    return struct.pack("=IHHII", 16 + len(payload), (NFNL_SUBSYS_QUEUE << 8) | msg,
                       flags, seq, 0) + payload


def messages(data: bytes):
    while len(data) >= 16:
        length, kind, _, _, _ = struct.unpack_from("=IHHII", data)
        yield kind, data[16:length]
        data = data[(length + 3) & ~3:]


def packet_id(body: bytes) -> int | None:
    attrs = body[4:]  # after the nfgenmsg
    while len(attrs) >= 4:
        length, kind = struct.unpack_from("=HH", attrs)
        if kind & 0x7FFF == NFQA_PACKET_HDR:
            return struct.unpack_from("!I", attrs, 4)[0]
        attrs = attrs[(length + 3) & ~3:]
    return None


def configure(sock: socket.socket, queue: int) -> None:
    for seq, body in enumerate((
            attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, socket.AF_INET)),
            attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))), start=1):
        sock.send(message(NFQNL_MSG_CONFIG, queue, body, seq, ack=True))
        for kind, reply in messages(sock.recv(65536)):
            if kind == NLMSG_ERROR and struct.unpack_from("=i", reply)[0] != 0:
                raise OSError(-struct.unpack_from("=i", reply)[0], "nfqueue config refused")


def verdict(sock: socket.socket, queue: int, pid: int) -> None:
    body = attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, pid))
    sock.send(message(NFQNL_MSG_VERDICT, queue, body, 0, ack=False))


def main() -> None:
    queue, release = int(sys.argv[1]), sys.argv[2]
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.bind((0, 0))
    configure(sock, queue)
    print("bound", flush=True)
    deadline = time.monotonic() + 120
    held: int | None = None
    released = False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], 0.02)
        if held is not None and not released and os.path.exists(release):
            verdict(sock, queue, held)
            released = True
            print("released", flush=True)
        if not ready:
            continue
        for kind, body in messages(sock.recv(65536)):
            if kind != (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                continue
            pid = packet_id(body)
            if pid is None:
                continue
            if held is None:
                held = pid
                print("held", flush=True)
            else:
                verdict(sock, queue, pid)


if __name__ == "__main__":
    main()
