"""Fixtures for the end-to-end suite.

Every test gets its own namespaces (see topology.py) and, through `cluster`,
a Switchyard running on the standard manifests with the io back end the test
is parametrized with. On failure the report carries the log of Switchyard and
of every server. A test that cannot set up fails; nothing here skips.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import manifests as mf  # noqa: E402
import topology  # noqa: E402
from cluster import Cluster  # noqa: E402

IO_BACKENDS = ("uring", "epoll")
LOG_TAIL_LINES = 300


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):
    # SIGTERM/SIGHUP take the same path as Ctrl-C, so fixtures tear down.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)


@pytest.fixture(scope="session", autouse=True)
def netns_hygiene():
    """Removes leftovers of dead runs first; at the end, nothing of ours may remain."""
    topology.cleanup_leftovers()
    yield
    leaked = topology.own_namespaces()
    for ns in leaked:
        topology._delete_netns(ns)
    assert not leaked, f"network namespaces left behind: {leaked}"


@pytest.fixture(params=IO_BACKENDS)
def io_backend(request) -> str:
    return request.param


@pytest.fixture
def topo(tmp_path, request):
    with topology.Topology(tmp_path / "net") as t:
        request.node._sy_topology = t
        yield t


@pytest.fixture
def bare_cluster(topo, io_backend, tmp_path):
    """The standard manifests written, Switchyard not started yet."""
    c = Cluster(topo, tmp_path, io_backend)
    c.write_services(mf.standard_services())
    yield c
    if c.proxy is not None:
        c.proxy.stop_and_check()


@pytest.fixture
def cluster(bare_cluster):
    """Standard manifests, Switchyard running and ready; checked for a clean exit after."""
    bare_cluster.start_proxy()
    return bare_cluster


def _tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    all_lines = text.splitlines()
    if len(all_lines) <= lines:
        return text
    return f"... ({len(all_lines) - lines} lines cut)\n" + "\n".join(all_lines[-lines:])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    topo = getattr(item, "_sy_topology", None)
    if report.failed and topo is not None:
        logs = topo.logs()
        # Switchyard first: it is what the reader wants.
        for name in sorted(logs, key=lambda n: (not n.startswith("switchyard"), n)):
            report.sections.append((f"log of {name} ({report.when})", _tail(logs[name])))
