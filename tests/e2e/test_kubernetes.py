"""The Kubernetes source, end to end: the real binary watches an emulated API
server (apiserver.py, listening inside the node namespace) through a
kubeconfig, and every assertion is on traffic from the client Pod."""

from __future__ import annotations

import copy

import pytest

import manifests as mf
from apiserver import ApiServer, node_object
from helpers import assert_all_answered
from topology import NODE_NAME, NODE_UPLINK_V4, wait_until

N = 12
WEB = f"http://{mf.WEB_VIP}/"
ZONE = "zone-e2e"


def web_service(pods=("web-a", "web-b", "web-c"), slices=None) -> mf.ServiceDef:
    return mf.ServiceDef("web", [mf.WEB_VIP], [mf.http_port()],
                         slices if slices is not None else [mf.backends(pods)])


@pytest.fixture
def api(bare_cluster, tmp_path):
    """An emulated API server in the node namespace with this node's Node object."""
    server = ApiServer(bare_cluster.topo.node, log=tmp_path / "apiserver.log")
    server.put(node_object(NODE_NAME, zone=ZONE))
    try:
        yield server
    finally:
        server.stop()


def start(cluster, api: ApiServer, tmp_path, wait: bool = True):
    kubeconfig = api.kubeconfig(tmp_path / "kubeconfig")
    return cluster.start_proxy(["--kubeconfig", str(kubeconfig)], wait=wait)


def answers(cluster, count: int = 9) -> list[str]:
    pods, _ = cluster.get_many(WEB, count)
    return pods


def wait_for_pods(cluster, expected: set[str], what: str, timeout: float = 20) -> None:
    """Waits until `count` requests all succeed and reach exactly `expected`."""
    def right():
        seen = answers(cluster)
        return len(seen) == 9 and set(seen) == expected
    wait_until(right, what, timeout=timeout, interval=0.3)


def test_create_scale_delete(bare_cluster, api, tmp_path):
    c = bare_cluster
    c.start_http()
    api.put(*web_service(["web-a"]).documents())
    api.start()
    start(c, api, tmp_path)
    c.proxy.wait_log(rf"zone=\"?{ZONE}", timeout=5, what="the Node's zone label in the log")
    pods, err = c.get_many(WEB, N)
    assert_all_answered(pods, N, err, expected=["web-a"])

    # Scale out: the EndpointSlice gains two Pods.
    api.put(*web_service().documents()[1:])
    wait_for_pods(c, {"web-a", "web-b", "web-c"}, "the scaled-out slice to take effect")

    # A Service created while running.
    extra = mf.ServiceDef("web2", ["10.96.0.70"], [mf.http_port()], [mf.backends(["web-b"])])
    api.put(*extra.documents())
    wait_until(lambda: c.get_many("http://10.96.0.70/", 3)[0] == ["web-b"] * 3,
               "the new Service web2 to answer", timeout=20, interval=0.3)

    # Scale in, then delete the Service and its slice.
    api.put(*web_service(["web-c"]).documents()[1:])
    wait_for_pods(c, {"web-c"}, "the scaled-in slice to take effect")
    api.delete("EndpointSlice", mf.NAMESPACE, "web-v40")
    api.delete("Service", mf.NAMESPACE, "web")

    def web_gone():
        return c.curl(WEB).returncode != 0
    wait_until(web_gone, "the deleted Service to stop answering", timeout=20, interval=0.3)
    assert c.get_many("http://10.96.0.70/", 3)[0] == ["web-b"] * 3, "web2 must stay"


def test_outage_keeps_serving_and_watch_resumes(bare_cluster, api, tmp_path):
    c = bare_cluster
    c.start_http()
    api.put(*web_service().documents())
    api.start()
    start(c, api, tmp_path)
    api.stop()
    c.proxy.wait_log(r"watch failed", timeout=20, what="the proxy to notice the outage")
    pods, err = c.get_many(WEB, N)
    assert_all_answered(pods, N, err)
    assert c.proxy.ready(), "readiness must stay true on the last snapshot"

    # A change made while the server was away arrives once it is back.
    api.put(*web_service(["web-a", "web-b"]).documents()[1:])
    api.start()
    wait_for_pods(c, {"web-a", "web-b"}, "the watch to resume after the outage", timeout=60)
    c.proxy.wait_log(r"watch restored", timeout=10)


