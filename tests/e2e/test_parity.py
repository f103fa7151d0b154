"""kube-proxy parity: what an operator swapping kube-proxy for Switchyard
must keep (issue 15). Every test runs the real binary on both io back ends
with real clients."""

from __future__ import annotations

import copy
import json
import signal
import sys

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

import manifests as mf
from apiserver import ApiServer, node_object
from switchyard import binary
from topology import (BRIDGE_V4, CLIENT, EXT_V4, NODE_NAME, NODE_UPLINK_V4, NODE_UPLINK_V6, run,
                      wait_until)

ADMIN = "http://127.0.0.1:10249"
WEB = f"http://{mf.WEB_VIP}/"


# ------------------------------------------------------------ /metrics formats
def scrape(cluster, accept: str | None) -> tuple[str, str]:
    """(Content-Type, body) of /metrics as a scraper sending `accept` gets it."""
    args = ["-D", "-", "-o", "/dev/stdout"]
    if accept is not None:
        args += ["-H", f"Accept: {accept}"]
    proc = cluster.curl(f"{ADMIN}/metrics", *args, where="node")
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    head, _, body = proc.stdout.decode().partition("\r\n\r\n")
    content_type = next((line.split(":", 1)[1].strip() for line in head.split("\r\n")
                         if line.lower().startswith("content-type:")), "")
    return content_type, body


def test_metrics_negotiate_a_format_both_parsers_read(cluster):
    cluster.start_http()
    pods, stderr = cluster.get_many(WEB, 3)
    assert len(pods) == 3, stderr

    # Prometheus 3's scrape Accept header asks for OpenMetrics first.
    prom3 = ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
             "application/openmetrics-text;version=0.0.1;q=0.4,"
             "text/plain;version=0.0.4;q=0.2,*/*;q=0.1")
    content_type, body = scrape(cluster, prom3)
    assert content_type == "application/openmetrics-text; version=1.0.0; charset=utf-8"
    families = {f.name: f for f in openmetrics_families(body)}
    assert families["switchyard_connections"].type == "counter"
    web = [s for s in families["switchyard_connections"].samples
           if s.name == "switchyard_connections_total" and s.labels["service"] == "e2e/web"]
    assert sum(s.value for s in web) == 3
    assert families["switchyard_sync_duration_seconds"].type == "histogram"

    for accept in (None, "text/plain;version=0.0.4", "*/*"):
        content_type, body = scrape(cluster, accept)
        assert content_type == "text/plain; version=0.0.4; charset=utf-8", accept
        assert "# EOF" not in body
        families = {f.name: f for f in text_string_to_metric_families(body)}
        # The 0.0.4 parser names a counter family without `_total`, as the
        # OpenMetrics one does; an untyped `switchyard_connections_total` would
        # mean the counter was not recognised.
        assert "switchyard_connections_total" not in families, accept
        connections = families["switchyard_connections"]
        assert connections.type == "counter", accept
        web = [s for s in connections.samples
               if s.name == "switchyard_connections_total" and s.labels["service"] == "e2e/web"]
        assert sum(s.value for s in web) == 3, accept
        counters = [f.name for f in families.values() if f.type == "counter"]
        assert "switchyard_syncs" in counters and "switchyard_bytes" in counters
        assert families["switchyard_sync_duration_seconds"].type == "histogram"
        assert families["switchyard_io_info"].type == "gauge"


# ------------------------------------------------------------ kube-proxy /healthz
HEALTHZ = "http://127.0.0.1:10256/healthz"


