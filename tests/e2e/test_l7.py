"""L7: per-request balancing of HTTP/1.1 and h2c through the real binary on
both io back ends, with nginx backends in the pods and real clients (curl,
h2load) in the client pod. Every load is bounded in count and time; every
address is inside the test's namespaces."""

from __future__ import annotations

import hashlib
import re
import socket
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import l7_backends as lb
import manifests as mf
import policies as pol
from cluster import POD_IP

H2_VIP = "10.96.0.80"      # h2c, 3 pods
H1_VIP = "10.96.0.81"      # http, 3 pods
ROUTE_VIP = "10.96.0.82"   # http, http-route policy
CANARY_VIP = "10.96.0.83"  # h2c, canary policy (header)
EMPTY_VIP = "10.96.0.84"   # http + grpc ports, no endpoints
BREAK_VIP = "10.96.0.85"   # http, a backend that resets mid-response
BIG_VIP = "10.96.0.86"     # h2c, web-a only (large bodies)
WS_VIP = "10.96.0.87"      # kubernetes.io/ws, an upgrade echo server on web-b
RETRY_VIP = "10.96.0.88"   # http, one endpoint refuses connections
STALE_VIP = "10.96.0.89"   # http, web-a only, nginx closes idle connections after 1 s
PODS = ("web-a", "web-b", "web-c")

ROUTES = ('{"routes": [{"header": "x-canary", "value": "1", "endpoints": "web-c"},'
          ' {"pathPrefix": "/api/", "endpoints": "web-b"}], "default": "web-a"}')
CONFIG = """
dataplane:
  l7:
    headerReadTimeout: 2s
    responseTimeout: 3s
    idleTimeout: 20s
"""


def l7_services() -> list[mf.ServiceDef]:
    def port(app: str, target: int, name: str = "http") -> mf.Port:
        return mf.Port(name, 80, target, app_protocol=app)

    return [
        mf.ServiceDef("l7-h2", [H2_VIP], [port("kubernetes.io/h2c", lb.H2_PORT)], [mf.backends()]),
        mf.ServiceDef("l7-h1", [H1_VIP], [port("http", lb.H1_PORT)], [mf.backends()]),
        mf.ServiceDef("l7-route", [ROUTE_VIP], [port("http", lb.H1_PORT)], [mf.backends()],
                      annotations={"switchyard.dev/policy": "http-route",
                                   "switchyard.dev/policy-config": ROUTES}),
        mf.ServiceDef("l7-canary", [CANARY_VIP], [mf.Port("http", 80, lb.H2_PORT)],
                      [mf.backends()],
                      annotations={"switchyard.dev/protocol": "h2c",
                                   "switchyard.dev/policy": "canary",
                                   "switchyard.dev/policy-config":
                                       '{"canary": "web-c", "header": "x-canary",'
                                       ' "headerValue": "1"}'}),
        mf.ServiceDef("l7-empty", [EMPTY_VIP],
                      [port("http", lb.H1_PORT), mf.Port("grpc", 50051, 50051, app_protocol="grpc")],
                      [[]]),
        mf.ServiceDef("l7-break", [BREAK_VIP], [port("http", lb.BREAK_PORT)],
                      [mf.backends(["web-c"])]),
        mf.ServiceDef("l7-big", [BIG_VIP], [port("kubernetes.io/h2c", lb.H2_PORT)],
                      [mf.backends(["web-a"])]),
        mf.ServiceDef("l7-stale", [STALE_VIP], [port("http", lb.SHORT_KEEPALIVE_PORT)],
                      [mf.backends(["web-a"])]),
        mf.ServiceDef("l7-ws", [WS_VIP], [port("kubernetes.io/ws", lb.UPGRADE_PORT)],
                      [mf.backends(["web-b"])]),
    ]


