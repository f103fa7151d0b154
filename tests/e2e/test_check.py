"""`switchyard check`: the example manifests pass; bad ones are all reported."""

from __future__ import annotations

import manifests as mf
from switchyard import REPO, check


def test_check_accepts_example_and_test_manifests(tmp_path):
    rc, out = check("--manifests", str(REPO / "conf" / "services"))
    assert rc == 0, f"conf/services rejected ({rc}):\n{out}"
    mf.write_services(tmp_path / "m", mf.standard_services())
    rc, out = check("--manifests", str(tmp_path / "m"))
    assert rc == 0, f"the e2e manifests rejected ({rc}):\n{out}"


def _bad_dir(tmp_path):
    d = tmp_path / "bad"
    mf.write_services(d, [s for s in mf.standard_services() if s.name == "web"])
    # svc-a.yaml: second document has an out-of-range port.
    a = mf.ServiceDef("range-svc", ["10.96.0.81"], [mf.Port("http", 70000, 8080)],
                      [mf.backends()])
    (d / "svc-a.yaml").write_text(a.yaml())
    # svc-b.yaml: not YAML at all.
    (d / "svc-b.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: [name: x\n")
    # svc-c.yaml: an EndpointSlice without its kubernetes.io/service-name label.
    c = mf.ServiceDef("label-svc", ["10.96.0.83"], [mf.http_port()], [mf.backends()])
    docs = c.documents()
    del docs[1]["metadata"]["labels"]["kubernetes.io/service-name"]
    (d / "svc-c.yaml").write_text(mf.to_yaml(*docs))
    return d


def _lines_about(out: str, filename: str) -> str:
    lines = out.splitlines()
    hits = [i for i, line in enumerate(lines) if filename in line]
    return "\n".join("\n".join(lines[i: i + 4]) for i in hits)


def test_check_reports_every_bad_file(tmp_path):
    rc, out = check("--manifests", str(_bad_dir(tmp_path)))
    assert rc != 0, f"check accepted a bad directory:\n{out}"
    for filename, words in (("svc-a.yaml", ["range-svc", "port"]),
                            ("svc-b.yaml", []),
                            ("svc-c.yaml", ["kubernetes.io/service-name"])):
        about = _lines_about(out, filename)
        assert about, f"check did not name {filename}:\n{out}"
        missing = [w for w in words if w not in about]
        assert not missing, f"check's report on {filename} lacks {missing}:\n{about}"


def test_check_fails_on_missing_directory(tmp_path):
    rc, out = check("--manifests", str(tmp_path / "does-not-exist"))
    assert rc != 0, f"check accepted a missing directory:\n{out}"
    assert "does-not-exist" in out, out
