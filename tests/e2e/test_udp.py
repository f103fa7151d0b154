"""DNS through a UDP (and TCP) ClusterIP to dnsmasq in a pod."""

from __future__ import annotations

import manifests as mf
from cluster import DNS_NAME


def test_dig_through_udp_clusterip(cluster):
    cluster.start_dns()
    for i in range(5):
        proc = cluster.dig(mf.DNS_VIP, DNS_NAME, "+short")
        out = proc.stdout.decode(errors="replace")
        assert proc.returncode == 0 and out.strip() == mf.WEB_VIP, \
            f"query {i}: dig exited {proc.returncode}:\n{out}"


def test_dig_through_tcp_clusterip(cluster):
    cluster.start_dns()
    proc = cluster.dig(mf.DNS_VIP, DNS_NAME, "+short", "+tcp")
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0 and out.strip() == mf.WEB_VIP, f"dig exited {proc.returncode}:\n{out}"
