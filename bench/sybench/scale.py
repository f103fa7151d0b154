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
from .backends import mf
from .main import machine, pick_binary, versions
from .topo import BACKENDS, NODE_NAME, PROXY_CPU, LOAD_CPU, SetupError, pinned, run, wait_until

REPO = Path(__file__).resolve().parents[2]
TRIGGER = "endpoints.kubernetes.io/last-change-trigger-time"
TOGGLE_VIP = "10.96.0.99"
PER_FILE = 100

PROBE = r"""
import json, socket, sys, time
vip, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
last, timeouts = None, 0
while time.monotonic() < deadline:
    s = socket.socket(); s.settimeout(0.5)
    how = "answered"
    try:
        s.connect((vip, 80)); s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        ok = s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError as e:
        ok, how = False, type(e).__name__
        timeouts += isinstance(e, socket.timeout)
    finally:
        s.close()
    if ok != last:
        print(json.dumps({"t": time.monotonic(), "ok": ok, "how": how, "timeouts": timeouts}),
              flush=True)
        last = ok
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
        slice_doc = toggle_def(on).documents()[1]
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


def sustained(t, source, rate: float, seconds: float, pid: int) -> dict:
    """`rate` endpoint changes per second for `seconds` (kubernetes source),
    then Switchyard's own account of how far behind each change came into
    force: network_programming_duration_seconds, from each slice's trigger
    time to its sync done."""
    before = scrape(t)
    cpu0 = cpu_seconds(pid)
    t0, n, on = time.monotonic(), 0, True
    while (now := time.monotonic()) < t0 + seconds:
        due = t0 + n / rate
        if due > now:
            time.sleep(due - now)
        on = not on
        source.toggle(on)
        n += 1
    achieved = n / (time.monotonic() - t0)
    time.sleep(1.0)  # the last changes' syncs (each well under this)
    after = scrape(t)
    cpu = cpu_seconds(pid) - cpu0
    name = "switchyard_network_programming_duration_seconds"
    buckets = {le: after.get(f'{name}_bucket{{le="{le}"}}', 0)
               - before.get(f'{name}_bucket{{le="{le}"}}', 0)
               for le in ("0.005", "0.01", "0.02", "0.05", "0.1", "0.2", "0.5", "1.0", "+Inf")}
    count = after.get(f"{name}_count", 0) - before.get(f"{name}_count", 0)
    total = after.get(f"{name}_sum", 0) - before.get(f"{name}_sum", 0)
    return {"changes": n, "rate_per_s": achieved, "seconds": seconds, "observed": count,
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
            on, timeouts = True, 0
            for i in range(args.changes):
                time.sleep(0.3 + (i % 7) * 0.05)  # not in step with any poll period
                on = not on
                wrote = source.toggle(on)
                ev = json.loads(probe.stdout.readline())
                if ev["ok"] != on:
                    raise SetupError(f"probe flipped the wrong way: {ev}")
                lat["add" if on else "remove"].append((ev["t"] - wrote) * 1e3)
                timeouts = ev["timeouts"]
        finally:
            probe.kill()
            probe.wait(timeout=10)
        rate = (sustained(t, source, args.rate, args.rate_seconds, proc.pid)
                if args.rate and isinstance(source, KubeSource) else None)
        if rate:
            print(f"sustained: {rate}", flush=True)
        hwm_end = vm(proc.pid, "VmHWM")
        rss = vm(proc.pid, "VmRSS")
        rc = proc.stop()
        source.close()
        if args.log_level != "warn":
            print(proc.output(tail=20000))
    both = lat["add"] + lat["remove"]
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
        "command": " ".join(["taskset", "-c", str(PROXY_CPU), *argv_sy]),
        "user_notes": args.note,
    }
    stem = f"{started.strftime('%Y-%m-%d')}-{args.name}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(rec, indent=1, default=str) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(rec))
    print(markdown(rec))
    subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)
    return 0


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
    sus = r.get("sustained")
    sustained_text = "" if not sus else (
        f"\n\nSustained changes: {sus['changes']} EndpointSlice updates in {sus['seconds']:.0f} s "
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
(0.5 s) during the whole run: {r.get('probe_timeouts', 0)}.

| change | n | p50 | p90 | p99 | max |
|---|---|---|---|---|---|
{rows}{sustained_text}
"""


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
