"""The workloads. Each runs its load generator in the client Pod, pinned to the
load CPU, bounded in time, and returns a flat dict of numbers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import cpu
from .backends import DNS, DNS_NAME, IPERF, WEB, WEB7, Frontend
from .peers import Peer
from .topo import LOAD_CPU, PROXY_CPU, SetupError, Topology, ns_argv, pinned, run, wait_until

HERE = Path(__file__).resolve().parent
LUA = HERE / "wrk_report.lua"
HOLD = HERE / "holdconns.py"


@dataclass
class Settings:
    duration: float = 5.0        # seconds of load per rate workload
    bulk_seconds: float = 5.0
    conns: int = 32              # wrk connections for rate workloads
    idle_conns: int = 9500       # held for the RSS workload
    warmup: float = 1.0          # seconds of load before measuring (iperf3 -O)
    quiet_timeout: float = 60.0  # wait this long at most for other processes to go quiet
    retries: int = 2             # re-measure a workload disturbed by other processes
    retry_budget: float = 900.0  # seconds the whole run may spend waiting and re-measuring
    idle_cpu_seconds: float = 3.0  # no-load CPU sample right after a peer starts
    disturbed: float = 0.10      # cores of foreign CPU during a measurement that disturb it


def _measure(peer: Peer, argv: list[str], ns: str, timeout: float):
    pids = peer.pids()
    before = cpu.sample(pids)
    proc = run(argv, ns=ns, check=False, timeout=timeout)
    after = cpu.sample(pids)
    return proc, cpu.delta(before, after, PROXY_CPU, LOAD_CPU)


def _per(c: dict, n: float, scale: float, prefix: str) -> dict:
    if n <= 0:
        return {}
    return {"foreign_cores": c["foreign_cores"], "foreign_names": c["foreign_names"],
            "forks_per_s": c["forks"] / c["wall_s"],
            f"{prefix}_proxy_core": c["proxy_core_s"] * scale / n,
            f"{prefix}_proxy_core_user": c["proxy_core_user_s"] * scale / n,
            f"{prefix}_proxy_core_sys": c["proxy_core_sys_s"] * scale / n,
            f"{prefix}_proxy_core_softirq": c["proxy_core_softirq_s"] * scale / n,
            f"{prefix}_total": c["total_s"] * scale / n,
            f"{prefix}_process": c["peer_process_s"] * scale / n}


def _wrk(topo: Topology, peer: Peer, s: Settings, conns: int, close: bool,
         fe: Frontend = WEB) -> tuple[dict, dict]:
    host, port = peer.target(fe)
    argv = pinned(LOAD_CPU, ["wrk", "-t1", f"-c{conns}", f"-d{s.duration:g}s", "--timeout", "2s",
                             "-s", str(LUA)])
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://{host}:{port}/")
    proc, c = _measure(peer, argv, topo.client, timeout=s.duration + 30)
    out = proc.stdout.decode(errors="replace")
    m = re.search(r"^WRKJSON (.*)$", out, re.M)
    if proc.returncode != 0 or not m:
        raise SetupError(f"wrk failed ({proc.returncode}): {out}\n"
                         f"{proc.stderr.decode(errors='replace')}")
    w = json.loads(m.group(1))
    errors = sum(w[k] for k in ("err_connect", "err_read", "err_write", "err_status",
                                "err_timeout"))
    if w["requests"] == 0:
        raise SetupError(f"wrk completed no request: {out}")
    w["errors"] = errors
    w["rate"] = w["requests"] / (w["duration_us"] / 1e6)
    return w, c


def connrate(topo: Topology, peer: Peer, s: Settings) -> dict:
    """New connections per second: one short HTTP request per connection."""
    w, c = _wrk(topo, peer, s, s.conns, close=True)
    return {"conn_per_s": w["rate"], "errors": w["errors"], "requests": w["requests"],
            **_per(c, w["requests"], 1e6, "cpu_us_per_conn"),
            "proxy_core_util": c["proxy_core_s"] / c["wall_s"]}


def keepalive(topo: Topology, peer: Peer, s: Settings) -> dict:
    """Requests per second on `conns` kept-alive connections (saturating)."""
    w, c = _wrk(topo, peer, s, s.conns, close=False)
    return {"rps": w["rate"], "errors": w["errors"], "requests": w["requests"],
            "p50_us": w["lat_p50_us"], "p99_us": w["lat_p99_us"], "p999_us": w["lat_p999_us"],
            **_per(c, w["requests"], 1e6, "cpu_us_per_req"),
            "proxy_core_util": c["proxy_core_s"] / c["wall_s"]}


def l7_keepalive(topo: Topology, peer: Peer, s: Settings) -> dict:
    """Issue 8: requests per second and tail latency on `conns` kept-alive
    connections to an L7 Service port (a pick per request; HAProxy `mode
    http`, nginx `proxy_pass`; L4 peers carry it as plain TCP)."""
    w, c = _wrk(topo, peer, s, s.conns, close=False, fe=WEB7)
    return {"rps": w["rate"], "errors": w["errors"], "requests": w["requests"],
            "p50_us": w["lat_p50_us"], "p99_us": w["lat_p99_us"], "p999_us": w["lat_p999_us"],
            **_per(c, w["requests"], 1e6, "cpu_us_per_req"),
            "proxy_core_util": c["proxy_core_s"] / c["wall_s"]}


def latency(topo: Topology, peer: Peer, s: Settings) -> dict:
    """Round-trip latency with one request in flight (no queueing anywhere)."""
    w, c = _wrk(topo, peer, s, 1, close=False)
    return {"rps": w["rate"], "errors": w["errors"], "foreign_cores": c["foreign_cores"],
            "foreign_names": c["foreign_names"], "forks_per_s": c["forks"] / c["wall_s"],
            "p50_us": w["lat_p50_us"],
            "p90_us": w["lat_p90_us"], "p99_us": w["lat_p99_us"], "p999_us": w["lat_p999_us"],
            "mean_us": w["lat_mean_us"]}


def bulk(topo: Topology, peer: Peer, s: Settings) -> dict:
    """One TCP stream, client -> server, iperf3 defaults (128 KiB writes)."""
    host, port = peer.target(IPERF)
    argv = pinned(LOAD_CPU, ["iperf3", "-c", host, "-p", str(port), "-t", f"{s.bulk_seconds:g}",
                             "-O", f"{s.warmup:g}", "-J", "--connect-timeout", "3000"])
    proc, c = _measure(peer, argv, topo.client, timeout=s.bulk_seconds + s.warmup + 30)
    try:
        data = json.loads(proc.stdout.decode(errors="replace"))
        recv = data["end"]["sum_received"]
    except (ValueError, KeyError) as exc:
        raise SetupError(f"iperf3 failed ({proc.returncode}): {proc.stdout[-2000:]!r} "
                         f"{proc.stderr[-2000:]!r}") from exc
    gbytes = recv["bytes"] / 1e9
    # CPU was sampled over the warm-up too: scale to the measured bytes' share of time.
    share = recv["seconds"] / max(c["wall_s"], recv["seconds"])
    return {"gbit_per_s": recv["bits_per_second"] / 1e9,
            "retransmits": data["end"].get("sum_sent", {}).get("retransmits", 0),
            **_per({k: v * share if k.endswith("_s") else v for k, v in c.items()},
                   gbytes, 1e3, "cpu_ms_per_gb")}


def dns(topo: Topology, peer: Peer, s: Settings) -> dict:
    """UDP DNS queries per second through the Service (dnsperf, 4 sockets)."""
    host, port = peer.target(DNS)
    qfile = topo.workdir / "queries.txt"
    qfile.write_text(f"{DNS_NAME} A\n")
    argv = pinned(LOAD_CPU, ["dnsperf", "-s", host, "-p", str(port), "-d", str(qfile),
                             "-l", f"{s.duration:g}", "-c", "4", "-q", "64", "-t", "2"])
    proc, c = _measure(peer, argv, topo.client, timeout=s.duration + 30)
    out = proc.stdout.decode(errors="replace")
    qps = re.search(r"Queries per second:\s+([\d.]+)", out)
    done = re.search(r"Queries completed:\s+(\d+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    if not (qps and done) or int(done.group(1)) == 0:
        raise SetupError(f"dnsperf failed ({proc.returncode}): {out}\n"
                         f"{proc.stderr.decode(errors='replace')}")
    n = int(done.group(1))
    return {"qps": float(qps.group(1)), "completed": n,
            "lost": int(lost.group(1)) if lost else 0,
            **_per(c, n, 1e6, "cpu_us_per_query")}


def _upstream_established(topo: Topology) -> int:
    out = run(["ss", "-Htn", "state", "established", "( dport = :8080 )"], ns=topo.node,
              check=False, timeout=20).stdout
    return out.count(b"\n")


def idle(topo: Topology, peer: Peer, s: Settings) -> dict:
    """RSS of the peer's processes holding `idle_conns` idle proxied connections."""
    pids = peer.pids()
    base = cpu.rss_kib(pids)
    host, port = peer.target(WEB)
    argv = ns_argv(topo.client, pinned(LOAD_CPU, [sys.executable, str(HOLD), host, str(port),
                                                  str(s.idle_conns), "--timeout", "60",
                                                  "--hold", "120"]))
    holder = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, start_new_session=True)
    try:
        line = _readline(holder, timeout=90)
        got = json.loads(line)
        if got["connected"] < s.idle_conns * 0.99:
            raise SetupError(f"only {got['connected']} of {s.idle_conns} idle connections "
                             f"opened: {got}")
        want = int(got["connected"] * 0.99)
        wait_until(lambda: _upstream_established(topo) >= want,
                   f"{want} upstream connections", timeout=60, interval=0.5)
        time.sleep(1.0)
        upstream = _upstream_established(topo)
        rss = cpu.rss_kib(peer.pids())
        n = got["connected"]
        per_conn = (rss - base) * 1024 / n
        return {"connections": n, "upstream": upstream, "rss_base_kib": base, "rss_kib": rss,
                "bytes_per_conn": per_conn,
                "rss_10k_mib": (base * 1024 + per_conn * 10000) / 2**20}
    finally:
        try:
            holder.stdin.close()
            holder.wait(timeout=30)
        except Exception:  # noqa: BLE001
            holder.kill()
            holder.wait(timeout=10)