@pytest.fixture
def l7(bare_cluster, tmp_path):
    """The L7 Services, nginx (HTTP/1.1 + h2c) on every pod, the policies
    http-route and canary installed, Switchyard running."""
    c = bare_cluster
    c.write_services(l7_services())
    policies = tmp_path / "policies"
    for name in ("http-route", "canary"):
        pol.install(pol.built(name), policies, name)
    config = tmp_path / "switchyard.yaml"
    config.write_text(CONFIG)
    c.nginx_roots = {}
    for pod in PODS:
        root = tmp_path / f"l7-nginx-{pod}"
        conf = lb.nginx_conf(root, pod)
        c._spawn(f"l7-nginx-{pod}", pod, ["nginx", "-c", str(conf), "-p", str(root),
                                          "-g", "daemon off;"], lb.H1_PORT)
        c.topo.wait_listening(c.topo.pods[pod], lb.H2_PORT)
        c.nginx_roots[pod] = root
    c._spawn("l7-break", "web-c", [sys.executable, str(Path(lb.__file__)), "break",
                                   str(lb.BREAK_PORT)], lb.BREAK_PORT)
    c._spawn("l7-upgrade", "web-b", [sys.executable, str(Path(lb.__file__)), "upgrade",
                                     str(lb.UPGRADE_PORT)], lb.UPGRADE_PORT)
    c.start_proxy(["--config", str(config), "--policies", str(policies)])
    return c


def access_counts(c, port: int) -> Counter:
    """Requests each pod's nginx logged on `port`."""
    counts: Counter = Counter()
    for pod, root in c.nginx_roots.items():
        log = root / "access.log"
        if log.exists():
            counts[pod] = sum(1 for line in log.read_text().splitlines()
                              if line.startswith(f"{port} "))
    return counts


def metrics_text(c) -> str:
    return c.run_in("node", ["curl", "-sS", "http://127.0.0.1:10249/metrics"]).stdout.decode()


def metric(c, name: str, **labels: str) -> float:
    total = 0.0
    for line in metrics_text(c).splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def curl_many(c, urls: list[str], *args: str) -> tuple[list[str], list[int]]:
    """GETs `urls` with one curl (one connection when it can keep it);
    returns the bodies' lines and curl's count of new connections per URL."""
    proc = c.run_in("client", ["curl", "-sS", "--max-time", "20", *args,
                               "-w", "|%{num_connects}\n", *urls], timeout=60)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    parts = re.split(r"\|(\d+)\n", proc.stdout.decode(errors="replace"))
    bodies = [b.strip() for b in parts[0:-1:2]]
    connects = [int(n) for n in parts[1::2]]
    return bodies, connects


def still_serving(c) -> None:
    bodies, _ = curl_many(c, [f"http://{H1_VIP}/pod.txt"])
    assert bodies[0] in PODS, bodies
    assert c.proxy.alive()


# ------------------------------------------------------------- balancing
def test_one_h2c_connection_spreads_over_pods(l7):
    """1,000 requests on a single HTTP/2 connection (h2load -c1, 10 streams
    in flight): round robin per request puts a third on each pod, within
    ±10% (one connection is one worker, whose round robin is exact)."""
    proc = l7.run_in("client", ["h2load", "-n1000", "-c1", "-m10", "-t1", "-T15",
                                f"http://{H2_VIP}/pod.txt"], timeout=60)
    out = proc.stdout.decode()
    assert re.search(r"requests: 1000 total, 1000 started, 1000 done, 1000 succeeded", out), out
    assert re.search(r"status codes: 1000 2xx", out), out
    counts = access_counts(l7, lb.H2_PORT)
    assert sum(counts.values()) == 1000, counts
    for pod in PODS:
        assert 300 <= counts[pod] <= 367, counts
    assert metric(l7, "switchyard_http_connections_total", service="e2e/l7-h2") == 1
    assert metric(l7, "switchyard_http_requests_total", service="e2e/l7-h2",
                  **{"class": "2xx"}) == 1000


def test_http1_keepalive_spreads_per_request(l7):
    """30 GETs on one kept-alive HTTP/1.1 connection reach all three nginx
    pods in turn, not one pod per connection."""
    urls = [f"http://{H1_VIP}/pod.txt?n={i}" for i in range(30)]
    bodies, connects = curl_many(l7, urls)
    assert sum(connects) == 1, connects
    assert Counter(bodies) == {pod: 10 for pod in PODS}, bodies
    assert metric(l7, "switchyard_http_connections_total", service="e2e/l7-h1") == 1
    hist = metric(l7, "switchyard_http_request_duration_seconds_count", service="e2e/l7-h1")
    assert hist == 30
    assert metric(l7, "switchyard_http_active_streams", service="e2e/l7-h1") == 0


