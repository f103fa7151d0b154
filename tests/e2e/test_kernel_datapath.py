"""The kernel datapath: a Service whose policy gives a slot table is
executed by nftables DNAT (conntrack keeps each flow), not by the proxy.
Every frontend kind on both families, the client address the Pod sees,
externalTrafficPolicy, no endpoints, a hot swap under load, a Service
moved kernel → proxy → kernel under load without a failed request or a
broken established connection, and proxied connections that outlive their
Service's move to the kernel path."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import manifests as mf
import policies as pol
from topology import CLIENT, EXT_V4, NODE_UPLINK_V4, wait_until

HERE = Path(__file__).resolve().parent

ADMIN = "http://127.0.0.1:10249"
VIP4, VIP6 = "10.96.0.90", "fd00:10:96::90"
EXTERNAL_IP = "203.0.113.90"
NODE_PORT, LOCAL_NODE_PORT = 30090, 30091
DATAPATH = "switchyard.dev/datapath"


def kernel_service(name: str = "kern", vips=(VIP4, VIP6), datapath: str | None = "kernel",
                   policy: str | None = "round-robin", slices=None, node_port=NODE_PORT,
                   external_ips=(EXTERNAL_IP,), **kw) -> mf.ServiceDef:
    annotations = {}
    if datapath:
        annotations[DATAPATH] = datapath
    if policy:
        annotations["switchyard.dev/policy"] = policy
    if slices is None:
        slices = [mf.backends(), mf.backends(v6=True)]
    return mf.ServiceDef(name, list(vips),
                         [mf.Port("http", 80, mf.HTTP_PORT, node_port=node_port)], slices,
                         type="NodePort" if node_port else "ClusterIP",
                         external_ips=list(external_ips), annotations=annotations,
                         datapath=None, **kw)


def start(c, tmp_path, services, modules=("round-robin",)) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir(exist_ok=True)
    for name in modules:
        pol.install(pol.built(name), directory, name)
    c.write_services(services)
    c.start_proxy(["--policies", str(directory)])
    c.start_http()
    return directory


def datapaths(c, service: str = "e2e/kern") -> list[dict]:
    services = c.curl_json(f"{ADMIN}/debug/services", where="node")["services"]
    ports = next(s["ports"] for s in services if s["service"] == service)
    return [p["datapath"] for p in ports]


def wait_datapath(c, want: str, service: str = "e2e/kern") -> None:
    wait_until(lambda: all(d and d["datapath"] == want for d in datapaths(c, service)),
               f"{service} on the {want} datapath", timeout=30)


def proxied(c, service: str = "e2e/kern") -> float:
    """Connections the proxy carried for `service` (0 when never counted)."""
    text = c.run_in("node", ["curl", "-sS", f"{ADMIN}/metrics"]).stdout.decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("switchyard_connections_total{") and f'service="{service}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def answers(c, url: str, n: int, where: str = "client") -> list[dict]:
    out = []
    for i in range(n):
        out.append(c.curl_json(f"{url}?n={i}", where=where))
    return out


def test_every_frontend_kind_on_both_families_goes_through_the_kernel(bare_cluster, tmp_path):
    c = bare_cluster
    start(c, tmp_path, [kernel_service()])
    wait_datapath(c, "kernel")
    assert all("slot table" in d["reason"] for d in datapaths(c)), datapaths(c)
    cases = [
        (f"http://{VIP4}/", "client", {CLIENT.ipv4}),
        (f"http://[{VIP6}]/", "client", {CLIENT.ipv6}),
        # externalTrafficPolicy Cluster: traffic to external frontends is
        # masqueraded (kube-proxy spares in-cluster sources, which needs the
        # cluster CIDR; see README).
        (f"http://{EXTERNAL_IP}/", "client", None),
        (f"http://{NODE_UPLINK_V4}:{NODE_PORT}/", "ext", None),
        (f"http://{EXTERNAL_IP}/", "ext", None),
    ]
    for url, where, peers in cases:
        got = answers(c, url, 6, where)
        # Round robin through the kernel: all three Pods answer.
        assert {g["pod"] for g in got} == {"web-a", "web-b", "web-c"}, (url, got)
        seen = {g["peer"] for g in got}
        if peers is not None:
            assert seen == peers, (url, seen)
        else:
            assert EXT_V4 not in seen and seen, (url, seen)
    # Nothing of it went through the proxy.
    assert proxied(c) == 0
    text = c.run_in("node", ["curl", "-sS", f"{ADMIN}/metrics"]).stdout.decode()
    assert 'switchyard_service_ports{datapath="kernel"} 1' in text, text[-2000:]


def test_external_traffic_policy_local_keeps_the_client_and_local_endpoints(bare_cluster, tmp_path):
    c = bare_cluster
    remote = mf.Endpoint("10.244.1.13", "web-c", node="node-b")
    local = kernel_service("kern-local", vips=("10.96.0.91",), node_port=LOCAL_NODE_PORT,
                           external_ips=(), slices=[[*mf.backends(["web-a", "web-b"]), remote]])
    c.write_services([local])
    path = c.manifests / "kern-local.yaml"
    text = path.read_text()
    assert "  externalTrafficPolicy: Cluster\n" in text
    mf.write_atomic(path, text.replace("  externalTrafficPolicy: Cluster\n",
                                       "  externalTrafficPolicy: Local\n", 1))
    directory = tmp_path / "policies"
    directory.mkdir()
    pol.install(pol.built("round-robin"), directory, "round-robin")
    c.start_proxy(["--policies", str(directory)])
    c.start_http()
    wait_datapath(c, "kernel", "e2e/kern-local")
    got = answers(c, f"http://{NODE_UPLINK_V4}:{LOCAL_NODE_PORT}/", 6, "ext")
    assert {g["peer"] for g in got} == {EXT_V4}
    assert {g["pod"] for g in got} == {"web-a", "web-b"}
    # In-cluster traffic (internalTrafficPolicy Cluster) reaches all three.
    got = answers(c, "http://10.96.0.91/", 6)
    assert {g["pod"] for g in got} == {"web-a", "web-b", "web-c"}


def test_no_endpoints_is_refused_at_once(bare_cluster, tmp_path):
    c = bare_cluster
    empty = kernel_service("kern-empty", vips=("10.96.0.92",), node_port=None, external_ips=(),
                           slices=[[]])
    start(c, tmp_path, [empty, kernel_service()])
    wait_datapath(c, "kernel")
    proc = c.curl("http://10.96.0.92/")
    assert proc.returncode == 7, proc.stderr.decode()  # connection refused
    assert "refused" in proc.stderr.decode().lower() or "connect" in proc.stderr.decode().lower()


def from_port(c, vip: str, port: int) -> dict:
    """One connection to `vip`:80 from the client's `port` (clients.py
    reuse-port, read to the server's close: the client holds no TIME_WAIT):
    how it ended, and how many SYNs the client had to send again."""
    got = c.client_py("reuse-port", "--host", vip, "--port", "80", "--requests", "1",
                      "--local-port", str(port))
    how = "answered" if got.get("ok") else got.get("errors", [repr(got)])[0].split("(")[0]
    return {"how": how, "syn_retransmits": got.get("syn_retransmits")}


def test_a_port_reused_after_the_endpoints_went_is_refused_at_once(bare_cluster, tmp_path):
    """A client port that last reached the Service on the kernel path (its
    DNATed conntrack entry lingers in TIME_WAIT) connects again once the
    Service has no endpoints (it moves to the proxy's reject): refused at
    the first SYN, whatever conntrack still holds. (The scale bench's
    probe saw one connect hang 0.5 s at such a move in some runs; this is
    one suspect ruled out.)"""
    c = bare_cluster
    start(c, tmp_path, [kernel_service(node_port=None, external_ips=())])
    wait_datapath(c, "kernel")
    assert from_port(c, VIP4, 40555) == {"how": "answered", "syn_retransmits": 0}
    c.write_services([kernel_service(node_port=None, external_ips=(), slices=[[]])])
    wait_until(lambda: from_port(c, VIP4, 40556)["how"] == "ConnectionRefusedError",
               "a fresh port to be refused")
    assert from_port(c, VIP4, 40555) == {"how": "ConnectionRefusedError", "syn_retransmits": 0}


def held_between_the_hooks(c, tmp_path, port: int, change) -> dict:
    """One connection to VIP4:80 from the client's `port` whose SYN is held
    after our raw prerouting chain and conntrack, before the NAT hook
    (NFQUEUE in iptables' mangle prerouting, priority -150), while
    `change()` runs; then let go. What the connection got (clients.py
    reuse-port)."""
    release = tmp_path / f"release-{port}"
    holder = c.topo.spawn(f"nfqueue-hold-{port}", c.topo.node, [
        sys.executable, str(HERE / "nfqueue_hold.py"), "7", str(release)])
    wait_until(lambda: "bound" in holder.output() or not holder.alive(), "the queue bound")
    assert holder.alive(), holder.output()
    rule = ["PREROUTING", "-t", "mangle", "-p", "tcp", "--syn", "-d", VIP4, "--sport", str(port),
            "-j", "NFQUEUE", "--queue-num", "7"]
    added = c.run_in("node", ["iptables-legacy", "-A", *rule])
    assert added.returncode == 0, added.stderr.decode()
    try:
        client = c.topo.spawn(f"held-client-{port}", c.topo.client, [
            sys.executable, str(HERE / "clients.py"), "reuse-port", "--host", VIP4,
            "--port", "80", "--requests", "1", "--local-port", str(port)])
        wait_until(lambda: "held" in holder.output(), "the client's SYN held between the hooks")
        change()
        release.touch()
        wait_until(lambda: "released" in holder.output(), "the SYN let go")
        wait_until(lambda: not client.alive(), "the held client's answer")
        return json.loads(client.output().strip().splitlines()[-1])
    finally:
        c.run_in("node", ["iptables-legacy", "-D", *rule])
        holder.stop()


def test_a_syn_the_remove_overtook_between_the_hooks_is_refused_at_once(bare_cluster, tmp_path):
    """A SYN that our raw prerouting chain sent to the kernel path (its
    frontend in `kvip`) while the sync that took the last endpoint away
    committed before the NAT hook saw it: refused at once, not sent on
    untranslated to wait a SYN retransmit for its reset; and its client
    port is not spoiled for the kernel path afterwards (the base build's
    untranslated conntrack entry sent every later SYN of that port out
    untranslated: the scale bench's rare 0.5 s probe timeouts at a 1 → 0
    change, bench/results/2026-12-06-s10-hang.md)."""
    c = bare_cluster
    start(c, tmp_path, [kernel_service(node_port=None, external_ips=())])
    wait_datapath(c, "kernel")
    port = 40557

    def remove():
        c.write_services([kernel_service(node_port=None, external_ips=(), slices=[[]])])
        wait_until(lambda: from_port(c, VIP4, port + 1)["how"] == "ConnectionRefusedError",
                   "a fresh port to be refused")

    got = held_between_the_hooks(c, tmp_path, port, remove)
    assert not got["ok"] and got["errors"][0].startswith("ConnectionRefusedError"), got
    assert got["syn_retransmits"] == 0, got
    c.write_services([kernel_service(node_port=None, external_ips=())])
    wait_until(lambda: from_port(c, VIP4, port + 2)["how"] == "answered", "the kernel path back")
    assert from_port(c, VIP4, port) == {"how": "answered", "syn_retransmits": 0}


def test_a_syn_a_move_to_the_proxy_overtook_between_the_hooks_spoils_no_port(bare_cluster,
                                                                               tmp_path):
    """The same split at a move kernel → proxy with endpoints: the SYN is
    dropped at the NAT hook (never diverted from there: conntrack would
    keep an untranslated entry that takes every later SYN of the port to
    the frontend past the NAT chains), and the client's retransmit is
    proxied. No conntrack entry of the port is left behind."""
    c = bare_cluster
    start(c, tmp_path, [kernel_service(node_port=None, external_ips=())])
    wait_datapath(c, "kernel")
    port = 40567

    def to_proxy():
        c.write_services([kernel_service(node_port=None, external_ips=(), datapath="proxy")])
        # In the proxy's set: the change is in nftables (the datapath
        # report comes before the nftables sync).
        wait_until(lambda: c.run_in("node", [
            "nft", "get", "element", "inet", "switchyard", "vip4",
            f"{{ {VIP4} . tcp . 80 }}"]).returncode == 0, "the frontend in the proxy's set")

    got = held_between_the_hooks(c, tmp_path, port, to_proxy)
    assert got["ok"] and got["syn_retransmits"] == 1, got
    entries = c.run_in("node", ["conntrack", "-L", "-p", "tcp", "--orig-dst", VIP4,
                                "--orig-port-src", str(port)])
    assert entries.returncode == 0, entries.stderr.decode()
    assert entries.stdout.decode().strip() == "", entries.stdout.decode()


def test_auto_takes_the_kernel_for_table_policies_only(bare_cluster, tmp_path):
    c = bare_cluster
    dynamic = kernel_service("kern-dyn", vips=("10.96.0.93",), node_port=None, external_ips=(),
                             datapath=None, policy="least-request")
    start(c, tmp_path, [kernel_service(datapath=None), dynamic],
          modules=("round-robin", "least-request"))
    wait_datapath(c, "kernel")
    wait_datapath(c, "proxy", "e2e/kern-dyn")
    d = datapaths(c, "e2e/kern-dyn")[0]
    assert not d["refused"] and "no slot table" in d["reason"], d
    assert len(answers(c, "http://10.96.0.93/", 6)) == 6
    assert proxied(c, "e2e/kern-dyn") >= 6
    assert proxied(c) == 0


def test_kernel_asked_for_an_l7_port_runs_on_the_proxy_with_a_reason(bare_cluster, tmp_path):
    c = bare_cluster
    l7 = kernel_service(node_port=None, external_ips=())
    l7.annotations["switchyard.dev/protocol"] = "http"
    start(c, tmp_path, [l7])
    wait_datapath(c, "proxy")
    d = datapaths(c)[0]
    assert d["refused"] and "L7" in d["reason"], d
    assert c.proxy.wait_log(r"datapath: kernel refused.*L7")
    # The status record a Service owner sees (an Event with the API source).
    assert c.proxy.wait_log(r"(?=.*DatapathFallback)(?=.*kernel datapath not used.*L7)")
    assert answers(c, f"http://{VIP4}/", 3)


# A client that keeps one HTTP/1.1 connection open: a request, then one more
# each time `go.N` appears, and a report of every answer.
KEEPALIVE = r"""
import http.client, json, os, sys, time
host, port, flag, rounds = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
conn = http.client.HTTPConnection(host, port, timeout=10)
out = []
for r in range(rounds):
    if r:
        deadline = time.monotonic() + 120
        while not os.path.exists(f"{flag}.{r}") and time.monotonic() < deadline:
            time.sleep(0.05)
    conn.request("GET", f"/keepalive?r={r}")
    resp = conn.getresponse()
    body = json.loads(resp.read())
    out.append([body["pod"], body["peer_port"]])
    print(json.dumps({"round": r, "pod": body["pod"]}), flush=True)
print(json.dumps({"ok": True, "answers": out}), flush=True)
"""


class Held:
    """Kept-alive connections (`KEEPALIVE`), one per `(name, namespace,
    host, port)`, each answering once at start and once more per round."""

    def __init__(self, c, tmp_path: Path, targets, rounds: int = 3):
        self.tmp_path = tmp_path
        script = tmp_path / "keepalive.py"
        script.write_text(KEEPALIVE)
        self.holders = [
            c.topo.spawn(name, ns, [sys.executable, str(script), host, str(port),
                                    str(tmp_path / "go"), str(rounds)])
            for name, ns, host, port in targets
        ]
        for holder in self.holders:
            wait_until(lambda: '"round": 0' in holder.output(), f"{holder.name}'s first answer")

    def round(self, step: int, what: str = "") -> None:
        """Asks every connection for answer `step` and waits for it."""
        (self.tmp_path / f"go.{step}").write_text("")
        for holder in self.holders:
            wait_until(lambda: f'"round": {step}' in holder.output(),
                       f"{holder.name}'s answer {step} {what}".rstrip())

    def answers(self) -> list[list]:
        """Each connection's answers, `[pod, upstream port]` per round."""
        out = []
        for holder in self.holders:
            wait_until(lambda: '"ok": true' in holder.output(), f"{holder.name}'s report")
            out.append(json.loads(holder.output().strip().splitlines()[-1])["answers"])
        return out

    def assert_one_connection_each(self) -> None:
        """From start to end, one Pod and one upstream port per connection."""
        for answers in self.answers():
            assert len({(pod, port) for pod, port in answers}) == 1, answers


class Load:
    """New connections in a loop from the client Pod, bounded in count and
    time, counting failures."""

    def __init__(self, c, url: str, limit: int = 3000, seconds: float = 120):
        self.c, self.url, self.limit, self.seconds = c, url, limit, seconds
        self.ok = self.failed = 0
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        deadline = time.monotonic() + self.seconds
        while not self.stop.is_set() and self.ok + self.failed < self.limit \
                and time.monotonic() < deadline:
            pods, stderr = self.c.get_many(self.url, 20)
            self.ok += len(pods)
            if len(pods) < 20:
                self.failed += 1
                self.errors.append(stderr.strip()[-300:])

    def __enter__(self) -> "Load":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=180)


def test_moving_between_datapaths_under_load_breaks_nothing(bare_cluster, tmp_path):
    c = bare_cluster
    start(c, tmp_path, [kernel_service()])
    wait_datapath(c, "kernel")
    # One kept-alive connection to the ClusterIP (from a Pod), one to the
    # NodePort (from outside the node).
    held = Held(c, tmp_path, [("keepalive-vip", c.topo.client, VIP4, 80),
                              ("keepalive-np", c.topo.ext, NODE_UPLINK_V4, NODE_PORT)])
    with Load(c, f"http://{VIP4}/") as load:
        wait_until(lambda: load.ok >= 40, "load before the move")
        for step, path in enumerate(("proxy", "kernel"), start=1):
            before = load.ok
            c.write_services([kernel_service(datapath=path)])
            wait_datapath(c, path)
            wait_until(lambda: load.ok >= before + 40, f"load after the move to {path}")
            held.round(step, f"after the move to {path}")
    # One connection, one endpoint, through both moves.
    for answers in held.answers():
        assert len({pod for pod, _ in answers}) == 1, answers
    assert load.failed == 0, load.errors[:3]
    assert load.ok >= 120


def test_a_proxied_connection_outlives_its_frontends_move_to_the_kernel(bare_cluster, tmp_path):
    """Connections the proxy carries when their Service moves to the kernel
    path keep their socket (the kernel gate lets a frontend that came from
    the proxy meet the socket rule first, `kmoved`), while new connections
    take the kernel path."""
    c = bare_cluster
    start(c, tmp_path, [kernel_service(datapath="proxy")])
    wait_datapath(c, "proxy")
    held = Held(c, tmp_path, [("proxied-vip", c.topo.client, VIP4, 80),
                              ("proxied-np", c.topo.ext, NODE_UPLINK_V4, NODE_PORT)])
    wait_until(lambda: proxied(c) >= 2, "the proxy counting the held connections")
    carried = proxied(c)
    c.write_services([kernel_service(datapath="kernel")])
    wait_datapath(c, "kernel")
    # Kernel-path, but out of the raw chain's fast path for the hour its
    # proxied connections need the socket rule (kernel/fast.rs).
    front = f"{VIP4} . tcp . 80"
    assert front in gate_keys(c, "kvip4") and front in gate_keys(c, "kmoved4")
    assert front not in gate_keys(c, "kfast4")
    # New connections, both frontend kinds, go through the kernel: the proxy
    # counts none of them.
    assert len(answers(c, f"http://{VIP4}/", 10)) == 10
    assert len(answers(c, f"http://{NODE_UPLINK_V4}:{NODE_PORT}/", 10, where="ext")) == 10
    assert proxied(c) == carried
    for step in (1, 2):
        held.round(step, "after the move to the kernel")
    held.assert_one_connection_each()


def gate_keys(c, set_name: str) -> set[str]:
    """The elements of one of our table's sets, as `addr . proto . port`."""
    out = c.run_in("node", ["nft", "-j", "list", "set", "inet", "switchyard", set_name])
    doc = json.loads(out.stdout)
    keys = set()
    for item in doc["nftables"]:
        for elem in item.get("set", {}).get("elem", []):
            val = elem["elem"]["val"] if isinstance(elem, dict) and "elem" in elem else elem
            keys.add(" . ".join(str(v) for v in val["concat"]))
    return keys


def drop_standard_services(c) -> None:
    """Removes the cluster's standard Services (they route to the same Pods)."""
    for standard in c.manifests.glob("*.yaml"):
        standard.unlink()


def assert_all_pods_see_the_client(c) -> None:
    """Six requests per family to the kernel Service's VIPs: every Pod
    answers, and each saw the client's own address."""
    for url, peer in ((f"http://{VIP4}/", CLIENT.ipv4), (f"http://[{VIP6}]/", CLIENT.ipv6)):
        got = answers(c, url, 6)
        assert {g["pod"] for g in got} == {"web-a", "web-b", "web-c"}, (url, got)
        assert {g["peer"] for g in got} == {peer}, (url, got)


def start_kernel_and_proxied(c, tmp_path: Path) -> tuple[str, str]:
    """Starts Switchyard with two Services on the same Pods: the kernel-path
    one (`kernel_service()`) and `e2e/prox` on the proxy path, at the
    returned VIPs. Only these two: the standard ones route to the same Pods."""
    drop_standard_services(c)
    prox_vips = ("10.96.0.91", "fd00:10:96::91")
    prox = kernel_service("prox", vips=prox_vips, datapath="proxy", node_port=None,
                          external_ips=())
    start(c, tmp_path, [kernel_service(), prox])
    return prox_vips


def test_an_endpoint_of_a_kernel_and_a_proxied_service_serves_both(bare_cluster, tmp_path):
    """The same Pods behind a kernel-path and a proxy-path Service: the
    proxied Service's upstream replies (transparent: from the Pod's port
    to the client's address) must reach our sockets, so the Pods stay out
    of the reply gate (`kepx`) that skips the socket rule (they are in
    `kepsh`, whose replies meet it); once no proxy-path frontend routes to
    them they go in, with the socket rule kept for an hour (`kepmoved`)."""
    c = bare_cluster
    prox_vips = start_kernel_and_proxied(c, tmp_path)
    wait_datapath(c, "kernel")
    wait_datapath(c, "proxy", "e2e/prox")
    pods = {f"{e.ip} . tcp . {mf.HTTP_PORT}" for e in mf.backends()}
    assert gate_keys(c, "kepx4") == set() and gate_keys(c, "kepx6") == set()
    assert gate_keys(c, "kepsh4") == pods
    # The fast path (kernel/fast.rs): the kernel frontend on one lookup; no
    # reply of a shared Pod skips the socket rule.
    assert f"{VIP4} . tcp . 80" in gate_keys(c, "kfast4")
    assert f"{VIP6} . tcp . 80" in gate_keys(c, "kfast6")
    assert gate_keys(c, "kepfast4") == set()
    held = Held(c, tmp_path, [(f"held-{name}", c.topo.client, vip, 80)
                              for name, vip in (("kern", VIP4), ("prox", prox_vips[0]))])
    carried = proxied(c, "e2e/prox")
    for url in (f"http://{VIP4}/", f"http://[{VIP6}]/", f"http://{prox_vips[0]}/",
                f"http://[{prox_vips[1]}]/"):
        got = answers(c, url, 6)
        assert {g["pod"] for g in got} == {"web-a", "web-b", "web-c"}, (url, got)
        # Both paths keep the client's address.
        assert {g["peer"] for g in got} <= {CLIENT.ipv4, CLIENT.ipv6}, (url, got)
    # Only the proxied Service's connections went through the proxy.
    assert proxied(c, "e2e/prox") == carried + 12
    assert proxied(c) == 0
    for step in (1, 2):
        held.round(step)
    held.assert_one_connection_each()

    # The proxied Service goes: its Pods join the gate, behind the hour of
    # `kepmoved` its connections may still need.
    (c.manifests / "prox.yaml").unlink()
    wait_until(lambda: gate_keys(c, "kepx4") == pods, "the Pods in the reply gate")
    assert gate_keys(c, "kepsh4") == set()
    assert pods <= gate_keys(c, "kepmoved4")
    # Exclusive now, but the proxied connections' hour keeps them off the
    # fast path.
    assert gate_keys(c, "kepfast4") == set()
    got = answers(c, f"http://{VIP4}/", 6)
    assert {g["pod"] for g in got} == {"web-a", "web-b", "web-c"}, got


def test_a_kernel_only_pod_takes_the_fast_path_both_ways(bare_cluster, tmp_path):
    """Pods that only kernel-path Services route to: their Service's
    packets and their replies leave the raw chain at its first rules, one
    lookup each (`kfast`, `kepfast`: kernel/fast.rs), and are served as
    through the gate (all Pods, the client's own address)."""
    c = bare_cluster
    drop_standard_services(c)
    start(c, tmp_path, [kernel_service()])
    wait_datapath(c, "kernel")
    for f, backends in ((4, mf.backends()), (6, mf.backends(v6=True))):
        pods = {f"{e.ip} . tcp . {mf.HTTP_PORT}" for e in backends}
        wait_until(lambda: gate_keys(c, f"kepfast{f}") == pods,
                   f"the Pods in kepfast{f}")
        assert gate_keys(c, f"kepx{f}") == pods
    assert f"{VIP4} . tcp . 80" in gate_keys(c, "kfast4")
    assert_all_pods_see_the_client(c)
    assert proxied(c) == 0
    # The Service goes: its elements leave the fast sets with it.
    (c.manifests / "kern.yaml").unlink()
    wait_until(lambda: gate_keys(c, "kfast4") == set() and gate_keys(c, "kepfast4") == set(),
               "the fast sets emptied")


def raw_hook(c) -> bool:
    """Whether our table has its raw prerouting base chain (hook.rs)."""
    got = c.run_in("node", ["nft", "list", "chain", "inet", "switchyard", "prerouting"])
    return got.returncode == 0 and "hook prerouting priority raw" in got.stdout.decode()


def test_the_raw_hook_exists_only_while_the_proxy_path_has_work(bare_cluster, tmp_path):
    """A node whose Services all run on the kernel path has no raw
    prerouting chain: its packets meet kube-proxy's hooks only, and a
    frontend without endpoints is still refused at once (by the NAT
    chain). The first proxy-path Service brings the chain (before its
    elements: its first connection is proxied); when it goes, the chain
    stays for the proxied connections it leaves (an hour)."""
    c = bare_cluster
    drop_standard_services(c)
    empty = kernel_service("empty", vips=("10.96.0.92", "fd00:10:96::92"), node_port=None,
                           external_ips=(), slices=[[]])
    start(c, tmp_path, [kernel_service(), empty])
    wait_datapath(c, "kernel")
    assert not raw_hook(c)
    assert_all_pods_see_the_client(c)
    assert from_port(c, "10.96.0.92", 40590) == {"how": "ConnectionRefusedError",
                                                 "syn_retransmits": 0}
    prox_vips = ("10.96.0.91", "fd00:10:96::91")
    prox = kernel_service("prox", vips=prox_vips, datapath="proxy", node_port=None,
                          external_ips=())
    c.write_services([prox])
    wait_datapath(c, "proxy", "e2e/prox")
    wait_until(lambda: raw_hook(c), "the raw hook for the proxy-path Service")
    got = answers(c, f"http://{prox_vips[0]}/", 3)
    assert {g["peer"] for g in got} == {CLIENT.ipv4}, got
    assert proxied(c, "e2e/prox") >= 3
    held = Held(c, tmp_path, [("held-prox", c.topo.client, prox_vips[0], 80)])
    (c.manifests / "prox.yaml").unlink()
    wait_until(lambda: c.run_in("client", ["curl", "-sS", "-m", "2",
                                           f"http://{prox_vips[0]}/"]).returncode != 0,
               "the removed VIP to stop answering new connections")
    assert raw_hook(c)
    for step in (1, 2):
        held.round(step, "after its Service went")
    held.assert_one_connection_each()
    got = answers(c, f"http://{VIP4}/", 3)
    assert {g["peer"] for g in got} == {CLIENT.ipv4}, got


def test_a_proxied_connection_outlives_its_services_removal(bare_cluster, tmp_path):
    """The socket rule keeps the connections the proxy carries for a Service
    that goes (both ways: requests to the removed VIP, replies of its
    Pods to our transparent upstream sockets); a kernel Service next to it
    is untouched."""
    c = bare_cluster
    prox_vips = start_kernel_and_proxied(c, tmp_path)
    wait_datapath(c, "proxy", "e2e/prox")
    held = Held(c, tmp_path, [(f"held-{fam}", c.topo.client, vip, 80)
                              for fam, vip in (("v4", prox_vips[0]), ("v6", prox_vips[1]))])
    wait_until(lambda: proxied(c, "e2e/prox") >= 2, "the proxy counting the held connections")
    (c.manifests / "prox.yaml").unlink()
    # New connections to the removed VIP find no Service.
    wait_until(lambda: c.run_in("client", ["curl", "-sS", "-m", "2",
                                           f"http://{prox_vips[0]}/"]).returncode != 0,
               "the removed VIP to stop answering new connections")
    assert c.run_in("client", ["curl", "-sS", "-m", "2", f"http://{prox_vips[0]}/"]
                    ).returncode != 0
    for step in (1, 2):
        held.round(step, "after its Service went")
    held.assert_one_connection_each()
    got = answers(c, f"http://{VIP4}/", 6)
    assert {g["pod"] for g in got} == {"web-a", "web-b", "web-c"}, got


def reach(c, url: str, where: str) -> str:
    """"answered" or "no answer" (nothing came back within 2 s)."""
    proc = c.run_in(where, ["curl", "-sS", "-g", "--connect-timeout", "2", "--max-time", "5",
                            "-o", "/dev/null", "-w", "%{http_code}", url], timeout=30)
    if proc.returncode == 0 and proc.stdout == b"200":
        return "answered"
    return {28: "no answer"}.get(proc.returncode, f"curl rc {proc.returncode}")


def test_source_ranges_on_the_kernel_path_keep_other_sources_out(bare_cluster, tmp_path):
    """loadBalancerSourceRanges of a kernel-path LoadBalancer: the source
    range rule runs first in raw prerouting for kernel-path packets too."""
    c = bare_cluster
    lb_ip4, lb_ip6 = "203.0.113.92", "fd00:203::92"
    c.run_in("ext", ["ip", "-6", "route", "add", "fd00:203::/64", "via", "fd00:50::1"])

    def lb(ranges: list[str]) -> str:
        svc = kernel_service("lbk", vips=("10.96.0.92", "fd00:10:96::92"), node_port=None,
                             external_ips=())
        svc.type = "LoadBalancer"
        service, *slices = svc.documents()
        if ranges:
            service["spec"]["loadBalancerSourceRanges"] = ranges
        service["status"] = {"loadBalancer": {"ingress": [{"ip": lb_ip4, "ipMode": "VIP"},
                                                          {"ip": lb_ip6, "ipMode": "VIP"}]}}
        return mf.to_yaml(service, *slices)

    c.write_file("lbk.yaml", lb([f"{CLIENT.ipv4}/32", f"{CLIENT.ipv6}/128"]))
    start(c, tmp_path, [kernel_service()])
    wait_datapath(c, "kernel", "e2e/lbk")
    lb4, lb6 = f"http://{lb_ip4}/", f"http://[{lb_ip6}]/"
    assert reach(c, lb4, "client") == "answered"
    assert reach(c, lb6, "client") == "answered"
    assert reach(c, lb4, "ext") == "no answer"
    assert reach(c, lb6, "ext") == "no answer"
    # The ClusterIP stays open.
    assert reach(c, "http://10.96.0.92/", "client") == "answered"
    # Frontends with source ranges stay off the fast path, whose first rule
    # would skip the range check of their SYNs (kernel/fast.rs).
    fast = gate_keys(c, "kfast4")
    assert "10.96.0.92 . tcp . 80" in fast and f"{lb_ip4} . tcp . 80" not in fast
    assert f"{lb_ip6} . tcp . 80" not in gate_keys(c, "kfast6")
    # The ranges change: ext is let in, the client Pod is shut out (new
    # connections: one it opened before lives on, as with kube-proxy).
    held = c.keep_connection(lb_ip4, 80, tmp_path / "go")
    c.write_file("lbk.yaml", lb([f"{EXT_V4}/32", "fd00:50::/64"]))
    wait_until(lambda: reach(c, lb4, "ext") == "answered", "ext to be let in (IPv4)")
    assert reach(c, lb6, "ext") == "answered"
    assert reach(c, lb4, "client") == "no answer"
    assert c.kept(held, tmp_path / "go")["ok"] is True
    assert reach(c, lb6, "client") == "no answer"
    # Nothing of it went through the proxy.
    assert proxied(c, "e2e/lbk") == 0


def test_hot_swap_under_load_fails_no_request(bare_cluster, tmp_path):
    c = bare_cluster
    directory = start(c, tmp_path, [kernel_service(policy="rr")], modules=())
    pol.install(pol.built("round-robin"), directory, "rr")
    wait_datapath(c, "kernel")
    with Load(c, f"http://{VIP4}/") as load:
        for i in range(6):
            before = load.ok
            mark = c.proxy.log_mark()
            pol.install(pol.built("random" if i % 2 == 0 else "round-robin"), directory, "rr")
            c.proxy.wait_log(r"policy module loaded", since=mark)
            wait_until(lambda: load.ok >= before + 20, f"load after swap {i}")
    assert load.failed == 0, load.errors[:3]
    wait_datapath(c, "kernel")


def pinned_modules(tmp_path) -> dict[str, Path]:
    """bench/sybench/pinned.wat's two variants: every new flow to the first
    endpoint of the set, or to the last."""
    template = (pol.REPO / "bench" / "sybench" / "pinned.wat").read_text()
    out = {}
    for name, expr in (("first", "(i32.const 0)"),
                       ("last", "(i32.sub (global.get $count) (i32.const 1))")):
        wat = tmp_path / f"pinned-{name}.wat"
        wat.write_text(template.replace("PICK", expr))
        out[name] = tmp_path / f"pinned-{name}.wasm"
        proc = subprocess.run(["wat2wasm", str(wat), "-o", str(out[name])],
                              capture_output=True, timeout=30)
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return out


def test_fifty_table_swaps_under_load_fail_no_connection(bare_cluster, tmp_path):
    """The module file replaced 50 times, alternating two tables that pin
    different endpoints: each time new flows follow the new table, and no
    connection of the load fails (bench/run --swaps measures how soon)."""
    c = bare_cluster
    modules = pinned_modules(tmp_path)
    directory = tmp_path / "policies"
    pol.install(modules["first"], directory, "pinned")
    start(c, tmp_path, [kernel_service(policy="pinned")], modules=())
    wait_datapath(c, "kernel")
    url = f"http://{VIP4}/"

    def settled_on(exclude: str | None) -> str:
        pods: list[str] = []

        def one_pod() -> bool:
            pods[:] = c.get_many(url, 5)[0]
            return len(pods) == 5 and len(set(pods)) == 1 and pods[0] != exclude
        wait_until(one_pod, "five new flows in a row on one endpoint", timeout=10)
        return pods[0]

    pinned = {"first": settled_on(None)}
    pol.install(modules["last"], directory, "pinned")
    pinned["last"] = settled_on(pinned["first"])
    with Load(c, url) as load:
        for i in range(50):
            name = "first" if i % 2 == 0 else "last"
            pol.install(modules[name], directory, "pinned")
            wait_until(lambda: c.get_many(url, 1)[0] == [pinned[name]],
                       f"swap {i}: new flows on {pinned[name]}", timeout=10)
    assert load.failed == 0, load.errors[:3]
    assert load.ok > 0
    wait_datapath(c, "kernel")


# Sends one datagram from a fixed source port and prints the JSON answer.
UDP_ASK = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[3])))
s.settimeout(2)
for _ in range(3):
    s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
    try:
        print(s.recvfrom(2048)[0].decode().strip(), flush=True)
        break
    except socket.timeout:
        continue
