"""Operations: reload by file watch, SIGHUP and POST /reload under load;
metrics that count exactly; drain on SIGTERM and on endpoint removal."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import Counter

from prometheus_client.parser import text_string_to_metric_families

import manifests as mf
from cluster import CLIENTS
import policies as pol
from helpers import assert_all_answered
from topology import NODE_UPLINK_V4

WEB = f"http://{mf.WEB_VIP}/"
ADMIN = "http://127.0.0.1:10249"


def write_config(path, **overrides) -> None:
    """A config file: a few explicit settings, every other one defaulted."""
    drain = overrides.get("endpoint_drain_time", "30s")
    text = (
        "dataplane:\n"
        f"  endpointDrainTime: {drain}\n"
        f"  drainTimeout: {overrides.get('drain_timeout', '20s')}\n"
        "policy:\n"
        f"  default: {overrides.get('default_policy', 'round-robin')}\n"
        "admin:\n"
        f"  metricsAddress: {overrides.get('metrics_address', '127.0.0.1:10249')}\n"
        + overrides.get("extra", "")
    )
    mf.write_atomic(path, text)


def start_with_config(cluster, tmp_path, **overrides):
    directory = tmp_path / "policies"
    for name in ("round-robin", "maglev"):
        pol.install(pol.built(name), directory, name)
    config = tmp_path / "conf" / "switchyard.yaml"
    config.parent.mkdir(exist_ok=True)
    write_config(config, **overrides)
    cluster.start_proxy(["--config", str(config), "--policies", str(directory)])
    cluster.start_http()
    return config


def metrics(cluster) -> dict:
    """Every sample of /metrics, parsed with the Prometheus text parser, by
    (name, sorted labels)."""
    text = cluster.run_in("node", ["curl", "-sS", f"{ADMIN}/metrics"]).stdout.decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def web_policy(cluster) -> str:
    services = cluster.curl_json(f"{ADMIN}/debug/services", where="node")["services"]
    return next(s["policy"] for s in services if s["service"] == "e2e/web")


def wait_for(predicate, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Load:
    """Bounded background load: `count` new connections to the web Service."""

    def __init__(self, cluster, count: int = 300):
        self.cluster, self.count = cluster, count
        self.result: tuple[list[str], str] | None = None
        self.thread = threading.Thread(target=self._run)

    def _run(self):
        self.result = self.cluster.get_many(WEB, self.count)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.thread.join(timeout=300)

    def assert_no_failures(self):
        assert self.result is not None, "load did not finish"
        pods, err = self.result
        assert len(pods) == self.count, f"{self.count - len(pods)} requests failed: {err}"


def test_metrics_count_connections_exactly(cluster):
    cluster.start_http()
    before = metrics(cluster)
    key = ("switchyard_connections_total",
           (("port", "http"), ("protocol", "TCP"), ("service", "e2e/web")))
    pods, err = cluster.get_many(WEB, 25)
    assert_all_answered(pods, 25, err)
    after = metrics(cluster)
    assert after[key] - before.get(key, 0) == 25
    tx = ("switchyard_bytes_total", (("direction", "tx"), ("port", "http"), ("service", "e2e/web")))
    assert after[tx] > before.get(tx, 0)
    info = [k for k in after if k[0] == "switchyard_io_info"]
    assert info and dict(info[0][1])["backend"] in ("io_uring", "epoll")


def test_reload_triggers_under_load(bare_cluster, tmp_path):
    c = bare_cluster
    config = start_with_config(c, tmp_path)
    assert web_policy(c).startswith("round-robin ")
    with Load(c) as load:
        # 1. File watch: the config file changes, nothing else.
        write_config(config, default_policy="maglev")
        wait_for(lambda: web_policy(c).startswith("maglev "), "the file watch to apply policy.default")
        # 2. SIGHUP.
        write_config(config, default_policy="round-robin")
        mark = c.proxy.log_mark()
        c.proxy.proc.send_signal(signal.SIGHUP)
        c.proxy.wait_log(r'reloading trigger="?SIGHUP', since=mark)
        wait_for(lambda: web_policy(c).startswith("round-robin "), "SIGHUP to apply policy.default")
        # 3. POST /reload, with a setting that needs a restart.
        write_config(config, default_policy="maglev", drain_timeout="7s")
        answer = c.run_in("node", ["curl", "-sS", "-w", "\n%{http_code}", "-X", "POST",
                                   f"{ADMIN}/reload"]).stdout.decode()
        assert answer.rstrip().endswith("200"), answer
        assert "dataplane: changed; takes effect after a restart" in answer, answer
        assert web_policy(c).startswith("maglev ")
        # 4. A broken config is rejected, naming the field; the old one serves.
        write_config(config, default_policy="round-robin", extra="dataplane_typo: 1\n")
        answer = c.run_in("node", ["curl", "-sS", "-w", "\n%{http_code}", "-X", "POST",
                                   f"{ADMIN}/reload"]).stdout.decode()
        assert answer.rstrip().endswith("422"), answer
        assert "dataplane_typo" in answer, answer
        assert web_policy(c).startswith("maglev ")
    load.assert_no_failures()


def test_reload_is_refused_from_outside(bare_cluster, tmp_path):
    c = bare_cluster
    start_with_config(c, tmp_path, metrics_address="0.0.0.0:10249")
    outside = c.run_in("ext", ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                               f"http://{NODE_UPLINK_V4}:10249/reload"]).stdout.decode()
    assert outside == "403", outside
    inside = c.run_in("node", ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                               f"{ADMIN}/reload"]).stdout.decode()
    assert inside == "200", inside


def test_sigterm_lets_a_long_transfer_finish(cluster):
    cluster.start_sha()
    transfer = subprocess.Popen(
        ["ip", "netns", "exec", cluster.topo.client, sys.executable,
         str(CLIENTS), "sha-down", "--host", mf.BULK_VIP, "--port", str(mf.SHA_PORT),
         "--bytes", str(3 << 30)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        key = ("switchyard_connections_active",
               (("port", "sha"), ("protocol", "TCP"), ("service", "e2e/bulk")))
        wait_for(lambda: metrics(cluster).get(key, 0) >= 1, "the transfer to start")
        rc = cluster.proxy.stop(signal.SIGTERM, timeout=60)
        out, err = transfer.communicate(timeout=120)
    finally:
        if transfer.poll() is None:
            transfer.kill()
    assert rc == 0, f"switchyard exited {rc}"
    assert b'"ok": true' in out, (out, err)
    assert not cluster.proxy.table_present(), "table left behind"
    assert "all connections finished" in cluster.proxy.log()


HOLD = """
import socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=5)
s.settimeout(120)
print("open", flush=True)
print("closed" if s.recv(1) == b"" else "data", flush=True)
"""


def test_removed_endpoint_connections_are_closed_after_the_drain_time(bare_cluster, tmp_path):
    c = bare_cluster
    only_a = mf.ServiceDef("web", [mf.WEB_VIP], [mf.http_port()], [mf.backends(["web-a"])])
    c.write_services([only_a])
    start_with_config(c, tmp_path, endpoint_drain_time="1s")
    hold = subprocess.Popen(["ip", "netns", "exec", c.topo.client, sys.executable, "-c", HOLD,
                             mf.WEB_VIP], stdout=subprocess.PIPE)
    try:
        assert hold.stdout.readline().strip() == b"open"
        mark = c.proxy.log_mark()
        c.write_services([mf.ServiceDef("web", [mf.WEB_VIP], [mf.http_port()],
                                        [mf.backends(["web-b"])])])
        c.proxy.wait_log(r"service table in force", since=mark)
        pods, err = c.get_many(WEB, 10)
        assert pods == ["web-b"] * 10, (Counter(pods), err)
        # The held connection to web-a is closed once the drain time is over.
        line = hold.stdout.readline().strip()
        assert line == b"closed", line
        c.proxy.wait_log(r"closed connections to endpoints that left", since=mark)
    finally:
        hold.kill()
        hold.wait(timeout=10)

