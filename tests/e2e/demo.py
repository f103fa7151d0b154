#!/usr/bin/env python3
"""The README's demo: a throw-away node in network namespaces, three web Pods,
Switchyard on a copy of conf/services, requests spread over the Pods, then an
endpoint removed from the manifest while everything runs.

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


def show_requests(c: Cluster, vip: str) -> Counter:
    answers = Counter()
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


def policy_swap_hook(c: Cluster, vip: str) -> None:
    # >>> HOOK: live Wasm policy swap ------------------------------------------
    # The policy issue adds a step here: change the `switchyard.dev/policy`
    # annotation in the copy of web.yaml (or replace the module), then show
    # the next requests follow the new policy without a restart.
    # <<< HOOK ------------------------------------------------------------------
    return None


def run_demo(args: argparse.Namespace, workdir: Path) -> int:
    total = 7
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
                       f"--io {args.io}` in the node namespace")
        c.start_proxy()
        step(4, total, "Switchyard is ready: its nftables table `inet switchyard` is in place "
                       "and it serves the Services of conf/services")

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

        policy_swap_hook(c, vip)

        step(7, total, "Stopping switchyard (SIGTERM) and removing the namespaces")
        c.proxy.stop_and_check()
        ok = (set(first) == set(POD_IPS) and "failed" not in second
              and gone not in second and bool(second))
    say("Done: " + ("requests spread over every Pod, and the edit took effect without a restart."
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
