#!/usr/bin/env python3
"""The README's demo: a throw-away node in network namespaces, three web Pods,
Switchyard on a copy of conf/services, requests spread over the Pods by a Wasm
round robin, an endpoint removed from the manifest and then the policy swapped
to Maglev while everything runs.

Run it through `bash tests/demo` (installs and builds first). Everything it
creates is removed on exit, on an error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import manifests as mf  # noqa: E402
import topology  # noqa: E402
from cluster import Cluster  # noqa: E402
from switchyard import REPO  # noqa: E402
from topology import BACKENDS, CLIENT, SetupError, wait_until  # noqa: E402

REQUESTS = 12
POLICIES = Path(os.environ.get("SWITCHYARD_POLICIES", REPO / "target" / "policies"))
DNS_VIP = "10.96.0.53"  # conf/services/dns.yaml
DNS_NAME = "web.demo.svc.cluster.local"
POD_IPS = {p.name: p.ipv4 for p in BACKENDS}


def say(text: str = "") -> None:
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `demo | head`: keep going, so cleanup still runs
        pass


def step(n: int, total: int, text: str) -> None:
    say(f"[{n}/{total}] {text}")


def cluster_ip(manifest: Path) -> str:
    m = re.search(r"^  clusterIP: (\S+)$", manifest.read_text(), re.M)
    if not m:
        raise SetupError(f"no spec.clusterIP in {manifest}")
    return m.group(1)


def remove_endpoint(manifest: Path, ip: str) -> None:
    """Drops the `endpoints` item holding `ip` from a kubectl-style EndpointSlice."""
    lines = manifest.read_text().splitlines(keepends=True)
    out, i, removed = [], 0, False
    while i < len(lines):
        if lines[i].startswith("- addresses:"):
            j = i + 1
            while j < len(lines) and lines[j].startswith("  "):
                j += 1
            if f"- {ip}\n" in "".join(lines[i:j]):
                removed = True
            else:
                out.extend(lines[i:j])
            i = j
        else:
            out.append(lines[i])
            i += 1
    if not removed:
        raise SetupError(f"endpoint {ip} not found in {manifest}")
    mf.write_atomic(manifest, "".join(out))


def datapath(c: Cluster, service: str = "demo/web") -> str:
    """Which datapath carries the Service's first port, and why."""
    services = c.curl_json("http://127.0.0.1:10249/debug/services", where="node")["services"]
    ports = next((s["ports"] for s in services if s["service"] == service), [])
    d = ports[0].get("datapath") if ports else None
    return f"{d['datapath']} datapath ({d['reason']})" if d else "unknown datapath"


def show_requests(c: Cluster, vip: str) -> Counter:
    answers = Counter()
    path = datapath(c)
    via = ("nftables DNAT, no proxy on the path" if path.startswith("kernel")
           else "the user-space proxy")
    say(f"      demo/web is on the {path}: each request below went through {via}")
    for i in range(1, REQUESTS + 1):
        try:
            got = c.curl_json(f"http://{vip}/demo/{i}")
            answers[got["pod"]] += 1
            say(f"      request {i:2d} -> {got['pod']} ({POD_IPS.get(got['pod'], '?')}),"
                f" which saw the client as {got['peer']}")
        except AssertionError as exc:
            answers["failed"] += 1
            say(f"      request {i:2d} -> FAILED: {exc}")
    say("      spread: " + ", ".join(f"{pod} {n}" for pod, n in sorted(answers.items())))
    return answers


def bound_policy(c: Cluster, service: str) -> str:
    services = c.curl_json("http://127.0.0.1:10249/debug/services", where="node")["services"]
    return next((s["policy"] for s in services if s["service"] == service), "?")


def annotate(manifest: Path, key: str, value: str) -> None:
    """Adds an annotation to the Service (the first `metadata:`) of a manifest."""
    text = manifest.read_text()
    if "\nmetadata:\n" not in text:
        raise SetupError(f"no metadata in {manifest}")
    text = text.replace("\nmetadata:\n", f"\nmetadata:\n  annotations:\n    {key}: {value}\n", 1)
    mf.write_atomic(manifest, text)


def policy_swap(c: Cluster, vip: str, web_yaml: Path, n: int, total: int) -> Counter:
    """Rebinds demo/web from the default Wasm round robin to Maglev, live."""
    before = bound_policy(c, "demo/web")
    step(n, total, f"Swapping the policy live: annotating Service demo/web with "
                   f"switchyard.dev/policy: maglev (it ran {before})")
    annotate(web_yaml, "switchyard.dev/policy", "maglev")
    started = time.monotonic()
    wait_until(lambda: bound_policy(c, "demo/web").startswith("maglev "),
               "switchyard to bind demo/web to maglev", timeout=20, interval=0.2)
    say(f"      now bound to {bound_policy(c, 'demo/web')} after {time.monotonic() - started:.1f}s; "
        f"Maglev hashes the client address, so every request of this client goes to one Pod:")
    return show_requests(c, vip)


