"""A throw-away Kubernetes "node" built from network namespaces.

    ext 192.168.50.2  --veth--  node 192.168.50.1, br0 10.244.1.1 (+ IPv6)
                                  |-- br0 --veth-- web-a   10.244.1.11
                                  |-- br0 --veth-- web-b   10.244.1.12
                                  |-- br0 --veth-- web-c   10.244.1.13
                                  `-- br0 --veth-- client  10.244.1.100

Pods reach everything through 10.244.1.1 (see POD_NETWORK below); the node
routes by default to ext, and ext knows only the externalIP range (back to
the node). Service addresses exist only inside these namespaces.

Every namespace is named `sy-<pid>-<n>-<role>`, so that leftovers of a run
that died can be told apart from a run that is still going (its pid lives).
No interface is created in the caller's namespace: veth pairs are created
inside the node namespace with their peer placed straight into the other
one. The namespaces have no route to the outside world: the node's default
route points at ext, and ext routes nothing but the externalIP range back to
the node, so a stray packet dies in ext.

Teardown stops every process started through the topology, kills whatever
else still runs inside its namespaces (by pid, found with `ip netns pids`)
and deletes the namespaces, which takes the veths, the bridge and any
nftables table inside with them. It runs on exceptions, on KeyboardInterrupt
and, as a backstop, at interpreter exit.
"""

from __future__ import annotations

import atexit
import itertools
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

PREFIX = "sy-"
_NAME_RE = re.compile(r"^sy-(\d+)-\d+-")
_counter = itertools.count(1)
_live: dict[str, "Topology"] = {}

NODE_NAME = "node-a"
BRIDGE_V4, BRIDGE_V6 = "10.244.1.1", "fd00:10:244:1::1"
NODE_UPLINK_V4, NODE_UPLINK_V6 = "192.168.50.1", "fd00:50::1"
EXT_V4, EXT_V6 = "192.168.50.2", "fd00:50::2"
EXTERNAL_IP_RANGE = "203.0.113.0/24"
SERVICE_RANGE_V4, SERVICE_RANGE_V6 = "10.96.0.0/16", "fd00:10:96::/112"
# The second node of the two-node tests (Topology.add_remote_node).
LOCAL_SUBNET_V4, REMOTE_SUBNET_V4 = "10.244.1.0/24", "10.244.2.0/24"
NODE_LINK_V4 = ("192.168.60.1", "192.168.60.2")
REMOTE_GATEWAY_V4, REMOTE_POD_V4 = "10.244.2.1", "10.244.2.11"


@dataclass(frozen=True)
class PodSpec:
    name: str  # Kubernetes pod name, also what the HTTP server answers
    role: str  # short namespace suffix
    veth: str  # node-side interface name (< 15 chars)
    ipv4: str
    ipv6: str


BACKENDS = (
    PodSpec("web-a", "pa", "vpa", "10.244.1.11", "fd00:10:244:1::11"),
    PodSpec("web-b", "pb", "vpb", "10.244.1.12", "fd00:10:244:1::12"),
    PodSpec("web-c", "pc", "vpc", "10.244.1.13", "fd00:10:244:1::13"),
)
CLIENT = PodSpec("client", "cl", "vcl", "10.244.1.100", "fd00:10:244:1::100")

# "routed" (default): pods hold a /32 (/128) and reach everything, other pods
# included, through the gateway 10.244.1.1 on br0, so every pod-to-pod packet
# crosses the node's IP stack (like Calico). "bridge": pods hold a /24 (/64)
# and reach each other on-link across br0 (like kubenet/flannel's cni0).
# A transparent proxy (backends see the client pod's address) needs "routed":
# under "bridge", a backend's reply to the client pod's address is bridged
# straight to the client and never meets the proxy (checked: a SYN-ACK to an
# IP_TRANSPARENT socket on the node never arrives).
POD_NETWORK = os.environ.get("E2E_POD_NETWORK", "routed")


class SetupError(RuntimeError):
    """The topology could not be built; tests must fail, never skip."""


def ns_argv(ns: str | None, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv] if ns else list(argv)


def run(
    argv: Sequence[str],
    ns: str | None = None,
    *,
    check: bool = True,
    timeout: float = 30,
    input: bytes | None = None,
) -> subprocess.CompletedProcess:
    """Runs a command (inside `ns` if given), bounded by `timeout` seconds."""
    full = ns_argv(ns, argv)
    try:
        proc = subprocess.run(
            full, input=input, capture_output=True, timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"timed out after {timeout}s: {' '.join(full)}") from exc
    if check and proc.returncode != 0:
        raise SetupError(
            f"command failed ({proc.returncode}): {' '.join(full)}\n"
            f"stdout: {proc.stdout.decode(errors='replace')}\n"
            f"stderr: {proc.stderr.decode(errors='replace')}"
        )
    return proc


