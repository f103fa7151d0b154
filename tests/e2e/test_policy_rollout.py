"""Policy modules from the API: the proxy watches the policy ConfigMap of an
emulated API server (apiserver.py) and swaps modules when it changes, with
no volume and no kubelet in between. Decisions are observed on traffic from
the client Pod; bad modules are refused by name while the previous keeps
serving."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

import manifests as mf
import policies as pol
from apiserver import ApiServer, config_map, node_object
from helpers import assert_all_answered
from topology import NODE_NAME, wait_until

VIP = "10.96.0.71"
URL = f"http://{VIP}/"
CM_NS, CM_NAME = "kube-system", "switchyard-policies"
ORIGIN = f"configmap/{CM_NS}/{CM_NAME}"


def live_service() -> mf.ServiceDef:
    return mf.ServiceDef("live", [VIP], [mf.http_port()], [mf.backends()],
                         annotations={"switchyard.dev/policy": "live"})


def module(name: str) -> bytes:
    return pol.built(name).read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def api(bare_cluster, tmp_path):
    server = ApiServer(bare_cluster.topo.node, log=tmp_path / "apiserver.log")
    server.put(node_object(NODE_NAME))
    try:
        yield server
    finally:
        server.stop()


def start(cluster, api: ApiServer, tmp_path, **policy) -> None:
    """The kubernetes source with policy.configMap, and an empty policy
    directory (the fallback), so every module comes through the API."""
    directory = tmp_path / "policies"
    directory.mkdir(exist_ok=True)
    cfg = {"policy": {"configMap": {"namespace": CM_NS, "name": CM_NAME}, **policy}}
    config = tmp_path / "switchyard.yaml"
    config.write_text(json.dumps(cfg))
    kubeconfig = api.kubeconfig(tmp_path / "kubeconfig")
    cluster.start_proxy(["--config", str(config), "--kubeconfig", str(kubeconfig),
                         "--policies", str(directory)])
    cluster.start_http()


def bound(cluster) -> str:
    """The policy /debug/services reports for e2e/live, e.g. "live (ab12…)"."""
    services = cluster.curl_json("http://127.0.0.1:10249/debug/services", where="node")["services"]
    return next(s["policy"] for s in services if s["service"] == "e2e/live")


def one_pod(cluster, count: int = 3) -> bool:
    """`count` new connections from one client all reached one Pod (maglev
    does that; the round robin never repeats a Pod in three picks)."""
    pods, _ = cluster.get_many(URL, count)
    return len(pods) == count and len(set(pods)) == 1


def test_configmap_update_swaps_the_policy(bare_cluster, api, tmp_path):
    c = bare_cluster
    rr, maglev = module("round-robin"), module("maglev")
    api.put(*live_service().documents(), config_map(CM_NS, CM_NAME, {"live.wasm": rr}))
    api.start()
    start(c, api, tmp_path)
    assert bound(c) == f"live ({sha(rr)[:12]})"
    pods, err = c.get_many(URL, 9)
    assert_all_answered(pods, 9, err)  # the round robin: every Pod

    # The rollout: one ConfigMap update, no file anywhere on the node.
    before = time.monotonic()
    api.put(config_map(CM_NS, CM_NAME, {"live.wasm": maglev}))
    wait_until(lambda: one_pod(c), "decisions by the maglev module from the ConfigMap",
               timeout=30, interval=0.01)
    rollout = time.monotonic() - before
    print(f"\nrollout: ConfigMap update -> new decisions in {rollout * 1000:.0f} ms")
    (tmp_path / "rollout.txt").write_text(f"{rollout:.3f}\n")
    assert bound(c) == f"live ({sha(maglev)[:12]})"
    pods, err = c.get_many(URL, 9)
    assert_all_answered(pods, 9, err, expected=pods[:1])  # maglev: one client, one Pod
    c.proxy.wait_log(rf"policy module loaded.*{ORIGIN}/live\.wasm|{ORIGIN}/live\.wasm.*policy module loaded",
                     timeout=5)

    # Deleted: the modules in force stay (the directory has no other copy).
    api.delete("ConfigMap", CM_NS, CM_NAME)
    c.proxy.wait_log(r"policy ConfigMap absent", timeout=20)
    assert bound(c) == f"live ({sha(maglev)[:12]})"
    assert one_pod(c, 6)


def test_bad_modules_are_refused_by_name_and_the_previous_keeps_serving(bare_cluster, api,
                                                                        tmp_path):
    c = bare_cluster
    maglev, rr, rnd = module("maglev"), module("round-robin"), module("random")
    garbage = b"\0asm but not really"
    api.put(*live_service().documents(), config_map(CM_NS, CM_NAME, {"live.wasm": maglev}))
    api.start()
    start(c, api, tmp_path, allowedSha256=[sha(maglev), sha(rr), sha(garbage)], maxModules=2)
    assert bound(c) == f"live ({sha(maglev)[:12]})"
    assert one_pod(c, 6)

    # Allowed, but not WebAssembly.
    mark = c.proxy.log_mark()
    api.put(config_map(CM_NS, CM_NAME, {"live.wasm": garbage}))
    c.proxy.wait_log(rf"{ORIGIN}/live\.wasm: not a valid WebAssembly module", since=mark,
                     timeout=20)
    # A valid module whose sha256 is not allowed.
    mark = c.proxy.log_mark()
    api.put(config_map(CM_NS, CM_NAME, {"live.wasm": rnd}))
    c.proxy.wait_log(rf"{ORIGIN}/live\.wasm: sha256 {sha(rnd)} is not in policy.allowedSha256",
                     since=mark, timeout=20)
    # More modules than policy.maxModules: refused whole.
    mark = c.proxy.log_mark()
    api.put(config_map(CM_NS, CM_NAME, {"live.wasm": rr, "b.wasm": rr, "c.wasm": rr}))
    c.proxy.wait_log(rf"{ORIGIN}: 3 modules, more than policy.maxModules \(2\)", since=mark,
                     timeout=20)
    # Through all of it, maglev kept deciding.
    assert bound(c) == f"live ({sha(maglev)[:12]})"
    pods, err = c.get_many(URL, 9)
    # The previous module (maglev) kept serving: one client, one Pod.
    assert_all_answered(pods, 9, err, expected=pods[:1])

    # A good update still goes through afterwards.
    api.put(config_map(CM_NS, CM_NAME, {"live.wasm": rr}))
    wait_until(lambda: bound(c) == f"live ({sha(rr)[:12]})", "the round robin to be bound",
               timeout=20, interval=0.05)
    pods, err = c.get_many(URL, 9)
    assert_all_answered(pods, 9, err)
