"""Runs the real `switchyard` binary inside a topology's node namespace."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Sequence

from topology import NODE_NAME, Proc, SetupError, Topology, run, wait_until

REPO = Path(__file__).resolve().parents[2]
READY_URL = "http://127.0.0.1:10256/readyz"
LOG_LEVEL = os.environ.get("E2E_LOG_LEVEL", "debug")


def binary() -> Path:
    path = Path(os.environ.get("SWITCHYARD_BIN", REPO / "target" / "debug" / "switchyard"))
    if not path.is_file() or not os.access(path, os.X_OK):
        raise SetupError(f"switchyard binary not found at {path}: run `cargo build -p switchyard` "
                         "or set SWITCHYARD_BIN")
    return path


def check(*args: str, timeout: float = 60) -> tuple[int, str]:
    """`switchyard check ARGS`: exit code and combined output."""
    proc = run([str(binary()), "check", *args], check=False, timeout=timeout)
    return proc.returncode, proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")


def routing_state(ns: str) -> str:
    """Policy rules and routes; Switchyard must leave them as it found them."""
    parts = []
    for args in (["-4", "rule", "list"], ["-6", "rule", "list"],
                 ["-4", "route", "show", "table", "all"], ["-6", "route", "show", "table", "all"]):
        parts.append(run(["ip", "-n", ns, *args]).stdout.decode())
    return "".join(parts)


class Switchyard:
    def __init__(self, topo: Topology, manifests: Path, io: str,
                 extra_args: Sequence[str] = (), name: str = "switchyard"):
        self.topo, self.manifests, self.io = topo, Path(manifests), io
        self.extra_args, self.name = list(extra_args), name
        self.proc: Proc | None = None
        self.routing_before = ""
        self.stopped_by_test = False

    def argv(self) -> list[str]:
        return [str(binary()), "run", "--manifests", str(self.manifests),
                "--node-name", NODE_NAME, "--io", self.io, "--log-level", LOG_LEVEL,
                *self.extra_args]

    def start(self, ready_timeout: float = 60, wait: bool = True) -> "Switchyard":
        argv = self.argv()
        self.routing_before = routing_state(self.topo.node)
        env = dict(os.environ, RUST_BACKTRACE="1", NO_COLOR="1")
        self.proc = self.topo.spawn(self.name, self.topo.node, argv, env=env)
        if wait:
            self.wait_ready(ready_timeout)
        return self

    def ready(self) -> bool:
        assert self.proc is not None
        if not self.proc.alive():
            raise SetupError(f"switchyard exited with {self.proc.popen.returncode} before "
                             f"it was ready:\n{self.log()}")
        probe = run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2",
                     READY_URL], ns=self.topo.node, check=False, timeout=10)
        return probe.stdout.decode().strip() == "200"

    def wait_ready(self, timeout: float = 60) -> None:
        wait_until(self.ready, f"switchyard ({self.io}) to answer 200 on {READY_URL}",
                   timeout=timeout, interval=0.2)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def log(self) -> str:
        return self.proc.output() if self.proc else ""

    def log_mark(self) -> int:
        """A position in the log; `wait_log(since=mark)` looks only past it."""
        return len(self.log())

    def wait_log(self, pattern: str, timeout: float = 20, what: str | None = None,
                 since: int = 0) -> str:
        """Waits until a log line matches `pattern` (a regex); returns that line."""
        rx = re.compile(pattern)

        def find():
            for line in self.log()[since:].splitlines():
                if rx.search(line):
                    return line
            return None

        return wait_until(find, what or f"a switchyard log line matching {pattern!r}",
                          timeout=timeout, interval=0.2)

    def table_present(self) -> bool:
        probe = run(["nft", "list", "table", "inet", "switchyard"], ns=self.topo.node,
                    check=False, timeout=10)
        return probe.returncode == 0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Stops the process (a test that does this checks the exit code itself)."""
        assert self.proc is not None
        self.stopped_by_test = True
        return self.proc.stop(sig, timeout=timeout)

    def stop_and_check(self) -> None:
        """SIGTERM, then: exit 0, no nftables table, routing rules as before start."""
        if self.proc is None:
            return
        was_alive = self.proc.alive()
        rc = self.proc.stop(signal.SIGTERM, timeout=20)
        problems = []
        if self.stopped_by_test:
            pass
        elif not was_alive:
            problems.append(f"switchyard had already exited ({rc}) before SIGTERM")
        elif rc != 0:
            problems.append(f"switchyard exited with {rc} on SIGTERM, expected 0")
        if self.table_present():
            problems.append("table inet switchyard still present after exit")
        after = routing_state(self.topo.node)
        if after != self.routing_before:
            problems.append(f"ip rules/routes differ after exit:\n--- before\n"
                            f"{self.routing_before}--- after\n{after}")
        assert not problems, "\n".join(problems)
