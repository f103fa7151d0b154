"""Limits (issue 10): a worker's connection cap and UDP flow cap refuse the
excess and count it; running out of file descriptors degrades service but
never takes the process down, and service comes back once descriptors free.

Traffic stays inside the test's namespaces; every loop is bounded."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import manifests as mf
from cluster import DNS_NAME
from topology import run, wait_until

# Opens K connections to host:port and holds them, then tries M HTTP GETs on
# fresh connections while they stay open; closes everything and prints JSON.
HOLD = r"""
import json, socket, sys, time
host, port, k, m, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
held, opened_errors = [], []
for _ in range(k):
    try:
        held.append(socket.create_connection((host, port), timeout=3))
    except OSError as e:
        opened_errors.append(repr(e))
time.sleep(hold)
results = []
for i in range(m):
    try:
        s = socket.create_connection((host, port), timeout=3)
        s.settimeout(3)
        s.sendall(b"GET /held HTTP/1.0\r\n\r\n")
        data = b""
        while len(data) < 65536:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.close()
        results.append("ok" if b" 200 " in data.split(b"\r\n", 1)[0] else "refused")
    except OSError as e:
        results.append(type(e).__name__)
for s in held:
    s.close()
print(json.dumps({"held": len(held), "open_errors": opened_errors, "results": results}))
"""


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "limits.yaml"
    path.write_text(text)
    return path


def metric(cluster, name: str, labels: str = "") -> float:
    """One sample of /metrics (in the node namespace, where admin listens)."""
    proc = cluster.curl("http://127.0.0.1:10249/metrics", where="node")
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    rx = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? ([0-9.e+-]+)$")
    total = 0.0
    for line in proc.stdout.decode().splitlines():
        m = rx.match(line)
        if m and labels in (m.group(1) or ""):
            total += float(m.group(2))
    return total


def hold(cluster, k: int, m: int, hold_s: float = 0.5) -> dict:
    proc = cluster.run_in("client", [sys.executable, "-c", HOLD, mf.WEB_VIP, "80", str(k),
                                     str(m), str(hold_s)], timeout=60 + k)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def test_connection_cap_resets_the_excess_and_counts_it(bare_cluster, tmp_path):
    config = write_config(tmp_path, "dataplane:\n  maxConnectionsPerWorker: 4\n")
    cluster = bare_cluster
    cluster.start_proxy(["--config", str(config), "--workers", "1"])
    cluster.start_http()
    got = hold(cluster, k=4, m=3)
    assert got["held"] == 4, got
    assert all(r != "ok" for r in got["results"]), f"the cap let a 5th connection through: {got}"
    assert metric(cluster, "switchyard_limits_reached_total", 'limit="connections"') >= 3
    # The held connections are gone: the cap frees, service is back.
    pods, err = cluster.get_many(f"http://{mf.WEB_VIP}/", 4)
    assert len(pods) == 4, err
    assert cluster.proxy.alive()
    cluster.proxy.wait_log("maxConnectionsPerWorker reached")


def test_udp_flow_cap_drops_new_flows_and_counts_them(bare_cluster, tmp_path):
    config = write_config(tmp_path, "dataplane:\n  maxUdpFlows: 2\n  udpIdleTimeout: 60s\n")
    cluster = bare_cluster
    cluster.start_proxy(["--config", str(config), "--workers", "1"])
    cluster.start_dns()
    answers = []
    for _ in range(4):  # dig picks a new source port each time: a new flow
        proc = cluster.dig(mf.DNS_VIP, DNS_NAME, "+short")
        answers.append(proc.returncode == 0 and proc.stdout.decode().strip() == mf.WEB_VIP)
    assert answers[:2] == [True, True], answers
    assert answers[2:] == [False, False], answers
    assert metric(cluster, "switchyard_limits_reached_total", 'limit="udp_flows"') >= 2
    assert cluster.proxy.alive()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_fd_exhaustion_degrades_service_and_recovers(cluster):
    cluster.start_http()
    pid = cluster.proxy.proc.pid
    # `ip netns exec` execs the binary: the Popen pid is switchyard itself.
    assert Path(f"/proc/{pid}/exe").resolve().name == "switchyard"
    baseline = open_fds(pid)
    # Room for a handful of proxied connections (two descriptors each), then
    # nothing: the soft and hard limit of the running process, lowered.
    limit = baseline + 8
    run(["prlimit", f"--pid={pid}", f"--nofile={limit}:{limit}"])
    try:
        got = hold(cluster, k=12, m=2, hold_s=1.0)
        assert cluster.proxy.alive(), "switchyard died when it ran out of descriptors"
        assert got["held"] >= 1, got
        exhausted = (metric(cluster, "switchyard_limits_reached_total",
                            'limit="file_descriptors"')
                     + metric(cluster, "switchyard_connect_failures_total"))
        assert exhausted >= 1, "descriptor exhaustion was not counted"
    finally:
        # Held connections closed by now; the limit back to what it was.
        run(["prlimit", f"--pid={pid}", "--nofile=1048576:1048576"], check=False)
    # Recovery: new connections are served again, the process never left.
    wait_until(lambda: len(cluster.get_many(f"http://{mf.WEB_VIP}/", 3)[0]) == 3,
               "service to recover after descriptor exhaustion", timeout=20, interval=0.5)
    assert cluster.proxy.alive()
    time.sleep(0.2)
    assert open_fds(pid) <= baseline + 8, "descriptors leaked after exhaustion"
