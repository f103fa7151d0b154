#!/usr/bin/env python3
"""Restart to ready, with every module in target/policies bound, with and
without the compiled-module cache (bench/results/2026-12-06-restart.md).

The method of 2026-11-25-restart.md, scripted: start `switchyard run` in a
node namespace of the e2e topology (tests/e2e/topology.py: its own
namespaces, removed at exit), wait for /readyz, `kill -9`, start again and
time from the second spawn to the first 200 from 127.0.0.1:10256/readyz,
polled every 20 ms. One Service per module, annotated with it, so every
module is compiled and bound (dry run included) before ready.

    sudo python3 bench/restart.py [--runs 3] [--bin target/debug/switchyard]
"""
from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import manifests as mf  # noqa: E402
from topology import NODE_NAME, Topology, ns_argv  # noqa: E402

READY = "http://127.0.0.1:10256/readyz"
# Modules that refuse an empty config get one they accept.
CONFIGS = {
    "canary": '{"canary": "web-c", "percent": 10}',
}


def services(modules: list[str]) -> list[mf.ServiceDef]:
    out = []
    for i, name in enumerate(modules):
        annotations = {"switchyard.dev/policy": name}
        if name in CONFIGS:
            annotations["switchyard.dev/policy-config"] = CONFIGS[name]
        out.append(mf.ServiceDef(f"pol-{name}", [f"10.96.50.{10 + i}"], [mf.http_port()],
                                 [mf.backends()], annotations=annotations))
    return out


def ready(ns: str) -> bool:
    probe = subprocess.run(
        ns_argv(ns, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "1",
                     READY]), capture_output=True, timeout=10)
    return probe.stdout.decode().strip() == "200"


def spawn_and_time(topo: Topology, argv: list[str], tag: str, timeout: float = 30) -> float:
    start = time.monotonic()
    proc = topo.spawn(tag, topo.node, argv)
    while time.monotonic() - start < timeout:
        if not proc.alive():
            raise RuntimeError(f"{tag} exited:\n{proc.output()}")
        if ready(topo.node):
            return time.monotonic() - start
        time.sleep(0.02)
    raise RuntimeError(f"{tag}: not ready within {timeout} s:\n{proc.output()}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--bin", default=str(ROOT / "target" / "debug" / "switchyard"))
    ap.add_argument("--policies", default=str(ROOT / "target" / "policies"))
    args = ap.parse_args()
    modules = sorted(p.stem for p in Path(args.policies).glob("*.wasm"))
    with Topology(Path("/tmp") / "sy-bench-restart") as topo:
        work = topo.workdir
        mdir = work / "manifests"
        shutil.rmtree(mdir, ignore_errors=True)
        mf.write_services(mdir, services(modules))
        cache = work / "cache"
        for case, with_cache in (("no cache", False), ("cache", True)):
            shutil.rmtree(cache, ignore_errors=True)
            cfg = work / f"config-{with_cache}.yaml"
            cfg.write_text(f"policy:\n  cacheDir: {cache}\n" if with_cache else "policy: {}\n")
            argv = [args.bin, "run", "--config", str(cfg), "--manifests", str(mdir),
                    "--policies", args.policies, "--node-name", NODE_NAME,
                    "--log-level", "info"]
            first = spawn_and_time(topo, argv, f"first-{with_cache}")
            print(f"{case}: first start (cache {'empty' if with_cache else 'off'}) {first:.3f} s",
                  flush=True)
            for run in range(args.runs):
                topo.procs[-1].stop(signal.SIGKILL)
                t = spawn_and_time(topo, argv, f"run{run}-{with_cache}")
                print(f"{case}: restart {run + 1}: {t:.3f} s", flush=True)
            log = topo.procs[-1].output()
            bound = sum(1 for line in log.splitlines() if "policy module loaded" in line)
            cached = sum(1 for line in log.splitlines()
                         if "policy module loaded" in line and "cached=true" in line)
            problems = [line for line in log.splitlines() if "ERROR" in line]
            print(f"{case}: modules loaded {bound}/{len(modules)} ({cached} from the cache); "
                  f"errors: {problems[:3]}", flush=True)
            topo.procs[-1].stop(signal.SIGTERM, timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
