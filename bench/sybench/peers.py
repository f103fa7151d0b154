"""The things measured side by side. Each runs in the node namespace of one
topology, fronts the same Services, and (where it is a process) is pinned to
the proxy CPU."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from . import backends as be
from .backends import FRONTENDS, Frontend
from .topo import NODE_NAME, PROXY_CPU, Proc, SetupError, Topology, pinned, run, wait_until

READY_URL = "http://127.0.0.1:10256/readyz"
MAXCONN = 9500  # a few thousand and more: the idle-RSS workload holds 9,000 (fd hard limit 20k)


class Peer:
    name = "peer"
    label = ""
    workloads: tuple[str, ...] = ("idlecpu", "bulk", "connrate", "keepalive", "latency", "dns",
                                  "idle", "l7keepalive")

    def __init__(self) -> None:
        self.topo: Topology | None = None
        self.proc: Proc | None = None
        self.skip_reason = ""

    def available(self) -> str:
        """'' when this peer can run, else why not."""
        return ""

    def start(self, topo: Topology) -> None:
        self.topo = topo

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(signal.SIGTERM, timeout=20)
            self.proc = None

    def target(self, fe: Frontend) -> tuple[str, int]:
        return fe.vip, fe.port

    def pids(self) -> list[int]:
        """Processes whose CPU and memory are this peer's (empty: kernel only)."""
        if self.proc is None or not self.proc.alive():
            return []
        return [self.proc.pid, *_children(self.proc.pid)]

    def supports(self, workload: str) -> bool:
        return workload in self.workloads

    def describe(self) -> dict:
        return {"name": self.name, "label": self.label}


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(x) for x in f.read().split()]
    except OSError:
        return kids
    return kids + [g for k in kids for g in _children(k)]


# ------------------------------------------------------------------ Switchyard
class Switchyard(Peer):
    def __init__(self, binary: Path, io: str, policy: str = "builtin-round-robin",
                 policies_dir: Path | None = None, name: str | None = None,
                 workloads: tuple[str, ...] | None = None, transparent: bool = True,
                 datapath: str = "proxy", engine: str | None = None,
                 manifests: str = "manifests"):
        super().__init__()
        # The Services' directory under the work dir (`backends.SHARED_MANIFESTS`:
        # the L7 Service shares the kernel-path Service's endpoints).
        self.manifests = manifests
        # io_uring engine: None = the default (the ring engine).
        self.engine = engine
        self.binary, self.io, self.policy, self.policies_dir = binary, io, policy, policies_dir
        self.transparent = transparent
        # `proxy` pins the user-space proxy (the default `auto` would put
        # table policies on the kernel datapath); `kernel` is the peer that
        # measures the kernel datapath against kernel-dnat.
        self.datapath = datapath
        wasm = policies_dir is not None
        kernel = datapath == "kernel"
        self.name = name or (f"switchyard-{'kernel' if kernel else io}"
                             + ("-wasm-rr" if wasm else "")
                             + ("" if transparent else "-opaque")
                             + ("-tokio" if engine == "tokio-uring" else ""))
        self.label = ((f"Switchyard kernel datapath" if kernel else f"Switchyard {io}")
                      + (f", Wasm {policy}" if wasm else ", built-in RR")
                      + ("" if transparent else ", transparency off")
                      + (", tokio-uring engine" if engine == "tokio-uring" else "")
                      + (f", Services of {manifests}/" if manifests != "manifests" else ""))
        if workloads:
            self.workloads = workloads

    def available(self) -> str:
        if not self.binary.is_file():
            return f"{self.binary} not found"
        if self.policies_dir is not None:
            module = self.policies_dir / f"{self.policy}.wasm"
            if not module.is_file():
                return f"{module} not found (build the policies with `bash policies/build`)"
        return ""

    def argv(self, manifests: Path) -> list[str]:
        argv = [str(self.binary), "run", "--manifests", str(manifests), "--node-name", NODE_NAME,
                "--io", self.io, "--workers", "1", "--default-policy", self.policy,
                "--log-level", "warn"]
        if self.policies_dir is not None:
            argv += ["--policies", str(self.policies_dir)]
        if self.engine is not None:
            argv += ["--uring-engine", self.engine]
        # With transparency off the upstream leaves from the node's address,
        # as a plain proxy's would: the transparency on/off pair shows what
        # IP_TRANSPARENT, the reply-steering rule and the per-client bind cost.
        argv += ["--config", str(manifests.parent / f"{self.name}.yaml")]
        return argv

    def start(self, topo: Topology) -> None:
        super().start(topo)
        manifests = topo.workdir / self.manifests
        (topo.workdir / f"{self.name}.yaml").write_text(
            "dataplane:\n"
            f"  transparent: {'true' if self.transparent else 'false'}\n"
            f"  datapath: {self.datapath}\n")
        env = dict(os.environ, NO_COLOR="1", RUST_BACKTRACE="1")
        self.proc = topo.spawn(f"{self.name}", topo.node,
                               pinned(PROXY_CPU, self.argv(manifests)), env=env)

        def ready() -> bool:
            if not self.proc.alive():
                raise SetupError(f"{self.name} exited ({self.proc.popen.returncode}):\n"
                                 f"{self.proc.output()}")
            probe = run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2",
                         READY_URL], ns=topo.node, check=False, timeout=10)
            return probe.stdout.decode().strip() == "200"

        wait_until(ready, f"{self.name} to answer 200 on {READY_URL}", timeout=60, interval=0.2)

    def describe(self) -> dict:
        d = super().describe()
        d["command"] = " ".join(["taskset", "-c", str(PROXY_CPU),
                                 *self.argv(Path("MANIFESTS"))])
        return d


