"""Manifests changed while Switchyard runs: applied live, bad ones rejected."""

from __future__ import annotations

import re

import manifests as mf
from helpers import assert_all_answered
from topology import wait_until

N = 30
WEB = f"http://{mf.WEB_VIP}/"


def _log_mentions(cluster, since: int, filename: str, *words: str, window: int = 6) -> str:
    """Waits for a log line naming `filename` past `since`; checks `words` near it."""
    pattern = rf"(?i)(?=.*{re.escape(filename)})(?=.*(error|invalid|reject|fail|warn))"
    line = cluster.proxy.wait_log(pattern, timeout=20, since=since,
                                  what=f"switchyard to log an error naming {filename}")
    lines = cluster.proxy.log()[since:].splitlines()
    idx = lines.index(line)
    near = "\n".join(lines[idx: idx + window])
    missing = [w for w in words if w not in near]
    assert not missing, f"log about {filename} does not mention {missing}:\n{near}"
    return near


def test_endpoint_removed_live(cluster):
    cluster.start_http()
    pods, err = cluster.get_many(WEB, N)
    assert_all_answered(pods, N, err)

    web = next(s for s in mf.standard_services() if s.name == "web")
    web.slices = [mf.backends(["web-a", "web-b"])]
    cluster.write_services([web])

    def web_c_gone():
        seen, _ = cluster.get_many(WEB, 9)
        return len(seen) == 9 and "web-c" not in seen

    wait_until(web_c_gone, "web-c to leave the rotation", timeout=20, interval=0.5)
    pods, err = cluster.get_many(WEB, N)
    assert_all_answered(pods, N, err, expected=["web-a", "web-b"])
    assert cluster.proxy.alive()


def test_service_added_live(cluster):
    cluster.start_http()
    vip = "10.96.0.77"
    extra = mf.ServiceDef("late", [vip], [mf.http_port()], [mf.backends(["web-b"])])
    cluster.write_services([extra])

    def served():
        seen, _ = cluster.get_many(f"http://{vip}/", 3)
        return seen == ["web-b"] * 3

    wait_until(served, f"the new Service {vip} to serve", timeout=20, interval=0.5)


def test_bad_manifest_added_is_rejected_old_state_serves(cluster):
    cluster.start_http()
    good = mf.ServiceDef("typo-svc", ["10.96.0.78"], [mf.http_port()], [mf.backends()])
    docs = good.documents()
    docs[0]["spec"]["ports"][0]["port"] = "eighty"  # wrong type
    mark = cluster.proxy.log_mark()
    cluster.write_file("zz-extra.yaml", mf.to_yaml(*docs))
    _log_mentions(cluster, mark, "zz-extra.yaml", "typo-svc", "port")
    pods, err = cluster.get_many(WEB, N)
    assert_all_answered(pods, N, err)
    assert cluster.proxy.alive()


def test_bad_manifest_replacing_good_keeps_old_state(cluster):
    """web.yaml turns into broken YAML: web keeps its last good endpoints."""
    cluster.start_http()
    text = (cluster.manifests / "web.yaml").read_text()
    mark = cluster.proxy.log_mark()
    cluster.write_file("web.yaml", text.replace("  ports:\n", "  ports: [\n", 1))
    _log_mentions(cluster, mark, "web.yaml")
    pods, err = cluster.get_many(WEB, N)
    assert_all_answered(pods, N, err)


def test_manifest_files_removed_renamed_and_swapped_behind_a_symlink_live(cluster):
    """A rescan after one event looks at the files the event names; a file
    removed or renamed away must still leave, and a ConfigMap volume's swap
    (every manifest behind the hidden `..data` symlink changes at once, the
    event names only `..data`) must still be read whole."""
    cluster.start_http()
    gone = mf.ServiceDef("gone", ["10.96.0.79"], [mf.http_port()], [mf.backends(["web-a"])])
    moved = mf.ServiceDef("moved", ["10.96.0.80"], [mf.http_port()], [mf.backends(["web-b"])])
    cluster.write_services([gone, moved])

    def serves(vip: str, pod: str) -> bool:
        seen, _ = cluster.get_many(f"http://{vip}/", 3)
        return seen == [pod] * 3

    def refuses(vip: str) -> bool:
        seen, _ = cluster.get_many(f"http://{vip}/", 1)
        return seen == []

    wait_until(lambda: serves("10.96.0.79", "web-a") and serves("10.96.0.80", "web-b"),
               "the two new Services to serve", timeout=20, interval=0.5)

    (cluster.manifests / "moved.yaml").rename(cluster.manifests / "renamed.yaml")
    (cluster.manifests / "gone.yaml").unlink()
    wait_until(lambda: refuses("10.96.0.79"), "the removed file's Service to leave",
               timeout=20, interval=0.5)
    assert serves("10.96.0.80", "web-b"), "the renamed file's Service stays"

    # The kubelet's ConfigMap volume: <key> -> ..data/<key>, ..data -> ..<version>.
    v1 = cluster.manifests / "..v1"
    v1.mkdir()
    (v1 / "cm.yaml").write_text(moved.yaml())
    (cluster.manifests / "..data").symlink_to("..v1")
    (cluster.manifests / "renamed.yaml").unlink()
    (cluster.manifests / "cm.yaml").symlink_to("..data/cm.yaml")
    wait_until(lambda: serves("10.96.0.80", "web-b"), "the ConfigMap volume's Service to serve",
               timeout=20, interval=0.5)
    moved.slices = [mf.backends(["web-c"])]
    v2 = cluster.manifests / "..v2"
    v2.mkdir()
    (v2 / "cm.yaml").write_text(moved.yaml())
    (cluster.manifests / "..data_tmp").symlink_to("..v2")
    (cluster.manifests / "..data_tmp").rename(cluster.manifests / "..data")
    wait_until(lambda: serves("10.96.0.80", "web-c"), "the swapped volume's endpoints to serve",
               timeout=20, interval=0.5)
    assert cluster.proxy.alive()
