#!/usr/bin/env python3
"""The soak (issue 10), driven by `bash tests/soak --minutes N`.

The real binary runs in a node namespace (topology.py) while a client Pod
sends mixed load (HTTP over TCP to the web ClusterIP, DNS over UDP to
dnsmasq, HTTP/1.1 keep-alive to an L7 Service on the same backends) and the driver injects faults on a fixed schedule:

- every 5 s the manifests change (web loses or regains a backend, a churn
  Service comes and goes),
- every 10 s one backend's HTTP server is killed, and restarted 3 s later,
- every 15 s the web Service's policy is swapped (round-robin, maglev,
  p2c-ewma, none),
- every 20 s a trapping policy is bound for 5 s, then unbound,
- with `--source kubernetes`, the emulated API server (apiserver.py) is
  stopped every 30 s and started again 2 s later.

Every 5 s it samples the proxy's RSS, open descriptors and counters. At the
end: SIGTERM (exit 0 expected), panics in the log counted, and a Markdown
report written. Exit status 1 if the proxy died, panicked, exited badly or
lost more than --max-failure-rate of the requests.

Traffic stays in the namespaces the run creates (removed even on failure);
the load is bounded by rate and time."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import manifests as mf  # noqa: E402
import policies as pol  # noqa: E402
import topology  # noqa: E402
from cluster import ALL_PODS, Cluster  # noqa: E402

REPO = HERE.parents[1]
SAMPLE_EVERY = 5
COUNTERS = ("switchyard_connections_total", "switchyard_connect_failures_total",
            "switchyard_udp_flows_total", "switchyard_policy_faults_total",
            "switchyard_policy_fallbacks_total", "switchyard_limits_reached_total",
            "switchyard_accept_errors_total", "switchyard_syncs_total",
            "switchyard_http_requests_total", "switchyard_http_errors_total")
L7_VIP = "10.96.0.80"
POLICY_CYCLE = ("round-robin", "maglev", "p2c-ewma", None)


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Soak:
    def __init__(self, args, topo: topology.Topology, workdir: Path):
        self.args, self.topo, self.workdir = args, topo, workdir
        self.cluster = Cluster(topo, workdir, args.io)
        self.policy_dir = workdir / "policies"
        self.events: list[tuple[float, str]] = []
        self.samples: list[dict] = []
        self.web_policy: str | None = None
        self.trap_on = False
        self.web_pods = list(ALL_PODS)
        self.churn = False
        self.api = None
        self.t0 = time.monotonic()
        self.build = build_info()

    # ---------------------------------------------------------- services
    def services(self) -> list[mf.ServiceDef]:
        out = []
        for s in mf.standard_services():
            if s.name == "web":
                policy = "trap" if self.trap_on else self.web_policy
                s = mf.ServiceDef("web", s.cluster_ips, s.ports, [mf.backends(self.web_pods)],
                                  annotations={"switchyard.dev/policy": policy} if policy else {})
            out.append(s)
        # The same backends per HTTP request (L7, opt-in by annotation).
        out.append(mf.ServiceDef("web-l7", [L7_VIP], [mf.http_port()],
                                 [mf.backends(self.web_pods)],
                                 annotations={"switchyard.dev/protocol": "http"}))
        if self.churn:
            out.append(mf.ServiceDef("churn", ["10.96.0.99"], [mf.http_port()],
                                     [mf.backends(["web-a"])]))
        return out

    def publish(self) -> None:
        services = self.services()
        if self.api is not None:
            current = {(d["kind"], d["metadata"]["name"]) for s in services
                       for d in s.documents()}
            for kind, name in (("Service", "churn"), ("EndpointSlice", "churn-v40")):
                if (kind, name) not in current:
                    self.api.delete(kind, mf.NAMESPACE, name)
            for s in services:
                self.api.put(*s.documents())
        else:
            self.cluster.write_services(services)

    def event(self, what: str) -> None:
        self.events.append((time.monotonic() - self.t0, what))

    # ------------------------------------------------------------- setup
    def setup(self) -> None:
        self.policy_dir.mkdir()
        for name in ("round-robin", "maglev", "p2c-ewma"):
            pol.install(pol.built(name), self.policy_dir, name)
        pol.install(pol.assemble("trap", self.workdir), self.policy_dir, "trap")
        extra = ["--policies", str(self.policy_dir), "--workers", "1"]
        if self.args.source == "kubernetes":
            from apiserver import ApiServer, node_object
            self.api = ApiServer(self.topo.node, log=self.workdir / "apiserver.log")
            self.api.put(node_object(topology.NODE_NAME))
            self.publish()
            self.api.start()
            extra += ["--kubeconfig", str(self.api.kubeconfig(self.workdir / "kubeconfig"))]
        else:
            self.publish()
        self.cluster.start_http()
        self.cluster.start_dns()
        self.cluster.start_proxy(extra)
        self.pid = self.cluster.proxy.proc.pid

    # ------------------------------------------------------------ sample
    def metrics(self) -> dict[str, float]:
        proc = self.cluster.curl("http://127.0.0.1:10249/metrics", where="node")
        out: dict[str, float] = {}
        self.by_label: dict[str, float] = {}
        for line in proc.stdout.decode(errors="replace").splitlines():
            m = re.match(r"^([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$", line)
            if m and m.group(1) in COUNTERS:
                out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
                # Reasons and kinds, for the report's breakdown (per-Service
                # labels summed away).
                labels = re.findall(r'(reason|kind|limit)="([^"]*)"', m.group(2) or "")
                if labels and float(m.group(3)) > 0:
                    key = f"{m.group(1)}{{{','.join(f'{k}={v}' for k, v in labels)}}}"
                    self.by_label[key] = self.by_label.get(key, 0.0) + float(m.group(3))
        return out

    def sample(self) -> None:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
            rss_kib = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
            fds = len(os.listdir(f"/proc/{self.pid}/fd"))
            threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
        except (OSError, AttributeError):
            rss_kib, fds, threads = -1, -1, -1
        self.samples.append({"t": round(time.monotonic() - self.t0), "rss_kib": rss_kib,
                             "fds": fds, "threads": threads, **self.metrics()})

    # ------------------------------------------------------------- faults
    def run(self) -> dict:
        seconds = self.args.minutes * 60
        load_args = ["--seconds", str(seconds)]
        loads = {
            "tcp": self.topo.spawn("load-tcp", self.topo.client, [
                sys.executable, str(HERE / "soakload.py"), "tcp", "--host", mf.WEB_VIP,
                "--port", "80", "--rate", str(self.args.tcp_rate), *load_args]),
            "udp": self.topo.spawn("load-udp", self.topo.client, [
                sys.executable, str(HERE / "soakload.py"), "udp", "--host", mf.DNS_VIP,
                "--port", "53", "--rate", str(self.args.udp_rate), *load_args]),
            "l7": self.topo.spawn("load-l7", self.topo.client, [
                sys.executable, str(HERE / "soakload.py"), "l7", "--host", L7_VIP,
                "--port", "80", "--rate", str(self.args.l7_rate), *load_args]),
        }
        self.t0 = time.monotonic()
        restart_at: dict[str, float] = {}
        api_back_at = None
        trap_off_at = None
        rng = random.Random(10)
        tick = 0
        died = False
        while time.monotonic() - self.t0 < seconds:
            tick += 1
            next_tick = self.t0 + tick
            now = time.monotonic() - self.t0
            if not self.cluster.proxy.alive():
                died = True
                self.event("PROXY EXITED")
                break
            for pod, when in list(restart_at.items()):
                if now >= when:
                    self.cluster.start_http([pod])
                    del restart_at[pod]
                    self.event(f"backend {pod} restarted")
            if api_back_at is not None and now >= api_back_at:
                self.api.start()
                api_back_at = None
                self.event("API server started")
            if trap_off_at is not None and now >= trap_off_at:
                self.trap_on = False
                trap_off_at = None
                self.publish()
                self.event("trapping policy unbound")
            if tick % 5 == 0:
                # Two of three backends, or all three: never fewer, so
                # that a killed backend always leaves one to retry on.
                gone = rng.choice(ALL_PODS)
                self.web_pods = list(ALL_PODS) if len(self.web_pods) < 3 else \
                    [p for p in ALL_PODS if p != gone]
                self.churn = not self.churn
                self.publish()
                self.event(f"manifests: web on {','.join(self.web_pods)}, churn "
                           f"{'added' if self.churn else 'removed'}")
            if tick % 10 == 3:
                candidates = [p for p in ALL_PODS if p not in restart_at]
                pod = rng.choice(candidates)
                self.cluster.stop_server(f"http-{pod}")
                restart_at[pod] = now + 3
                self.event(f"backend {pod} killed")
            if tick % 15 == 7:
                i = (POLICY_CYCLE.index(self.web_policy) + 1) % len(POLICY_CYCLE)
                self.web_policy = POLICY_CYCLE[i]
                self.publish()
                self.event(f"web policy -> {self.web_policy or 'default'}")
            if tick % 20 == 12 and not self.trap_on:
                self.trap_on = True
                trap_off_at = now + 5
                self.publish()
                self.event("trapping policy bound")
            if self.api is not None and tick % 30 == 20 and api_back_at is None:
                self.api.stop()
                api_back_at = now + 2
                self.event("API server stopped")
            if tick % SAMPLE_EVERY == 0:
                self.sample()
            delay = next_tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if api_back_at is not None:
            self.api.start()
        for pod in list(restart_at):
            self.cluster.start_http([pod])
        self.sample()
        results = {}
        for kind, proc in loads.items():
            try:
                proc.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.stop()
            lines = [ln for ln in proc.output().splitlines() if ln.startswith("{")]
            results[kind] = json.loads(lines[-1]) if lines else {"sent": 0, "ok": 0,
                                                                  "failed": 0, "error": proc.output()[-500:]}
        rc = None if died else self.cluster.proxy.stop(signal.SIGTERM, timeout=30)
        text = self.cluster.proxy.log()
        panics = len(re.findall(r"panicked at", text))
        return {"loads": results, "died": died, "rc": rc, "panics": panics,
                "log_lines": len(text.splitlines()),
                "warn_lines": len(re.findall(r" WARN ", text)),
                "error_lines": len(re.findall(r" ERROR ", text))}


def machine() -> str:
    cpu = "unknown"
    try:
        cpu = re.search(r"model name\s+: (.*)", Path("/proc/cpuinfo").read_text()).group(1)
    except (OSError, AttributeError):
        pass
    return f"{platform.node()}, {os.cpu_count()} CPUs ({cpu}), kernel {platform.release()}"


def build_info() -> str:
    """The binary under test and the commit the tree is at."""
    binary = Path(os.environ.get("SWITCHYARD_BIN", REPO / "target" / "debug" / "switchyard"))
    commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                            capture_output=True, text=True, check=False).stdout.strip()
    try:
        built = dt.datetime.fromtimestamp(binary.stat().st_mtime, dt.timezone.utc)
        return f"`{binary}` built {built:%Y-%m-%d %H:%M} UTC; tree at {commit or 'unknown'}"
    except OSError:
        return f"`{binary}`; tree at {commit or 'unknown'}"


def report(args, soak: Soak, out: dict, started: dt.datetime, path: Path) -> str:
    s = soak.samples
    # Warm: past the UDP idle timeout (30 s), when every flow the load
    # opens is matched by one that expires.
    warm = [x for x in s if x["t"] >= 45] or s
    lines = [f"# Soak, {started:%Y-%m-%d %H:%M} UTC: {args.minutes} min, {args.io}, "
             f"source {args.source}", "",
             f"Command: `bash tests/soak --minutes {args.minutes} --io {args.io} "
             f"--source {args.source}`  ",
             f"Binary: {soak.build}  ",
             f"Machine: {machine()}; the run was `nice`d and shared the machine with other "
             f"work (builds, fuzzing), so rates and latencies are not benchmarks.", "",
             "## Verdict", ""]
    total_sent = sum(r.get("sent", 0) for r in out["loads"].values())
    total_failed = sum(r.get("failed", 0) for r in out["loads"].values())
    rate = total_failed / total_sent if total_sent else 1.0
    lines += [f"- proxy alive to the end: {'yes' if not out['died'] else 'NO'}; "
              f"exit code on SIGTERM: {out['rc']}",
              f"- panics in the log: {out['panics']}",
              f"- requests: {total_sent} sent, {total_failed} failed ({rate:.3%})", ""]
    lines += ["## Load", "", "| load | sent | ok | failed | failures by reason |",
              "| --- | ---: | ---: | ---: | --- |"]
    for kind, r in out["loads"].items():
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(r.get("reasons", {}).items())) or "-"
        lines.append(f"| {kind} | {r.get('sent', 0)} | {r.get('ok', 0)} | {r.get('failed', 0)} "
                     f"| {reasons} |")
    lines += ["", "TCP is one HTTP/1.0 GET per connection to the web ClusterIP (three "
              "backends); UDP is one DNS query per socket (a new flow each) to dnsmasq "
              "behind the dns ClusterIP; L7 is HTTP/1.1 keep-alive to a Service with "
              "`switchyard.dev/protocol: http` on the same three backends, balanced per "
              "request. A backend killed mid-request, or a connection "
              "already routed to it, shows as `reset`/`empty_reply`; the proxy retries "
              "other endpoints only for failed connects.", ""]
    kinds: dict[str, int] = {}
    for _, e in soak.events:
        key = re.sub(r" (web-[abc]|on .*|-> .*)", "", e)
        kinds[key] = kinds.get(key, 0) + 1
    lines += ["## Faults injected", "", "| fault | times |", "| --- | ---: |"]
    lines += [f"| {k} | {v} |" for k, v in sorted(kinds.items())]
    if s:
        first, last = warm[0], s[-1]
        lines += ["", "## Resources (sampled every 5 s)", "",
                  f"- RSS: {s[0]['rss_kib']} KiB at start, {first['rss_kib']} KiB once warm "
                  f"(t={first['t']} s), {last['rss_kib']} KiB at the end; max "
                  f"{max(x['rss_kib'] for x in s)} KiB",
                  f"- open fds: {s[0]['fds']} at start, {first['fds']} warm, {last['fds']} at "
                  f"the end; max {max(x['fds'] for x in s)}",
                  f"- threads: {s[0]['threads']} .. {max(x['threads'] for x in s)}", "",
                  "| t (s) | RSS (KiB) | fds | connections | connect failures | UDP flows "
                  "| policy faults | fallbacks | limits | syncs | L7 requests | L7 errors |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
                  "| ---: | ---: |"]
        step = max(1, len(s) // 40)
        for x in s[::step] + ([s[-1]] if (len(s) - 1) % step else []):
            g = lambda k: int(x.get(k, 0))  # noqa: E731
            lines.append(f"| {x['t']} | {x['rss_kib']} | {x['fds']} | "
                         f"{g('switchyard_connections_total')} | "
                         f"{g('switchyard_connect_failures_total')} | "
                         f"{g('switchyard_udp_flows_total')} | "
                         f"{g('switchyard_policy_faults_total')} | "
                         f"{g('switchyard_policy_fallbacks_total')} | "
                         f"{g('switchyard_limits_reached_total')} | "
                         f"{g('switchyard_syncs_total')} | "
                         f"{g('switchyard_http_requests_total')} | "
                         f"{g('switchyard_http_errors_total')} |")
    if getattr(soak, "by_label", None):
        lines += ["", "Counters by reason at the end (summed over Services):", ""]
        lines += [f"- `{k}`: {int(v)}" for k, v in sorted(soak.by_label.items())]
    lines += ["", f"Proxy log: {out['log_lines']} lines, {out['warn_lines']} WARN, "
              f"{out['error_lines']} ERROR (log level info).", ""]
    text = "\n".join(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--io", choices=["uring", "epoll"], default="epoll")
    ap.add_argument("--source", choices=["file", "kubernetes"], default="file")
    ap.add_argument("--tcp-rate", type=float, default=40, help="HTTP requests per second")
    ap.add_argument("--udp-rate", type=float, default=20, help="DNS queries per second")
    ap.add_argument("--l7-rate", type=float, default=20,
                    help="HTTP/1.1 requests per second on one kept-alive L7 connection")
    ap.add_argument("--max-failure-rate", type=float, default=0.05)
    ap.add_argument("--report", type=Path, default=None,
                    help="Markdown report (default bench/results/<date>-soak.md)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/switchyard-soak"))
    args = ap.parse_args()
    os.environ.setdefault("E2E_LOG_LEVEL", "info")
    started = dt.datetime.now(dt.timezone.utc)
    path = args.report or REPO / "bench" / "results" / f"{started:%Y-%m-%d}-soak.md"
    workdir = args.workdir / f"{started:%Y%m%d-%H%M%S}"
    workdir.mkdir(parents=True)
    topology.cleanup_leftovers()
    with topology.Topology(workdir / "net") as topo:
        soak = Soak(args, topo, workdir)
        log(f"setting up in {workdir}")
        soak.setup()
        log(f"running {args.minutes} min ({args.io}, source {args.source})")
        out = soak.run()
    text = report(args, soak, out, started, path)
    print(text)
    log(f"report: {path}")
    sent = sum(r.get("sent", 0) for r in out["loads"].values())
    failed = sum(r.get("failed", 0) for r in out["loads"].values())
    ok = (not out["died"] and out["rc"] == 0 and out["panics"] == 0 and sent > 0
          and failed / sent <= args.max_failure_rate)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
