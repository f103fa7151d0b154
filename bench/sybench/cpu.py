"""CPU and memory accounting from /proc.

The per-CPU lines of /proc/stat account for every moment of a core: idle,
user code, the kernel on behalf of a process, and interrupt/softirq work
(where most TCP processing lands); the proxy is the only thing pinned to
the proxy CPU, so that core's busy time during the load is what proxying
cost, kernel work included. A process's own utime+stime (from
/proc/<pid>/stat) is reported next to it: it leaves out softirq work.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

TICK = os.sysconf("SC_CLK_TCK")


def _cpu_lines() -> dict[str, list[int]]:
    """Per-CPU counters, plus "processes" (forks and clones since boot)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") or line.startswith("processes"):
                parts = line.split()
                out[parts[0]] = [int(x) for x in parts[1:]]
    return out


def _busy(v: list[int]) -> int:
    # user nice system idle iowait irq softirq steal ...
    return v[0] + v[1] + v[2] + v[5] + v[6]


def _proc_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime stime
        except (OSError, IndexError, ValueError):
            pass
    return total


# Network namespaces of the run (inode numbers): a process in one of them, or
# the harness itself, is ours; any other user-space process is "foreign" work
# that shares the two cores (another build or test on the machine).
OURS: set[int] = set()


def register_namespaces(names: list[str]) -> None:
    for name in names:
        try:
            OURS.add(os.stat(f"/run/netns/{name}").st_ino)
        except OSError:
            pass


def _foreign_ticks() -> dict[int, tuple[int, str]]:
    me = os.getpid()
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if fields[1] == "2" or entry == "2":  # kernel threads (ksoftirqd is our traffic)
                continue
            if os.stat(f"/proc/{entry}/ns/net").st_ino in OURS:
                continue
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
            out[int(entry)] = (int(fields[11]) + int(fields[12]), comm)
        except (OSError, IndexError, ValueError):
            continue
    return out


@dataclass
class Sample:
    t: float
    cpus: dict[str, list[int]]
    proc: int
    foreign: dict[int, tuple[int, str]]


def sample(pids: list[int]) -> Sample:
    return Sample(time.monotonic(), _cpu_lines(), _proc_ticks(pids), _foreign_ticks())


def foreign_share(a: Sample, b: Sample) -> float:
    """CPU used by foreign processes between two samples, in cores (0..2)."""
    ticks = sum(v - a.foreign.get(pid, (0, ""))[0] for pid, (v, _) in b.foreign.items())
    return ticks / TICK / max(b.t - a.t, 1e-3)


FORKS_PER_S_QUIET = 5.0  # our own measurements start well under one process a second


def disturbed_by_forks(a: Sample, b: Sample) -> bool:
    forks = b.cpus["processes"][0] - a.cpus["processes"][0]
    return forks > 20 + FORKS_PER_S_QUIET * (b.t - a.t)


def foreign_names(a: Sample, b: Sample) -> str:
    """The foreign processes that used CPU between two samples, busiest first."""
    used: dict[str, int] = {}
    for pid, (v, comm) in b.foreign.items():
        d = v - a.foreign.get(pid, (0, ""))[0]
        if d > 0:
            used[comm] = used.get(comm, 0) + d
    top = sorted(used.items(), key=lambda kv: -kv[1])[:4]
    return ", ".join(f"{c} {t / TICK:.1f}s" for c, t in top)


def wait_quiet(limit: float = 0.05, window: float = 2.0, timeout: float = 120.0) -> float:
    """Waits (bounded) until foreign processes use less than `limit` of a core
    over `window` seconds; returns the last share seen."""
    deadline = time.monotonic() + timeout
    while True:
        a = sample([])
        time.sleep(window)
        b = sample([])
        share = foreign_share(a, b)
        if disturbed_by_forks(a, b):
            share = max(share, 1.0)
        if share < limit or time.monotonic() >= deadline:
            return share


def delta(a: Sample, b: Sample, proxy_cpu: int, load_cpu: int) -> dict:
    """Seconds of busy CPU between two samples: the proxy core, the load core,
    both, and the peer's processes, plus the proxy core's split.

    Busy = wall time - idle - iowait. The idle counters are exact under
    NO_HZ (sleep lengths), while user/system/softirq are sampled at the tick
    and undercount a core that wakes and sleeps between ticks (checked here:
    a half-busy proxy showed half its own process time); the sampled fields
    only split the busy time into user / system / softirq shares."""
    wall = b.t - a.t

    def busy(name: str) -> float:
        v, w = b.cpus[name], a.cpus[name]
        idle = (v[3] + v[4] - w[3] - w[4]) / TICK
        return min(wall, max(0.0, wall - idle))

    p, q = b.cpus[f"cpu{proxy_cpu}"], a.cpus[f"cpu{proxy_cpu}"]
    sampled = max(_busy(p) - _busy(q), 1)
    core = busy(f"cpu{proxy_cpu}")
    return {
        "wall_s": wall,
        "proxy_core_s": core,
        "proxy_core_user_s": core * (p[0] + p[1] - q[0] - q[1]) / sampled,
        "proxy_core_sys_s": core * (p[2] - q[2]) / sampled,
        "proxy_core_softirq_s": core * (p[5] + p[6] - q[5] - q[6]) / sampled,
        "load_core_s": busy(f"cpu{load_cpu}"),
        "total_s": core + busy(f"cpu{load_cpu}"),
        "peer_process_s": (b.proc - a.proc) / TICK,
        "foreign_cores": foreign_share(a, b),
        "foreign_names": foreign_names(a, b),
        # A measurement starts a handful of processes and threads; far more means
        # short-lived work elsewhere (a test suite) that the per-process sums miss.
        "forks": b.cpus["processes"][0] - a.cpus["processes"][0],
    }


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total
