"""Backend Pods: nginx with a tiny body on every Pod, iperf3 and dnsmasq on one
each, all pinned to the load CPU. Also the Services that front them."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from typing import Callable

from .topo import BACKENDS, LOAD_CPU, Proc, SetupError, Topology, pinned, run

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
import manifests as mf  # noqa: E402  (tests/e2e: kubectl-style Service + EndpointSlice YAML)

HTTP_PORT, IPERF_PORT, DNS_PORT = 8080, 5201, 53
# The L7 Service's target port: the same nginx server on a second port, so
# that the kernel-path Service `web` has its endpoints to itself, as most
# Services do. A kernel-path endpoint that a proxy-path Service also routes
# to (same Pod, same port) costs a socket lookup per reply (the proxied
# connections' replies look the same before conntrack); the
# `switchyard-kernel-shared` peer measures that case (`SHARED_MANIFESTS`).
HTTP7_PORT = 8081
SHARED_MANIFESTS = "manifests-shared"
# No L7 Service: every Service runs on the kernel path, as on a node where
# nothing asks for the proxy. Switchyard then has no raw prerouting hook
# (proxy/src/intercept/hook.rs); the `switchyard-kernel-only` peer measures
# it, `switchyard-kernel` the node with one proxy-path Service beside.
KERNEL_ONLY_MANIFESTS = "manifests-kernel-only"
DNS_NAME = "web.bench.svc.cluster.local"
BODY = "ok\n"


@dataclass(frozen=True)
class Frontend:
    vip: str
    port: int
    proto: str          # tcp | udp
    backends: tuple[str, ...]
    target_port: int
    l7: bool = False    # HTTP per request (appProtocol http; HAProxy/nginx in http mode)


WEB = Frontend("10.96.0.10", 80, "tcp", tuple(p.ip for p in BACKENDS), HTTP_PORT)
IPERF = Frontend("10.96.0.20", IPERF_PORT, "tcp", (BACKENDS[2].ip,), IPERF_PORT)
DNS = Frontend("10.96.0.53", 53, "udp", (BACKENDS[0].ip,), DNS_PORT)
# The same nginx Pods behind an L7 Service port (issue 8): per-request balancing.
WEB7 = Frontend("10.96.0.11", 80, "tcp", tuple(p.ip for p in BACKENDS), HTTP7_PORT, l7=True)
FRONTENDS = {"web": WEB, "iperf": IPERF, "dns": DNS, "web7": WEB7}


def write_manifests(directory: Path, web7_port: int = HTTP7_PORT, l7: bool = True) -> None:
    """The Services; `web7_port` HTTP_PORT gives the shared-endpoints variant,
    `l7` False the kernel-only one (no web7)."""
    pods = {p.ip: p.name for p in BACKENDS}

    def eps(fe: Frontend) -> list:
        return [mf.Endpoint(ip, pods[ip], node="node-a") for ip in fe.backends]

    # No switchyard.dev/datapath annotation (the e2e suite's ServiceDef pins
    # the proxy by default): each Switchyard peer's `dataplane.datapath`
    # decides, so the switchyard-kernel peer really runs the kernel path.
    services = [
        mf.ServiceDef("web", [WEB.vip], [mf.Port("http", WEB.port, HTTP_PORT)], [eps(WEB)],
                      namespace="bench", datapath=None),
        mf.ServiceDef("web7", [WEB7.vip], [mf.Port("http", WEB7.port, web7_port,
                                                   app_protocol="http")], [eps(WEB7)],
                      namespace="bench", datapath=None),
        mf.ServiceDef("iperf", [IPERF.vip], [mf.Port("iperf", IPERF.port, IPERF_PORT)],
                      [eps(IPERF)], namespace="bench", datapath=None),
        mf.ServiceDef("dns", [DNS.vip], [mf.Port("dns", DNS.port, DNS_PORT, "UDP")],
                      [eps(DNS)], namespace="bench", datapath=None),
    ]
    if not l7:
        services = [s for s in services if s.name != "web7"]
    mf.write_services(directory, services)


def nginx_backend_conf(root: Path) -> str:
    return f"""
user root;
worker_processes 1;
worker_rlimit_nofile 19000;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 9000; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {root}/tmp-body;
    proxy_temp_path {root}/tmp-proxy;
    fastcgi_temp_path {root}/tmp-fastcgi;
    uwsgi_temp_path {root}/tmp-uwsgi;
    scgi_temp_path {root}/tmp-scgi;
    keepalive_requests 10000000;
    keepalive_timeout 600s;
    client_header_timeout 600s;
    server {{
        listen {HTTP_PORT} backlog=8192;
        listen {HTTP7_PORT} backlog=8192;
        default_type text/plain;
        location / {{ return 200 "{BODY.strip()}\\n"; }}
        # Which Pod answered (bench/run --swaps).
        location /who {{ return 200 "$server_addr\\n"; }}
    }}
}}
"""


def _nginx(topo: Topology, pod) -> Proc:
    ns = topo.pods[pod.name]
    root = topo.workdir / f"nginx-{pod.name}"
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "nginx.conf"
    conf.write_text(nginx_backend_conf(root))
    proc = topo.spawn(f"nginx-{pod.name}", ns, pinned(LOAD_CPU, [
        "nginx", "-c", str(conf), "-p", str(root), "-g", "daemon off;"]))
    topo.wait_listening(ns, HTTP_PORT, proc=proc)
    topo.wait_listening(ns, HTTP7_PORT, proc=proc)
    got = run(["curl", "-sS", "--max-time", "3", f"http://{pod.ip}:{HTTP_PORT}/"],
              ns=topo.client, check=False, timeout=10)
    if got.stdout.decode() != BODY:
        raise SetupError(f"backend {pod.name} answered {got.stdout!r} "
                         f"({got.stderr.decode(errors='replace').strip()})")
    return proc


def _iperf3(topo: Topology) -> Proc:
    ns = topo.pods[BACKENDS[2].name]
    proc = topo.spawn("iperf3-server", ns, pinned(LOAD_CPU, ["iperf3", "-s", "-p",
                                                              str(IPERF_PORT)]))
    topo.wait_listening(ns, IPERF_PORT, proc=proc)
    return proc


def _dnsmasq(topo: Topology) -> Proc:
    pod = BACKENDS[0]
    ns = topo.pods[pod.name]
    proc = topo.spawn("dnsmasq", ns, pinned(LOAD_CPU, [
        "dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
        f"--listen-address={pod.ip}", "--bind-interfaces", f"--port={DNS_PORT}",
        f"--pid-file={topo.workdir / 'dnsmasq.pid'}", "--log-facility=-",
        f"--address=/{DNS_NAME}/{WEB.vip}"]))
    topo.wait_listening(ns, DNS_PORT, "udp", proc=proc)
    return proc


_STARTERS: dict[str, Callable[[Topology], Proc]] = {
    **{f"nginx-{p.name}": (lambda t, p=p: _nginx(t, p)) for p in BACKENDS},
    "iperf3-server": _iperf3,
    "dnsmasq": _dnsmasq,
}
_running: dict[str, Proc] = {}


def start(topo: Topology) -> None:
    for name, starter in _STARTERS.items():
        _running[name] = starter(topo)


def ensure(topo: Topology) -> list[str]:
    """Restarts any backend that has exited (something outside the harness may
    signal it); returns what it restarted, for the record."""
    notes = []
    for name, proc in list(_running.items()):
        if not proc.alive():
            notes.append(f"{name} had exited ({proc.popen.returncode}; log tail: "
                         f"{proc.output(300).strip()!r}); restarted")
            _running[name] = _STARTERS[name](topo)
    return notes
