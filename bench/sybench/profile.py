"""Syscalls per connection: `python3 -m bench.sybench.profile [peer ...]` (root).

Builds the bench topology, and for each peer runs the conn/s workload for a
fixed number of connections while `strace -c -f` counts the peer's system
calls (strace slows the peer down, so only the counts mean anything), then
prints calls per connection, busiest first. Optionally `--perf` records
`perf stat` of the proxy core over an unprofiled run instead.
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

from . import backends, cpu, kareas, topo
from .main import make_peers, pick_binary
from .workloads import LUA, Settings
from .backends import WEB

REPO = Path(__file__).resolve().parents[2]


def worker_tids(peer) -> list[int]:
    """Switchyard's data-plane threads (sy-worker-N), traced on their own to
    separate the data path from background threads."""
    tids = []
    for pid in peer.pids():
        for tid in os.listdir(f"/proc/{pid}/task"):
            comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            if comm.startswith("sy-worker"):
                tids.append(int(tid))
    return tids


def strace_summary(path: Path) -> dict[str, int]:
    """Calls per syscall from the table `strace -c` writes."""
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
        if m and m.group(2) != "total":
            counts[m.group(2)] = int(m.group(1))
    return counts


def strace_counts(t: topo.Topology, peer, conns: int,
                  tids: list[int] | None = None) -> tuple[int, dict[str, int]]:
    pids = tids or peer.pids()
    out = t.workdir / f"strace-{peer.name}.txt"
    follow = [] if tids else ["-f"]
    tracer = subprocess.Popen(["strace", "-c", *follow, "-o", str(out),
                               *[a for p in pids for a in ("-p", str(p))]],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    time.sleep(1.0)
    host, port = peer.target(WEB)
    # A fixed count of connections: wrk's -c connections each make requests
    # until -d ends, so use curl-free Python: open/request/close `conns` times.
    script = ("import socket\n"
              f"for i in range({conns}):\n"
              f"    s=socket.create_connection(('{host}',{port}),timeout=5)\n"
              "    s.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\n"
              "    while s.recv(4096): pass\n"
              "    s.close()\n")
    topo.run(topo.pinned(topo.LOAD_CPU, [sys.executable, "-c", script]), ns=t.client,
             timeout=120)
    time.sleep(0.5)
    tracer.send_signal(signal.SIGINT)
    tracer.wait(timeout=30)
    return conns, strace_summary(out)


def connrate_load(t: topo.Topology, host: str, port: int, seconds: float,
                  keepalive: bool = False) -> int:
    """The conn/s workload (one request per connection) from the client Pod
    for `seconds`, or the keep-alive one; returns the requests completed."""
    close = [] if keepalive else ["-H", "Connection: close"]
    res = topo.run(topo.pinned(topo.LOAD_CPU, [
        "wrk", "-t1", "-c32", f"-d{seconds:g}s", *close, "-s", str(LUA),
        f"http://{host}:{port}/"]), ns=t.client, timeout=seconds + 30)
    m = re.search(r'"requests":(\d+)', res.stdout.decode())
    return int(m.group(1)) if m else 0


def bulk_load(t: topo.Topology, host: str, port: int, seconds: float) -> int:
    """The bulk workload (one iperf3 stream, client -> server) for `seconds`;
    returns the MB received (the unit of --bulk profiles)."""
    res = topo.run(topo.pinned(topo.LOAD_CPU, [
        "iperf3", "-c", host, "-p", str(port), "-t", f"{seconds:g}", "-J",
        "--connect-timeout", "3000"]), ns=t.client, timeout=seconds + 30)
    try:
        recv = json.loads(res.stdout.decode(errors="replace"))["end"]["sum_received"]
    except (ValueError, KeyError):
        return 0
    print(f"  bulk: {recv['bits_per_second'] / 1e9:.2f} Gbit/s", flush=True)
    return int(recv["bytes"] / 1e6)


def load(t: topo.Topology, peer, seconds: float, keepalive: bool = False,
         bulk: bool = False) -> int:
    """The profiled load: conn/s, keep-alive, or (bulk) one iperf3 stream."""
    if bulk:
        return bulk_load(t, *peer.target(backends.IPERF), seconds)
    return connrate_load(t, *peer.target(WEB), seconds, keepalive)


def perf_stat(t: topo.Topology, peer, seconds: float) -> str:
    host, port = peer.target(WEB)
    perf = subprocess.Popen(["perf", "stat", "-C", str(topo.PROXY_CPU), "-e",
                             "task-clock,context-switches,cpu-migrations,instructions,cycles",
                             "--", "sleep", f"{seconds + 1:g}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    conns = connrate_load(t, host, port, seconds)
    text = perf.communicate(timeout=seconds + 30)[0].decode(errors="replace")
    return f"connections: {conns}\n{text}"


def perf_record(t: topo.Topology, peer, seconds: float, cpu_no: int, top: int = 45,
                callers: int = 4, keepalive: bool = False, bulk: bool = False) -> str:
    """Where the proxy core's time goes under the conn/s load: `perf record`
    of that core (kernel and user, every process on it), as the hottest
    symbols with their share of samples and the connections completed."""
    host, port = peer.target(WEB)
    data = t.workdir / f"perf-{peer.name}-cpu{cpu_no}.data"
    cpus = ["-a"] if cpu_no < 0 else ["-C", str(cpu_no)]
    perf = subprocess.Popen(["perf", "record", "-q", *cpus, "-F", "4999", "-g",
                             "-o", str(data), "--", "sleep", f"{seconds + 1:g}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    conns = load(t, peer, seconds, keepalive, bulk)
    perf.wait(timeout=seconds + 30)
    def report(*extra: str) -> str:
        return subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children",
                               *extra], capture_output=True, timeout=300
                              ).stdout.decode(errors="replace")

    flat = [line for line in report("--sort", "sym", "-g", "none").splitlines()
            if re.match(r"\s+\d+\.\d+%", line)]
    what = "MB" if bulk else "keep-alive requests" if keepalive else "connections"
    out = [f"{peer.name}: {conns} {what} in {seconds:g} s", *flat[:top]]
    # Where the hottest kernel symbols are called from: locks and wakeups
    # say nothing by themselves.
    for line in flat[:callers]:
        sym = line.split("]", 1)[1].strip()
        graph = report("--sort", "sym", "-S", sym, "-g", "caller,2,callee,function,percent",
                       "--percent-limit", "1")
        out.append(f"\n-- callers of {sym}")
        out.extend(g for g in graph.splitlines()
                   if g.strip() and not g.startswith("#"))
    return "\n".join(out)


def record_areas(t: topo.Topology, peer, seconds: float, keepalive: bool,
                 hz: int = 2999, bulk: bool = False) -> tuple[int, float, Path, set[int]]:
    """`perf record -e cpu-clock -g` of the proxy core under the conn/s (or
    keep-alive) load: (connections or requests, sample rate, perf.data),
    for `kareas.table`. cpu-clock samples by time, idle included, so a
    count of samples is a share of the core's seconds."""
    host, port = peer.target(WEB)
    kind = "bulk" if bulk else "ka" if keepalive else "conn"
    data = t.workdir / f"areas-{peer.name}-{kind}.data"
    perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-C",
                             str(topo.PROXY_CPU), "-F", str(hz), "-g", "-o", str(data),
                             "--", "sleep", f"{seconds + 1:g}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    time.sleep(0.5)
    units = load(t, peer, seconds, keepalive, bulk)
    perf.wait(timeout=seconds + 30)
    tids = {int(t) for pid in peer.pids() for t in os.listdir(f"/proc/{pid}/task")}
    return units, float(hz), data, tids


