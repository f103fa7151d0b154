#!/usr/bin/env python3
"""Opens N TCP connections to HOST:PORT and holds them idle (standalone; runs
in the client Pod namespace).

Prints one JSON line when all have been tried ({"connected": n, "failed": f,
"seconds": t}), then holds them until stdin closes or --hold seconds pass,
and closes them. No byte is ever sent: these are idle connections.
"""

from __future__ import annotations

import argparse
import errno
import json
import resource
import select
import socket
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("count", type=int)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--hold", type=float, default=120)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    start = time.monotonic()
    deadline = start + args.timeout
    held: list[socket.socket] = []
    failed = 0
    todo = args.count
    while todo > 0 and time.monotonic() < deadline:
        pending: dict[int, socket.socket] = {}
        for _ in range(min(args.batch, todo)):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            err = s.connect_ex((args.host, args.port))
            if err not in (0, errno.EINPROGRESS):
                s.close()
                failed += 1
                continue
            pending[s.fileno()] = s
        todo -= args.batch
        poller = select.epoll()
        for fd in pending:
            poller.register(fd, select.EPOLLOUT)
        while pending and time.monotonic() < deadline:
            for fd, _ in poller.poll(max(0.0, deadline - time.monotonic())):
                s = pending.pop(fd)
                poller.unregister(fd)
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    held.append(s)
                else:
                    s.close()
                    failed += 1
        failed += len(pending)
        for s in pending.values():
            s.close()
        poller.close()
    print(json.dumps({"connected": len(held), "failed": failed,
                      "seconds": round(time.monotonic() - start, 3)}), flush=True)
    select.select([sys.stdin], [], [], args.hold)
    for s in held:
        s.close()


if __name__ == "__main__":
    main()
