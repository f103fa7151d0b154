"""Control-plane scale (issue 5 item 3): `python3 -m bench.sybench.scale` (root).

Generates kubectl-style manifests of --services Services with --endpoints
endpoints each (defaults 10,000 x 10 = 100,000 endpoints), starts Switchyard
on them in the bench topology's node (pinned to the proxy CPU), and records

- time to serving: from spawning the process to /readyz answering 200, and
  to the first connection through a probe Service succeeding;
- peak RSS (VmHWM) after start and after the changes;
- one endpoint change to effective, as a distribution: the probe Service
  `toggle` is rewritten between one endpoint (a real nginx Pod) and none,
  --changes times; a client in the client Pod connects to its VIP in a tight
  loop and reports when the outcome flips (refused <-> answered), which needs
  both the snapshot and the nftables sets to follow. Latency = flip time -
  the rename that published the file (one monotonic clock for all
  namespaces).

`--source kubernetes` serves the same objects from the emulated API server of
the end-to-end tests (tests/e2e/apiserver.py, in the node namespace) and runs
Switchyard with a kubeconfig: time to serving then includes the initial list,
and a change is the EndpointSlice replaced through the server (latency from
the moment the server stored it, before the watch event is written).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import backends, capture, topo
from .backends import mf
from .main import machine, pick_binary, versions
from .topo import BACKENDS, NODE_NAME, PROXY_CPU, LOAD_CPU, SetupError, pinned, run, wait_until

REPO = Path(__file__).resolve().parents[2]
TRIGGER = "endpoints.kubernetes.io/last-change-trigger-time"
TOGGLE_VIP = "10.96.0.99"
# `--rate-among`: a Service whose changes are among several endpoints (N and
# N + 1 of them). Nothing connects to it; its endpoints need not exist.
AMONG_VIP = "10.96.0.98"
PER_FILE = 100

PROBE = r"""
import json, socket, sys, time
vip, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
last, timeouts, stalls = None, 0, []
while time.monotonic() < deadline:
    s = socket.socket(); s.settimeout(0.5)
    how, step, began = "answered", "connect", time.time()
    try:
        s.connect((vip, 80)); step = "send"
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"); step = "response"
        ok = s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError as e:
        ok, how = False, type(e).__name__
        if isinstance(e, socket.timeout):
            # Which step hung, and from which local port (conntrack).
            timeouts += 1
            stalls.append({"step": step, "port": s.getsockname()[1], "wall": began})
    finally:
        s.close()
    if ok != last:
        print(json.dumps({"t": time.monotonic(), "ok": ok, "how": how, "timeouts": timeouts,
                          "stalls": stalls}), flush=True)
        last, stalls = ok, []
    time.sleep(0.0005)  # ~1,500 attempts/s: the ephemeral ports do not wrap during a run
"""

READY = r"""
import socket, sys, time
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    try:
        s = socket.create_connection(("127.0.0.1", 10256), timeout=0.2)
        s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        if s.recv(64).startswith(b"HTTP/1.1 200"):
            print(time.monotonic(), flush=True); sys.exit(0)
    except OSError:
        pass
    time.sleep(0.005)