def nstat_counters(ns: str) -> dict[str, int]:
    out = topo.run(["nstat", "-asz", "--json"], ns=ns).stdout.decode()
    return {k: int(v) for k, v in json.loads(out).get("kernel", {}).items()}


def kernel_counters(t: topo.Topology, peer, seconds: float, bulk: bool = False) -> str:
    """The kernel's TCP/IP counters (nstat) per namespace under the conn/s
    load, per connection: retransmits, listen overflows, TIME_WAIT recycling
    and the like say why connections wait when no core is busy."""
    host, port = peer.target(WEB)
    spaces = {"node": t.node, "client": t.client, **{n: ns for n, ns in t.pods.items()
                                                     if ns != t.client}}
    before = {name: nstat_counters(ns) for name, ns in spaces.items()}
    conns = load(t, peer, seconds, bulk=bulk)
    what = "MB" if bulk else "connections"
    lines = [f"{peer.name}: {conns} {what} in {seconds:g} s; counters per 1000 {what}"]
    for name, ns in spaces.items():
        after = nstat_counters(ns)
        delta = {k: v - before[name].get(k, 0) for k, v in after.items()}
        shown = [f"{k}={v * 1000 / max(conns, 1):.1f}" for k, v in sorted(delta.items())
                 if v and not k.startswith(("Ip6", "Icmp6", "Udp6"))]
        lines.append(f"  {name}: " + " ".join(shown))
    return "\n".join(lines)


def thread_ticks(pids: list[int]) -> dict[str, int]:
    """utime + stime in clock ticks per thread name (threads of one name summed)."""
    out: dict[str, int] = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            out[comm] = out.get(comm, 0) + int(fields[11]) + int(fields[12])
    return out


