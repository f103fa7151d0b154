"""Packet capture and conntrack events in the node namespace during a scale
run (`--capture DIR`): what happened to a probe connection that timed out
can then be read by its port afterwards (did its SYN reach the node, was it
reset, DNATed, sent out of the uplink, answered, retransmitted?).

Only connection openings and resets are captured (SYN, SYN-ACK, RST): a
probe connection every millisecond for a minute is then a few MB, and
tcpdump's CPU stays small next to the load it watches.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .topo import Proc, Topology

# `nft monitor` with the wall clock of each line: the element changes of
# every sync, to set against the packets' times. (nft prints no times.)
MONITOR = r"""
import subprocess, sys, time
nft = subprocess.Popen(["stdbuf", "-oL", "nft", "monitor"], stdout=subprocess.PIPE, text=True)
for line in nft.stdout:
    sys.stdout.write(f"{time.time():.6f} {line}")
    sys.stdout.flush()
"""


def start(t: Topology, directory: Path, vip: str, endpoint: str) -> list[Proc]:
    directory.mkdir(parents=True, exist_ok=True)
    flt = (f"(host {vip} or host {endpoint}) and tcp and "
           "(tcp[tcpflags] & (tcp-syn|tcp-rst) != 0)")
    procs = [
        # -U: each packet written as it comes, so a run that ends by a kill
        # still leaves a readable file; -B: room for bursts (KiB).
        t.spawn("capture-tcpdump", t.node, [
            "tcpdump", "-i", "any", "-nn", "-U", "-B", "16384", "-s", "128",
            "-w", str(directory / "node.pcap"), flt]),
        # Every event of the probe's flows (to the VIP; DNATed ones name
        # the endpoint in the reply tuple), with the kernel's timestamps.
        t.spawn("capture-conntrack", t.node, [
            "conntrack", "-E", "-o", "timestamp,id", "-b", str(64 << 20),
            "-p", "tcp", "--orig-dst", vip]),
        t.spawn("capture-nft-monitor", t.node, [sys.executable, "-c", MONITOR]),
    ]
    return procs


def stop(t: Topology, procs: list[Proc], directory: Path) -> None:
    """Stops the recorders and keeps their output (conntrack's events are
    its log) and the node's conntrack statistics (drops, insert failures)."""
    for p in procs:
        p.stop()
        (directory / f"{p.name}.log").write_bytes(p.log.read_bytes())
    stats = subprocess.run(["ip", "netns", "exec", t.node, "conntrack", "-S"],
                           capture_output=True, timeout=30, check=False)
    (directory / "conntrack-stats.txt").write_bytes(stats.stdout + stats.stderr)
