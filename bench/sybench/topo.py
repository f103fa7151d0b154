"""The benchmark's throw-away node, built from network namespaces.

    ext 192.168.60.2 --veth-- node 192.168.60.1, br0 10.244.1.1
                                |-- br0 --veth-- be-a    10.244.1.11  nginx :8080, dnsmasq :53
                                |-- br0 --veth-- be-b    10.244.1.12  nginx :8080
                                |-- br0 --veth-- be-c    10.244.1.13  nginx :8080, iperf3 :5201
                                `-- br0 --veth-- client  10.244.1.100 wrk, iperf3 -c, dnsperf

Same shape as tests/e2e/topology.py (copied, not imported: the bench needs
its own prefix, CPU pinning, raised limits and load sysctls). Pods are
"routed" (a /32 behind the gateway 10.244.1.1), so every Pod-to-Pod packet
crosses the node's IP stack, as with Calico. The node's default route
points at ext, and ext routes nothing at all: Service and Pod addresses
exist only inside these namespaces and a stray packet dies in ext.

Namespaces are named `syb-<pid>-<role>`; a run sweeps those of dead pids
first. Teardown (exceptions, Ctrl-C, SIGTERM, interpreter exit) stops our
processes, kills by pid whatever still runs in our namespaces and deletes
them, which takes the veths, the bridge and any nftables table with them.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

PREFIX = "syb-"
_NAME_RE = re.compile(r"^syb-(\d+)-")

NODE_NAME = "node-a"
GATEWAY = "10.244.1.1"
NODE_UPLINK, EXT_ADDR = "192.168.60.1", "192.168.60.2"
LOAD_CPU, PROXY_CPU = 0, 1


@dataclass(frozen=True)
class Pod:
    name: str
    role: str
    veth: str
    ip: str


BACKENDS = (
    Pod("be-a", "be-a", "vbe-a", "10.244.1.11"),
    Pod("be-b", "be-b", "vbe-b", "10.244.1.12"),
    Pod("be-c", "be-c", "vbe-c", "10.244.1.13"),
)
CLIENT = Pod("client", "client", "vclient", "10.244.1.100")

# Per-namespace knobs for a load test: a wide ephemeral range and TIME_WAIT
# reuse (tens of thousands of short connections per run), deep accept queues.
# The wide range covers the ports a Switchyard peer listens on (metrics
# 10249, health 10256, the proxy 15001): reserved, or a peer's upstream
# connections (9,000 of them in the idle workload) can still hold one when
# the next peer binds it ("Address already in use", seen on 2026-12-06).
LOAD_SYSCTLS = (
    "net.ipv4.ip_local_port_range=10000 65000",
    "net.ipv4.ip_local_reserved_ports=10249,10256,15001",
    "net.ipv4.tcp_tw_reuse=1",
    "net.core.somaxconn=8192",
    "net.ipv4.tcp_max_syn_backlog=8192",
)


class SetupError(RuntimeError):
    pass


def ns_argv(ns: str | None, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv] if ns else list(argv)


def pinned(cpu: int, argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv]


def run(argv: Sequence[str], ns: str | None = None, *, check: bool = True,
        timeout: float = 30, input: bytes | None = None) -> subprocess.CompletedProcess:
    """Runs a command (inside `ns` if given), bounded by `timeout` seconds."""
    full = ns_argv(ns, argv)
    try:
        proc = subprocess.run(full, input=input, capture_output=True, timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise SetupError(f"timed out after {timeout}s: {' '.join(full)}") from exc
    if check and proc.returncode != 0:
        raise SetupError(f"command failed ({proc.returncode}): {' '.join(full)}\n"
                         f"stdout: {proc.stdout.decode(errors='replace')}\n"
                         f"stderr: {proc.stderr.decode(errors='replace')}")
    return proc


def wait_until(pred: Callable[[], object], what: str, timeout: float = 15.0,
               interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            value = pred()
            if value:
                return value
        except SetupError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported below
            last = exc
        if time.monotonic() >= deadline:
            raise SetupError(f"timed out after {timeout}s waiting for {what}"
                             + (f" (last error: {last})" if last else ""))
        time.sleep(interval)


def netns_list() -> list[str]:
    out = run(["ip", "netns", "list"]).stdout.decode()
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _delete_netns(ns: str) -> None:
    pids = run(["ip", "netns", "pids", ns], check=False, timeout=10).stdout.decode().split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    run(["ip", "netns", "del", ns], check=False, timeout=10)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_leftovers() -> list[str]:
    """Deletes `syb-<pid>-*` namespaces whose creating process is gone."""
    removed = []
    for ns in netns_list():
        m = _NAME_RE.match(ns)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            _delete_netns(ns)
            removed.append(ns)
    return removed


class Proc:
    """A process started inside a namespace, its output in a log file."""

    def __init__(self, name: str, ns: str, argv: Sequence[str], log: Path,
                 env: dict | None = None, stdin=subprocess.DEVNULL):
        self.name, self.ns, self.argv, self.log = name, ns, list(argv), log
        self._logf = open(log, "wb")
        self.popen = subprocess.Popen(ns_argv(ns, argv), stdin=stdin, stdout=self._logf,
                                      stderr=subprocess.STDOUT, start_new_session=True,
                                      env=env)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signals the process, waits (bounded), then kills its whole session."""
        if self.alive():
            try:
                os.kill(self.pid, sig)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(timeout=10)
            except ProcessLookupError:
                pass
        if not self._logf.closed:
            self._logf.close()
        return self.popen.wait(timeout=10)

    def output(self, tail: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-tail:]
        except OSError as exc:
            return f"<cannot read {self.log}: {exc}>"


