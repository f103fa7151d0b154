"""Close order (issue 19): `python3 -m bench.sybench.closeorder [peer ...]`
(root), or `bench/run --close-order`.

The client Pod at the kernel's defaults, as a Pod's are (a new network
namespace's ephemeral range 32768-60999 and `tcp_tw_reuse=2`, reuse for
loopback only), runs `wrk -t1 -c32 -H 'Connection: close'` for three rounds
per peer. The backends (nginx) close first. Where the TIME_WAIT lands after
round 1 (client, node, backend Pods), and whether the rate holds over the
rounds, says whether a peer keeps the close order of a direct connection: a
client made the active closer holds one TIME_WAIT per connection and runs
out of ports to the Service after 28k of them. The other workloads keep
`tcp_tw_reuse=1` in the client (bench/sybench/topo.py), so that one peer's
TIME_WAIT does not cap the next one's rate; here every TIME_WAIT is
destroyed (`ss -K`) before each peer starts.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

from . import backends, cpu, topo
from .main import chosen_peers
from .workloads import Settings, _wrk

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PEERS = ["switchyard-uring", "switchyard-epoll", "haproxy", "nginx-stream",
                 "kernel-dnat"]
# What a new network namespace starts with (kernel defaults).
POD_SYSCTLS = ("net.ipv4.ip_local_port_range=32768 60999", "net.ipv4.tcp_tw_reuse=2")
ROUNDS = 3


def time_wait(ns: str) -> int:
    out = topo.run(["ss", "-Htan", "state", "time-wait"], ns=ns).stdout.decode()
    return sum(1 for line in out.splitlines() if line.strip())


def clear_time_wait(t: topo.Topology) -> None:
    """Destroys every TIME_WAIT of the topology, and checks that none is left
    in the client (its ports are what this workload is about)."""
    for ns in (t.node, *t.pods.values()):
        topo.run(["ss", "-K", "-Htan", "state", "time-wait"], ns=ns, check=False)
    topo.wait_until(lambda: time_wait(t.client) == 0,
                    "the client's TIME_WAIT sockets to go", timeout=70)


def one_peer(t: topo.Topology, peer, s: Settings) -> dict:
    clear_time_wait(t)
    rounds = []
    after_first: dict[str, int] = {}
    for i in range(ROUNDS):
        w, _ = _wrk(t, peer, s, s.conns, close=True)
        rounds.append({"conn_per_s": w["rate"], "requests": w["requests"],
                       "errors": w["errors"]})
        if i == 0:
            after_first = {"client": time_wait(t.client), "node": time_wait(t.node),
                           "backends": sum(time_wait(ns) for name, ns in t.pods.items()
                                           if ns != t.client)}
    return {"rounds": rounds, "time_wait_after_round_1": after_first}


def table(results: dict[str, dict]) -> str:
    lines = ["| peer | round 1 conn/s | round 2 | round 3 | round 3 / round 1 "
             "| TIME_WAIT after round 1: client | node | backend Pods | errors |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in results.items():
        rates = [x["conn_per_s"] for x in r["rounds"]]
        tw = r["time_wait_after_round_1"]
        errors = sum(x["errors"] for x in r["rounds"])
        lines.append(f"| {name} | {rates[0]:.0f} | {rates[1]:.0f} | {rates[2]:.0f} | "
                     f"{rates[2] / rates[0]:.2f} | {tw['client']} | {tw['node']} | "
                     f"{tw['backends']} | {errors} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.sybench.closeorder")
    ap.add_argument("peers", nargs="*", default=DEFAULT_PEERS)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per round")
    ap.add_argument("--bin", type=Path)
    ap.add_argument("--policies", type=Path, default=REPO / "target" / "policies")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    os.sched_setaffinity(0, {topo.LOAD_CPU})
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    peers = chosen_peers(ap, args)
    s = Settings(duration=args.duration)
    results: dict[str, dict] = {}
    topo.sweep_leftovers()
    with topo.Topology(Path(tempfile.mkdtemp(prefix="sybench-close-"))) as t:
        cpu.register_namespaces(t.created)
        t.sysctl(t.client, *POD_SYSCTLS)
        backends.write_manifests(t.workdir / "manifests")
        backends.start(t)
        for peer in peers:
            peer.start(t)
            try:
                results[peer.name] = one_peer(t, peer, s)
            finally:
                peer.stop()
            print(f"{peer.name}: done", file=sys.stderr)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
