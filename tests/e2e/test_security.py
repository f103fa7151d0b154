"""SECURITY.md's testable claims about what listens where and which policy
modules load (issue 10). Reload refused from outside: test_operations.py;
the sandbox (foreign imports, memory cap, recursion, deadline, wild guest
pointers): proxy/tests/hardening.rs and policy_abi.rs."""

from __future__ import annotations

import hashlib
import json
import sys

import manifests as mf
import policies as pol
from topology import BRIDGE_V4, NODE_UPLINK_V4

LISTEN_PORT = 15001


def code(cluster, where: str, url: str) -> str:
    proc = cluster.run_in(where, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                  "--connect-timeout", "2", "--max-time", "5", url])
    return proc.stdout.decode().strip()


def test_admin_answers_on_loopback_only_and_probes_everywhere(cluster):
    # /metrics, /debug/* and /reload: 127.0.0.1:10249 in the node namespace.
    assert code(cluster, "node", "http://127.0.0.1:10249/metrics") == "200"
    for where, host in (("ext", NODE_UPLINK_V4), ("client", BRIDGE_V4)):
        got = code(cluster, where, f"http://{host}:10249/debug/services")
        assert got == "000", f"admin port answered {got} from {where}"
    # Probes on :10256 are public, as kube-proxy's (the kubelet and load
    # balancers ask), and say nothing but ok / not ready.
    assert code(cluster, "ext", f"http://{NODE_UPLINK_V4}:10256/healthz") == "200"


# Connects straight to the TPROXY listener port (not diverted by a rule):
# the proxy must not relay it anywhere. Prints what came back.
DIRECT = r"""
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    s.settimeout(3)
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    data = s.recv(4096)
    print("data" if data else "closed")
except ConnectionResetError:
    print("reset")
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("timeout")
"""


def test_the_listener_is_not_an_open_relay(cluster):
    cluster.start_http()
    before = metric_value(cluster, "switchyard_unroutable_total")
    proc = cluster.run_in("ext", [sys.executable, "-c", DIRECT, NODE_UPLINK_V4,
                                  str(LISTEN_PORT)])
    out = proc.stdout.decode().strip()
    assert proc.returncode == 0, proc.stderr.decode()
    # Reset (or refused): nothing relayed, and counted as unroutable.
    assert out in ("reset", "refused", "closed"), f"a direct connection to :{LISTEN_PORT} got {out}"
    if out != "refused":
        assert metric_value(cluster, "switchyard_unroutable_total") > before


def metric_value(cluster, name: str) -> float:
    text = cluster.run_in("node", ["curl", "-sS", "http://127.0.0.1:10249/metrics"]).stdout
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_only_modules_on_the_allow_list_load(bare_cluster, tmp_path):
    c = bare_cluster
    directory = tmp_path / "policies"
    rr, maglev = pol.built("round-robin"), pol.built("maglev")
    pol.install(rr, directory, "round-robin")
    pol.install(maglev, directory, "maglev")
    allowed = hashlib.sha256(rr.read_bytes()).hexdigest()
    config = tmp_path / "trust.yaml"
    config.write_text(f"policy:\n  allowedSha256: [\"{allowed}\"]\n")
    c.write_services([mf.ServiceDef("pol", ["10.96.0.70"], [mf.http_port()], [mf.backends()],
                                    annotations={"switchyard.dev/policy": "maglev"})])
    c.start_proxy(["--config", str(config), "--policies", str(directory)])
    c.start_http()
    maglev_hash = hashlib.sha256(maglev.read_bytes()).hexdigest()
    c.proxy.wait_log(rf"maglev\.wasm: sha256 {maglev_hash} is not in policy\.allowedSha256")
    c.proxy.wait_log(r"policy module loaded.*policy=round-robin|policy=round-robin.*loaded")
    # The Service asked for a module that may not load: it is served anyway
    # (the built-in round robin), never by the untrusted code.
    pods, err = c.get_many("http://10.96.0.70/", 6)
    assert len(pods) == 6, err
    debug = json.loads(c.run_in("node", ["curl", "-sS",
                                         "http://127.0.0.1:10249/debug/policies"]).stdout)
    loaded = {item.get("name") or item.get("module", {}).get("name") for item in debug}
    assert loaded == {"round-robin"}, debug

    # Trusting maglev too takes a config reload (here: the file watch), not
    # a restart; revoking works the same way.
    mark = c.proxy.log_mark()
    config.write_text(f"policy:\n  allowedSha256: [\"{allowed}\", \"{maglev_hash}\"]\n")
    c.proxy.wait_log(r"allowedSha256 / policy.maxEndpoints changed", since=mark)
    c.proxy.wait_log(r"policy module loaded.*policy=maglev|policy=maglev.*loaded", since=mark)
    pods, err = c.get_many("http://10.96.0.70/", 6)
    assert len(pods) == 6 and len(set(pods)) == 1, (pods, err)  # maglev: one client, one pod