# ------------------------------------------------ VIPs as local node addresses
def add_vips(topo: Topology) -> None:
    """HAProxy and nginx bind the Service addresses themselves, held as local
    addresses of the node (as IPVS mode holds them on kube-ipvs0; this kernel
    has no dummy links, so on lo): the client connects to the same VIP as
    with Switchyard."""
    for fe in FRONTENDS.values():
        run(["ip", "-n", topo.node, "addr", "replace", f"{fe.vip}/32", "dev", "lo"])


def del_vips(topo: Topology) -> None:
    for fe in FRONTENDS.values():
        run(["ip", "-n", topo.node, "addr", "del", f"{fe.vip}/32", "dev", "lo"], check=False)


class VipPeer(Peer):
    """A proxy that binds the VIPs itself (see add_vips); they go at stop."""

    def stop(self) -> None:
        super().stop()
        if self.topo is not None:
            del_vips(self.topo)


class NginxPeer(VipPeer):
    """nginx with one generated config in its own directory under the work dir."""
    ready_port = be.WEB.port  # the frontend port to wait for before measuring

    def config(self, root: Path) -> str:
        raise NotImplementedError

    def start(self, topo: Topology) -> None:
        super().start(topo)
        root = topo.workdir / self.name
        root.mkdir(exist_ok=True)
        conf = root / "nginx.conf"
        conf.write_text(self.config(root))
        add_vips(topo)
        self.proc = topo.spawn(self.name, topo.node, pinned(PROXY_CPU, [
            "nginx", "-c", str(conf), "-p", str(root), "-g", "daemon off;"]))
        topo.wait_listening(topo.node, self.ready_port, proc=self.proc)

    def describe(self) -> dict:
        return {**super().describe(), "command": "taskset -c 1 nginx -c CONF -g 'daemon off;'",
                "config": self.config(Path("ROOT"))}


# --------------------------------------------------------------------- HAProxy
class HAProxy(VipPeer):
    workloads = ("idlecpu", "bulk", "connrate", "keepalive", "latency", "idle",
                 "l7keepalive")  # no UDP

    def __init__(self, splice: bool = False):
        super().__init__()
        self.splice = splice
        self.name = "haproxy-splice" if splice else "haproxy"
        self.label = ("HAProxy tcp, splice + bufsize 64k" if splice else "HAProxy tcp, defaults")

    def config(self) -> str:
        # maxpipes: by default maxconn/4 pipes of 2 fds each, past the 20k fd limit here.
        tune = "    tune.bufsize 65536\n    maxpipes 200\n" if self.splice else ""
        splice = "    option splice-request\n    option splice-response\n" if self.splice else ""
        out = [f"""global
    nbthread 1
    maxconn {MAXCONN}
{tune}
defaults
    mode tcp
    timeout connect 2s
    timeout client 600s
    timeout server 600s
{splice}"""]
        for name, fe in FRONTENDS.items():
            if fe.proto != "tcp":
                continue
            servers = "\n".join(f"    server s{i} {ip}:{fe.target_port}"
                                for i, ip in enumerate(fe.backends))
            # L7 frontends: HTTP mode, keep-alive both sides, per-request
            # round robin (HAProxy's defaults for http mode otherwise).
            mode = "    mode http\n    timeout http-request 10s\n" if fe.l7 else ""
            out.append(f"""
frontend fe_{name}
{mode}    bind {fe.vip}:{fe.port} backlog 8192
    default_backend be_{name}

backend be_{name}
{mode}    balance roundrobin
{servers}
""")
        return "".join(out)

    def start(self, topo: Topology) -> None:
        super().start(topo)
        cfg = topo.workdir / f"{self.name}.cfg"
        cfg.write_text(self.config())
        add_vips(topo)
        self.proc = topo.spawn(self.name, topo.node,
                               pinned(PROXY_CPU, ["haproxy", "-db", "-f", str(cfg)]))
        topo.wait_listening(topo.node, be.WEB.port, proc=self.proc)

    def describe(self) -> dict:
        return {**super().describe(), "command": "taskset -c 1 haproxy -db -f CFG",
                "config": self.config()}


