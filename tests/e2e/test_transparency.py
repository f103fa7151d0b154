"""Backends see the client's own address, as with kube-proxy: Pod clients
through ClusterIPs (TCP and UDP, with bulk data both ways), external
clients through NodePorts with externalTrafficPolicy Local; the node's
address for host processes, externalTrafficPolicy Cluster, and when
transparency is off; a PROXY v2 header when a Service asks for one."""

from __future__ import annotations

import json
import sys

import manifests as mf
from topology import BRIDGE_V4, CLIENT, EXT_V4, NODE_UPLINK_V4, REMOTE_POD_V4

CLIENT_IP = CLIENT.ipv4
PV2_PORT = 9300
UDP_PORT = 9400
VIP = "10.96.0.80"


def peers(cluster, url: str, n: int, where: str = "client") -> set[str]:
    out = set()
    for i in range(n):
        got = cluster.curl_json(f"{url}?n={i}", where=where)
        out.add(got["peer"])
    return out


def test_pod_client_is_seen_by_the_backend(cluster):
    cluster.start_http()
    assert peers(cluster, f"http://{mf.WEB_VIP}/", 9) == {CLIENT_IP}


def test_host_process_keeps_the_node_address(cluster):
    cluster.start_http()
    seen = peers(cluster, f"http://{mf.WEB_VIP}/", 6, where="node")
    assert seen <= {BRIDGE_V4, NODE_UPLINK_V4} and seen, seen


def test_nodeport_local_policy_keeps_the_external_client(bare_cluster):
    c = bare_cluster
    local = mf.ServiceDef("np-local", [VIP], [mf.Port("http", 80, mf.HTTP_PORT, node_port=30081)],
                          [mf.backends()], type="NodePort")
    cluster_policy = mf.ServiceDef("np-cluster", ["10.96.0.81"],
                                   [mf.Port("http", 80, mf.HTTP_PORT, node_port=30082)],
                                   [mf.backends()], type="NodePort")
    c.write_services([local, cluster_policy])
    # externalTrafficPolicy is a Service field the helper does not write.
    path = c.manifests / "np-local.yaml"
    text = path.read_text()
    assert "  externalTrafficPolicy: Cluster\n" in text
    mf.write_atomic(path, text.replace("  externalTrafficPolicy: Cluster\n",
                                       "  externalTrafficPolicy: Local\n", 1))
    c.start_proxy()
    c.start_http()
    assert peers(c, f"http://{NODE_UPLINK_V4}:30081/", 6, where="ext") == {EXT_V4}
    # With Cluster the node's address stands in for the external client.
    seen = peers(c, f"http://{NODE_UPLINK_V4}:30082/", 6, where="ext")
    assert EXT_V4 not in seen and seen, seen


def test_network_policy_on_the_backend_admits_the_client_pod(cluster):
    """An nftables rule in web-a's namespace accepts port 8080 only from the
    client Pod, like a NetworkPolicy enforced at the destination."""
    cluster.start_http(["web-a"])
    single = mf.ServiceDef("web", [mf.WEB_VIP], [mf.http_port()], [mf.backends(["web-a"])])
    mark = cluster.proxy.log_mark()
    cluster.write_services([single])
    cluster.proxy.wait_log(r"service table in force", since=mark)
    pod_ns = cluster.topo.pods["web-a"]
    rules = ("table inet netpol {\n  chain input {\n"
             "    type filter hook input priority 0; policy accept;\n"
             f"    tcp dport {mf.HTTP_PORT} ip saddr != {CLIENT_IP} drop\n  }}\n}}\n")
    added = cluster.run_in(pod_ns, ["sh", "-c", f"printf '%s' '{rules}' | nft -f -"])
    assert added.returncode == 0, added.stderr.decode()
    try:
        assert peers(cluster, f"http://{mf.WEB_VIP}/", 5) == {CLIENT_IP}
        # The node itself is not admitted: its connection times out.
        proc = cluster.curl(f"http://{mf.WEB_VIP}/", "--connect-timeout", "2", "--max-time", "3",
                            where="node")
        assert proc.returncode != 0, "the policy should have dropped the node's connection"
    finally:
        cluster.run_in(pod_ns, ["nft", "delete table inet netpol"])