def thread_cpu(t: topo.Topology, peer, seconds: float) -> str:
    """CPU per thread of the peer under the conn/s load: which thread spends
    what per connection (the data-plane worker should be nearly all of it)."""
    host, port = peer.target(WEB)
    before = thread_ticks(peer.pids())
    conns = connrate_load(t, host, port, seconds)
    after = thread_ticks(peer.pids())
    hz = os.sysconf("SC_CLK_TCK")
    lines = [f"{peer.name}: {conns} connections in {seconds:g} s; CPU per thread"]
    for comm in sorted(after, key=lambda c: before.get(c, 0) - after[c]):
        ticks = after[comm] - before.get(comm, 0)
        if ticks:
            us = ticks / hz * 1e6 / max(conns, 1)
            lines.append(f"  {comm:<18} {ticks / hz * 1000:8.0f} ms  {us:7.1f} µs/conn")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.sybench.profile")
    ap.add_argument("peers", nargs="*", default=["switchyard-uring", "switchyard-epoll",
                                                  "haproxy"])
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--perf", type=float, default=0, help="also perf stat for this many seconds")
    ap.add_argument("--threads", type=float, default=0,
                    help="CPU per thread under this many seconds of conn/s load (no strace)")
    ap.add_argument("--record", type=float, default=0,
                    help="perf record the proxy core for this many seconds of conn/s load "
                         "and print the hottest symbols (no strace)")
    ap.add_argument("--record-cpu", type=int, default=topo.PROXY_CPU,
                    help="the core --record samples (default: the proxy's; the load "
                         "core shows what a peer costs the client and backends; -1: both)")
    ap.add_argument("--areas", type=float, default=0,
                    help="perf record the proxy core for this many seconds of conn/s load "
                         "(and keep-alive with --keepalive) and split its time by kernel "
                         "area per connection / request, peers side by side (kareas.py)")
    ap.add_argument("--keepalive", action="store_true",
                    help="--record under the keep-alive load instead of conn/s")
    ap.add_argument("--bulk", action="store_true",
                    help="--record / --areas / --nstat under one iperf3 stream instead (per MB)")
    ap.add_argument("--nstat", type=float, default=0,
                    help="kernel TCP/IP counters per connection over this many seconds of "
                         "conn/s load (no strace)")
    ap.add_argument("--bin", type=Path)
    ap.add_argument("--base-bin", type=Path,
                    help="a second binary: the peers switchyard-uring-base, "
                         "switchyard-epoll-base (before a change)")
    ap.add_argument("--policies", type=Path, default=REPO / "target" / "policies")
    args = ap.parse_args(argv)
    args.smoke = False
    os.sched_setaffinity(0, {topo.LOAD_CPU})
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    base = args.base_bin.resolve() if args.base_bin else None
    peers = [p for p in make_peers(pick_binary(args, "full"), args.policies, base)
             if p.name in args.peers]
    topo.sweep_leftovers()
    areas: dict[str, dict[str, tuple[int, float, Path, set[int]]]] = {"conn": {}, "ka": {},
                                                                       "bulk": {}}
    with topo.Topology(Path(tempfile.mkdtemp(prefix="sybench-prof-"))) as t:
        cpu.register_namespaces(t.created)
        backends.write_manifests(t.workdir / "manifests")
        backends.start(t)
        for peer in peers:
            peer.start(t)
            try:
                if args.threads:
                    print(thread_cpu(t, peer, args.threads))
                    continue
                if args.nstat:
                    print(kernel_counters(t, peer, args.nstat, args.bulk))
                    continue
                if args.areas:
                    if args.bulk:
                        areas["bulk"][peer.name] = record_areas(t, peer, args.areas, False,
                                                                bulk=True)
                        continue
                    areas["conn"][peer.name] = record_areas(t, peer, args.areas, False)
                    if args.keepalive:
                        areas["ka"][peer.name] = record_areas(t, peer, args.areas, True)
                    continue
                if args.record:
                    print(perf_record(t, peer, args.record, args.record_cpu,
                                      keepalive=args.keepalive, bulk=args.bulk))
                    continue
                runs = [("all threads", None)]
                if worker_tids(peer):
                    runs.append(("data-plane worker thread only", worker_tids(peer)))
                for what, tids in runs:
                    n, counts = strace_counts(t, peer, args.conns, tids)
                    total = sum(counts.values())
                    print(f"\n{peer.name} ({what}): {total / n:.1f} syscalls per connection")
                    for name, c in sorted(counts.items(), key=lambda kv: -kv[1])[:14]:
                        print(f"  {name:<18} {c / n:6.2f}")
                if args.perf:
                    print(perf_stat(t, peer, args.perf))
            finally:
                peer.stop()
        for kind, runs in areas.items():
            if runs:
                what = {"conn": "connection", "ka": "keep-alive request", "bulk": "MB"}[kind]
                print(f"\n## proxy core per {what}\n")
                print(kareas.table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