def node_manifest(*, deleting: bool = False, taint: bool = False, zone: str = "zone-a") -> str:
    node = {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": NODE_NAME, "labels": {"topology.kubernetes.io/zone": zone}},
            "spec": {}}
    if deleting:
        node["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    if taint:
        node["spec"]["taints"] = [{"key": "ToBeDeletedByClusterAutoscaler",
                                   "value": "1700000000", "effect": "NoSchedule"}]
    return mf.to_yaml(node)


def get_json(cluster, url: str, where: str = "node") -> tuple[int, dict]:
    proc = cluster.curl(url, "-w", "\n%{http_code}", where=where)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    body, _, code = proc.stdout.decode().rpartition("\n")
    return int(code), json.loads(body)


def test_healthz_is_kube_proxys_and_drains_a_node_being_removed(bare_cluster):
    c = bare_cluster
    c.write_file("node.yaml", node_manifest())
    c.start_proxy()
    code, body = get_json(c, HEALTHZ)
    assert code == 200, body
    assert set(body) == {"lastUpdated", "currentTime", "nodeEligible"}
    assert body["nodeEligible"] is True
    assert body["currentTime"].endswith(" +0000 UTC")
    code, body = get_json(c, "http://127.0.0.1:10256/livez")
    assert code == 200 and set(body) == {"lastUpdated", "currentTime"}, body

    for manifest in (node_manifest(taint=True), node_manifest(deleting=True)):
        c.write_file("node.yaml", manifest)
        wait_until(lambda: get_json(c, HEALTHZ)[0] == 503, "/healthz to answer 503")
        code, body = get_json(c, HEALTHZ)
        assert body["nodeEligible"] is False
        # Only load balancers drain: readiness and the Services stay.
        assert c.curl("http://127.0.0.1:10256/readyz", where="node").stdout == b"ok\n"
        c.write_file("node.yaml", node_manifest())
        wait_until(lambda: get_json(c, HEALTHZ)[0] == 200, "/healthz to answer 200 again")


# ------------------------------------------------------------ topology hints
HINTED_VIP = "10.96.0.70"
ZONES = {"web-a": "zone-a", "web-b": "zone-a", "web-c": "zone-b"}


def hinted_service(unhinted: str | None = None) -> str:
    """`web-hinted` with `trafficDistribution: PreferClose` and the zone
    hints the EndpointSlice controller would write; `unhinted` lacks its hint."""
    return mf.to_yaml(*hinted_documents(unhinted))


def hinted_documents(unhinted: str | None = None) -> list[dict]:
    svc = mf.ServiceDef("web-hinted", [HINTED_VIP], [mf.http_port()], [mf.backends()])
    service, slice_ = svc.documents()
    service["spec"]["trafficDistribution"] = "PreferClose"
    for ep in slice_["endpoints"]:
        pod = ep["targetRef"]["name"]
        ep["zone"] = ZONES[pod]
        if pod != unhinted:
            ep["hints"] = {"forZones": [{"name": ZONES[pod]}]}
    return [service, slice_]


def answers(cluster, url: str, count: int = 12) -> set[str]:
    pods, stderr = cluster.get_many(url, count)
    assert len(pods) == count, f"{count - len(pods)} of {count} failed: {stderr}"
    return set(pods)


def test_topology_hints_are_honoured_and_fall_back(bare_cluster):
    c = bare_cluster
    c.write_file("node.yaml", node_manifest(zone="zone-a"))
    c.write_file("web-hinted.yaml", hinted_service())
    c.start_proxy()
    c.start_http()
    url = f"http://{HINTED_VIP}/"
    # Round robin over the zone's two endpoints: 12 requests reach both.
    assert answers(c, url) == {"web-a", "web-b"}

    # The node moves to a zone no endpoint is hinted for: hints are ignored.
    c.write_file("node.yaml", node_manifest(zone="zone-c"))
    wait_until(lambda: answers(c, url) == {"web-a", "web-b", "web-c"},
               "every endpoint to answer once no hint matches the zone")

    # Back in zone-b, only web-c is hinted for it.
    c.write_file("node.yaml", node_manifest(zone="zone-b"))
    wait_until(lambda: answers(c, url) == {"web-c"}, "only zone-b's endpoint to answer")

    # One endpoint without hints: kube-proxy ignores the hints altogether.
    c.write_file("web-hinted.yaml", hinted_service(unhinted="web-a"))
    wait_until(lambda: answers(c, url) == {"web-a", "web-b", "web-c"},
               "every endpoint to answer once one lacks its hint")


# ------------------------------------------------------ one family per connection
def dual_service(v4: list[mf.Endpoint], v6: list[mf.Endpoint]) -> list[mf.ServiceDef]:
    """The standard set, with `web-dual`'s two slices replaced."""
    services = [s for s in mf.standard_services() if s.name != "web-dual"]
    services.append(mf.ServiceDef("web-dual", [mf.DUAL_VIP4, mf.DUAL_VIP6], [mf.http_port()],
                                  [v4, v6]))
    return services


def who_answers(cluster, url: str, count: int = 12) -> list[tuple[str, str]]:
    """(pod, the source address the pod saw) for `count` new connections."""
    urls = [f"{url}?n={i}" for i in range(count)]
    proc = cluster.curl(urls[0], "-g", "--fail-early", "-H", "Connection: close", *urls[1:],
                        timeout=15 + count * 12)
    lines = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]
    assert len(lines) == count, (f"{count - len(lines)} of {count} failed: "
                                 f"{proc.stderr.decode(errors='replace')}")
    return [(got["pod"], got["peer"]) for got in lines]