def wait_until(pred: Callable[[], object], what: str, timeout: float = 15.0,
               interval: float = 0.1):
    """Polls `pred` until it returns a truthy value; bounded in time."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = pred()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - reported below
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(interval)


def netns_list() -> list[str]:
    out = run(["ip", "netns", "list"]).stdout.decode()
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_netns_processes(ns: str) -> None:
    """Kills, by pid, every process still running inside one of our namespaces."""
    proc = run(["ip", "netns", "pids", ns], check=False, timeout=10)
    for pid in proc.stdout.decode().split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def _delete_netns(ns: str) -> None:
    _kill_netns_processes(ns)
    run(["ip", "netns", "del", ns], check=False, timeout=10)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_leftovers() -> list[str]:
    """Deletes namespaces with our prefix whose creating process is gone."""
    removed = []
    for ns in netns_list():
        m = _NAME_RE.match(ns)
        if m and (int(m.group(1)) != os.getpid()) and not _pid_alive(int(m.group(1))):
            _delete_netns(ns)
            removed.append(ns)
    return removed


def own_namespaces() -> list[str]:
    """Namespaces created by this process (live or leaked)."""
    return [ns for ns in netns_list() if ns.startswith(f"{PREFIX}{os.getpid()}-")]


class Proc:
    """A process started inside a namespace, its output in a log file."""

    def __init__(self, name: str, ns: str, argv: Sequence[str], log: Path,
                 env: dict | None = None):
        self.name, self.ns, self.argv, self.log = name, ns, list(argv), log
        self._logf = open(log, "wb")
        self.popen = subprocess.Popen(
            ns_argv(ns, argv), stdin=subprocess.DEVNULL, stdout=self._logf,
            stderr=subprocess.STDOUT, start_new_session=True, env=env,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send_signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        """Signals the process, waits (bounded), then kills it. Returns its exit code."""
        if self.alive():
            try:
                os.kill(self.pid, sig)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
            except ProcessLookupError:
                pass
        self._logf.close()
        return self.popen.wait(timeout=10)

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError as exc:
            return f"<cannot read {self.log}: {exc}>"


class Topology:
    """Builds the namespaces described at the top of this module."""

    def __init__(self, workdir: Path, pod_network: str | None = None):
        pod_network = pod_network or POD_NETWORK
        if pod_network not in ("bridge", "routed"):
            raise SetupError(f"E2E_POD_NETWORK must be bridge or routed, not {pod_network!r}")
        self.id = f"{PREFIX}{os.getpid()}-{next(_counter)}"
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pod_network = pod_network
        self.node = f"{self.id}-node"
        self.ext = f"{self.id}-ext"
        self.pods = {p.name: f"{self.id}-{p.role}" for p in (*BACKENDS, CLIENT)}
        self.client = self.pods[CLIENT.name]
        self.procs: list[Proc] = []
        self.created: list[str] = []

    # ----------------------------------------------------------------- build
    def __enter__(self) -> "Topology":
        try:
            self.build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()

    def build(self) -> None:
        if os.geteuid() != 0:
            raise SetupError("end-to-end tests need root (network namespaces, nftables)")
        _live[self.id] = self
        for ns in (self.node, self.ext, *self.pods.values()):
            run(["ip", "netns", "add", ns])
            self.created.append(ns)
            self._sysctl(ns, "net.ipv6.conf.all.accept_dad=0",
                         "net.ipv6.conf.default.accept_dad=0",
                         "net.ipv4.conf.all.accept_redirects=0",
                         "net.ipv4.conf.default.accept_redirects=0",
                         "net.ipv6.conf.all.accept_redirects=0",
                         "net.ipv6.conf.default.accept_redirects=0")
            self.ip(ns, "link set lo up")
        self._build_node()
        self._build_ext()
        for spec in (*BACKENDS, CLIENT):
            self._build_pod(spec)

    def _build_node(self) -> None:
        n = self.node
        self._sysctl(n, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                     "net.ipv4.conf.all.send_redirects=0",
                     "net.ipv4.conf.default.send_redirects=0")
        self.ip(n, "link add br0 type bridge stp_state 0 forward_delay 0")
        self.ip(n, "link set br0 address 02:00:0a:f4:01:01 up")
        self.ip(n, f"addr add {BRIDGE_V4}/24 dev br0")
        self.ip(n, f"-6 addr add {BRIDGE_V6}/64 dev br0 nodad")
        self.ip(n, f"link add up0 type veth peer name eth0 netns {self.ext}")
        self.ip(n, f"addr add {NODE_UPLINK_V4}/24 dev up0")
        self.ip(n, f"-6 addr add {NODE_UPLINK_V6}/64 dev up0 nodad")
        self.ip(n, "link set up0 up")
        # A real node has a default route; without one a local connect() to a
        # VIP fails (ENETUNREACH) before nftables' output hook sees it.
        self.ip(n, f"route add default via {EXT_V4} dev up0")
        self.ip(n, f"-6 route add default via {EXT_V6} dev up0")

    def _build_ext(self) -> None:
        e = self.ext
        self.ip(e, f"addr add {EXT_V4}/24 dev eth0")
        self.ip(e, f"-6 addr add {EXT_V6}/64 dev eth0 nodad")
        self.ip(e, "link set eth0 up")
        self.ip(e, f"route add {EXTERNAL_IP_RANGE} via {NODE_UPLINK_V4} dev eth0")

    def _build_pod(self, spec: PodSpec) -> None:
        ns = self.pods[spec.name]
        self.ip(self.node, f"link add {spec.veth} type veth peer name eth0 netns {ns}")
        self.ip(self.node, f"link set {spec.veth} master br0 up")
        if self.pod_network == "bridge":
            self.ip(ns, f"addr add {spec.ipv4}/24 dev eth0")
            self.ip(ns, f"-6 addr add {spec.ipv6}/64 dev eth0 nodad")
            self.ip(ns, "link set eth0 up")
        else:
            self.ip(ns, f"addr add {spec.ipv4}/32 dev eth0")
            self.ip(ns, f"-6 addr add {spec.ipv6}/128 dev eth0 nodad")
            self.ip(ns, "link set eth0 up")
            self.ip(ns, f"route add {BRIDGE_V4} dev eth0 scope link")
            self.ip(ns, f"-6 route add {BRIDGE_V6} dev eth0")
        self.ip(ns, f"route add default via {BRIDGE_V4} dev eth0")
        self.ip(ns, f"-6 route add default via {BRIDGE_V6} dev eth0")

    def add_remote_node(self) -> str:
        """A second node (running no Switchyard) joined to this one by a link,
        with its own Pod subnet and one routed Pod, REMOTE_POD. Each node
        routes the other's Pod subnet through the link, as a cluster's pod
        network does. Returns the Pod's namespace (removed with the rest)."""
        nb, pod = f"{self.id}-nodeb", f"{self.id}-remote"
        for ns in (nb, pod):
            run(["ip", "netns", "add", ns])
            self.created.append(ns)
            self.ip(ns, "link set lo up")
        self._sysctl(nb, "net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0",
                     "net.ipv4.conf.default.send_redirects=0")
        self.ip(self.node, f"link add n2n type veth peer name n2n netns {nb}")
        self.ip(self.node, f"addr add {NODE_LINK_V4[0]}/30 dev n2n")
        self.ip(nb, f"addr add {NODE_LINK_V4[1]}/30 dev n2n")
        self.ip(self.node, "link set n2n up")
        self.ip(nb, "link set n2n up")
        self.ip(self.node, f"route add {REMOTE_SUBNET_V4} via {NODE_LINK_V4[1]}")
        self.ip(nb, f"route add {LOCAL_SUBNET_V4} via {NODE_LINK_V4[0]}")
        self.ip(nb, "link add br0 type bridge stp_state 0 forward_delay 0")
        self.ip(nb, f"addr add {REMOTE_GATEWAY_V4}/24 dev br0")
        self.ip(nb, "link set br0 up")
        self.ip(nb, f"link add vremote type veth peer name eth0 netns {pod}")
        self.ip(nb, "link set vremote master br0 up")
        self.ip(pod, f"addr add {REMOTE_POD_V4}/32 dev eth0")
        self.ip(pod, "link set eth0 up")
        self.ip(pod, f"route add {REMOTE_GATEWAY_V4} dev eth0 scope link")
        self.ip(pod, f"route add default via {REMOTE_GATEWAY_V4} dev eth0")
        return pod

    def ip(self, ns: str, args: str) -> None:
        run(["ip", "-n", ns, *args.split()])

    def _sysctl(self, ns: str, *settings: str) -> None:
        run(["sysctl", "-q", "-w", *settings], ns=ns)

    # -------------------------------------------------------------- processes
    def spawn(self, name: str, ns: str, argv: Sequence[str],
              env: dict | None = None) -> Proc:
        proc = Proc(name, ns, argv, self.workdir / f"{name}.log", env=env)
        self.procs.append(proc)
        return proc

    def exec(self, ns: str, argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
        return run(argv, ns=ns, **kw)

    def wait_listening(self, ns: str, port: int, proto: str = "tcp",
                       timeout: float = 15.0, proc: Proc | None = None) -> None:
        flag = "-Hltn" if proto == "tcp" else "-Hlun"

        def listening() -> bool:
            if proc is not None and not proc.alive():
                raise SetupError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.output()}")
            out = run(["ss", flag, f"sport = :{port}"], ns=ns, check=False).stdout
            return bool(out.strip())

        wait_until(listening, f"{proto}/{port} to listen in {ns}", timeout)

    def logs(self) -> dict[str, str]:
        return {p.name: p.output() for p in self.procs}

    # --------------------------------------------------------------- teardown
    def teardown(self) -> None:
        for proc in reversed(self.procs):
            try:
                proc.stop(signal.SIGTERM, timeout=3)
            except Exception:  # noqa: BLE001 - keep tearing down
                pass
        for ns in reversed(self.created):
            _delete_netns(ns)
        self.created.clear()
        _live.pop(self.id, None)
        leaked = [ns for ns in netns_list() if ns.startswith(f"{self.id}-")]
        for ns in leaked:
            _delete_netns(ns)


@atexit.register
def _teardown_all() -> None:
    for topo in list(_live.values()):
        topo.teardown()