def test_header_and_path_routing(l7):
    """http-route: `x-canary: 1` → web-c, `/api/` → web-b, the rest → web-a,
    decided per request on one connection. canary over h2c: the header
    forces the canary pod."""
    plain = [f"http://{ROUTE_VIP}/pod.txt?n={i}" for i in range(6)]
    api = [f"http://{ROUTE_VIP}/api/pod.txt?n={i}" for i in range(6)]
    bodies, connects = curl_many(l7, plain + api)
    assert sum(connects) == 1, connects
    assert bodies == ["web-a"] * 6 + ["api web-b"] * 6, bodies
    bodies, _ = curl_many(l7, plain + api, "-H", "x-canary: 1")
    assert bodies == ["web-c"] * 6 + ["api web-c"] * 6, bodies

    # nghttp: all URLs on one h2c connection (curl 7.88 cannot reuse one).
    canary = [f"http://{CANARY_VIP}/pod.txt?n={i}" for i in range(6)]
    forced = l7.run_in("client", ["nghttp", "-t", "10", "-H", "x-canary: 1", *canary])
    assert forced.stdout.decode().split() == ["web-c"] * 6, forced
    split = l7.run_in("client", ["nghttp", "-t", "10", *canary])
    assert sorted(split.stdout.decode().split()) == ["web-a"] * 3 + ["web-b"] * 3, split
    assert metric(l7, "switchyard_http_connections_total", service="e2e/l7-canary") == 2


def test_client_and_backend_protocols_may_differ(l7):
    """An HTTP/1.1 client reaches an h2c backend Service and an h2c client
    an HTTP/1.1 one: the proxy translates, per request."""
    urls = [f"http://{H2_VIP}/pod.txt?n={i}" for i in range(3)]
    bodies, connects = curl_many(l7, urls)
    assert sorted(bodies) == sorted(PODS) and sum(connects) == 1, bodies
    urls = [f"http://{H1_VIP}/api/pod.txt?n={i}" for i in range(3)]
    got = l7.run_in("client", ["nghttp", "-t", "10", *urls])
    assert sorted(got.stdout.decode().splitlines()) == [f"api {p}" for p in PODS], got


def test_grpc_trailers_pass_through(l7, tmp_path):
    """A gRPC-shaped call (POST, application/grpc, te: trailers) on one h2c
    connection: the backend's grpc-status trailer reaches the client, and
    the calls spread over the pods."""
    body = tmp_path / "req.bin"
    body.write_bytes(b"\0\0\0\0\5hello")
    urls = [f"http://{H2_VIP}/grpc.Echo/Say?n={i}" for i in range(3)]
    proc = l7.run_in("client", ["nghttp", "-v", "-t", "10", "-d", str(body),
                                "-H", "content-type: application/grpc",
                                "-H", "te: trailers", *urls])
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, out
    assert out.count("grpc-status: 0") == 3, out
    senders = sorted(re.findall(r"grpc-message: ok-from-(web-[abc])", out))
    assert senders == list(PODS), out


# -------------------------------------------------------------- failures
def test_no_endpoints_is_503_and_grpc_unavailable(l7):
    proc = l7.run_in("client", ["curl", "-sS", "-i", "--max-time", "10",
                                f"http://{EMPTY_VIP}/"])
    out = proc.stdout.decode(errors="replace")
    assert out.startswith("HTTP/1.1 503"), out
    assert "no endpoint is available for Service e2e/l7-empty:http" in out, out
    proc = l7.run_in("client", ["curl", "-sS", "-i", "--max-time", "10",
                                "--http2-prior-knowledge", "-X", "POST",
                                "-H", "content-type: application/grpc", "-H", "te: trailers",
                                "--data-binary", "@/dev/null",
                                f"http://{EMPTY_VIP}:50051/pkg.Svc/Call"])
    out = proc.stdout.decode(errors="replace")
    assert out.startswith("HTTP/2 200"), out
    assert "grpc-status: 14" in out, out
    assert metric(l7, "switchyard_http_errors_total", service="e2e/l7-empty",
                  reason="no_endpoint") == 2
    still_serving(l7)


