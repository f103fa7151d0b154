"""Packet capture and conntrack events in the node namespace during a scale
run (`--capture DIR`): what happened to a probe connection that timed out
can then be read by its port afterwards (did its SYN reach the node, was it
reset, DNATed, sent out of the uplink, answered, retransmitted?).

Only connection openings and resets are captured (SYN, SYN-ACK, RST): a
probe connection every millisecond for a minute is then a few MB, and
tcpdump's CPU stays small next to the load it watches.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .topo import Proc, Topology

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
    ]
    return procs


def widen(t: Topology, vip: str, rules: int) -> None:
    """Makes the probe's SYN spend longer between our raw prerouting chain
    (priority -300) and the NAT hook (-100): a table of the bench's own in
    the node namespace whose chain at -250 runs `rules` rules that never
    match over each SYN to the VIP (everything else leaves it at its first
    rule). A sync that commits while a SYN is between the two hooks is
    then that much more likely: a way to see in a few runs what happens
    in one of many without it."""
    lines = ["table inet sybench_widen {", "  chain hold {",
             "    type filter hook prerouting priority -250; policy accept;",
             f"    ip daddr != {vip} accept", "    tcp flags & (syn | ack) != syn accept"]
    lines += [f"    meta mark 0x{0x5e000000 + i:x} accept" for i in range(rules)]
    lines += ["  }", "}"]
    subprocess.run(["ip", "netns", "exec", t.node, "nft", "-f", "-"], check=True, timeout=60,
                   input="\n".join(lines).encode())


def stop(t: Topology, procs: list[Proc], directory: Path) -> None:
    """Stops the recorders and keeps their output (conntrack's events are
    its log) and the node's conntrack statistics (drops, insert failures)."""
    for p in procs:
        p.stop()
        (directory / f"{p.name}.log").write_bytes(p.log.read_bytes())
    stats = subprocess.run(["ip", "netns", "exec", t.node, "conntrack", "-S"],
                           capture_output=True, timeout=30, check=False)
    (directory / "conntrack-stats.txt").write_bytes(stats.stdout + stats.stderr)


def untranslated_syns(directory: Path, vip: str) -> list[str]:
    """SYNs to the VIP the node sent on untranslated (tcpdump's "Out"
    direction with the VIP still the destination): neither DNATed to an
    endpoint nor refused; the client waits for a retransmit."""
    out = subprocess.run(["tcpdump", "-r", str(directory / "node.pcap"), "-nn", "-tt",
                          f"dst host {vip} and tcp[tcpflags] & tcp-syn != 0"],
                         capture_output=True, text=True, timeout=120, check=False).stdout
    return [line for line in out.splitlines() if " Out " in line]


def read(result: Path, directory: Path, vip: str) -> str:
    """What the recorders saw of each probe connection that timed out: its
    packets and its conntrack events (`python3 -m bench.sybench.capture
    RESULT.json DIR`; when the ruleset changed: Switchyard's log in DIR)."""
    rec = json.loads(result.read_text())
    lines = [f"probe timeouts: {rec.get('probe_timeouts')}; SYNs to {vip} sent on "
             f"untranslated: {len(untranslated_syns(directory, vip))}"]
    events = (directory / "capture-conntrack.log").read_text(errors="replace").splitlines()
    for i, change in enumerate(rec.get("per_change", [])):
        for stall in change.get("probe_stalls", []):
            port, began = stall["port"], stall.get("wall", 0.0)
            lines.append(f"\nchange {i} ({change['kind']}), written at "
                         f"{change['wrote_wall']:.6f}: {stall['step']} from port {port}, "
                         f"began {began:.6f}")
            lines += subprocess.run(
                ["tcpdump", "-r", str(directory / "node.pcap"), "-nn", "-tt", f"port {port}"],
                capture_output=True, text=True, timeout=120, check=False).stdout.splitlines()
            lines += [f"conntrack {e}" for e in events
                      if f"sport={port} " in e or f"dport={port} " in e]
    return "\n".join(lines)


if __name__ == "__main__":
    print(read(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3
               else "10.96.0.99"))