def test_gone_410_relists_and_drops_deleted_endpoints(bare_cluster, api, tmp_path):
    c = bare_cluster
    c.start_http()
    # Two slices: web-v40 (web-a, web-b) and web-v41 (web-c).
    web = web_service(slices=[mf.backends(["web-a", "web-b"]), mf.backends(["web-c"])])
    api.put(*web.documents())
    api.start()
    start(c, api, tmp_path)
    pods, err = c.get_many(WEB, N)
    assert_all_answered(pods, N, err)

    api.stop()
    # Deleted during the outage, and the history compacted: the resumed
    # watch gets 410 Gone, and only a relist can notice the deletion.
    api.delete_quietly("EndpointSlice", mf.NAMESPACE, "web-v41")
    api.compact()
    lists_before = sum(1 for r in api.requests if "endpointslices" in r and "watch" not in r)
    api.start()
    wait_for_pods(c, {"web-a", "web-b"}, "the relist to drop web-c", timeout=60)
    lists_after = sum(1 for r in api.requests if "endpointslices" in r and "watch" not in r)
    assert lists_after > lists_before, "expected a relist of EndpointSlices after 410 Gone"


def test_malformed_object_is_named_and_skipped(bare_cluster, api, tmp_path):
    c = bare_cluster
    c.start_http()
    api.put(*web_service().documents())
    bad = mf.service(mf.ServiceDef("broken", ["10.96.0.71"], [mf.http_port()]))
    bad["spec"]["ports"][0]["port"] = "eighty"
    api.put(bad)
    api.start()
    start(c, api, tmp_path)
    line = c.proxy.wait_log(r"Service e2e/broken", timeout=10,
                            what="the malformed Service to be logged by name")
    assert "spec.ports[0].port" in line, line
    pods, err = c.get_many(WEB, N)
    assert_all_answered(pods, N, err)

    # A malformed update keeps the last good version of the object serving.
    mark = c.proxy.log_mark()
    slice_doc = copy.deepcopy(web_service(["web-a"]).documents()[1])
    slice_doc["endpoints"][0]["addresses"] = "not-a-list"
    api.put(slice_doc)
    c.proxy.wait_log(r"EndpointSlice e2e/web-v40", timeout=10, since=mark,
                     what="the malformed EndpointSlice to be logged by name")
    pods, err = c.get_many(WEB, N)
    assert_all_answered(pods, N, err)


def test_not_ready_and_nothing_installed_before_first_sync(bare_cluster, api, tmp_path):
    c = bare_cluster
    c.start_http()
    api.put(*web_service().documents())
    proxy = start(c, api, tmp_path, wait=False)
    # The server is not up yet: bounded wait, during which nothing may be installed.
    proxy.wait_log(r"watch failed", timeout=20, what="the first list to fail")
    assert not proxy.ready(), "ready before the first sync"
    assert not proxy.table_present(), "nftables table installed before the first sync"
    api.start()
    proxy.wait_ready(timeout=60)
    assert proxy.table_present()
    pods, err = c.get_many(WEB, N)
    assert_all_answered(pods, N, err)


def test_external_traffic_policy_local_drops_external_traffic_only(bare_cluster, api, tmp_path):
    """No endpoint on this node: external traffic (NodePort) is dropped,
    internal traffic (ClusterIP) still reaches every endpoint."""
    c = bare_cluster
    c.start_http()
    vip, node_port = "10.96.0.72", 30081
    remote = [mf.Endpoint(e.ip, e.pod, node="node-b") for e in mf.backends()]
    local = mf.ServiceDef("web-local", [vip], [mf.Port("http", 80, mf.HTTP_PORT,
                                                       node_port=node_port)],
                          [remote], type="NodePort")
    svc, slice_doc = local.documents()
    svc["spec"]["externalTrafficPolicy"] = "Local"
    api.put(svc, slice_doc)
    api.start()
    start(c, api, tmp_path)
    external = f"http://{NODE_UPLINK_V4}:{node_port}/"
    pods, err = c.get_many(f"http://{vip}/", N)
    assert_all_answered(pods, N, err)
    assert c.curl(external, where="ext").returncode != 0, \
        "external traffic reached a Service with no local endpoint"

    # web-c moves to this node: external traffic now goes to it alone.
    moved = [mf.Endpoint(e.ip, e.pod, node=NODE_NAME if e.pod == "web-c" else "node-b")
             for e in mf.backends()]
    local.slices = [moved]
    api.put(local.documents()[1])
    wait_until(lambda: c.get_many(external, 6, where="ext")[0] == ["web-c"] * 6,
               "external traffic to reach only the local endpoint", timeout=20, interval=0.3)
    pods, err = c.get_many(f"http://{vip}/", N)
    assert_all_answered(pods, N, err)


