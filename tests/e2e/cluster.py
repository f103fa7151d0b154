"""A topology plus manifests, real servers in the pods and Switchyard on the node."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Iterable

import manifests as mf
from switchyard import Switchyard
from topology import BACKENDS, CLIENT, Proc, SetupError, Topology, run, wait_until

HERE = Path(__file__).resolve().parent
SERVERS = HERE / "servers.py"
CLIENTS = HERE / "clients.py"
ALL_PODS = tuple(p.name for p in BACKENDS)
POD_IP = {p.name: p.ipv4 for p in (*BACKENDS, CLIENT)}
DNS_NAME = "web.e2e.svc.cluster.local"


class Cluster:
    def __init__(self, topo: Topology, workdir: Path, io: str):
        self.topo, self.io = topo, io
        self.workdir = Path(workdir)
        self.manifests = self.workdir / "manifests"
        self.manifests.mkdir(parents=True, exist_ok=True)
        self.proxy: Switchyard | None = None
        self.servers: dict[str, Proc] = {}

    # ------------------------------------------------------------- manifests
    def write_services(self, services: Iterable[mf.ServiceDef]) -> None:
        mf.write_services(self.manifests, services)

    def write_file(self, name: str, text: str) -> Path:
        path = self.manifests / name
        mf.write_atomic(path, text)
        return path

    # ----------------------------------------------------------------- proxy
    def start_proxy(self, extra_args: Iterable[str] = (), wait: bool = True) -> Switchyard:
        self.proxy = Switchyard(self.topo, self.manifests, self.io, list(extra_args)).start(
            wait=wait)
        return self.proxy

    # --------------------------------------------------------------- servers
    def _spawn(self, key: str, pod: str, argv: list[str], port: int, proto: str = "tcp") -> Proc:
        proc = self.topo.spawn(key, self.topo.pods[pod], argv)
        self.servers[key] = proc
        self.topo.wait_listening(self.topo.pods[pod], port, proto, proc=proc)
        return proc

    def start_http(self, pods: Iterable[str] = ALL_PODS) -> None:
        """HTTP servers on :8080, each checked by curling its pod IP directly."""
        for pod in pods:
            self._spawn(f"http-{pod}", pod, [sys.executable, str(SERVERS), "http", "--name", pod,
                                             "--port", str(mf.HTTP_PORT)], mf.HTTP_PORT)
            got = self.curl_json(f"http://{POD_IP[pod]}:{mf.HTTP_PORT}/direct")
            if got.get("pod") != pod:
                raise SetupError(f"direct request to {pod} answered {got}")

    def stop_server(self, key: str) -> None:
        self.servers.pop(key).stop()

    def start_sha(self, pod: str = "web-c") -> None:
        self._spawn(f"sha-{pod}", pod, [sys.executable, str(SERVERS), "sha",
                                        "--port", str(mf.SHA_PORT)], mf.SHA_PORT)

    def start_reset(self, pod: str = "web-b") -> None:
        self._spawn(f"reset-{pod}", pod, [sys.executable, str(SERVERS), "reset",
                                          "--port", str(mf.RESET_PORT)], mf.RESET_PORT)

    def start_iperf(self, pod: str = "web-c") -> None:
        self._spawn(f"iperf3-{pod}", pod, ["iperf3", "-s", "-p", str(mf.IPERF_PORT)],
                    mf.IPERF_PORT)

    def start_dns(self, pod: str = "web-a", name: str = DNS_NAME) -> None:
        argv = ["dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
                f"--listen-address={POD_IP[pod]}", "--bind-interfaces", "--port=53",
                f"--pid-file={self.workdir / f'dnsmasq-{pod}.pid'}", "--log-queries",
                "--log-facility=-", f"--address=/{name}/{mf.WEB_VIP}"]
        self._spawn(f"dnsmasq-{pod}", pod, argv, 53, "udp")
        self.topo.wait_listening(self.topo.pods[pod], 53, "tcp")

    def start_nginx(self, pods: Iterable[str] = ("web-a", "web-b"), payload_mib: int = 4) -> bytes:
        """nginx on :8081 serving /payload.bin (identical on every pod) and /pod.txt."""
        payload = (b"switchyard-e2e-" * (1 << 16))[: payload_mib << 20]
        for pod in pods:
            root = self.workdir / f"nginx-{pod}"
            (root / "html").mkdir(parents=True, exist_ok=True)
            (root / "html" / "payload.bin").write_bytes(payload)
            (root / "html" / "pod.txt").write_text(pod + "\n")
            conf = root / "nginx.conf"
            conf.write_text(f"""