def test_dual_stack_frontends_keep_to_their_family(bare_cluster):
    c = bare_cluster
    v4 = mf.backends()
    v4[1].ready = False  # web-b is not ready in its IPv4 slice only
    c.write_services(dual_service(v4, mf.backends(v6=True)))
    c.start_proxy()
    c.start_http()

    answered = who_answers(c, f"http://{mf.DUAL_VIP4}/")
    assert {pod for pod, _ in answered} == {"web-a", "web-c"}, answered
    assert {peer for _, peer in answered} == {CLIENT.ipv4}, answered

    answered = who_answers(c, f"http://[{mf.DUAL_VIP6}]/")
    assert {pod for pod, _ in answered} == {"web-a", "web-b", "web-c"}, answered
    assert {peer for _, peer in answered} == {CLIENT.ipv6}, answered

    # No IPv6 endpoint at all: the IPv6 ClusterIP is a frontend without
    # endpoints (refused at once), the IPv4 one keeps serving.
    c.write_services(dual_service(mf.backends(), []))

    def v6_refused() -> bool:
        proc = c.curl(f"http://[{mf.DUAL_VIP6}]/")
        return proc.returncode == 7  # curl: connection refused
    wait_until(v6_refused, "the IPv6 ClusterIP to refuse without IPv6 endpoints")
    answered = who_answers(c, f"http://{mf.DUAL_VIP4}/")
    assert {pod for pod, _ in answered} == {"web-a", "web-b", "web-c"}, answered
    assert {peer for _, peer in answered} == {CLIENT.ipv4}, answered


def test_policy_test_simulates_a_client_of_the_frontends_family(tmp_path):
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    v4 = mf.backends()
    v4[1].ready = False
    mf.write_services(manifests, dual_service(v4, mf.backends(v6=True)))

    def simulate(*extra: str) -> str:
        proc = run([str(binary()), "policy", "test", "builtin-round-robin", "--manifests",
                    str(manifests), "--service", "e2e/web-dual", "--connections", "30", *extra],
                   check=False, timeout=60)
        out = proc.stdout.decode()
        assert proc.returncode == 0, out + proc.stderr.decode(errors="replace")
        return out

    out = simulate()  # an IPv4 client by default
    assert f"({mf.DUAL_VIP4}:80)" in out and "fd00:" not in out.split("\n", 1)[1], out
    assert "web-a" in out and "web-c" in out, out
    assert "web-b" not in out, out
    out = simulate("--client", "fd00:10:244:1::100")
    assert f"([{mf.DUAL_VIP6}]:80)" in out, out
    body = out.split("\n", 1)[1]
    assert "web-b" in body and "10.244." not in body.split("decisions:")[0], out


# ------------------------------------------------------ loadBalancerSourceRanges
LB_VIP4, LB_VIP6 = "10.96.0.80", "fd00:10:96::80"
LB_IP4, LB_IP6 = "203.0.113.80", "fd00:203::80"
LB_NODE_PORT = 30090


def load_balancer(ranges: list[str], *, local: bool = False, health_check: int | None = None,
                  endpoints: list[str] | None = None, node: str = NODE_NAME) -> str:
    """`web-lb`: a dual-stack LoadBalancer with an ingress IP of each family,
    its endpoints (Pod names, default all) on `node`."""
    pods = endpoints if endpoints is not None else [p.name for p in mf.BACKENDS]
    slices = [mf.backends(pods), mf.backends(pods, v6=True)]
    for ep in slices[0] + slices[1]:
        ep.node = node
    svc = mf.ServiceDef("web-lb", [LB_VIP4, LB_VIP6],
                        [mf.Port("http", 80, mf.HTTP_PORT, node_port=LB_NODE_PORT)],
                        slices, type="LoadBalancer")
    service, *slices = svc.documents()
    if ranges:
        service["spec"]["loadBalancerSourceRanges"] = ranges
    if local:
        service["spec"]["externalTrafficPolicy"] = "Local"
    if health_check is not None:
        service["spec"]["healthCheckNodePort"] = health_check
    service["status"] = {"loadBalancer": {"ingress": [{"ip": LB_IP4, "ipMode": "VIP"},
                                                      {"ip": LB_IP6, "ipMode": "VIP"}]}}
    return mf.to_yaml(service, *slices)


