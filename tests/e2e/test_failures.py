"""Backends that are down, refuse, reset or are never spoken to."""

from __future__ import annotations

import manifests as mf
from helpers import assert_all_answered

N = 30
WEB = f"http://{mf.WEB_VIP}/"


def test_backend_never_started(cluster):
    """web-c is listed ready but nothing listens: every request still succeeds."""
    cluster.start_http(["web-a", "web-b"])
    pods, err = cluster.get_many(WEB, N)
    assert_all_answered(pods, N, err, expected=["web-a", "web-b"])


def test_backend_stopped_while_serving(cluster):
    cluster.start_http()
    pods, err = cluster.get_many(WEB, 9)
    assert_all_answered(pods, 9, err)
    cluster.stop_server("http-web-b")
    pods, err = cluster.get_many(WEB, N)
    assert_all_answered(pods, N, err, expected=["web-a", "web-c"])


def test_no_endpoints_tcp_refused(cluster):
    """kube-proxy semantics: refused at once, not a timeout (curl 7, not 28)."""
    proc = cluster.curl(f"http://{mf.EMPTY_VIP}/", "-v")
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 7, f"curl exited {proc.returncode}, expected 7:\n{err[-1500:]}"
    # curl 7.88 prints the errno only in its verbose trace.
    assert "Connection refused" in err, f"not refused:\n{err[-1500:]}"


def test_no_endpoints_udp_unreachable(cluster):
    """A UDP port with no endpoints answers ICMP port unreachable."""
    proc = cluster.dig(mf.EMPTY_VIP)
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode != 0, f"dig got an answer from a Service with no endpoints:\n{out}"
    assert "connection refused" in out.lower(), f"no ICMP unreachable seen by dig:\n{out}"


def test_idle_client_does_not_block_others(cluster):
    """Connections that send nothing must not hold up new ones."""
    cluster.start_http()
    result = cluster.client_py("idle", "--host", mf.WEB_VIP, "--port", "80",
                               "--idle", "20", "--requests", "12", timeout=120)
    assert result.get("ok"), f"requests next to idle connections: {result}"
    assert set(result["pods"]) == {"web-a", "web-b", "web-c"}, result


def test_backend_reset_is_seen_and_proxy_keeps_serving(cluster):
    cluster.start_http()
    cluster.start_reset()
    for _ in range(3):
        proc = cluster.curl(f"http://{mf.RESET_VIP}/", "-v")
        err = proc.stderr.decode(errors="replace")
        # 52 empty reply, 56 reset; 28 would be a hang, 0 an invented answer.
        assert proc.returncode not in (0, 28), \
            f"curl exited {proc.returncode} for a backend that resets:\n{err[-1500:]}"
    assert cluster.proxy.alive(), "switchyard died after a backend reset"
    pods, err = cluster.get_many(WEB, 9)
    assert_all_answered(pods, 9, err)
