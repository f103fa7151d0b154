"""Start, stop and crash: the table, the rules and the namespaces always go away."""

from __future__ import annotations

import re
import signal

import pytest

import manifests as mf
import topology
from cluster import Cluster
from helpers import assert_all_answered


class Boom(Exception):
    pass


def test_cleanup_when_a_test_fails(io_backend, tmp_path):
    """A failing test body still removes its namespaces (and with them the table)."""
    names = []
    with pytest.raises(Boom):
        with topology.Topology(tmp_path / "net") as topo:
            names = [topo.node, topo.ext, *topo.pods.values()]
            c = Cluster(topo, tmp_path, io_backend)
            c.write_services(mf.standard_services())
            c.start_http(["web-a"])
            c.start_proxy()
            assert c.proxy.table_present(), "switchyard is ready but has no nftables table"
            raise Boom()
    left = set(names) & set(topology.netns_list())
    assert not left, f"namespaces survived a failing test: {sorted(left)}"


def test_stale_table_replaced_at_start(bare_cluster):
    """After a crash (SIGKILL) the next start replaces the stale table and serves."""
    c = bare_cluster
    c.start_http()
    first = c.start_proxy()
    first.stop(signal.SIGKILL)
    assert first.table_present(), "expected the killed process to leave its table behind"
    # The crashed run left its table and rules; the next run must take them over
    # and remove them on a clean exit, restoring the routing state seen before
    # the first run.
    before = first.routing_before
    second = c.start_proxy()
    second.routing_before = before
    pods, err = c.get_many(f"http://{mf.WEB_VIP}/", 12)
    assert_all_answered(pods, 12, err)


def test_sigint_is_a_clean_exit(cluster):
    rc = cluster.proxy.stop(signal.SIGINT)
    assert rc == 0, f"switchyard exited {rc} on SIGINT"
    assert not cluster.proxy.table_present(), "table inet switchyard left after SIGINT"


def test_log_names_io_backend(cluster):
    """An explicit --io is honoured (no silent fallback) and the log says which runs."""
    name = {"uring": r"(io_)?uring", "epoll": r"epoll"}[cluster.io]
    cluster.proxy.wait_log(rf"(?i)\bio\W+{name}\b", timeout=5,
                           what=f"the log to say the {cluster.io} back end runs")
    other = {"uring": "epoll", "epoll": "io_uring"}[cluster.io]
    assert not re.search(rf"(?i)\bio\W+{other}\b", cluster.proxy.log()), \
        f"asked for --io {cluster.io}, the log names {other}"
