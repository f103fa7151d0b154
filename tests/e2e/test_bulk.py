"""Large transfers and half-close through the proxy."""

from __future__ import annotations

import json

import manifests as mf

GIB = 1 << 30


def test_iperf3_1gib_single_endpoint(cluster):
    """iperf3's control and data connections must both reach the one server."""
    cluster.start_iperf()
    proc = cluster.run_in("client", ["iperf3", "-c", mf.IPERF_VIP, "-p", str(mf.IPERF_PORT),
                                     "-n", "1G", "-J", "--connect-timeout", "5000"],
                          timeout=300)
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, f"iperf3 exited {proc.returncode}:\n{out[-3000:]}"
    end = json.loads(out)["end"]
    sent, received = end["sum_sent"]["bytes"], end["sum_received"]["bytes"]
    assert sent >= GIB, f"iperf3 sent {sent} bytes"
    # The server stops counting when the client reports, on the control
    # connection, that it has written everything: bytes still in the socket
    # buffers of both legs (a few MiB each) go uncounted. Integrity is the
    # sha256 tests' job; here nearly all of the GiB must be seen arriving.
    in_flight = 64 << 20
    assert received >= sent - in_flight, f"iperf3 server received {received} of {sent} bytes"


def test_sha256_download_1gib(cluster):
    cluster.start_sha()
    result = cluster.client_py("sha-down", "--host", mf.BULK_VIP, "--port", str(mf.SHA_PORT),
                               "--bytes", str(GIB), timeout=300)
    assert result.get("ok"), f"1 GiB download through the proxy: {result}"


def test_sha256_upload_64mib(cluster):
    cluster.start_sha()
    result = cluster.client_py("sha-up", "--host", mf.BULK_VIP, "--port", str(mf.SHA_PORT),
                               "--bytes", str(64 << 20), timeout=300)
    assert result.get("ok"), f"64 MiB upload through the proxy: {result}"


def test_half_close(cluster):
    """The client shuts its write side; the server's answer must still come back whole."""
    cluster.start_sha()
    for size in (0, 1, 100_000):
        result = cluster.client_py("sha-up", "--host", mf.BULK_VIP, "--port", str(mf.SHA_PORT),
                                   "--bytes", str(size), timeout=60)
        assert result.get("ok"), f"half-close with {size} bytes: {result}"