def test_node_port_addresses_primary_follow_the_node_object(bare_cluster, api, tmp_path):
    """`nodePortAddresses: [primary]`: NodePorts answer on the addresses the
    Node object lists and on no other local address; a change to the Node
    object moves them."""
    c = bare_cluster
    c.start_http()
    node_port = 30082
    svc = mf.ServiceDef("web-np", ["10.96.0.73"], [mf.Port("http", 80, mf.HTTP_PORT,
                                                           node_port=node_port)],
                        [mf.backends()], type="NodePort")
    node = node_object(NODE_NAME, zone=ZONE)
    node["status"]["addresses"] = [{"type": "InternalIP", "address": NODE_UPLINK_V4},
                                   {"type": "Hostname", "address": NODE_NAME}]
    api.put(node, *svc.documents())
    api.start()
    config = tmp_path / "switchyard.yaml"
    config.write_text("intercept:\n  nodePortAddresses: [primary]\n")
    kubeconfig = api.kubeconfig(tmp_path / "kubeconfig")
    c.start_proxy(["--config", str(config), "--kubeconfig", str(kubeconfig)])

    listed = f"http://{NODE_UPLINK_V4}:{node_port}/"
    unlisted = f"http://10.244.1.1:{node_port}/"  # the node's bridge address
    pods, err = c.get_many(listed, N, where="ext")
    assert_all_answered(pods, N, err)
    assert c.curl(unlisted).returncode != 0, "a NodePort answered on an address not listed"
    assert c.get_many("http://10.96.0.73/", 3)[0], "the ClusterIP must not be affected"

    # The Node object gains the bridge address: the NodePort follows it.
    node["status"]["addresses"].append({"type": "InternalIP", "address": "10.244.1.1"})
    api.put(node)
    wait_until(lambda: c.curl(unlisted).returncode == 0,
               "the NodePort to answer on the Node's new address", timeout=20, interval=0.3)
    pods, err = c.get_many(listed, N, where="ext")
    assert_all_answered(pods, N, err)


def metric_value(cluster, name: str) -> float:
    """One unlabelled sample of /metrics (admin listens in the node namespace)."""
    proc = cluster.curl("http://127.0.0.1:10249/metrics", where="node")
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    for line in proc.stdout.decode().splitlines():
        key, _, value = line.rpartition(" ")
        if key == name:
            return float(value)
    raise AssertionError(f"{name} not in /metrics")


def test_slice_change_is_a_partial_sync_timed_from_its_trigger_time(bare_cluster, api, tmp_path):
    """kube-proxy's observability: the EndpointSlice's last-change-trigger-time
    starts network_programming_duration_seconds; the change is a partial sync
    whose elements went over netlink without a failure."""
    import datetime as dt
    c = bare_cluster
    c.start_http()
    api.put(*web_service(["web-a"]).documents())
    api.start()
    start(c, api, tmp_path)
    pods, err = c.get_many(WEB, N)
    assert_all_answered(pods, N, err, expected=["web-a"])
    assert metric_value(c, "switchyard_sync_full_proxy_rules_duration_seconds_count") >= 1
    assert metric_value(c, "switchyard_network_programming_duration_seconds_count") == 0

    changed = web_service(["web-b"]).documents()[1]
    changed["metadata"].setdefault("annotations", {})[
        "endpoints.kubernetes.io/last-change-trigger-time"] = (
        dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")
        .replace("+00:00", "Z"))
    api.put(changed)
    wait_for_pods(c, {"web-b"}, "the changed slice to take effect")
    wait_until(lambda: metric_value(
        c, "switchyard_network_programming_duration_seconds_count") >= 1,
        "the change's network programming time to be recorded", timeout=10, interval=0.2)
    assert metric_value(c, "switchyard_sync_partial_proxy_rules_duration_seconds_count") >= 1
    assert metric_value(c, "switchyard_netlink_failures_total") == 0
