"""bench/run's engine: builds the topology, runs every peer through every
workload in interleaved rounds, and records medians and ratios."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from . import backends, cpu, report, topo
from .peers import Direct, HAProxy, KernelDnat, NginxHttp, NginxStream, Peer, Switchyard
from .workloads import WORKLOADS, Settings

REPO = Path(__file__).resolve().parents[2]
WORKLOAD_ORDER = ("idlecpu", "bulk", "connrate", "keepalive", "latency", "dns", "idle",
                  "l7keepalive")
MODES = {
    "full": dict(rounds=3, settings=Settings(duration=5, bulk_seconds=5, conns=32,
                                             idle_conns=9000, warmup=1)),
    "quick": dict(rounds=1, settings=Settings(duration=3, bulk_seconds=3, conns=32,
                                              idle_conns=2000, warmup=1, quiet_timeout=20,
                                              retries=1, retry_budget=180)),
    "smoke": dict(rounds=1, settings=Settings(duration=1, bulk_seconds=1, conns=8,
                                              idle_conns=50, warmup=0, quiet_timeout=0,
                                              idle_cpu_seconds=1,
                                              retries=0)),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="1 round, short durations")
    g.add_argument("--smoke", action="store_true", help="seconds; proves the harness runs")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default: per mode)")
    ap.add_argument("--duration", type=float, help="seconds per rate workload")
    ap.add_argument("--peers", help="comma-separated subset of peer names")
    ap.add_argument("--workloads", help=f"comma-separated subset of {','.join(WORKLOAD_ORDER)}")
    ap.add_argument("--idle-conns", type=int, help="connections held by the RSS workload")
    ap.add_argument("--bin", type=Path, help="switchyard binary (default: $SWITCHYARD_BIN, "
                    "else target/release/switchyard; --smoke prefers target/debug)")
    ap.add_argument("--policies", type=Path, default=REPO / "target" / "policies",
                    help="directory with round-robin.wasm for the Wasm row")
    ap.add_argument("--out", type=Path, help="results directory (default bench/results; "
                    "--smoke: a temporary directory)")
    ap.add_argument("--name", help="short name in the results file name")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument("--base-bin", type=Path,
                    help="a second switchyard binary, run as the peers switchyard-kernel-base, "
                         "switchyard-uring-base and switchyard-epoll-base "
                         "(the kernel datapath before a change, in the same interleaved rounds)")
    ap.add_argument("--note", action="append", default=[],
                    help="a line for the results file (how the binary was built, ...)")
    return ap.parse_args(argv)


def pick_binary(args: argparse.Namespace, mode: str) -> Path:
    if args.bin:
        return args.bin.resolve()
    if os.environ.get("SWITCHYARD_BIN"):
        return Path(os.environ["SWITCHYARD_BIN"]).resolve()
    release, debug = REPO / "target/release/switchyard", REPO / "target/debug/switchyard"
    if mode == "smoke" and debug.is_file():
        return debug
    return release if release.is_file() else debug


def chosen_peers(ap: argparse.ArgumentParser, args: argparse.Namespace) -> list[Peer]:
    """The peers named in `args.peers` (the release binary by default), or
    an argument error naming the unknown ones."""
    peers = [p for p in make_peers(pick_binary(args, "full"), args.policies)
             if p.name in args.peers]
    unknown = set(args.peers) - {p.name for p in peers}
    if unknown:
        ap.error(f"unknown peers: {sorted(unknown)}")
    return peers


# The kernel datapath holds no connection of its own: no idle-RSS workload
# (it would wait for upstream connections that never come), as kernel-dnat.
KERNEL_PATH_WORKLOADS = ("idlecpu", "bulk", "connrate", "keepalive", "latency", "dns")


def make_peers(binary: Path, policies: Path, base: Path | None = None) -> list[Peer]:
    # The binary before a change, in the same interleaved rounds: the
    # kernel datapath, and the ring and epoll proxies (their CPU per
    # connection moves by less than a loaded machine's drift between runs).
    extra = [Switchyard(base, "uring", datapath="kernel", name="switchyard-kernel-base",
                        workloads=KERNEL_PATH_WORKLOADS),
             Switchyard(base, "uring", name="switchyard-uring-base",
                        workloads=("idlecpu", "bulk", "connrate", "keepalive", "latency",
                                   "idle")),
             Switchyard(base, "epoll", name="switchyard-epoll-base",
                        workloads=("idlecpu", "bulk", "connrate", "keepalive", "latency"))] if base else []
    return [
        Switchyard(binary, "uring"),
        Switchyard(binary, "epoll"),
        Switchyard(binary, "uring", engine="tokio-uring",
                   workloads=("idlecpu", "connrate", "keepalive")),
        Switchyard(binary, "uring", policy="round-robin", policies_dir=policies,
                   workloads=("idlecpu", "connrate", "keepalive")),
        Switchyard(binary, "uring", transparent=False,
                   workloads=("idlecpu", "connrate", "keepalive")),
        HAProxy(),
        HAProxy(splice=True),
        NginxStream(),
        NginxHttp(),
        Switchyard(binary, "uring", datapath="kernel", workloads=KERNEL_PATH_WORKLOADS),
        Switchyard(binary, "uring", datapath="kernel", name="switchyard-kernel-shared",
                   workloads=("connrate", "keepalive"), manifests=backends.SHARED_MANIFESTS),
        Switchyard(binary, "uring", datapath="kernel", name="switchyard-kernel-only",
                   workloads=KERNEL_PATH_WORKLOADS, manifests=backends.KERNEL_ONLY_MANIFESTS),
        *extra,
        KernelDnat(),
        KernelDnat(full=False),
        Direct(),
    ]


def machine() -> dict:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    osname = "unknown"
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                osname = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return {"cpu_model": model, "cores": os.cpu_count(), "kernel": platform.release(),
            "mem_gib": mem_kib / 2**20, "os": osname, "loadavg": os.getloadavg()}


def versions(binary: Path) -> dict:
    def first_line(argv: list[str]) -> str:
        try:
            p = subprocess.run(argv, capture_output=True, timeout=10)
            return (p.stdout or p.stderr).decode(errors="replace").strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "unavailable"
    git = first_line(["git", "-C", str(REPO), "describe", "--always", "--dirty"])
    return {"switchyard_binary": str(binary), "git": git,
            "haproxy": first_line(["haproxy", "-v"]), "nginx": first_line(["nginx", "-v"]),
            "wrk": first_line(["wrk", "-v"]), "iperf3": first_line(["iperf3", "-v"]),
            "dnsperf": first_line(["dnsperf", "-h"])}


BUSY_NAMES = ("rustc", "cargo", "cc1", "ld", "clang", "gcc", "cc", "wasm-opt", "pytest")


def interference() -> set[str]:
    """Names of build/test processes running right now (they share our 2 cores)."""
    seen = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                name = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if name in BUSY_NAMES:
                seen.add(name)
    return seen


def method(s: Settings, rounds: int) -> list[str]:
    return [
        f"idle CPU: the proxy core's busy share over {s.idle_cpu_seconds:g} s with no load, "
        "right after the peer is ready.",
        f"{rounds} round(s); each round starts every peer once (order rotated per round), runs "
        "its workloads, stops it; medians over rounds.",
        f"bulk: `iperf3 -c VIP -p 5201 -t {s.bulk_seconds:g} -O {s.warmup:g}` (one stream, "
        "client → server, 128 KiB writes); Gbit/s received.",
        f"conn/s: `wrk -t1 -c{s.conns} -d{s.duration:g}s -H 'Connection: close'` against a "
        "3-Pod Service of nginx returning a 3-byte body; one request per connection.",
        f"keep-alive: `wrk -t1 -c{s.conns} -d{s.duration:g}s` (saturating); latency: "
        f"`wrk -t1 -c1 -d{s.duration:g}s` (one request in flight, no queueing), percentiles "
        "from wrk's done() hook.",
        f"DNS: `dnsperf -c 4 -q 64 -l {s.duration:g}` through a UDP ClusterIP to dnsmasq "
        "(HAProxy has no UDP proxying: not measured).",
        f"idle RSS: a Python client opens {s.idle_conns} TCP connections through the peer and "
        "holds them without sending a byte; once the peer's upstream connections are "
        "established, VmRSS of the peer's processes (the fd hard limit here, 20,000 per "
        "process, keeps a 2-fd-per-connection proxy under 10,000).",
        "CPU: busy time of the proxy core (wall time minus idle and iowait from /proc/stat) "
        "sampled just before and after each load; divided by connections (or requests, "
        "queries, GB) completed. 'both cores' adds the load core (client, backends and the "
        "kernel work done there, which is where kernel DNAT spends its time).",
        "Topology: node namespace with bridge br0 (10.244.1.1/24), 3 backend Pods + 1 client Pod "
        "as routed /32s, default route to an 'ext' namespace that routes nothing. "
        "HAProxy and nginx bind the VIPs, held as addresses on the node's lo (as IPVS mode holds them on kube-ipvs0); "
        "Switchyard gets them by TPROXY; kernel DNAT by its nftables table `ip sybench_dnat` "
        "in the node namespace (routed Pods: replies return through the node, so only "
        "hairpin and off-cluster sources are masqueraded, as kube-proxy does).",
        "Namespace sysctls: ip_local_port_range 10000-65000 (10249, 10256 and 15001 reserved), tcp_tw_reuse=1, somaxconn 8192.",
    ]


class Interrupted(BaseException):
    pass


def _on_signal(signum, _frame):
    raise Interrupted(f"signal {signum}")


FORKS_PER_S = 10.0  # more process starts than that elsewhere: a test suite is running


def disturbed(res: dict, s: Settings) -> bool:
    return res.get("foreign_cores", 0) > s.disturbed or res.get("forks_per_s", 0) > FORKS_PER_S


def measure(t: topo.Topology, peer: Peer, wl: str, s: Settings) -> dict:
    """One workload on one peer; measured again (bounded by the run's retry
    budget) when other processes on the machine disturbed it."""
    for attempt in range(s.retries + 1):
        try:
            res = WORKLOADS[wl](t, peer, s)
        except Exception as exc:  # noqa: BLE001 - recorded with the results
            res = {"error": str(exc)[:2000]}
        if not disturbed(res, s) or attempt == s.retries or s.retry_budget <= 0:
            break
        print(f"  {wl}: other processes used {res['foreign_cores']:.2f} cores "
              f"({res.get('foreign_names', '')}), {res.get('forks_per_s', 0):.0f} process "
              "starts/s; waiting for quiet, measuring again", flush=True)
        t1 = time.monotonic()
        cpu.wait_quiet(timeout=min(s.quiet_timeout, s.retry_budget))
        s.retry_budget -= time.monotonic() - t1 + s.duration
    res["attempts"] = attempt + 1
    if disturbed(res, s):
        res["disturbed"] = 1
    if peer.proc is not None and not peer.proc.alive():
        res = {"error": f"{peer.name} exited during {wl}: {peer.proc.output()}"}
    return res


def run_peer(t: topo.Topology, peer: Peer, workloads: list[str], s: Settings, rnd: int,
             raw: dict, errors: list[str], notes: list[str]) -> None:
    where = f"round {rnd + 1} {peer.name}"
    try:
        peer.start(t)
    except Exception as exc:  # noqa: BLE001 - record and go on
        errors.append(f"{where}: start failed: {exc}")
        print(f"  start failed: {exc}", flush=True)
        peer.stop()
        return
    try:
        for wl in (w for w in workloads if peer.supports(w)):
            t0 = time.monotonic()
            res = measure(t, peer, wl, s)
            raw.setdefault(peer.name, {}).setdefault(wl, []).append(res)
            if "error" in res:
                errors.append(f"{where} {wl}: {res['error'][:500]}")
            elif res.get("disturbed"):
                notes.append(f"{where} {wl}: other processes used {res['foreign_cores']:.2f} "
                             f"cores during the measurement ({res.get('foreign_names', '')}; "
                             f"{res.get('forks_per_s', 0):.0f} process starts/s)")
            print(f"  {time.strftime('%H:%M:%S')} {wl:<9} {time.monotonic() - t0:5.1f}s  "
                  + summary(res), flush=True)
            if peer.proc is not None and not peer.proc.alive():
                break
            time.sleep(0.5)
    finally:
        peer.stop()


def run_round(t: topo.Topology, peers: list[Peer], workloads: list[str], s: Settings,
              raw: dict, errors: list[str], notes: list[str], rnd: int,
              noisy: set[str]) -> None:
    order = peers[rnd % len(peers):] + peers[:rnd % len(peers)]
    for peer in order:
        noisy |= interference()
        if s.quiet_timeout > 0 and s.retry_budget > 0:
            t1 = time.monotonic()
            share = cpu.wait_quiet(timeout=min(s.quiet_timeout, s.retry_budget))
            s.retry_budget -= time.monotonic() - t1
            if share > s.disturbed:
                noisy.add("other processes busy before a peer started")
        print(f"[round {rnd + 1}] {peer.name}", flush=True)
        for note in backends.ensure(t):
            notes.append(f"round {rnd + 1} before {peer.name}: {note}")
            print(f"  {note}", flush=True)
        run_peer(t, peer, workloads, s, rnd, raw, errors, notes)


def summary(res: dict) -> str:
    if "error" in res:
        return "ERROR " + res["error"].splitlines()[0][:200]
    keys = ("proxy_core_busy", "gbit_per_s", "conn_per_s", "rps", "qps", "p50_us", "p99_us", "rss_kib",
            "cpu_us_per_conn_proxy_core", "cpu_us_per_req_proxy_core", "errors", "foreign_cores")
    return " ".join(f"{k}={res[k]:.4g}" for k in keys if k in res)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    cfg = MODES[mode]
    s: Settings = cfg["settings"]
    if args.duration:
        s.duration = s.bulk_seconds = args.duration
    if args.idle_conns:
        s.idle_conns = args.idle_conns
    rounds = args.rounds or cfg["rounds"]
    if os.geteuid() != 0:
        print("bench/run needs root (network namespaces, nftables)", file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) < 2:
        topo.PROXY_CPU = 0
        print("warning: one CPU only; proxy and load share it", file=sys.stderr)
    os.sched_setaffinity(0, {topo.LOAD_CPU})  # the harness itself stays off the proxy core
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)

    binary = pick_binary(args, mode)
    base = args.base_bin.resolve() if args.base_bin else None
    peers = make_peers(binary, args.policies.resolve(), base)
    if args.peers:
        wanted = args.peers.split(",")
        unknown = set(wanted) - {p.name for p in peers}
        if unknown:
            print(f"unknown peers: {sorted(unknown)}", file=sys.stderr)
            return 2
        peers = [p for p in peers if p.name in wanted]
    workloads = args.workloads.split(",") if args.workloads else list(WORKLOAD_ORDER)
    skipped = {}
    for p in list(peers):
        why = p.available()
        if why:
            skipped[p.name] = why
            peers.remove(p)
            print(f"skipping {p.name}: {why}", flush=True)

    swept = topo.sweep_leftovers()
    if swept:
        print(f"removed leftover namespaces: {' '.join(swept)}")
    work = Path(tempfile.mkdtemp(prefix="sybench-"))
    raw: dict = {}
    errors: list[str] = []
    notes: list[str] = []
    noisy: set[str] = set()
    started = dt.datetime.now()
    settings = dict(vars(s))
    print(f"mode {mode}, {rounds} round(s), binary {binary}, work dir {work}", flush=True)
    try:
        with topo.Topology(work) as t:
            cpu.register_namespaces(t.created)
            backends.write_manifests(work / "manifests")
            backends.write_manifests(work / backends.SHARED_MANIFESTS, web7_port=backends.HTTP_PORT)
            backends.write_manifests(work / backends.KERNEL_ONLY_MANIFESTS, l7=False)
            backends.start(t)
            br_nf = topo.run(["sysctl", "-n", "net.bridge.bridge-nf-call-iptables"], ns=t.node,
                             check=False).stdout.decode().strip() or "absent"
            for rnd in range(rounds):
                run_round(t, peers, workloads, s, raw, errors, notes, rnd, noisy)
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"interrupted ({exc or 'Ctrl-C'}): cleaned up, nothing recorded", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        print(f"setup failed; logs in {work}", file=sys.stderr)
        return 1

    med = report.medians(raw)
    order = [p.name for p in make_peers(binary, args.policies, base)]
    rec = {
        "date": started.strftime("%Y-%m-%d %H:%M"), "mode": mode, "rounds": rounds,
        "machine": machine(), "versions": versions(binary), "settings": settings,
        "proxy_cpu": topo.PROXY_CPU, "load_cpu": topo.LOAD_CPU,
        "bridge_nf_call_iptables_in_node": br_nf,
        "interference": sorted(n if " " in n else f"{n} processes seen" for n in noisy),
        "peer_order": order, "peers": [p.describe() for p in peers], "skipped": skipped,
        "workloads": workloads, "raw": raw, "medians": med, "goals": report.goals(med),
        "errors": errors, "notes": notes, "user_notes": args.note, "method": method(s, rounds),
        "duration_s": (dt.datetime.now() - started).total_seconds(),
    }
    out = args.out or (work / "results" if mode == "smoke" else REPO / "bench" / "results")
    name = args.name or {"full": "full", "quick": "quick", "smoke": "smoke"}[mode]
    stem = f"{started.strftime('%Y-%m-%d')}-{name}"
    mpath, jpath = report.write(out, stem, rec)
    present = [p for p in order if p in med]
    print("\nRatios against Switchyard io_uring (same run):\n")
    print(report.ratio_table(med, present, report.BASE))
    print("\nRatios against direct:\n")
    print(report.ratio_table(med, present, report.DIRECT))
    print("\nGoals (issue 5 item 6):\n")
    print(report.goals_table(rec["goals"]))
    print(f"\nwritten: {mpath}\n         {jpath}")
    if errors:
        print(f"\n{len(errors)} error(s):\n  " + "\n  ".join(errors), file=sys.stderr)
    if not args.keep and not errors:
        for entry in work.iterdir():
            if entry.name != "results":
                subprocess.run(["rm", "-rf", "--one-file-system", str(entry)], check=False)
        if not any(work.iterdir()):
            work.rmdir()
    else:
        print(f"logs kept in {work}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