sys.exit(1)
"""


# The Services' switchyard.dev/datapath annotation (--datapath; None: no
# annotation, so `auto` puts ports with a slot table on the kernel path).
DATAPATH: str | None = "proxy"


def generate(directory: Path, services: int, endpoints: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for f in range(0, services, PER_FILE):
        docs = generate_docs(range(f, min(f + PER_FILE, services)), endpoints)
        (directory / f"scale-{f // PER_FILE:04d}.yaml").write_text(mf.to_yaml(*docs))


def generate_docs(indices, endpoints: int) -> list[dict]:
    docs = []
    for i in indices:
        vip = f"10.96.{1 + i // 250}.{1 + i % 250}"
        eps = [mf.Endpoint(f"10.{100 + (i * endpoints + j) // 65025 % 100}."
                           f"{(i * endpoints + j) // 255 % 255}.{1 + (i * endpoints + j) % 254}",
                           f"svc{i}-pod{j}", node=NODE_NAME) for j in range(endpoints)]
        svc = mf.ServiceDef(f"svc{i}", [vip], [mf.Port("http", 80, 8080)], [eps], datapath=DATAPATH,
                            namespace="scale")
        docs += svc.documents()
    return docs


def toggle_def(on: bool) -> "mf.ServiceDef":
    eps = [mf.Endpoint(BACKENDS[0].ip, BACKENDS[0].name, node=NODE_NAME)] if on else []
    return mf.ServiceDef("toggle", [TOGGLE_VIP], [mf.Port("http", 80, backends.HTTP_PORT)],
                         [eps], namespace="scale", datapath=DATAPATH)


def among_def(n: int, on: bool) -> "mf.ServiceDef":
    eps = [mf.Endpoint(f"10.244.250.{i + 1}", f"among-{i}", node=NODE_NAME)
           for i in range(n + 1 if on else n)]
    return mf.ServiceDef("among", [AMONG_VIP], [mf.Port("http", 80, backends.HTTP_PORT)],
                         [eps], namespace="scale", datapath=DATAPATH)


def toggle_yaml(on: bool) -> str:
    return toggle_def(on).yaml()


class FileSource:
    """Manifests in a watched directory; a change is an atomic rename."""

    def __init__(self, work: Path, services: int, endpoints: int):
        self.dir = work / "manifests"
        generate(self.dir, services, endpoints)
        (self.dir / "toggle.yaml").write_text(toggle_yaml(True))

    def args(self) -> list[str]:
        return ["--manifests", str(self.dir)]

    def toggle(self, on: bool) -> float:
        mf.write_atomic(self.dir / "toggle.yaml", toggle_yaml(on))
        return time.monotonic()

    def close(self) -> None:
        pass


class KubeSource:
    """The emulated API server of the e2e tests, serving the same objects."""

    def __init__(self, work: Path, t, services: int, endpoints: int):
        sys.path.insert(0, str(REPO / "tests" / "e2e"))
        from apiserver import ApiServer, node_object  # noqa: PLC0415
        self.api = ApiServer(t.node, log=work / "apiserver.log")
        self.api.put(node_object(NODE_NAME))
        for f in range(0, services, PER_FILE):
            self.api.put(*generate_docs(range(f, min(f + PER_FILE, services)), endpoints))
        self.api.put(*toggle_def(True).documents())
        self.api.start()
        self.kubeconfig = self.api.kubeconfig(work / "kubeconfig")
        # The emulator runs in this process, and its 10k Services and slices
        # are millions of objects: a full collection of them stalled the
        # writes and the watch streams for 0.1-0.5 s, twice a minute at 100
        # changes/s (seen as changes "late" by that much, with Switchyard
        # idle). A real API server has no such pause: keep them out of it.
        gc.collect()
        gc.freeze()

    def args(self) -> list[str]:
        return ["--kubeconfig", str(self.kubeconfig)]

    def list_seconds(self, t) -> float:
        """How long the emulator takes to serve the full lists (part of time
        to serving, though not Switchyard's: a real API server answers from
        its watch cache)."""
        total = 0.0
        for path in ("/api/v1/services", "/apis/discovery.k8s.io/v1/endpointslices"):
            out = run(["curl", "-s", "-o", "/dev/null", "-w", "%{time_total}",
                       self.api.url + path], ns=t.node, timeout=120)
            total += float(out.stdout.decode().strip() or 0)
        return total

    def toggle(self, on: bool) -> float:
        return self.change(toggle_def(on))

    def change(self, svc: "mf.ServiceDef") -> float:
        """Writes `svc`'s EndpointSlice, as the EndpointSlice controller does."""
        slice_doc = svc.documents()[1]
        # What the EndpointSlice controller writes: Switchyard's
        # network_programming_duration_seconds starts from it.
        slice_doc["metadata"].setdefault("annotations", {})[TRIGGER] = (
            dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")
            .replace("+00:00", "Z"))
        wrote = time.monotonic()
        self.api.put(slice_doc)
        return wrote

    def close(self) -> None:
        self.api.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its waited-for children (the
    `nft -f` of the first sync) so far: on a loaded machine the figure that
    does not count the time other processes held our core."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def sustained(t, source, rate: float, seconds: float, pid: int, among: int = 0) -> dict:
    """`rate` endpoint changes per second for `seconds` (kubernetes source),
    then Switchyard's own account of how far behind each change came into
    force: network_programming_duration_seconds, from each slice's trigger
    time to its sync done. With `among`, the changes are to a Service of
    `among` endpoints (one added, then removed) instead of 0 ↔ 1."""
    if among:
        synced = scrape(t).get('switchyard_syncs_total{kind="ok"}', 0)
        source.api.put(*among_def(among, False).documents())
        deadline = time.monotonic() + 30
        while scrape(t).get('switchyard_syncs_total{kind="ok"}', 0) <= synced:
            if time.monotonic() > deadline:
                raise SetupError("no sync took the `among` Service within 30 s")
            time.sleep(0.05)
    before = scrape(t)
    cpu0 = cpu_seconds(pid)
    # No collection while the emulator serves the changes (see KubeSource):
    # a minute of them is a few MB of garbage.
    gc.disable()
    t0, n, on = time.monotonic(), 0, not among  # toggle: 1 endpoint now; among: N
    while (now := time.monotonic()) < t0 + seconds:
        due = t0 + n / rate
        if due > now:
            time.sleep(due - now)
        on = not on
        if among:
            source.change(among_def(among, on))
        else:
            source.toggle(on)
        n += 1
    achieved = n / (time.monotonic() - t0)
    time.sleep(1.0)  # the last changes' syncs (each well under this)
    gc.enable()
    after = scrape(t)
    cpu = cpu_seconds(pid) - cpu0
    name = "switchyard_network_programming_duration_seconds"
    buckets = {le: after.get(f'{name}_bucket{{le="{le}"}}', 0)
               - before.get(f'{name}_bucket{{le="{le}"}}', 0)
               for le in ("0.005", "0.01", "0.02", "0.05", "0.1", "0.2", "0.5", "1.0", "+Inf")}
    count = after.get(f"{name}_count", 0) - before.get(f"{name}_count", 0)
    total = after.get(f"{name}_sum", 0) - before.get(f"{name}_sum", 0)
    return {"changes": n, "among": among, "rate_per_s": achieved, "seconds": seconds,
            "observed": count,
            "mean_ms": total / count * 1e3 if count else None, "le_buckets": buckets,
            "over_50ms": count - buckets["0.05"], "cpu_s": cpu,
            "cpu_ms_per_change": cpu / n * 1e3 if n else None,
            "syncs": after.get('switchyard_syncs_total{kind="ok"}', 0)
            - before.get('switchyard_syncs_total{kind="ok"}', 0)}