def test_bulk_both_ways_through_a_transparent_connection(cluster):
    cluster.start_sha()
    size = str(128 << 20)
    for kind in ("sha-up", "sha-down"):
        got = cluster.client_py(kind, "--host", mf.BULK_VIP, "--port", str(mf.SHA_PORT),
                                "--bytes", size)
        assert got.get("ok"), got


def test_udp_keeps_the_client_address(bare_cluster):
    c = bare_cluster
    svc = mf.ServiceDef("echo", [VIP], [mf.Port("echo", UDP_PORT, UDP_PORT, "UDP")],
                        [mf.backends(["web-b"])])
    c.write_services([svc])
    c.start_proxy()
    c._spawn("udpecho-web-b", "web-b", [sys.executable, str(servers_py()), "udpecho", "--name",
                                        "web-b", "--port", str(UDP_PORT)], UDP_PORT, "udp")
    code = ("import socket,sys; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(3); "
            f"s.sendto(b'hi',('{VIP}',{UDP_PORT})); print(s.recvfrom(2048)[0].decode())")
    proc = c.run_in("client", [sys.executable, "-c", code])
    assert proc.returncode == 0, proc.stderr.decode()
    got = json.loads(proc.stdout)
    assert got["peer"] == CLIENT_IP, got


def test_transparency_off_shows_the_node(bare_cluster, tmp_path):
    c = bare_cluster
    c.write_services(mf.standard_services())
    config = tmp_path / "off.yaml"
    config.write_text("dataplane:\n  transparent: false\n")
    c.start_proxy(["--config", str(config)])
    c.start_http()
    assert peers(c, f"http://{mf.WEB_VIP}/", 6) == {BRIDGE_V4}


def test_proxy_protocol_v2_carries_the_client(bare_cluster):
    c = bare_cluster
    svc = mf.ServiceDef("pp", [VIP], [mf.Port("pp", 80, PV2_PORT)], [mf.backends(["web-a"])],
                        annotations={"switchyard.dev/proxy-protocol": "v2"})
    c.write_services([svc])
    c.start_proxy()
    c._spawn("pv2-web-a", "web-a", [sys.executable, str(servers_py()), "proxyv2", "--name", "web-a",
                                    "--port", str(PV2_PORT)], PV2_PORT)
    code = ("import socket; s=socket.create_connection(('%s',80),timeout=5); "
            "print(s.makefile().readline())" % VIP)
    proc = c.run_in("client", [sys.executable, "-c", code])
    assert proc.returncode == 0, proc.stderr.decode()
    got = json.loads(proc.stdout)
    assert got.get("proxied_client") == CLIENT_IP, got
    assert got.get("proxied_destination") == VIP and got.get("proxied_destination_port") == 80, got
    # The packets themselves come from the node: the header is the way.
    assert got["peer"] == BRIDGE_V4, got


def servers_py():
    from cluster import SERVERS
    return SERVERS



def test_backend_on_another_node_sees_the_client(bare_cluster):
    """Client Pod on this node, backend Pod on a second node: the backend
    sees the client Pod, and 128 MiB move intact each way."""
    c = bare_cluster
    remote_ns = c.topo.add_remote_node()
    remote = [mf.Endpoint(REMOTE_POD_V4, "web-remote", node="node-b")]
    c.write_services([
        mf.ServiceDef("remote", [VIP], [mf.http_port()], [remote]),
        mf.ServiceDef("remote-bulk", ["10.96.0.82"], [mf.Port("sha", mf.SHA_PORT, mf.SHA_PORT)], [remote]),
    ])
    c.start_proxy()
    for key, argv, port in (
        ("http-remote", ["http", "--name", "web-remote", "--port", str(mf.HTTP_PORT)], mf.HTTP_PORT),
        ("sha-remote", ["sha", "--port", str(mf.SHA_PORT)], mf.SHA_PORT),
    ):
        proc = c.topo.spawn(key, remote_ns, [sys.executable, str(servers_py()), *argv])
        c.servers[key] = proc
        c.topo.wait_listening(remote_ns, port, proc=proc)
    assert peers(c, f"http://{VIP}/", 5) == {CLIENT_IP}
    for kind in ("sha-up", "sha-down"):
        got = c.client_py(kind, "--host", "10.96.0.82", "--port", str(mf.SHA_PORT),
                          "--bytes", str(128 << 20))
        assert got.get("ok"), got