def client_socket(c, payload: str, wait: float, vip: str = H1_VIP) -> str:
    """Sends `payload` (a Python bytes literal) to `vip`:80 from the client
    pod, then reads until close or `wait` seconds; prints what came back
    and how long it took."""
    code = f"""
import socket, time
s = socket.create_connection(("{vip}", 80), timeout=3)
start, got = time.monotonic(), b""
try:
    s.sendall({payload})
except OSError as e:
    got += ("<send:" + type(e).__name__ + ">").encode()
s.settimeout({wait})
try:
    while True:
        b = s.recv(65536)
        if not b:
            got += b"<closed>"
            break
        got += b
except (socket.timeout, OSError) as e:
    got += ("<" + type(e).__name__ + ">").encode()
print(repr(got[:300]), round(time.monotonic() - start, 1))
"""
    proc = c.run_in("client", [sys.executable, "-c", code], timeout=wait + 20)
    return proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")


def test_bad_clients_get_an_answer_or_a_close(l7):
    # Malformed request line.
    out = client_socket(l7, 'b"GARBAGE \\x01\\x02\\r\\n\\r\\n"', 5)
    assert "400 Bad Request" in out or "<closed>" in out, out
    # A 100 KiB header: beyond maxHeaderBytes (64 KiB).
    out = client_socket(l7, 'b"GET / HTTP/1.1\\r\\nHost: a\\r\\nX-Big: " + b"a" * 102400 + b"\\r\\n\\r\\n"', 5)
    assert "431" in out or "<closed>" in out or "ConnectionResetError" in out, out
    # A head that never ends: closed after headerReadTimeout (2 s).
    out = client_socket(l7, 'b"GET / HTTP/1.1\\r\\nHost: a\\r\\n"', 10)
    assert "<closed>" in out or "408" in out, out
    assert float(out.split()[-1]) < 6, out
    # A body that stalls: the backend waits for it, we answer 504 after
    # responseTimeout (3 s) and close.
    out = client_socket(l7, 'b"PUT /up/stall.bin HTTP/1.1\\r\\nHost: a\\r\\nContent-Length: 1000\\r\\n\\r\\n0123456789"', 15)
    assert "504 Gateway Timeout" in out, out
    assert metric(l7, "switchyard_http_errors_total", reason="client") >= 2
    assert metric(l7, "switchyard_http_errors_total", reason="timeout") >= 1
    still_serving(l7)


def test_upstream_reset_mid_response(l7):
    proc = l7.run_in("client", ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                                "--max-time", "10", f"http://{BREAK_VIP}/"])
    out = proc.stdout.decode()
    assert proc.returncode in (18, 56, 92), (proc.returncode, out, proc.stderr)
    assert out.startswith("200 "), out
    assert int(out.split()[1]) < 1000000, out
    assert metric(l7, "switchyard_http_errors_total", service="e2e/l7-break",
                  reason="upstream_reset") == 1
    still_serving(l7)


def test_websocket_upgrade_passes_through(l7):
    """An `Upgrade: websocket` request is picked, the backend's 101 is
    passed on, and then bytes flow both ways untouched (here an echo)."""
    code = f"""
import socket
s = socket.create_connection(("{WS_VIP}", 80), timeout=5)
s.sendall(b"GET /chat HTTP/1.1\\r\\nHost: ws\\r\\nConnection: Upgrade\\r\\nUpgrade: websocket\\r\\n\\r\\n")
head = b""
while b"\\r\\n\\r\\n" not in head:
    chunk = s.recv(4096)
    if not chunk:
        break
    head += chunk
print(head.split(b"\\r\\n")[0].decode())
for word in (b"ping", b"x" * 100000):
    s.sendall(word)
    got = b""
    while len(got) < len(word):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    print("echo", got == word)
"""
    proc = l7.run_in("client", [sys.executable, "-c", code], timeout=30)
    lines = proc.stdout.decode().splitlines()
    assert lines == ["HTTP/1.1 101 Switching Protocols", "echo True", "echo True"], (
        proc.stdout, proc.stderr)
    assert metric(l7, "switchyard_http_requests_total", service="e2e/l7-ws",
                  **{"class": "1xx"}) == 1
    still_serving(l7)