def _readline(p: subprocess.Popen, timeout: float) -> str:
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        raise SetupError(f"holdconns printed nothing in {timeout}s")
    line = p.stdout.readline().decode(errors="replace")
    if not line:
        raise SetupError(f"holdconns exited ({p.poll()}): "
                         f"{p.stderr.read().decode(errors='replace')[-2000:]}")
    return line


def idle_cpu(topo: Topology, peer: Peer, s: Settings) -> dict:
    """The proxy core's busy share with no load at all (a proxy should sleep)."""
    pids = peer.pids()
    a = cpu.sample(pids)
    time.sleep(s.idle_cpu_seconds)
    c = cpu.delta(a, cpu.sample(pids), PROXY_CPU, LOAD_CPU)
    return {"proxy_core_busy": c["proxy_core_s"] / c["wall_s"],
            "process_cores": c["peer_process_s"] / c["wall_s"],
            "foreign_cores": c["foreign_cores"], "foreign_names": c["foreign_names"],
            "forks_per_s": c["forks"] / c["wall_s"]}


WORKLOADS = {
    "idlecpu": idle_cpu,
    "bulk": bulk,
    "connrate": connrate,
    "keepalive": keepalive,
    "latency": latency,
    "dns": dns,
    "idle": idle,
    "l7keepalive": l7_keepalive,
}
