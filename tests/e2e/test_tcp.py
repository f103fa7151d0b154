"""TCP through every kind of Service address: ClusterIP (v4, v6), NodePort, externalIP."""

from __future__ import annotations

import hashlib

import manifests as mf
from helpers import assert_all_answered
from topology import NODE_UPLINK_V4

N = 30


def test_clusterip_from_pod_spreads_over_all_pods(cluster):
    cluster.start_http()
    pods, err = cluster.get_many(f"http://{mf.WEB_VIP}/", N)
    assert_all_answered(pods, N, err)


def test_clusterip_from_node_namespace(cluster):
    """The node's own processes go through the output hook."""
    cluster.start_http()
    pods, err = cluster.get_many(f"http://{mf.WEB_VIP}/", N, where="node")
    assert_all_answered(pods, N, err)


def test_client_reusing_its_port_meets_no_stale_time_wait(cluster):
    """A client that reconnects from the same port while the proxy still holds
    the last connection's TIME_WAIT is handed to the listener at once: its
    SYN is never answered by the old connection (which would cost a reset
    and a SYN retransmit per connection)."""
    cluster.start_http()
    got = cluster.client_py("reuse-port", "--host", mf.WEB_VIP, "--port", "80",
                            "--requests", "6")
    assert got["ok"], got
    assert_all_answered(got["pods"], 6, "")
    assert got["syn_retransmits"] == 0, got


def test_nodeport_from_outside(cluster):
    cluster.start_http()
    url = f"http://{NODE_UPLINK_V4}:{mf.NODE_PORT}/"
    pods, err = cluster.get_many(url, N, where="ext")
    assert_all_answered(pods, N, err)


def test_external_ip_from_outside(cluster):
    cluster.start_http()
    pods, err = cluster.get_many(f"http://{mf.EXTERNAL_IP}/", N, where="ext")
    assert_all_answered(pods, N, err)


def test_dual_stack_clusterip_v6_and_v4(cluster):
    cluster.start_http()
    pods, err = cluster.get_many(f"http://[{mf.DUAL_VIP6}]/", N)
    assert_all_answered(pods, N, err)
    pods, err = cluster.get_many(f"http://{mf.DUAL_VIP4}/", N)
    assert_all_answered(pods, N, err)


def test_nginx_keepalive_named_target_port(cluster):
    """nginx behind a named targetPort; one connection carries several requests."""
    payload = cluster.start_nginx()
    urls = [f"http://{mf.NGINX_VIP}/payload.bin", f"http://{mf.NGINX_VIP}/pod.txt",
            f"http://{mf.NGINX_VIP}/pod.txt"]
    proc = cluster.run_in("client", ["curl", "-sS", "-v", "--connect-timeout", "3",
                                     "--max-time", "30", *urls], timeout=60)
    stderr = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, f"curl failed ({proc.returncode}):\n{stderr[-2000:]}"
    body = proc.stdout
    assert body[: len(payload)] == payload, "payload corrupted through the proxy"
    assert hashlib.sha256(body[: len(payload)]).digest() == hashlib.sha256(payload).digest()
    pods = body[len(payload):].decode().split()
    assert len(pods) == 2 and pods[0] == pods[1], f"pod.txt answers: {pods}"
    assert "Re-using existing connection" in stderr, \
        f"curl opened a new connection per request:\n{stderr[-2000:]}"