# ----------------------------------------------------------------- nginx stream
class NginxStream(NginxPeer):
    name = "nginx-stream"
    label = "nginx stream, 1 worker"

    def config(self, root: Path) -> str:
        servers = []
        upstreams = []
        for name, fe in FRONTENDS.items():
            upstreams.append(f"    upstream {name} {{\n" + "".join(
                f"        server {ip}:{fe.target_port};\n" for ip in fe.backends) + "    }\n")
            if fe.proto == "udp":
                servers.append(f"    server {{ listen {fe.vip}:{fe.port} udp; proxy_pass {name}; "
                               f"proxy_responses 1; proxy_timeout 2s; }}\n")
            else:
                servers.append(f"    server {{ listen {fe.vip}:{fe.port} backlog=8192; "
                               f"proxy_pass {name}; proxy_timeout 600s; }}\n")
        return f"""load_module /usr/lib/nginx/modules/ngx_stream_module.so;
user root;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections {2 * MAXCONN}; multi_accept on; }}
stream {{
{''.join(upstreams)}{''.join(servers)}}}
"""

    workloads = ("idlecpu", "bulk", "connrate", "keepalive", "latency", "dns", "idle")

    def available(self) -> str:
        ok = Path("/usr/lib/nginx/modules/ngx_stream_module.so").is_file()
        return "" if ok else "nginx stream module missing (apt-get install libnginx-mod-stream)"



# ------------------------------------------------------------------ nginx http
class NginxHttp(NginxPeer):
    """nginx `proxy_pass` for the L7 frontends only: HTTP/1.1 to the
    backends with an upstream keep-alive pool, as a reverse proxy is run."""
    name = "nginx-http"
    label = "nginx http proxy_pass, 1 worker, upstream keepalive"
    workloads = ("idlecpu", "l7keepalive")
    ready_port = be.WEB7.port

    def config(self, root: Path) -> str:
        blocks = []
        for name, fe in FRONTENDS.items():
            if not fe.l7:
                continue
            servers = "".join(f"        server {ip}:{fe.target_port};\n" for ip in fe.backends)
            blocks.append(f"""    upstream {name} {{
{servers}        keepalive 64;
    }}
    server {{
        listen {fe.vip}:{fe.port} backlog=8192;
        location / {{
            proxy_pass http://{name};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
""")
        return f"""user root;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections {2 * MAXCONN}; multi_accept on; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 600s;
    client_body_temp_path {root}/tmp-body;
    proxy_temp_path {root}/tmp-proxy;
    fastcgi_temp_path {root}/tmp-fastcgi;
    uwsgi_temp_path {root}/tmp-uwsgi;
    scgi_temp_path {root}/tmp-scgi;
{''.join(blocks)}}}
"""



# ------------------------------------------------------------ kernel nftables DNAT
DNAT_TABLE = "sybench_dnat"
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"


