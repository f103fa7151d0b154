"""The C and AssemblyScript SDK examples, built the way their build scripts
build them (policy-sdk/c/build, policy-sdk/assemblyscript/build.mjs), and
the offline `switchyard policy check` / `policy test` commands run on them.
A build that cannot run fails the test (SetupError), it never skips."""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from pathlib import Path

import manifests as mf
import switchyard
from helpers import assert_all_answered
from topology import SetupError

REPO = Path(__file__).resolve().parents[2]
SDK = REPO / "policy-sdk"
EXAMPLES = ("least-loaded", "header-routing")
# The three-Pod demo Service (conf/services/web.yaml): web-a, web-b, web-c.
DEMO_MANIFESTS = REPO / "conf" / "services"
DEMO_SERVICE = "demo/web"


def build_c(out_dir: Path) -> dict[str, Path]:
    """policy-sdk/c/build OUT_DIR: clang + lld, wasm32, no libc."""
    return _build(["bash", str(SDK / "c" / "build"), str(out_dir)], out_dir, "policy-sdk/c/build")


def build_as(out_dir: Path) -> dict[str, Path]:
    """policy-sdk/assemblyscript/build.mjs OUT_DIR: asc from the pinned
    package (installed by .ci/install with npm ci)."""
    as_dir = SDK / "assemblyscript"
    if not (as_dir / "node_modules" / ".bin" / "asc").exists():
        raise SetupError(f"{as_dir}/node_modules has no asc: run `npm ci` there (.ci/install does)")
    return _build(["node", str(as_dir / "build.mjs"), str(out_dir)], out_dir,
                  "policy-sdk/assemblyscript/build.mjs")


def _build(argv: list[str], out_dir: Path, what: str) -> dict[str, Path]:
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SetupError(f"{what} could not run: {e}") from e
    if proc.returncode != 0:
        raise SetupError(f"{what} failed ({proc.returncode}):\n"
                         f"{proc.stdout.decode(errors='replace')}{proc.stderr.decode(errors='replace')}")
    modules = {name: out_dir / f"{name}.wasm" for name in EXAMPLES}
    missing = [str(p) for p in modules.values() if not p.is_file()]
    if missing:
        raise SetupError(f"{what} did not write {missing}")
    return modules


def policy(*args: str, timeout: float = 60) -> tuple[int, str]:
    """`switchyard policy ARGS`: exit code and combined output."""
    proc = subprocess.run([str(switchyard.binary()), "policy", *args], capture_output=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")


def imports(module: Path) -> list[tuple[str, str]]:
    """(module, name) of every import, read with wasm-objdump."""
    proc = subprocess.run(["wasm-objdump", "-j", "Import", "-x", str(module)],
                          capture_output=True, timeout=30)
    if proc.returncode != 0:
        raise SetupError(f"wasm-objdump {module}: {proc.stderr.decode(errors='replace')}")
    return re.findall(r"<- ([\w.$-]+)\.([\w$-]+)$", proc.stdout.decode(), re.M)


def simulate(module: Path, *args: str) -> dict[str, int]:
    """`policy test` on the demo Service: connections per Pod, and the
    number of decisions the module itself made under "policy"."""
    rc, out = policy("test", str(module), "--manifests", str(DEMO_MANIFESTS),
                     "--service", DEMO_SERVICE, *args)
    assert rc == 0, out
    counts = {pod: int(n) for pod, n in re.findall(r"^\s+\S+\s+(web-\w)\s+(\d+)\s", out, re.M)}
    decided = re.search(r"decisions: (\d+) by the policy, (\d+) by the previous policy, "
                        r"(\d+) by the built-in round robin", out)
    assert decided, out
    counts["policy"] = int(decided.group(1))
    counts["fallback"] = int(decided.group(2)) + int(decided.group(3))
    return counts


# ------------------------------------------------------- live L7 routing
L7_VIP = "10.96.0.71"
L7_URL = f"http://{L7_VIP}/"


def l7_service(policy: str) -> mf.ServiceDef:
    return mf.ServiceDef("pol-l7", [L7_VIP], [mf.Port("http", 80, mf.HTTP_PORT, app_protocol="http")],
                         [mf.backends()], annotations={"switchyard.dev/policy": policy})


def check_header_routing(cluster) -> None:
    """Requests with `x-pod: web-b` all reach web-b; `x-pod: web-c`, web-c;
    without the header they spread over the three Pods."""
    for pod in ("web-b", "web-c"):
        pods, err = get_many_with(cluster, L7_URL, 12, "-H", f"x-pod: {pod}")
        assert pods == [pod] * 12, (Counter(pods), err)
    pods, err = get_many_with(cluster, L7_URL, 30)
    assert_all_answered(pods, 30, err)


def get_many_with(cluster, url: str, count: int, *args: str) -> tuple[list[str], str]:
    """`count` GETs of `url` with extra curl arguments, one connection each."""
    urls = [f"{url}?n={i}" for i in range(1, count + 1)]
    proc = cluster.curl(urls[0], "-g", "--fail-early", "-H", "Connection: close", *args, *urls[1:],
                        timeout=15 + count * 12)
    pods = [json.loads(line)["pod"] for line in proc.stdout.decode().splitlines() if line.strip()]
    return pods, proc.stderr.decode(errors="replace")


def churn(module: Path, rounds: int = 2000) -> dict:
    """sdk_churn.mjs: the host's call sequence through `rounds` endpoint-set
    changes (0 to 2000 endpoints), in node's WebAssembly engine."""
    script = Path(__file__).resolve().parent / "sdk_churn.mjs"
    proc = subprocess.run(["node", str(script), str(module), str(rounds)], capture_output=True,
                          timeout=120)
    lines = proc.stdout.decode(errors="replace").strip().splitlines()
    if not lines:
        raise AssertionError(f"sdk_churn.mjs {module} printed nothing ({proc.returncode}): "
                             f"{proc.stderr.decode(errors='replace')}")
    return json.loads(lines[-1])
