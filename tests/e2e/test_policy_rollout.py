"""Policy modules from the API: the proxy watches the policy ConfigMap of an
emulated API server (apiserver.py) and swaps modules when it changes, with
no volume and no kubelet in between. Decisions are observed on traffic from
the client Pod; bad modules are refused by name while the previous keeps
serving."""

from __future__ import annotations

import hashlib
import re
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

    # Every ConfigMap request names the one object: a Role restricted by
    # resourceNames (conf/k8s/policies-role.yaml) allows exactly these.
    cm_requests = [r for r in api.requests if "/configmaps" in r]
    assert cm_requests, "the proxy must read the ConfigMap through the API"
    for r in cm_requests:
        assert r.startswith(f"GET /api/v1/namespaces/{CM_NS}/configmaps?"), r
        assert f"fieldSelector=metadata.name%3D{CM_NAME}" in r, r

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


# ------------------------------------------------------------------ status
TRAP_VIP, BAD_VIP = "10.96.0.72", "10.96.0.73"
BAD_CONFIG = '{"canary": "web-c", "percent": 500}'


def status_services() -> list[mf.ServiceDef]:
    return [
        mf.ServiceDef("trapsvc", [TRAP_VIP], [mf.http_port()], [mf.backends()],
                      annotations={"switchyard.dev/policy": "trap"}),
        mf.ServiceDef("badcfg", [BAD_VIP], [mf.http_port()], [mf.backends()],
                      annotations={"switchyard.dev/policy": "canary",
                                   "switchyard.dev/policy-config": BAD_CONFIG}),
    ]


def refusal_text(cluster) -> str:
    """The canary module's own error text, from the proxy's log."""
    line = cluster.proxy.wait_log(r"policy canary refused the binding: ", timeout=20)
    return line.split("refused the binding: ", 1)[1].split("; the Service keeps")[0]


def event(api: ApiServer, prefix: str) -> dict | None:
    """The one Event whose name starts with `prefix` ("<service>.switchyard.<reason>.");
    the name ends in a hash of the note, which the API keeps immutable."""
    found = [e for e in api.events() if e["metadata"]["name"].startswith(prefix)]
    assert len(found) <= 1, [e["metadata"]["name"] for e in found]
    return found[0] if found else None


def test_status_events_on_the_service(bare_cluster, api, tmp_path):
    c = bare_cluster
    maglev, trap = module("maglev"), pol.assemble("trap", tmp_path).read_bytes()
    api.put(*live_service().documents(),
            *(d for s in status_services() for d in s.documents()),
            config_map(CM_NS, CM_NAME, {"live.wasm": maglev, "trap.wasm": trap,
                                        "canary.wasm": module("canary")}))
    api.start()
    start(c, api, tmp_path)

    e = wait_until(lambda: event(api, "live.switchyard.policybound."),
                   "a PolicyBound Event on live", timeout=20, interval=0.1)
    assert sha(maglev) in e["note"], e["note"]
    assert e["regarding"] == {"apiVersion": "v1", "kind": "Service",
                              "namespace": mf.NAMESPACE, "name": "live"}
    assert e["type"] == "Normal" and e["reportingInstance"] == f"switchyard-{NODE_NAME}"
    assert "series" not in e, "one occurrence so far"

    reason = refusal_text(c)
    e = wait_until(lambda: event(api, "badcfg.switchyard.policyrejected."),
                   "a PolicyRejected Event on badcfg", timeout=20, interval=0.1)
    assert reason in e["note"], (reason, e["note"])
    assert e["type"] == "Warning" and e["reason"] == "PolicyRejected"
    assert e["reportingController"] == "switchyard.dev/proxy"

    # A trapping module: faults on many connections, disabled, and still one
    # Event (never one per connection).
    pods, err = c.get_many(f"http://{TRAP_VIP}/", 30)
    assert_all_answered(pods, 30, err)
    e = wait_until(lambda: event(api, "trapsvc.switchyard.policydisabled."),
                   "a PolicyDisabled Event on trapsvc", timeout=20, interval=0.1)
    assert e["type"] == "Warning" and "trap" in e["note"]
    names = sorted(ev["metadata"]["name"].rsplit(".", 1)[0] for ev in api.events())
    assert names == ["badcfg.switchyard.policyrejected", "live.switchyard.policybound",
                     "trapsvc.switchyard.policybound", "trapsvc.switchyard.policydisabled"], names
    writes = [r for r in api.requests if r.startswith(("POST", "PATCH")) and "/events" in r]
    assert len(writes) <= 8, writes

    # Another reporter of the same binding (as another node, or this one
    # restarted) adds to the same Event: its series counts both.
    c.proxy.stop_and_check()
    c.start_proxy(c.proxy.extra_args)

    def counted():
        e = event(api, "live.switchyard.policybound.")
        return e if e.get("series", {}).get("count") == 2 else None
    e = wait_until(counted, "the PolicyBound Event's series to count the second report",
                   timeout=20, interval=0.1)
    assert e["series"]["lastObservedTime"]
    assert len([ev for ev in api.events()
                if ev["metadata"]["name"].startswith("live.switchyard.policybound.")]) == 1