_live: list["Topology"] = []


class Topology:
    def __init__(self, workdir: Path):
        self.id = f"{PREFIX}{os.getpid()}"
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.node, self.ext = f"{self.id}-node", f"{self.id}-ext"
        self.pods = {p.name: f"{self.id}-{p.role}" for p in (*BACKENDS, CLIENT)}
        self.client = self.pods[CLIENT.name]
        self.procs: list[Proc] = []
        self.created: list[str] = []

    def __enter__(self) -> "Topology":
        _live.append(self)
        try:
            self.build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()

    # ----------------------------------------------------------------- build
    def build(self) -> None:
        for ns in (self.node, self.ext, *self.pods.values()):
            run(["ip", "netns", "add", ns])
            self.created.append(ns)
            self.ip(ns, "link set lo up")
            self.sysctl(ns, "net.ipv4.conf.all.accept_redirects=0",
                        "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0",
                        *LOAD_SYSCTLS)
        n = self.node
        self.sysctl(n, "net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0",
                    "net.ipv4.conf.default.send_redirects=0")
        self.ip(n, "link add br0 type bridge stp_state 0 forward_delay 0")
        self.ip(n, "link set br0 address 02:00:0a:f4:01:01 up")
        self.ip(n, f"addr add {GATEWAY}/24 dev br0")
        self.ip(n, f"link add up0 type veth peer name eth0 netns {self.ext}")
        self.ip(n, f"addr add {NODE_UPLINK}/24 dev up0")
        self.ip(n, "link set up0 up")
        # A real node has a default route; without one a local connect() to a
        # VIP fails before nftables' output hook sees it.
        self.ip(n, f"route add default via {EXT_ADDR} dev up0")
        self.ip(self.ext, f"addr add {EXT_ADDR}/24 dev eth0")
        self.ip(self.ext, "link set eth0 up")
        for pod in (*BACKENDS, CLIENT):
            ns = self.pods[pod.name]
            self.ip(n, f"link add {pod.veth} type veth peer name eth0 netns {ns}")
            self.ip(n, f"link set {pod.veth} master br0 up")
            self.ip(ns, f"addr add {pod.ip}/32 dev eth0")
            self.ip(ns, "link set eth0 up")
            self.ip(ns, f"route add {GATEWAY} dev eth0 scope link")
            self.ip(ns, f"route add default via {GATEWAY} dev eth0")

    def ip(self, ns: str, args: str) -> None:
        run(["ip", "-n", ns, *args.split()])

    def sysctl(self, ns: str, *settings: str) -> None:
        for s in settings:  # one by one: a knob absent in this kernel is not fatal
            run(["sysctl", "-q", "-w", s], ns=ns, check=False)

    # -------------------------------------------------------------- processes
    def spawn(self, name: str, ns: str, argv: Sequence[str], env: dict | None = None,
              stdin=subprocess.DEVNULL) -> Proc:
        proc = Proc(name, ns, argv, self.workdir / f"{name}.log", env=env, stdin=stdin)
        self.procs.append(proc)
        return proc

    def wait_listening(self, ns: str, port: int, proto: str = "tcp", timeout: float = 15.0,
                       proc: Proc | None = None) -> None:
        flag = "-Hltn" if proto == "tcp" else "-Hlun"

        def listening() -> bool:
            if proc is not None and not proc.alive():
                raise SetupError(f"{proc.name} exited ({proc.popen.returncode}):\n"
                                 f"{proc.output()}")
            out = run(["ss", flag, f"sport = :{port}"], ns=ns, check=False).stdout
            return bool(out.strip())

        wait_until(listening, f"{proto}/{port} to listen in {ns}", timeout)

    # --------------------------------------------------------------- teardown
    def teardown(self) -> None:
        for proc in reversed(self.procs):
            try:
                proc.stop(signal.SIGTERM, timeout=5)
            except Exception:  # noqa: BLE001 - keep tearing down
                pass
        self.procs.clear()
        for ns in reversed(self.created):
            _delete_netns(ns)
        self.created.clear()
        for ns in netns_list():
            if ns.startswith(f"{self.id}-"):
                _delete_netns(ns)
        if self in _live:
            _live.remove(self)


@atexit.register
def _teardown_all() -> None:
    for topo in list(_live):
        topo.teardown()