def dnat_ruleset(full: bool = True) -> str:
    """kube-proxy's nftables mode (pkg/proxy/nftables/proxier.go): a verdict map
    from VIP . proto . port to a per-Service chain, `numgen random` over
    per-endpoint chains that DNAT, masquerade marks for traffic from outside
    the cluster CIDR and for hairpin, conntrack-based checks in filter hooks.

    `full` writes every base chain kube-proxy registers (`nftablesBaseChains`:
    eight hooks, among them `filter-prerouting`, which every packet that
    crosses the node meets) with the jumps of `nftablesJumpChains`, in their
    order. Without it, the earlier minimal shape: five of the eight hooks
    (no filter-prerouting, filter-input nor filter-output-post-dnat), which
    is cheaper per packet than the kube-proxy it stands for."""
    svc_elems, chains = [], []
    for name, fe in FRONTENDS.items():
        svc = f"service-bench/{name}/{fe.proto}"
        svc_elems.append(f"{fe.vip} . {fe.proto} . {fe.port} : goto {svc}")
        eps = [f"endpoint-bench/{name}/{fe.proto}__{ip}/{fe.target_port}" for ip in fe.backends]
        arms = ", ".join(f"{i} : goto {ep}" for i, ep in enumerate(eps))
        chains.append(f"""  chain {svc} {{
    ip daddr {fe.vip} {fe.proto} dport {fe.port} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade
    numgen random mod {len(eps)} vmap {{ {arms} }}
  }}
""")
        for ip, ep in zip(fe.backends, eps):
            chains.append(f"""  chain {ep} {{
    ip saddr {ip} jump mark-for-masquerade
    meta l4proto {fe.proto} dnat to {ip}:{fe.target_port}
  }}
""")
    vips = ", ".join(sorted({fe.vip for fe in FRONTENDS.values()}))
    if full:
        extra = """  map firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict; }
  map service-nodeports { type inet_proto . inet_service : verdict; }
  map no-endpoint-nodeports { type inet_proto . inet_service : verdict; }
  chain reject-chain {
    reject
  }
  chain firewall-check {
    ip daddr . meta l4proto . th dport vmap @firewall-ips
  }
  chain nodeport-endpoints-check {
    ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports
  }
  chain filter-prerouting {
    type filter hook prerouting priority -110; policy accept;
    ct state new jump firewall-check
  }
  chain filter-input {
    type filter hook input priority -110; policy accept;
    ct state new jump nodeport-endpoints-check
    ct state new jump service-endpoints-check
  }
  chain filter-output {
    type filter hook output priority -110; policy accept;
    ct state new jump service-endpoints-check
    ct state new jump firewall-check
  }
  chain filter-output-post-dnat {
    type filter hook output priority -90; policy accept;
    ct state new jump cluster-ips-check
  }
"""
        nodeports = ("\n    fib daddr type local ip daddr != 127.0.0.0/8 "
                     "meta l4proto . th dport vmap @service-nodeports")
    else:
        extra = """  chain filter-output {
    type filter hook output priority -110; policy accept;
    ct state new jump service-endpoints-check
  }
"""
        nodeports = ""
    return f"""table ip {DNAT_TABLE} {{
  set cluster-ips {{ type ipv4_addr; elements = {{ {vips} }} }}
  map service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict
    elements = {{ {', '.join(svc_elems)} }}
  }}
  map no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict; }}
  chain mark-for-masquerade {{
    meta mark set meta mark | 0x4000
  }}
  chain masquerading {{
    meta mark & 0x4000 == 0 return
    meta mark set meta mark ^ 0x4000
    masquerade fully-random
  }}
  chain services {{
    ip daddr . meta l4proto . th dport vmap @service-ips{nodeports}
  }}
  chain service-endpoints-check {{
    ip daddr . meta l4proto . th dport vmap @no-endpoint-services
  }}
  chain cluster-ips-check {{
    ip daddr @cluster-ips reject
    ip daddr {{ {SERVICE_CIDR} }} drop
  }}
{extra}  chain filter-forward {{
    type filter hook forward priority -110; policy accept;
    ct state new jump service-endpoints-check
    ct state new jump cluster-ips-check
  }}
  chain nat-prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    jump services
  }}
  chain nat-output {{
    type nat hook output priority -100; policy accept;
    jump services
  }}
  chain nat-postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    jump masquerading
  }}
{''.join(chains)}}}
"""


class KernelDnat(Peer):
    """kube-proxy's nftables ruleset (`full`), or its earlier minimal shape."""

    def __init__(self, full: bool = True) -> None:
        super().__init__()
        self.full = full
        self.name = "kernel-dnat" if full else "kernel-dnat-min"
        self.label = ("kernel nftables DNAT: kube-proxy's nftables ruleset, all eight hooks"
                      if full else
                      "kernel nftables DNAT, minimal: kube-proxy's service chains, five of "
                      "its eight hooks (no filter-prerouting)")

    def start(self, topo: Topology) -> None:
        super().start(topo)
        path = topo.workdir / f"{self.name}.nft"
        path.write_text(dnat_ruleset(self.full))
        run(["nft", "-f", str(path)], ns=topo.node)

    def stop(self) -> None:
        if self.topo is not None:
            run(["nft", "delete", "table", "ip", DNAT_TABLE], ns=self.topo.node, check=False)

    def supports(self, workload: str) -> bool:
        return workload != "idle"

    def describe(self) -> dict:
        return {**super().describe(), "ruleset": dnat_ruleset(self.full)}


class Direct(Peer):
    name = "direct"
    label = "direct to the backend Pod (no Service)"

    def target(self, fe: Frontend) -> tuple[str, int]:
        return fe.backends[0], fe.target_port

    def supports(self, workload: str) -> bool:
        return workload != "idle"
