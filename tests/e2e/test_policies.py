"""Wasm policies end to end: each ready policy's promise, live swaps under
load, and modules that trap or loop."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections import Counter

import manifests as mf
import policies as pol
from helpers import assert_all_answered

VIP = "10.96.0.70"
URL = f"http://{VIP}/"


def policy_service(policy: str | None, config: str | None = None,
                   slices: list[list[mf.Endpoint]] | None = None) -> mf.ServiceDef:
    annotations = {}
    if policy:
        annotations["switchyard.dev/policy"] = policy
    if config:
        annotations["switchyard.dev/policy-config"] = config
    return mf.ServiceDef("pol", [VIP], [mf.http_port()], slices or [mf.backends()],
                         annotations=annotations)


def start(bare_cluster, tmp_path, service: mf.ServiceDef, modules: dict[str, object]):
    """Installs modules (name → path), writes the Service, starts the proxy."""
    directory = tmp_path / "policies"
    directory.mkdir(exist_ok=True)
    for name, src in modules.items():
        pol.install(src, directory, name)
    bare_cluster.write_services([service])
    bare_cluster.start_proxy(["--policies", str(directory)])
    bare_cluster.start_http()
    return directory


def metric(cluster, name: str, **labels: str) -> float:
    text = cluster.run_in("node", ["curl", "-sS", "http://127.0.0.1:10249/metrics"]).stdout.decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
        if not labels and line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name}{{{want}}} not found")


def bound_policy(cluster) -> str:
    """The policy /debug/services reports for e2e/pol, e.g. "maglev (ab12…)"."""
    services = cluster.curl_json("http://127.0.0.1:10249/debug/services", where="node")["services"]
    return next(s["policy"] for s in services if s["service"] == "e2e/pol")


def wait_metric(cluster, name: str, at_least: float, timeout: float = 60, **labels: str) -> None:
    """Waits until a metric sample reaches `at_least`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if metric(cluster, name, **labels) >= at_least:
                return
        except AssertionError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{name}{labels} stayed below {at_least} for {timeout}s")


def wait_connections(cluster, at_least: int, timeout: float = 60) -> None:
    """Waits until the proxy has carried `at_least` connections to e2e/pol."""
    wait_metric(cluster, "switchyard_connections_total", at_least, timeout, service="e2e/pol")


def test_round_robin_module_spreads(bare_cluster, tmp_path):
    start(bare_cluster, tmp_path, policy_service("round-robin"),
          {"round-robin": pol.built("round-robin")})
    assert bound_policy(bare_cluster).startswith("round-robin ")
    pods, err = bare_cluster.get_many(URL, 30)
    assert_all_answered(pods, 30, err)
    counts = Counter(pods)
    assert max(counts.values()) - min(counts.values()) <= 4, counts


def test_maglev_keeps_a_client_on_one_pod(bare_cluster, tmp_path):
    start(bare_cluster, tmp_path, policy_service("maglev"), {"maglev": pol.built("maglev")})
    pods, err = bare_cluster.get_many(URL, 20)
    assert len(pods) == 20, err
    assert len(set(pods)) == 1, f"one client reached several Pods: {Counter(pods)}"
    # Another client (the node itself) is also pinned to a single Pod.
    pods, err = bare_cluster.get_many(URL, 20, where="node")
    assert len(pods) == 20 and len(set(pods)) == 1, (Counter(pods), err)


def test_canary_ninety_ten(bare_cluster, tmp_path):
    config = '{"canary": "web-c", "percent": 10}'
    start(bare_cluster, tmp_path, policy_service("canary", config), {"canary": pol.built("canary")})
    pods, err = bare_cluster.get_many(URL, 1000)
    assert len(pods) == 1000, err
    share = Counter(pods)["web-c"] / 1000
    # Binomial(1000, 0.1): sd ≈ 0.0095; ±0.05 is more than five sd.
    assert 0.05 <= share <= 0.15, f"canary share {share:.3f}: {Counter(pods)}"


def test_locality_keeps_traffic_on_the_node(bare_cluster, tmp_path):
    eps = mf.backends()
    for e in eps:
        e.node = mf.NODE_NAME if e.pod == "web-a" else "node-b"
    start(bare_cluster, tmp_path, policy_service("locality", slices=[eps]),
          {"locality": pol.built("locality")})
    pods, err = bare_cluster.get_many(URL, 30)
    assert pods == ["web-a"] * 30, (Counter(pods), err)