def outcome(cluster, url: str, where: str) -> str:
    """"answered", "refused" or "no answer" (nothing came back within 2 s)."""
    proc = cluster.run_in(where, ["curl", "-sS", "-g", "--connect-timeout", "2", "--max-time", "5",
                                  "-o", "/dev/null", "-w", "%{http_code}", url], timeout=30)
    if proc.returncode == 0 and proc.stdout == b"200":
        return "answered"
    return {7: "refused", 28: "no answer"}.get(proc.returncode, f"curl rc {proc.returncode}")


def test_source_ranges_drop_other_sources_on_the_ingress_ips_only(bare_cluster, tmp_path):
    c = bare_cluster
    # ext reaches the IPv6 ingress IP through the node, as it does the IPv4 range.
    c.run_in("ext", ["ip", "-6", "route", "add", "fd00:203::/64", "via", "fd00:50::1"])
    c.write_file("web-lb.yaml", load_balancer([f"{CLIENT.ipv4}/32", f"{CLIENT.ipv6}/128"]))
    c.start_proxy()
    c.start_http()
    lb4, lb6 = f"http://{LB_IP4}/", f"http://[{LB_IP6}]/"
    assert outcome(c, lb4, "client") == "answered"
    assert outcome(c, lb6, "client") == "answered"
    assert outcome(c, lb4, "ext") == "no answer"
    assert outcome(c, lb6, "ext") == "no answer"
    # The Service's NodePort and ClusterIP stay open to everyone.
    assert outcome(c, f"http://{NODE_UPLINK_V4}:{LB_NODE_PORT}/", "ext") == "answered"
    assert outcome(c, f"http://{LB_VIP4}/", "client") == "answered"
    services = c.curl_json(f"{ADMIN}/debug/services", where="node")["services"]
    lb = next(s for s in services if s["service"] == "e2e/web-lb")
    assert lb["ports"][0]["source_ranges"] == {f"{LB_IP4}:80": [f"{CLIENT.ipv4}/32"],
                                               f"{LB_IP6}:80": [f"{CLIENT.ipv6}/128"]}

    # The ranges change: ext is let in, the client Pod is shut out (new
    # connections: one it opened before lives on, as with kube-proxy).
    held = c.keep_connection(LB_IP4, 80, tmp_path / "go")
    c.write_file("web-lb.yaml", load_balancer([f"{EXT_V4}/32", "fd00:50::/64"]))
    wait_until(lambda: outcome(c, lb4, "ext") == "answered", "ext to be let in (IPv4)")
    assert outcome(c, lb6, "ext") == "answered"
    assert outcome(c, lb4, "client") == "no answer"
    assert c.kept(held, tmp_path / "go")["ok"] is True
    assert outcome(c, lb6, "client") == "no answer"
    assert outcome(c, lb4, "node") == "no answer"  # host processes are filtered too
    assert outcome(c, f"http://[{LB_VIP6}]/", "client") == "answered"

    # A range that is no CIDR: the file is rejected (named), the last good
    # ranges stay in force; never open.
    mark = c.proxy.log_mark()
    c.write_file("web-lb.yaml", load_balancer([f"{EXT_V4}/32", "everyone"]))
    c.proxy.wait_log(r"spec\.loadBalancerSourceRanges\[1\]", since=mark,
                     what="the bad range to be reported")
    assert outcome(c, lb4, "client") == "no answer"
    assert outcome(c, lb4, "ext") == "answered"

    # No ranges: open to every source.
    c.write_file("web-lb.yaml", load_balancer([]))
    wait_until(lambda: outcome(c, lb4, "client") == "answered", "the client to be let in again")
    assert outcome(c, lb6, "client") == "answered"


# ------------------------------------------------------ health-check node ports
HC_PORT = 32090
HOLD = ("import socket, sys, time\n"
        "s = socket.create_connection((sys.argv[1], 80), timeout=5)\n"
        "print('open', flush=True)\n"
        "time.sleep(60)\n")


def health_check(cluster, where: str = "ext", host: str = NODE_UPLINK_V4) -> tuple[int, dict]:
    return get_json(cluster, f"http://{host}:{HC_PORT}/", where=where)