def scrape(t) -> dict:
    out = run(["curl", "-s", "http://127.0.0.1:10249/metrics"], ns=t.node, timeout=10)
    vals = {}
    for line in out.stdout.decode().splitlines():
        if line and not line.startswith("#"):
            key, _, val = line.rpartition(" ")
            try:
                vals[key] = float(val)
            except ValueError:
                pass
    return vals


def vm(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def control_thread(pid: int) -> Path | None:
    """The control plane's thread: the main one (daemon::run blocks on its
    current-thread runtime there). Its schedstat says whether a slow change
    ran long or waited for the CPU."""
    task = Path(f"/proc/{pid}/task/{pid}")
    return task if task.exists() else None


def schedstat(task: Path) -> tuple[int, int]:
    """A task's time on CPU and waiting on a run queue, ns."""
    try:
        run_ns, wait_ns = (int(x) for x in (task / "schedstat").read_text().split()[:2])
        return run_ns, wait_ns
    except (OSError, ValueError):
        return 0, 0


def probe_point(pid: int, task: Path | None, probe_pid: int | None) -> dict:
    """Counters read around each change: the control thread's time on CPU
    and waiting on a run queue (schedstat, ns), the same summed over
    Switchyard's other threads and over the probe's, the process's minor
    page faults, and its RSS and peak RSS (KiB)."""
    run_ns, wait_ns = schedstat(task) if task is not None else (0, 0)
    others = [schedstat(t) for t in Path(f"/proc/{pid}/task").iterdir() if t != task]
    probe = ([schedstat(t) for t in Path(f"/proc/{probe_pid}/task").iterdir()]
             if probe_pid else [])
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    threads: dict[str, list[int]] = {}
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (t / "comm").read_text().strip()
            flt = int((t / "stat").read_text().rpartition(")")[2].split()[7])
        except (OSError, ValueError, IndexError):
            continue
        r, w = schedstat(t)
        acc = threads.setdefault("main" if t == task else comm, [0, 0, 0])
        acc[0] += r
        acc[1] += w
        acc[2] += flt
    busy = {}
    for line in Path("/proc/stat").read_text().splitlines():
        head = line.split()
        if head[0].startswith("cpu") and head[0] != "cpu":
            # user nice system idle iowait irq softirq steal (USER_HZ)
            busy[head[0]] = sum(int(x) for i, x in enumerate(head[1:9]) if i not in (3, 4))
    return {"run_ns": run_ns, "wait_ns": wait_ns, "threads": threads, "cpu_busy": busy,
            "others_run_ns": sum(r for r, _ in others), "others_wait_ns": sum(w for _, w in others),
            "probe_run_ns": sum(r for r, _ in probe), "probe_wait_ns": sum(w for _, w in probe),
            "minflt": int(fields[7]), "rss_kib": vm(pid, "VmRSS"), "hwm_kib": vm(pid, "VmHWM"),
            "wall": time.time()}


def smaps(pid: int) -> dict[str, int]:
    """Rss (KiB) per mapping of the process, anonymous ones by address."""
    out, name = {}, None
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            name = f"{head[0]} {head[5] if len(head) > 5 else '[anon]'}"
        elif head and head[0] == "Rss:" and name:
            out[name] = int(head[1])
    return out


def smaps_growth(before: dict[str, int], after: dict[str, int]) -> list[dict]:
    """The mappings whose Rss grew most between two smaps reads."""
    grew = [{"mapping": k, "before_kib": before.get(k, 0), "after_kib": v,
             "grew_kib": v - before.get(k, 0)} for k, v in after.items()]
    return sorted(grew, key=lambda g: -g["grew_kib"])[:8]


def sync_timings(log: str) -> list[dict]:
    """The `sync timings` debug lines of Switchyard's log (with
    --log-level warn,switchyard::daemon=debug): per sync, microseconds from
    its start to the end of each phase."""
    out = []
    for line in log.splitlines():
        what = next((w for m, w in (("nftables sync timings", "intercept"),
                                    ("nftables in step", "nft"), ("sync timings", "sync"),
                                    ("file source read", "read"),
                                    ("re-translated changed", "build")) if m in line), None)
        if what is None:
            continue
        rec = {"what": what}
        stamp = line.split(" ", 1)[0]
        try:
            rec["at"] = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
        for word in line.split():
            key, eq, val = word.partition("=")
            if eq and val.isdigit():
                rec[key] = int(val)
        out.append(rec)
    return out


def attribute(per_change: list[dict], timings: list[dict]) -> None:
    """Splits each change's latency by Switchyard's own log (needs
    switchyard::daemon=debug): from the write to the start of the sync that
    took it (wake), the sync itself, and from the sync's end to the probe's
    flip (seen). Wall clocks of one machine; the log's stamp is the sync's
    end."""
    syncs = [t for t in timings if t["what"] == "sync" and "at" in t and "done_us" in t]
    for c in per_change:
        s = next((t for t in syncs if t["at"] >= c["wrote_wall"]), None)
        if s is None:
            continue
        start = s["at"] - s["done_us"] / 1e6
        c["wake_ms"] = (start - c["wrote_wall"]) * 1e3
        c["sync_ms"] = s["done_us"] / 1e3
        c["seen_ms"] = c["ms"] - c["wake_ms"] - c["sync_ms"]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.sybench.scale")
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--changes", type=int, default=40)
    ap.add_argument("--source", choices=("file", "kubernetes"), default="file")
    ap.add_argument("--rate", type=float, default=0,
                    help="then this many changes/s (kubernetes source) for --rate-seconds")
    ap.add_argument("--rate-seconds", type=float, default=60)
    ap.add_argument("--rate-among", type=int, default=0, metavar="N",
                    help="the --rate changes are to a Service of N endpoints (N + 1, then N "
                         "again) instead of 0 <-> 1")
    ap.add_argument("--io", choices=("uring", "epoll"), default="uring")
    ap.add_argument("--opaque", action="store_true",
                    help="dataplane.transparent: false (backends see the node's address)")
    ap.add_argument("--datapath", choices=("proxy", "auto", "kernel"), default="proxy",
                    help="the Services' switchyard.dev/datapath annotation (auto: none)")
    ap.add_argument("--log-level", default="warn",
                    help="Switchyard's log level; its log is printed at the end unless warn")
    ap.add_argument("--bin", type=Path)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--name", default="scale")
    ap.add_argument("--note", action="append", default=[])
    ap.add_argument("--capture", type=Path, metavar="DIR",
                    help="record the probe's SYNs and resets (tcpdump) and its conntrack "
                         "events in the node namespace into DIR, with Switchyard's log")
    ap.add_argument("--widen", type=int, default=0, metavar="RULES",
                    help="RULES non-matching rules over each probe SYN between the raw and "
                         "the NAT hook (capture.widen): a wider window for a sync to commit in")
    args = ap.parse_args(argv)
    args.smoke = False
    global DATAPATH
    DATAPATH = None if args.datapath == "auto" else args.datapath
    if args.datapath != "proxy":
        args.note.append(f"Services annotated switchyard.dev/datapath: {args.datapath}"
                         if DATAPATH else "Services without a datapath annotation (auto)")
    os.sched_setaffinity(0, {LOAD_CPU})
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    binary = pick_binary(args, "full")
    topo.sweep_leftovers()
    started = dt.datetime.now()
    work = Path(tempfile.mkdtemp(prefix="sybench-scale-"))
    with topo.Topology(work) as t:
        backends.start(t)
        t0 = time.monotonic()
        source = (KubeSource(work, t, args.services, args.endpoints)
                  if args.source == "kubernetes"
                  else FileSource(work, args.services, args.endpoints))
        gen_s = time.monotonic() - t0
        list_s = source.list_seconds(t) if isinstance(source, KubeSource) else None
        if list_s is not None:
            print(f"the emulated API server serves both lists in {list_s:.2f}s", flush=True)
        print(f"generated {args.services} Services / {args.services * args.endpoints} "
              f"endpoints in {gen_s:.1f}s ({args.source} source)", flush=True)
        argv_sy = [str(binary), "run", *source.args(), "--node-name", NODE_NAME,
                   "--io", args.io, "--workers", "1", "--default-policy", "builtin-round-robin",
                   "--log-level", args.log_level]
        if args.opaque:
            (work / "opaque.yaml").write_text("dataplane:\n  transparent: false\n")
            argv_sy += ["--config", str(work / "opaque.yaml")]
        ready = subprocess.Popen(topo.ns_argv(t.node, pinned(LOAD_CPU, [
            sys.executable, "-c", READY, "300"])), stdout=subprocess.PIPE, text=True)
        spawn = time.monotonic()
        proc = t.spawn("switchyard-scale", t.node, pinned(PROXY_CPU, argv_sy))
        out, _ = ready.communicate(timeout=330)
        if ready.returncode != 0:
            raise SetupError(f"switchyard not ready in 300 s:\n{proc.output()}")
        to_ready = float(out.strip()) - spawn
        cpu_ready = cpu_seconds(proc.pid)
        probe_cmd = topo.ns_argv(t.client, pinned(LOAD_CPU, [
            sys.executable, "-c", PROBE, TOGGLE_VIP, str(60 + args.changes * 3)]))
        if args.widen:
            capture.widen(t, TOGGLE_VIP, args.widen)
            args.note.append(f"--widen {args.widen}: that many non-matching rules over each "
                             "probe SYN between the raw and the NAT hook")
        recorders = (capture.start(t, args.capture, TOGGLE_VIP, BACKENDS[0].ip)
                     if args.capture else [])
        probe = subprocess.Popen(probe_cmd, stdout=subprocess.PIPE, text=True,
                                 start_new_session=True)
        try:
            first = json.loads(probe.stdout.readline())
            if not first["ok"]:
                first = json.loads(probe.stdout.readline())
            to_serving = first["t"] - spawn
            hwm_start = vm(proc.pid, "VmHWM")
            print(f"ready {to_ready:.3f}s, first proxied answer {to_serving:.3f}s, "
                  f"VmHWM {hwm_start / 1024:.0f} MiB", flush=True)
            lat = {"remove": [], "add": []}
            per_change = []
            task = control_thread(proc.pid)
            maps_start = smaps(proc.pid)
            point_start = probe_point(proc.pid, task, probe.pid)
            on, timeouts = True, 0
            for i in range(args.changes):
                time.sleep(0.3 + (i % 7) * 0.05)  # not in step with any poll period
                on = not on
                before = probe_point(proc.pid, task, probe.pid)
                wrote = source.toggle(on)
                # The wall clock of the same moment (Switchyard's log is
                # in wall time), however long this process took to get here.
                wrote_wall = time.time() - (time.monotonic() - wrote)
                ev = json.loads(probe.stdout.readline())
                after = probe_point(proc.pid, task, probe.pid)
                if ev["ok"] != on:
                    raise SetupError(f"probe flipped the wrong way: {ev}")
                ms = (ev["t"] - wrote) * 1e3
                lat["add" if on else "remove"].append(ms)
                per_change.append({
                    "kind": "add" if on else "remove", "ms": ms,
                    "control_run_ms": (after["run_ns"] - before["run_ns"]) / 1e6,
                    "control_wait_ms": (after["wait_ns"] - before["wait_ns"]) / 1e6,
                    "others_run_ms": (after["others_run_ns"] - before["others_run_ns"]) / 1e6,
                    "others_wait_ms": (after["others_wait_ns"] - before["others_wait_ns"]) / 1e6,
                    "probe_run_ms": (after["probe_run_ns"] - before["probe_run_ns"]) / 1e6,
                    "probe_wait_ms": (after["probe_wait_ns"] - before["probe_wait_ns"]) / 1e6,
                    "wrote_wall": wrote_wall,
                    "threads": {k: {"run_ms": (v[0] - before["threads"].get(k, [0, 0, 0])[0]) / 1e6,
                                    "wait_ms": (v[1] - before["threads"].get(k, [0, 0, 0])[1]) / 1e6,
                                    "minflt": v[2] - before["threads"].get(k, [0, 0, 0])[2]}
                                for k, v in after["threads"].items()},
                    "cpu_busy_ms": {k: (v - before["cpu_busy"].get(k, 0)) * 1e3
                                    / os.sysconf("SC_CLK_TCK")
                                    for k, v in after["cpu_busy"].items()},
                    "minflt": after["minflt"] - before["minflt"],
                    "probe_stalls": ev.get("stalls", []),
                    "rss_mib": after["rss_kib"] / 1024, "hwm_mib": after["hwm_kib"] / 1024})
                timeouts = ev["timeouts"]
        finally:
            probe.kill()
            probe.wait(timeout=10)
            if recorders:
                capture.stop(t, recorders, args.capture)
        rate = (sustained(t, source, args.rate, args.rate_seconds, proc.pid, args.rate_among)
                if args.rate and isinstance(source, KubeSource) else None)
        if rate:
            print(f"sustained: {rate}", flush=True)
        maps_growth = smaps_growth(maps_start, smaps(proc.pid))
        point_end = probe_point(proc.pid, task, None)
        faults_by_thread = {k: v[2] - point_start["threads"].get(k, [0, 0, 0])[2]
                            for k, v in point_end["threads"].items()}
        hwm_end = vm(proc.pid, "VmHWM")
        rss = vm(proc.pid, "VmRSS")
        rc = proc.stop()
        source.close()
        log_text = proc.output(tail=1 << 30)
        if args.capture:
            (args.capture / "switchyard.log").write_text(log_text)
        if args.log_level != "warn":
            print(log_text[-20000:])
    both = lat["add"] + lat["remove"]
    timings = sync_timings(log_text)
    attribute(per_change, timings)
    rec = {
        "date": started.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
        "versions": versions(binary), "services": args.services,
        "endpoints": args.services * args.endpoints, "files": -(-args.services // PER_FILE) + 1,
        "source": args.source, "emulator_list_s": list_s, "generate_s": gen_s, "ready_s": to_ready, "cpu_s_at_ready": cpu_ready, "first_proxied_s": to_serving,
        "vmhwm_after_start_mib": hwm_start / 1024, "vmhwm_end_mib": hwm_end / 1024,
        "rss_end_mib": rss / 1024, "exit_code": rc, "changes": args.changes,
        "change_ms": {k: {"p50": pct(v, 50), "p90": pct(v, 90), "p99": pct(v, 99),
                          "max": max(v), "mean": statistics.mean(v), "n": len(v)}
                      for k, v in (("add", lat["add"]), ("remove", lat["remove"]),
                                   ("all", both))},
        "raw_ms": lat, "probe_timeouts": timeouts, "sustained": rate,
        "per_change": per_change, "sync_timings": timings,
        "smaps_growth": maps_growth, "faults_by_thread": faults_by_thread,
        "command": " ".join(["taskset", "-c", str(PROXY_CPU), *argv_sy]),
        "user_notes": args.note,
    }
    stem = f"{started.strftime('%Y-%m-%d')}-{args.name}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(dump(rec))
    (args.out / f"{stem}.md").write_text(markdown(rec))
    print(markdown(rec))
    subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)
    return 0


def dump(rec: dict) -> str:
    """The record as JSON, indented, with one line per change and per sync
    timing (hundreds of them: indented field by field they were most of
    the file)."""
    rows = ("per_change", "sync_timings")
    text = json.dumps({k: ("@" + k if k in rows else v) for k, v in rec.items()},
                      indent=1, default=str)
    for k in rows:
        lines = ",\n  ".join(json.dumps(x, default=str) for x in rec.get(k) or [])
        text = text.replace(json.dumps("@" + k), f"[\n  {lines}\n ]" if lines else "[]")
    return text + "\n"


def markdown(r: dict) -> str:
    m, c = r["machine"], r["change_ms"]
    met = lambda ok: "met" if ok else "**not met**"  # noqa: E731
    rows = "\n".join(f"| {k} | {v['n']} | {v['p50']:.2f} | {v['p90']:.2f} | {v['p99']:.2f} | "
                     f"{v['max']:.2f} |" for k, v in c.items())
    notes = "".join(f"{n}\n\n" for n in r.get("user_notes", []))
    emulator = ("" if r.get("emulator_list_s") is None else
                f"The emulated API server alone takes {r['emulator_list_s']:.2f} s to serve the "
                "Service and EndpointSlice lists (measured with curl before the run); that is "
                "part of time to serving below.\n\n")
    # Which step of a timed-out probe connection hung, by change.
    stalls = [f"change {i} ({pc['kind']}): " + ", ".join(
        f"{st['step']} from port {st['port']}" for st in pc["probe_stalls"])
        for i, pc in enumerate(r.get("per_change", [])) if pc.get("probe_stalls")]
    stalled = f" ({'; '.join(stalls)})" if stalls else ""
    sus = r.get("sustained")
    sustained_text = "" if not sus else (
        f"\n\nSustained changes: {sus['changes']} EndpointSlice updates"
        + (f" (a Service's endpoints {sus['among']} → {sus['among'] + 1} → {sus['among']}, ...)"
           if sus.get("among") else " (0 → 1 → 0 endpoints, ...)")
        + f" in {sus['seconds']:.0f} s "
        f"({sus['rate_per_s']:.1f}/s). Switchyard's network_programming_duration_seconds "
        f"(slice trigger time → sync done) observed {sus['observed']:.0f} of them, mean "
        f"{(sus['mean_ms'] or 0):.2f} ms; {sus['over_50ms']:.0f} above 50 ms (goal: none): "
        f"{met(sus['observed'] > 0 and sus['over_50ms'] == 0)}, in {sus['syncs']:.0f} syncs, "
        f"Switchyard's CPU {sus['cpu_s']:.2f} s ({(sus['cpu_ms_per_change'] or 0):.2f} ms a change). "
        f"Cumulative buckets (le, s → "
        f"count): {', '.join(f'{k}: {v:.0f}' for k, v in sus['le_buckets'].items())}.")
    source_text = (f"in {r['files']} manifest files (100 Services each)"
                   if r.get("source", "file") == "file" else
                   "served by the emulated API server (tests/e2e/apiserver.py) through a "
                   "kubeconfig")
    diag = diagnostics(r)
    return f"""# Switchyard control-plane scale — {r['date']}

Machine: {m['cpu_model']}, {m['cores']} cores, {m['mem_gib']:.1f} GiB, kernel {m['kernel']}.
Switchyard pinned to CPU 1 (`{r['command']}`), {r['services']:,} Services /
{r['endpoints']:,} endpoints, {source_text}.

{notes}{emulator}| figure | value | goal (issue 5 item 6) |
|---|---|---|
| spawn → /readyz 200 | {r['ready_s']:.3f} s | ≤ 1 s: {met(r['ready_s'] <= 1)} |
| spawn → first answer through a Service | {r['first_proxied_s']:.3f} s | |
| Switchyard's CPU time (user + sys) until ready | {r.get('cpu_s_at_ready', 0):.3f} s | |
| peak RSS (VmHWM) after start | {r['vmhwm_after_start_mib']:.0f} MiB | |
| peak RSS after {r['changes']} changes | {r['vmhwm_end_mib']:.0f} MiB | |
| one endpoint change → effective, p99 | {c['all']['p99']:.2f} ms | ≤ 5 ms: {met(c['all']['p99'] <= 5)} |

One endpoint change to effective, milliseconds from the rename of the Service's
file (kubernetes: from the API server storing the new EndpointSlice) to the first
connection that sees the new state (add: 0 → 1 endpoint,
the connection is answered; remove: 1 → 0, it is refused). The probe tries about
once a millisecond, which bounds the resolution; connection attempts that timed out
(0.5 s) during the whole run: {r.get('probe_timeouts', 0)}{stalled}.

| change | n | p50 | p90 | p99 | max |
|---|---|---|---|---|---|
{rows}{sustained_text}
{diag}"""


def diagnostics(r: dict) -> str:
    """The slowest changes split by where their time went, and RSS over the
    changes: what tells the machine's stalls from ours."""
    pc = r.get("per_change") or []
    if not pc:
        return ""
    f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    slow = sorted(range(len(pc)), key=lambda i: -pc[i]["ms"])[:10]
    rows = "\n".join(
        f"| {i} | {pc[i]['kind']} | {pc[i]['ms']:.2f} | {f(pc[i].get('wake_ms'))} | "
        f"{f(pc[i].get('sync_ms'))} | {f(pc[i].get('seen_ms'))} | {pc[i]['control_run_ms']:.2f} | "
        f"{pc[i]['control_wait_ms']:.2f} | {pc[i]['others_wait_ms']:.2f} | "
        f"{pc[i]['probe_wait_ms']:.2f} | {pc[i]['minflt']} |" for i in slow)
    steps = sorted({0, 1, 2, 5, 10, 20, 40, 80, 120, 160, len(pc) - 1} & set(range(len(pc))))
    rss = ", ".join(f"{i}: {pc[i]['rss_mib']:.1f}" for i in steps)
    maps = "\n".join(f"| `{g['mapping']}` | {g['before_kib'] / 1024:.1f} | {g['after_kib'] / 1024:.1f} |"
                     for g in r.get("smaps_growth") or [] if g["grew_kib"] > 256)
    faults = ", ".join(f"{k}: {v}" for k, v in sorted((r.get("faults_by_thread") or {}).items(),
                                                         key=lambda kv: -kv[1]) if v)
    worst = "\n".join(
        f"| {i} | " + ", ".join(f"{k} run {v['run_ms']:.2f} wait {v['wait_ms']:.2f}"
                                + (f" flt {v['minflt']}" if v["minflt"] else "")
                                for k, v in sorted(pc[i].get("threads", {}).items())
                                if v["run_ms"] + v["wait_ms"] > 0.05)
        + " | " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(pc[i].get("cpu_busy_ms", {}).items()))
        + " |" for i in slow[:5])
    return f"""
The slowest changes, split (ms). wake: from the write to the start of the
sync that took it; sync: that sync; seen: from its end to the probe's flip
(Switchyard's debug log, wall clock). Then, over the change's window, the
control thread's time on CPU and on a run queue, the run-queue wait of
Switchyard's other threads and of the probe, and Switchyard's minor faults.

| # | change | ms | wake | sync | seen | control run | control wait | others wait | probe wait | minflt |
|---|---|---|---|---|---|---|---|---|---|---|
{rows}

The five slowest by thread of Switchyard (ms on CPU, on a run queue, minor
faults) and each CPU's busy time over the window (all processes, ms):

| # | Switchyard's threads | CPU busy |
|---|---|---|
{worst}

Minor faults by thread from after start to the end: {faults or "none"}.

RSS (MiB) after change #: {rss}. Mappings whose RSS grew by more than
256 KiB from after start to the end (MiB):

| mapping | after start | end |
|---|---|---|
{maps}
"""


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