def run_demo(args: argparse.Namespace, workdir: Path) -> int:
    total = 9
    services = workdir / "services"
    shutil.copytree(REPO / "conf" / "services", services)
    web_yaml = services / "web.yaml"
    vip = cluster_ip(web_yaml)

    with topology.Topology(workdir / "net") as topo:
        step(1, total, f"Built a node in network namespaces {topo.id}-*: node, ext, "
                       f"{', '.join(p.name for p in BACKENDS)}, {CLIENT.name} ({CLIENT.ipv4})")
        c = Cluster(topo, workdir, args.io)
        c.manifests = services
        c.start_http()
        c.start_dns("web-a", DNS_NAME)
        step(2, total, "Started Pods: " + ", ".join(f"{p.name} {p.ipv4}:8080"
                                                     for p in BACKENDS)
             + " (Python HTTP), dnsmasq in web-a")

        step(3, total, f"Starting `switchyard run --manifests <copy of conf/services> "
                       f"--policies {POLICIES} --io {args.io}` in the node namespace")
        c.start_proxy(["--policies", str(POLICIES)])
        step(4, total, "Switchyard is ready: its nftables table `inet switchyard` is in place "
                       "and it serves the Services of conf/services; demo/web is balanced by "
                       f"the Wasm policy {bound_policy(c, 'demo/web')}")

        step(5, total, f"{REQUESTS} requests from Pod {CLIENT.name} to Service demo/web "
                       f"(ClusterIP {vip}:80), one connection each:")
        first = show_requests(c, vip)

        dig = c.dig(DNS_VIP, DNS_NAME, "+short")
        answer = dig.stdout.decode().strip() if dig.returncode == 0 else "FAILED"
        say(f"      and DNS over UDP: `dig @{DNS_VIP} {DNS_NAME}` from {CLIENT.name} -> "
            f"{answer or 'no answer'} (Service demo/dns, dnsmasq in web-a)")

        gone = "web-c"
        step(6, total, f"Editing {web_yaml}: removing endpoint {POD_IPS[gone]} ({gone}); "
                       "switchyard keeps running")
        remove_endpoint(web_yaml, POD_IPS[gone])
        started = time.monotonic()

        def applied() -> bool:
            pods, _ = c.get_many(f"http://{vip}/probe", 6)
            return len(pods) == 6 and gone not in pods

        wait_until(applied, f"switchyard to drop {gone}", timeout=20, interval=0.3)
        say(f"      applied within {time.monotonic() - started:.1f}s, same switchyard process "
            f"(pid {c.proxy.proc.pid}); the next {REQUESTS} requests:")
        second = show_requests(c, vip)

        third = policy_swap(c, vip, web_yaml, 7, total)

        step(8, total, "Swapping demo/web to least-request, a policy that reads live "
                       "connection counts: it gives no slot table, so the Service moves to the "
                       "proxy datapath, live")
        text = web_yaml.read_text()
        mf.write_atomic(web_yaml, text.replace("switchyard.dev/policy: maglev",
                                               "switchyard.dev/policy: least-request", 1))
        wait_until(lambda: datapath(c).startswith("proxy"),
                   "demo/web to move to the proxy datapath", timeout=20, interval=0.2)
        fourth = show_requests(c, vip)

        step(9, total, "Stopping switchyard (SIGTERM) and removing the namespaces")
        c.proxy.stop_and_check()
        ok = (set(first) == set(POD_IPS) and "failed" not in second
              and gone not in second and bool(second)
              and "failed" not in third and len(third) == 1
              and "failed" not in fourth and bool(fourth))
    say("Done: " + ("requests spread over every Pod by a Wasm round robin on the kernel "
                    "datapath; the manifest edit, the policy swap and the move to the proxy "
                    "datapath took effect without a restart."
                    if ok else "something did not work as expected; see the lines above."))
    return 0 if ok else 1


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--io", default=os.environ.get("SWITCHYARD_IO", "auto"),
                    choices=["auto", "uring", "epoll"])
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    topology.cleanup_leftovers()
    workdir = Path(tempfile.mkdtemp(prefix="switchyard-demo-"))
    rc = 1
    try:
        rc = run_demo(args, workdir)
    except KeyboardInterrupt:
        say("Interrupted: cleaning up.")
        rc = 130
    except (SetupError, AssertionError) as exc:
        say(f"Demo failed: {exc}")
    finally:
        for topo in list(topology._live.values()):
            topo.teardown()
        if rc == 0 and not os.environ.get("DEMO_KEEP_LOGS"):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            say(f"Logs are kept in {workdir}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
