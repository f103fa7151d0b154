"""`bench/run --swaps N`: how soon a replaced policy module's table steers
new flows on the kernel datapath, and whether any connection fails meanwhile
(issue 17: ≤ 5 ms after the file is replaced, 0 failed connections over 1000
swaps under load).

Switchyard runs the bench topology with `dataplane.datapath: kernel` and a
policy directory holding `pinned.wasm`, a table policy that sends every new
flow to one endpoint (`pinned.wat`; two variants: the first endpoint, the
last). `swapprobe.py` runs in the client Pod: one process keeps a bounded
load of new connections to the web Service; another replaces `pinned.wasm`
N times, alternating the variants, and after each replacement opens probe
connections one after another until one reaches the endpoint the new
variant pins. A swap's time is bracketed by the probe that reached the new
endpoint (upper bound) and the probe before it (lower bound; 0 when the
first probe already did): the probe resolution is one probe connection.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import backends, topo
from .backends import WEB
from .peers import Switchyard

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
VARIANTS = {"first": "(i32.const 0)",
            "last": "(i32.sub (global.get $count) (i32.const 1))"}


def assemble(workdir: Path) -> dict[str, Path]:
    """The two pinned variants, by wat2wasm."""
    template = (HERE / "pinned.wat").read_text()
    out = {}
    for name, expr in VARIANTS.items():
        wat = workdir / f"pinned-{name}.wat"
        wat.write_text(template.replace("PICK", expr))
        wasm = workdir / f"pinned-{name}.wasm"
        subprocess.run(["wat2wasm", str(wat), "-o", str(wasm)], check=True, timeout=30)
        out[name] = wasm
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(swap_out: str, load: dict, swaps: int, seconds: float) -> str:
    rows = [json.loads(line) for line in swap_out.splitlines() if line.startswith("{")]
    summary = next(r for r in rows if r.get("summary"))
    pinned = next(r["pinned"] for r in rows if "pinned" in r)
    hi = [r["ms_hi"] for r in rows if "swap" in r]
    lo = [r["ms_lo"] for r in rows if "swap" in r]
    probes = [r["probes"] for r in rows if "swap" in r]
    lines = [
        f"swaps: {swaps} in {seconds:.1f} s (pinned endpoints: {pinned['first']} / "
        f"{pinned['last']}); measured {summary['measured']}, probe failures "
        f"{summary['probe_failures']}, not effective within 2 s: {summary['timeouts']}",
    ]
    if hi:
        lines += [
            "time from the file replacement to the first new flow on the new table (ms, "
            "upper bound = the deciding probe's send time; lower = the probe before it):",
            f"  upper: median {statistics.median(hi):.2f}, p90 {percentile(hi, 0.9):.2f}, "
            f"p99 {percentile(hi, 0.99):.2f}, max {max(hi):.2f}",
            f"  lower: median {statistics.median(lo):.2f}, p99 {percentile(lo, 0.99):.2f}",
            f"  probes per swap: median {statistics.median(probes):.0f}, max {max(probes)}",
        ]
    lines.append(f"load (new connections, one request each): {load['ok']} ok, "
                 f"{load['failed']} failed {load['errors'][:3] if load['failed'] else ''}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="bench/run --swaps")
    ap.add_argument("--swaps", type=int, default=1000)
    ap.add_argument("--load-workers", type=int, default=4,
                    help="client threads opening new connections during the swaps")
    ap.add_argument("--bin", type=Path,
                    default=Path(os.environ.get("SWITCHYARD_BIN",
                                                REPO / "target" / "release" / "switchyard")))
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument("--log-level", default="warn",
                    help="Switchyard's (debug logs each sync's timings: read, bind, publish, "
                         "nftables)")
    args = ap.parse_args(argv)
    os.sched_setaffinity(0, {topo.LOAD_CPU})
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    topo.sweep_leftovers()
    workdir = Path(tempfile.mkdtemp(prefix="sybench-swaps-"))
    with topo.Topology(workdir) as t:
        backends.write_manifests(t.workdir / "manifests")
        backends.start(t)
        variants = assemble(t.workdir)
        policies = t.workdir / "policies"
        policies.mkdir()
        policy_file = policies / "pinned.wasm"
        policy_file.write_bytes(variants["first"].read_bytes())
        peer = Switchyard(args.bin, "uring", policy="pinned", policies_dir=policies,
                          datapath="kernel", name="switchyard-kernel")
        base_argv = peer.argv
        peer.argv = lambda manifests: [args.log_level if a == "warn" else a
                                       for a in base_argv(manifests)]
        peer.start(t)
        try:
            stop = t.workdir / "stop-load"
            # Bounded: stops when the swaps are done, or after 10 min.
            loader = t.spawn("swap-load", t.client, topo.pinned(topo.LOAD_CPU, [
                sys.executable, str(HERE / "swapprobe.py"), "load", WEB.vip, str(WEB.port),
                str(stop), "600", str(args.load_workers)]))
            start = time.monotonic()
            res = topo.run(topo.pinned(topo.LOAD_CPU, [
                sys.executable, str(HERE / "swapprobe.py"), "swap", WEB.vip, str(WEB.port),
                str(policy_file), str(variants["first"]), str(variants["last"]),
                str(args.swaps)]), ns=t.client, timeout=600, check=False)
            seconds = time.monotonic() - start
            stop.write_text("")
            topo.wait_until(lambda: not loader.alive(), "the load to stop", timeout=30)
            out = res.stdout.decode()
            if res.returncode != 0:
                print(out, res.stderr.decode(errors="replace"), file=sys.stderr)
                return 1
            load = json.loads(loader.output().strip().splitlines()[-1])
            print(summarize(out, load, args.swaps, seconds))
            if args.keep:
                print(f"work dir: {t.workdir}")
        finally:
            peer.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