def test_file_mode_status_goes_to_the_log_and_debug_policies(bare_cluster, tmp_path):
    c = bare_cluster
    directory = tmp_path / "policies"
    directory.mkdir()
    pol.install(pol.assemble("trap", tmp_path), directory, "trap")
    pol.install(pol.built("canary"), directory, "canary")
    c.write_services(status_services())
    c.start_proxy(["--policies", str(directory)])
    c.start_http()
    reason = refusal_text(c)
    c.proxy.wait_log(r"reason=\"?PolicyRejected.*" + re.escape(reason)
                     + r"|" + re.escape(reason) + r".*reason=\"?PolicyRejected", timeout=20)
    pods, err = c.get_many(f"http://{TRAP_VIP}/", 30)
    assert_all_answered(pods, 30, err)

    def debug_events():
        modules = c.curl_json("http://127.0.0.1:10249/debug/policies", where="node")
        return {m["name"]: m["events"] for m in modules}
    events = wait_until(lambda: (lambda ev: ev if any(e["reason"] == "PolicyDisabled"
                                                      for e in ev.get("trap", [])) else None)(
        debug_events()), "PolicyDisabled in /debug/policies", timeout=20, interval=0.1)
    rejected = [e for e in events["canary"] if e["reason"] == "PolicyRejected"]
    assert len(rejected) == 1 and reason in rejected[0]["note"], events["canary"]
    assert rejected[0]["service"] == "e2e/badcfg" and rejected[0]["type"] == "Warning"
    c.proxy.wait_log(r"PolicyDisabled", timeout=20)


# ------------------------------------------------------------------- cache
def test_restart_takes_modules_from_the_cache_and_survives_a_corrupt_one(bare_cluster,
                                                                         tmp_path):
    c = bare_cluster
    directory, cache = tmp_path / "policies", tmp_path / "module-cache"
    directory.mkdir()
    pol.install(pol.built("maglev"), directory, "live")
    config = tmp_path / "switchyard.yaml"
    config.write_text(json.dumps({"policy": {"cacheDir": str(cache)}}))
    c.write_services([live_service()])
    args = ["--config", str(config), "--policies", str(directory)]
    c.start_proxy(args)
    c.start_http()
    c.proxy.wait_log(r"policy module loaded.*policy=live.*cached=false", timeout=5)
    entries = list(cache.glob("*.cwasm"))
    assert len(entries) == 1, entries

    # A restart: the module comes from the cache and decides as before.
    c.proxy.stop_and_check()
    c.start_proxy(args)
    c.proxy.wait_log(r"policy module loaded.*policy=live.*cached=true", timeout=5)
    assert one_pod(c, 6)

    # A corrupt entry (a flipped byte): noticed, compiled again, rewritten.
    data = bytearray(entries[0].read_bytes())
    data[-100] ^= 0xFF
    entries[0].write_bytes(bytes(data))
    c.proxy.stop_and_check()
    c.start_proxy(args)
    c.proxy.wait_log(r"compiled-module cache entry not used", timeout=5)
    c.proxy.wait_log(r"policy module loaded.*policy=live.*cached=false", timeout=5)
    assert one_pod(c, 6)
    c.proxy.stop_and_check()
    c.start_proxy(args)
    c.proxy.wait_log(r"policy module loaded.*policy=live.*cached=true", timeout=5)