user root;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/tmp-body;
    proxy_temp_path {root}/tmp-proxy;
    fastcgi_temp_path {root}/tmp-fastcgi;
    uwsgi_temp_path {root}/tmp-uwsgi;
    scgi_temp_path {root}/tmp-scgi;
    server {{
        listen {mf.NGINX_PORT};
        root {root}/html;
        keepalive_requests 1000;
    }}
}}
""")
            self._spawn(f"nginx-{pod}", pod, ["nginx", "-c", str(conf), "-p", str(root),
                                              "-g", "daemon off;"], mf.NGINX_PORT)
        return payload

    # --------------------------------------------------------------- clients
    def ns(self, where: str) -> str:
        """The namespace of "client", "node" or "ext"; any other name as it is."""
        return {"client": self.topo.client, "node": self.topo.node, "ext": self.topo.ext}.get(
            where, where)

    def run_in(self, where: str, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
        return run(argv, ns=self.ns(where), check=False, timeout=timeout)

    def curl(self, url: str, *args: str, where: str = "client",
             timeout: float = 30) -> subprocess.CompletedProcess:
        argv = ["curl", "-sS", "--connect-timeout", "3", "--max-time", "10", *args, url]
        return self.run_in(where, argv, timeout=timeout)

    def curl_json(self, url: str, where: str = "client") -> dict:
        proc = self.curl(url, where=where)
        if proc.returncode != 0:
            raise AssertionError(f"curl {url} from {where} failed ({proc.returncode}): "
                                 f"{proc.stderr.decode(errors='replace').strip()}")
        return json.loads(proc.stdout)

    def get_many(self, url: str, count: int, where: str = "client") -> tuple[list[str], str]:
        """`count` GETs of `url`, each on a new connection, from one curl process.

        Returns the pods that answered, in order, and curl's stderr; stops at
        the first failure.
        """
        sep = "&" if "?" in url else "?"
        urls = [f"{url}{sep}n={i}" for i in range(1, count + 1)]
        proc = self.curl(urls[0], "-g", "--fail-early", "-H", "Connection: close", *urls[1:],
                         where=where, timeout=15 + count * 12)
        pods = [json.loads(line)["pod"] for line in proc.stdout.decode().splitlines()
                if line.strip()]
        return pods, proc.stderr.decode(errors="replace")

    def client_py(self, *args: str, where: str = "client", timeout: float = 120) -> dict:
        proc = self.run_in(where, [sys.executable, str(CLIENTS), *args], timeout=timeout)
        try:
            return json.loads(proc.stdout.decode().strip().splitlines()[-1])
        except (IndexError, ValueError):
            return {"ok": False, "rc": proc.returncode,
                    "stdout": proc.stdout.decode(errors="replace"),
                    "stderr": proc.stderr.decode(errors="replace")}

    def keep_connection(self, host: str, port: int, until: Path, where: str = "client") -> Proc:
        """clients.py keep, in the background: one HTTP request now, a second
        on the same connection once `until` exists; returns the process once
        the first is answered. `kept` reads its verdict."""
        proc = self.topo.spawn(f"keep-{until.name}", self.ns(where), [
            sys.executable, str(CLIENTS), "keep", "--host", host, "--port", str(port),
            "--until", str(until)])
        wait_until(lambda: '"first"' in proc.output() or not proc.alive(),
                   "the kept connection's first answer")
        return proc

    @staticmethod
    def kept(proc: Proc, until: Path) -> dict:
        until.touch()
        wait_until(lambda: not proc.alive(), "the kept connection's second request")
        lines = [line for line in proc.output().splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {"ok": False, "output": proc.output()}

    def dig(self, server: str, name: str = DNS_NAME, *opts: str,
            where: str = "client") -> subprocess.CompletedProcess:
        return self.run_in(where, ["dig", f"@{server}", name, "A", "+time=2", "+tries=1",
                                   *opts], timeout=30)