def test_health_check_node_port_follows_local_endpoints_and_the_stop(bare_cluster):
    c = bare_cluster
    c.write_file("web-lb.yaml", load_balancer([], local=True, health_check=HC_PORT))
    c.start_proxy()
    c.start_http()
    code, body = health_check(c)
    assert (code, body) == (200, {"service": {"namespace": "e2e", "name": "web-lb"},
                                  "localEndpoints": 3, "serviceProxyHealthy": True})
    services = c.curl_json(f"{ADMIN}/debug/services", where="node")["services"]
    assert next(s for s in services if s["service"] == "e2e/web-lb")[
        "health_check_node_port"] == HC_PORT
    # Also on the node's IPv6 address (nodePortAddresses is empty: every address).
    assert health_check(c, host=f"[{NODE_UPLINK_V6}]")[0] == 200

    # The endpoints move to another node: this node has none.
    c.write_file("web-lb.yaml", load_balancer([], local=True, health_check=HC_PORT,
                                              node="node-b"))
    wait_until(lambda: health_check(c)[0] == 503, "the health check to answer 503")
    assert health_check(c)[1]["localEndpoints"] == 0
    # One comes back.
    c.write_file("web-lb.yaml", load_balancer([], local=True, health_check=HC_PORT,
                                              endpoints=["web-a"]))
    wait_until(lambda: health_check(c) == (200, {"service": {"namespace": "e2e", "name": "web-lb"},
                                                 "localEndpoints": 1,
                                                 "serviceProxyHealthy": True}),
               "the health check to answer 200 with one local endpoint")

    # While the proxy drains on SIGTERM, the port answers 503.
    holder = c.topo.spawn("holder", c.topo.client, [sys.executable, "-c", HOLD, mf.WEB_VIP])
    try:
        wait_until(lambda: "open" in holder.output(), "the held connection to open")
        c.proxy.stopped_by_test = True
        c.proxy.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: health_check(c)[0] == 503, "503 while stopping")
        assert health_check(c)[1]["serviceProxyHealthy"] is False
    finally:
        holder.stop(signal.SIGKILL)
    assert c.proxy.proc.stop(signal.SIGTERM, timeout=30) == 0


def test_health_check_node_port_closes_with_the_service_and_keeps_to_node_port_addresses(
        bare_cluster, tmp_path):
    c = bare_cluster
    c.write_file("web-lb.yaml", load_balancer([], local=True, health_check=HC_PORT))
    config = tmp_path / "switchyard.yaml"
    mf.write_atomic(config, f"intercept:\n  nodePortAddresses: [\"{NODE_UPLINK_V4}/32\"]\n")
    c.start_proxy(["--config", str(config)])
    c.start_http()
    assert health_check(c)[0] == 200
    # Not on the bridge address: nodePortAddresses leaves it out.
    refused = c.curl(f"http://{BRIDGE_V4}:{HC_PORT}/", where="client")
    assert refused.returncode == 7, refused
    # externalTrafficPolicy: Cluster: kube-proxy serves no health check.
    c.write_file("web-lb.yaml", load_balancer([], health_check=HC_PORT))
    wait_until(lambda: c.curl(f"http://{NODE_UPLINK_V4}:{HC_PORT}/", where="ext").returncode == 7,
               "the health-check port to close")


def test_healthz_and_topology_follow_the_node_from_the_api(bare_cluster, tmp_path):
    """The Kubernetes source: the watched Node's taint drains the node, its
    zone label picks the hinted endpoints, both live."""
    c = bare_cluster
    api = ApiServer(c.topo.node, log=tmp_path / "apiserver.log")
    try:
        node = node_object(NODE_NAME, zone="zone-a")
        api.put(node)
        api.put(*hinted_documents())
        api.start()
        c.start_proxy(["--kubeconfig", str(api.kubeconfig(tmp_path / "kubeconfig"))])
        c.start_http()
        url = f"http://{HINTED_VIP}/"
        assert answers(c, url) == {"web-a", "web-b"}
        assert get_json(c, HEALTHZ)[0] == 200

        tainted = copy.deepcopy(node)
        tainted["metadata"]["labels"]["topology.kubernetes.io/zone"] = "zone-b"
        tainted["spec"] = {"taints": [{"key": "ToBeDeletedByClusterAutoscaler",
                                       "value": "1700000000", "effect": "NoSchedule"}]}
        api.put(tainted)
        wait_until(lambda: get_json(c, HEALTHZ)[0] == 503, "/healthz to answer 503")
        assert get_json(c, HEALTHZ)[1]["nodeEligible"] is False
        wait_until(lambda: answers(c, url) == {"web-c"}, "zone-b's endpoint only")
    finally:
        api.stop()