def test_connect_failures_retry_on_another_endpoint(l7):
    """One of three endpoints refuses connections (its slice names a port
    nothing listens on): every request still succeeds, on the others, and
    the refused connects are counted."""
    svc = mf.ServiceDef("l7-retry", [RETRY_VIP], [mf.Port("http", 80, lb.H1_PORT,
                                                          app_protocol="http")],
                        [mf.backends(["web-a", "web-b"]), mf.backends(["web-c"])])
    docs = svc.documents()
    docs[2]["ports"][0]["port"] = lb.H1_PORT + 100  # web-c: connection refused
    mark = l7.proxy.log_mark()
    l7.write_file("l7-retry.yaml", mf.to_yaml(*docs))
    l7.proxy.wait_log(r"service table in force", since=mark, timeout=20)
    urls = [f"http://{RETRY_VIP}/pod.txt?n={i}" for i in range(12)]
    bodies, connects = curl_many(l7, urls)
    assert sum(connects) == 1, connects
    assert sorted(set(bodies)) == ["web-a", "web-b"] and len(bodies) == 12, bodies
    assert metric(l7, "switchyard_http_errors_total", service="e2e/l7-retry",
                  reason="connect") >= 1
    assert metric(l7, "switchyard_http_requests_total", service="e2e/l7-retry",
                  **{"class": "2xx"}) == 12


def test_backend_closing_pooled_connections_is_not_an_error(l7):
    """nginx closes idle upstream connections after 1 s; requests spaced
    past that find their pooled connection closed and go on a new one to
    the same (only) endpoint, never a 502."""
    for i in range(4):
        bodies, _ = curl_many(l7, [f"http://{STALE_VIP}/pod.txt?n={i}"])
        assert bodies == ["web-a"], bodies
        time.sleep(1.5)
    assert metric(l7, "switchyard_http_requests_total", service="e2e/l7-stale",
                  **{"class": "2xx"}) == 4
    assert metric(l7, "switchyard_http_requests_total", service="e2e/l7-stale",
                  **{"class": "5xx"}) == 0


# ------------------------------------------------------------ large body
def test_100_mib_each_way_over_http2(l7, tmp_path):
    """A 100 MiB upload (PUT) and the same file back over h2c through the
    proxy: byte-exact both ways, so HTTP/2 flow control held in both."""
    size = 100 << 20
    src = tmp_path / "big.bin"
    block = hashlib.sha256(b"switchyard").digest() * 32768  # 1 MiB
    with src.open("wb") as f:
        for _ in range(size >> 20):
            f.write(block)
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    proc = l7.run_in("client", ["curl", "-sS", "--http2-prior-knowledge", "--max-time", "120",
                                "-o", "/dev/null", "-w", "%{http_code}", "-T", str(src),
                                f"http://{BIG_VIP}/up/big.bin"], timeout=150)
    assert proc.returncode == 0 and proc.stdout.decode() in ("201", "204"), (
        proc.stdout, proc.stderr)
    stored = l7.nginx_roots["web-a"] / "html" / "up" / "big.bin"
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == want
    proc = l7.run_in("client", ["sh", "-c",
                                f"curl -sS --http2-prior-knowledge --max-time 120 "
                                f"http://{BIG_VIP}/up/big.bin | sha256sum"], timeout=150)
    assert proc.stdout.decode().split()[0] == want, proc.stderr
    still_serving(l7)


# ------------------------------------------------------------------ stop
def test_stop_closes_l7_connections_gracefully(l7):
    """SIGTERM with a kept-alive HTTP/1.1 connection open: it is closed
    cleanly (after its answer, no reset) and the process exits well before
    the drain timeout (20 s)."""
    code = f"""
import socket, time
s = socket.create_connection(("{H1_VIP}", 80), timeout=5)
s.sendall(b"GET /pod.txt HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n")
got = b""
while b"web-" not in got:
    got += s.recv(4096)
print("answered", flush=True)
s.settimeout(30)
try:
    print("closed" if s.recv(4096) == b"" else "data", flush=True)
except OSError as e:
    print("error", type(e).__name__, flush=True)
"""
    holder = l7.topo.spawn("l7-holder", l7.topo.client, [sys.executable, "-c", code])
    deadline = time.monotonic() + 10
    while "answered" not in holder.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "answered" in holder.output(), holder.output()
    start = time.monotonic()
    rc = l7.proxy.stop()
    took = time.monotonic() - start
    assert rc == 0, l7.proxy.log()[-3000:]
    assert took < 10, took
    deadline = time.monotonic() + 10
    while holder.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "closed" in holder.output(), holder.output()