"""
UDP_PORT = 9490


def test_a_removed_udp_endpoint_loses_its_conntrack_entries(bare_cluster, tmp_path):
    c = bare_cluster
    servers = Path(__file__).resolve().parent / "servers.py"
    for pod in ("web-a", "web-b"):
        c._spawn(f"udp-{pod}", pod, [sys.executable, str(servers), "udpecho", "--name", pod,
                                     "--port", str(UDP_PORT)], UDP_PORT, "udp")

    def service(pods):
        return mf.ServiceDef("kern-udp", ["10.96.0.94"], [mf.Port("echo", 53, UDP_PORT, "UDP")],
                             [mf.backends(pods)], annotations={DATAPATH: "kernel"})

    directory = tmp_path / "policies"
    directory.mkdir()
    c.write_services([service(["web-a", "web-b"])])
    c.start_proxy(["--policies", str(directory)])
    wait_datapath(c, "kernel", "e2e/kern-udp")
    script = tmp_path / "udp_ask.py"
    script.write_text(UDP_ASK)

    def ask() -> str:
        proc = c.run_in("client", [sys.executable, str(script), "10.96.0.94", "53", "40053"])
        out = proc.stdout.decode().strip()
        assert out, proc.stderr.decode()
        return json.loads(out)["pod"]

    first = ask()
    # The same 5-tuple stays on its Pod through conntrack.
    assert ask() == first
    other = "web-b" if first == "web-a" else "web-a"
    c.write_services([service([other])])
    wait_until(lambda: ask() == other, f"the UDP flow to move from {first} to {other}",
               timeout=20)
    # The removed Pod's server still runs: only a deleted entry moves the flow.
    assert c.servers[f"udp-{first}"].alive()
