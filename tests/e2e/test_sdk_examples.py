"""The C SDK (policy-sdk/c) and the AssemblyScript SDK
(policy-sdk/assemblyscript): each one's two examples build (clang + lld for
wasm32 without libc; asc from the pinned npm package), import only what
ABI v1 allows, pass `switchyard policy check`, decide as documented in
`switchyard policy test`, and, bound live to a Service, steer real
connections and HTTP requests (least-loaded avoids a Pod held busy,
header-routing follows the `x-pod` header)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

import manifests as mf
import policies as pol
import sdk_modules as sdk
from test_policies import HOLD, URL, VIP, policy_service, wait_metric

ABI_IMPORTS = {"now_ns", "random_u64", "log", "set_error", "request_attr"}


BUILDERS = {"c": sdk.build_c, "as": sdk.build_as}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def lang(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def modules(lang, tmp_path_factory):
    """The language's examples, built once per module run."""
    return BUILDERS[lang](tmp_path_factory.mktemp(f"sdk-{lang}"))


@pytest.mark.parametrize("name", sdk.EXAMPLES)
def test_example_passes_policy_check(modules, name):
    module = modules[name]
    rc, out = sdk.policy("check", str(module))
    assert rc == 0 and "ok: ABI version 1" in out, out
    for where, what in sdk.imports(module):
        assert where == "switchyard" and what in ABI_IMPORTS, f"{name} imports {where}.{what}"


@pytest.mark.parametrize("name", sdk.EXAMPLES)
def test_example_survives_table_churn(modules, name):
    # Tables of up to 2000 endpoints (128 KiB), two alive at a time: freed
    # tables must be reused, so memory stays near two of the largest.
    got = sdk.churn(modules[name])
    assert got["ok"], got
    assert got["endBytes"] <= 1 << 20, f"memory grew to {got['endBytes']} bytes: {got}"
    assert got["errors"] == 0, got


def test_examples_accept_and_reject_configs(modules):
    rc, out = sdk.policy("check", str(modules["least-loaded"]), "--config", '{"avoidMs": 500}')
    assert rc == 0 and "configuration accepted" in out, out
    rc, out = sdk.policy("check", str(modules["least-loaded"]), "--config", '{"avoidMS": 500}')
    assert rc != 0 and "unknown field avoidMS" in out, out
    rc, out = sdk.policy("check", str(modules["least-loaded"]), "--config", '{"avoidMs": "soon"}')
    assert rc != 0 and "avoidMs must be a whole number" in out, out
    rc, out = sdk.policy("check", str(modules["header-routing"]), "--config", '{"header": "X-Route"}')
    assert rc == 0 and "configuration accepted" in out, out
    rc, out = sdk.policy("check", str(modules["header-routing"]), "--config", '{"headr": "x"}')
    assert rc != 0 and "unknown field headr" in out, out
    rc, out = sdk.policy("check", str(modules["header-routing"]), "--config", '{"header": [1]}')
    assert rc != 0 and "invalid policy config" in out, out
    rc, out = sdk.policy("check", str(modules["header-routing"]), "--config", '{"header": ""}')
    assert rc != 0 and "header must be a header name" in out, out


def test_least_loaded_simulated(modules):
    # Every connection held open: the least loaded is always the next Pod.
    held = sdk.simulate(modules["least-loaded"], "--connections", "300", "--hold")
    assert [held[p] for p in ("web-a", "web-b", "web-c")] == [100, 100, 100], held
    assert held["fallback"] == 0, held
    # web-a refuses connections: after its first failure it is avoided.
    failing = sdk.simulate(modules["least-loaded"], "--connections", "300", "--fail", "web-a")
    assert failing["web-a"] == 0 and failing["web-b"] + failing["web-c"] == 300, failing
    assert abs(failing["web-b"] - failing["web-c"]) <= 2, failing


def test_header_routing_simulated_l4_is_round_robin(modules):
    # `policy test` simulates L4 connections: no header, so round robin.
    counts = sdk.simulate(modules["header-routing"], "--connections", "300")
    assert [counts[p] for p in ("web-a", "web-b", "web-c")] == [100, 100, 100], counts


def test_least_loaded_live_avoids_a_busy_pod(bare_cluster, tmp_path, lang, modules):
    # Twenty long connections to web-a while it is the only endpoint, then
    # web-b and web-c join: new connections must go to them.
    directory = tmp_path / "policies"
    pol.install(modules["least-loaded"], directory, f"least-loaded-{lang}")
    bare_cluster.write_services([policy_service(f"least-loaded-{lang}", slices=[mf.backends(["web-a"])])])
    bare_cluster.start_proxy(["--policies", str(directory)])
    bare_cluster.start_http()
    hold = subprocess.Popen(["ip", "netns", "exec", bare_cluster.topo.client, sys.executable, "-c",
                             HOLD, VIP, "20"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert hold.stdout.readline().strip() == b"open"
        wait_metric(bare_cluster, "switchyard_connections_active", 20, service="e2e/pol")
        mark = bare_cluster.proxy.log_mark()
        bare_cluster.write_services([policy_service(f"least-loaded-{lang}")])
        bare_cluster.proxy.wait_log(r"service table in force", since=mark)
        pods, err = bare_cluster.get_many(URL, 30)
        assert len(pods) == 30, err
        assert "web-a" not in pods, f"least-loaded sent new connections to the busy Pod: {Counter(pods)}"
        assert set(pods) == {"web-b", "web-c"}, Counter(pods)
    finally:
        hold.stdin.close()
        hold.wait(timeout=10)
    assert f"least-loaded-{lang}" in bound_policy_name(bare_cluster)


def test_header_routing_live_routes_requests(bare_cluster, tmp_path, lang, modules):
    directory = tmp_path / "policies"
    pol.install(modules["header-routing"], directory, f"header-routing-{lang}")
    bare_cluster.write_services([sdk.l7_service(f"header-routing-{lang}")])
    bare_cluster.start_proxy(["--policies", str(directory)])
    bare_cluster.start_http()
    sdk.check_header_routing(bare_cluster)


def bound_policy_name(cluster) -> str:
    services = cluster.curl_json("http://127.0.0.1:10249/debug/services", where="node")["services"]
    return " ".join(s["policy"] for s in services if s["service"] == "e2e/pol")
