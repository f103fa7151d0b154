"""Syscalls and wakeups per connection and per keep-alive request (issue 19):
`python3 -m bench.sybench.syscalls [peer ...]` (root), or `bench/run --syscalls`.

For each peer, two fixed-count loads from the client Pod: `--conns`
one-request connections (`Connection: close`), and `--requests` requests on
one keep-alive connection. Each load runs twice: once bare, counting the
context switches of the peer's threads (voluntary: it slept and was woken;
involuntary: it was preempted) from /proc/<pid>/task/*/status, and once
under `strace -c`, counting its system calls (strace slows the peer and
adds switches of its own, hence the two runs). Switchyard's background
threads (metrics, sync, the sweep) work by the clock, not by connection,
so its rows count the data-plane worker threads (`sy-worker-*`) and their
io_uring helpers (`iou-*`); the other peers count every thread.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import backends, cpu, topo
from .backends import WEB
from .main import chosen_peers
from .profile import strace_summary

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PEERS = ["switchyard-uring", "switchyard-epoll", "haproxy", "nginx-stream"]

# One-request connections, closed by the client after the response (the
# backend answers a 3-byte body with Content-Length).
CONNS_CLIENT = """
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
req = b"GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n"
for _ in range(n):
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(req)
    while s.recv(4096):
        pass
    s.close()
"""

# Requests one at a time on one keep-alive connection: each response is
# read to its Content-Length before the next request goes.
KEEPALIVE_CLIENT = """
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
req = b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n"
s = socket.create_connection((host, port), timeout=5)
buf = b""
for _ in range(n):
    s.sendall(req)
    while b"\\r\\n\\r\\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("connection closed")
        buf += chunk
    head, _, buf = buf.partition(b"\\r\\n\\r\\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\\r\\n")
                      if line.lower().startswith(b"content-length")))
    while len(buf) < length:
        buf += s.recv(4096)
    buf = buf[length:]
s.close()
"""


def counted_threads(peer) -> list[tuple[int, int]]:
    """(pid, tid) of the threads whose calls and switches are the peer's
    per-connection work."""
    out = []
    switchyard = peer.name.startswith("switchyard")
    for pid in peer.pids():
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            except OSError:
                continue
            if not switchyard or comm.startswith(("sy-worker", "iou-")):
                out.append((pid, int(tid)))
    return out


def switches(threads: list[tuple[int, int]]) -> tuple[int, int]:
    """Voluntary and involuntary context switches, summed."""
    vol = invol = 0
    for pid, tid in threads:
        try:
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:
            continue
        vol += int(re.search(r"voluntary_ctxt_switches:\s+(\d+)", status).group(1))
        invol += int(re.search(r"nonvoluntary_ctxt_switches:\s+(\d+)", status).group(1))
    return vol, invol


def load(t: topo.Topology, peer, client: str, count: int) -> None:
    host, port = peer.target(WEB)
    res = topo.run(topo.pinned(topo.LOAD_CPU, [sys.executable, "-c", client, host, str(port),
                                               str(count)]),
                   ns=t.client, timeout=300, check=False)
    if res.returncode != 0:
        raise topo.SetupError(f"{peer.name}: the load failed: "
                              f"{res.stderr.decode(errors='replace')[-500:]}")


def traced(t: topo.Topology, peer, client: str, count: int) -> dict[str, int]:
    """System calls of the counted threads during one load, by name."""
    out = t.workdir / f"strace-{peer.name}.txt"
    tids = [tid for _, tid in counted_threads(peer)]
    # Not -f: the threads counted start none per connection, and a thread
    # they start once (the Wasm epoch ticker) works by the clock.
    tracer = subprocess.Popen(["strace", "-c", "-o", str(out),
                               *[a for tid in tids for a in ("-p", str(tid))]],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    # strace prints nothing when it has attached; its attach is quick, and
    # a call missed at the start is one of thousands.
    time.sleep(1.0)
    try:
        load(t, peer, client, count)
    finally:
        time.sleep(0.3)
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=60)
    return strace_summary(out)


def measure(t: topo.Topology, peer, client: str, count: int) -> dict:
    threads = counted_threads(peer)
    before = switches(threads)
    load(t, peer, client, count)
    time.sleep(0.2)
    after = switches(threads)
    calls = traced(t, peer, client, count)
    return {
        "count": count,
        "syscalls": sum(calls.values()) / count,
        "by_call": {k: v / count for k, v in sorted(calls.items(), key=lambda kv: -kv[1])},
        "voluntary": (after[0] - before[0]) / count,
        "involuntary": (after[1] - before[1]) / count,
    }


def table(results: dict[str, dict]) -> str:
    lines = ["| peer | syscalls / conn | wakeups / conn | preempted / conn "
             "| syscalls / ka req | wakeups / ka req | preempted / ka req |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in results.items():
        c, k = r["conn"], r["keepalive"]
        lines.append(f"| {name} | {c['syscalls']:.1f} | {c['voluntary']:.2f} | "
                     f"{c['involuntary']:.2f} | {k['syscalls']:.1f} | {k['voluntary']:.2f} | "
                     f"{k['involuntary']:.2f} |")
    for name, r in results.items():
        for what in ("conn", "keepalive"):
            top = ", ".join(f"{call} {n:.2f}" for call, n in
                            list(r[what]["by_call"].items())[:10])
            lines.append(f"\n{name}, per {'connection' if what == 'conn' else 'request'}: {top}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.sybench.syscalls")
    ap.add_argument("peers", nargs="*", default=DEFAULT_PEERS)
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--bin", type=Path)
    ap.add_argument("--policies", type=Path, default=REPO / "target" / "policies")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    os.sched_setaffinity(0, {topo.LOAD_CPU})
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    peers = chosen_peers(ap, args)
    results: dict[str, dict] = {}
    topo.sweep_leftovers()
    with topo.Topology(Path(tempfile.mkdtemp(prefix="sybench-sys-"))) as t:
        cpu.register_namespaces(t.created)
        backends.write_manifests(t.workdir / "manifests")
        backends.start(t)
        for peer in peers:
            peer.start(t)
            try:
                results[peer.name] = {
                    "conn": measure(t, peer, CONNS_CLIENT, args.conns),
                    "keepalive": measure(t, peer, KEEPALIVE_CLIENT, args.requests),
                }
            finally:
                peer.stop()
            print(f"{peer.name}: done", file=sys.stderr)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