HOLD = """
import socket, sys, time
socks = [socket.create_connection((sys.argv[1], 80), timeout=5) for _ in range(int(sys.argv[2]))]
print("open", flush=True)
sys.stdin.read()
"""


def test_least_request_avoids_a_busy_pod(bare_cluster, tmp_path):
    # First only web-a serves; twenty long connections land on it (spread over
    # both workers, whose statistics are their own).
    only_a = policy_service("least-request", slices=[mf.backends(["web-a"])])
    start(bare_cluster, tmp_path, only_a, {"least-request": pol.built("least-request")})
    hold = subprocess.Popen(["ip", "netns", "exec", bare_cluster.topo.client, sys.executable, "-c",
                             HOLD, VIP, "20"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert hold.stdout.readline().strip() == b"open"
        # The client's connects return once the kernel has accepted them;
        # wait until the proxy holds all twenty to web-a.
        wait_metric(bare_cluster, "switchyard_connections_active", 20, service="e2e/pol")
        # Then web-b and web-c join: new short connections must avoid web-a.
        mark = bare_cluster.proxy.log_mark()
        bare_cluster.write_services([policy_service("least-request")])
        bare_cluster.proxy.wait_log(r"service table in force", since=mark)
        pods, err = bare_cluster.get_many(URL, 30)
        assert len(pods) == 30, err
        assert "web-a" not in pods, f"least-request sent new connections to the busy Pod: {Counter(pods)}"
    finally:
        hold.stdin.close()
        hold.wait(timeout=10)


def test_trapping_module_falls_back_and_is_counted(bare_cluster, tmp_path):
    trap = pol.assemble("trap", tmp_path)
    start(bare_cluster, tmp_path, policy_service("trap"), {"trap": trap})
    pods, err = bare_cluster.get_many(URL, 30)
    assert_all_answered(pods, 30, err)
    assert metric(bare_cluster, "switchyard_policy_faults_total", policy="trap", kind="trap") >= 1
    assert metric(bare_cluster, "switchyard_policy_disabled_total", policy="trap") >= 1


def test_looping_module_hits_the_deadline(bare_cluster, tmp_path):
    loop = pol.assemble("loop", tmp_path)
    start(bare_cluster, tmp_path, policy_service("loop"), {"loop": loop})
    pods, err = bare_cluster.get_many(URL, 30)
    assert_all_answered(pods, 30, err)
    assert metric(bare_cluster, "switchyard_policy_faults_total", policy="loop", kind="deadline") >= 1


def test_unknown_policy_is_reported_and_service_keeps_serving(bare_cluster, tmp_path):
    start(bare_cluster, tmp_path, policy_service("no-such-policy"), {})
    bare_cluster.proxy.wait_log(r'Service e2e/pol: .*unknown policy "no-such-policy"')
    pods, err = bare_cluster.get_many(URL, 30)
    assert_all_answered(pods, 30, err)


def test_hot_swap_under_load_drops_nothing(bare_cluster, tmp_path):
    directory = start(bare_cluster, tmp_path, policy_service("live"),
                      {"live": pol.built("round-robin")})
    results: dict[str, object] = {}

    def load():
        results["pods"], results["err"] = bare_cluster.get_many(URL, 300)

    worker = threading.Thread(target=load)
    worker.start()
    mark = bare_cluster.proxy.log_mark()
    try:
        # Swap while the load runs: round robin → maglev.
        wait_connections(bare_cluster, 50)
        pol.install(pol.built("maglev"), directory, "live")
        bare_cluster.proxy.wait_log(r"policy module loaded.*live", since=mark, timeout=20)
    finally:
        worker.join(timeout=120)
    pods, err = results["pods"], results["err"]
    assert len(pods) == 300, f"{300 - len(pods)} connections failed across the swap: {err}"
    # After the swap the module in force is maglev: one client, one Pod.
    after, err = bare_cluster.get_many(URL, 20)
    assert len(after) == 20 and len(set(after)) == 1, (Counter(after), err)
    assert re.match(r"live \(", bound_policy(bare_cluster))
