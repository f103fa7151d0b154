"""Medians, ratios, goals, and the Markdown + JSON record of a run."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

BASE, DIRECT = "switchyard-uring", "direct"

# (workload, metric, column title, higher is better, format)
HEADLINE = (
    ("idlecpu", "proxy_core_busy", "idle proxy-core busy", False, "{:.0%}"),
    ("bulk", "gbit_per_s", "bulk Gbit/s", True, "{:.2f}"),
    ("bulk", "cpu_ms_per_gb_proxy_core", "bulk proxy-core ms/GB", False, "{:.0f}"),
    ("connrate", "conn_per_s", "conn/s", True, "{:,.0f}"),
    ("connrate", "cpu_us_per_conn_proxy_core", "proxy-core µs/conn", False, "{:.1f}"),
    ("connrate", "cpu_us_per_conn_total", "both cores µs/conn", False, "{:.1f}"),
    ("keepalive", "rps", "keep-alive rps", True, "{:,.0f}"),
    ("keepalive", "cpu_us_per_req_proxy_core", "proxy-core µs/req", False, "{:.2f}"),
    ("latency", "p50_us", "p50 µs (1 conn)", False, "{:.0f}"),
    ("latency", "p99_us", "p99 µs (1 conn)", False, "{:.0f}"),
    ("latency", "p999_us", "p99.9 µs (1 conn)", False, "{:.0f}"),
    ("keepalive", "p99_us", "p99 µs (32 conns)", False, "{:.0f}"),
    ("dns", "qps", "DNS q/s", True, "{:,.0f}"),
    ("dns", "cpu_us_per_query_proxy_core", "proxy-core µs/query", False, "{:.1f}"),
    ("idle", "rss_kib", "RSS idle conns MiB", False, "{:.1f}"),
    ("l7keepalive", "rps", "L7 keep-alive rps", True, "{:,.0f}"),
    ("l7keepalive", "p99_us", "L7 p99 µs (32 conns)", False, "{:.0f}"),
    ("l7keepalive", "cpu_us_per_req_proxy_core", "L7 proxy-core µs/req", False, "{:.2f}"),
)
RATIO_COLS = tuple(h for h in HEADLINE if h[1] not in (
    "p50_us", "p999_us", "cpu_us_per_conn_total", "proxy_core_busy"))


def medians(raw: dict) -> dict:
    """raw[peer][workload] = list of per-round dicts -> median of every number."""
    out: dict = {}
    for peer, by_wl in raw.items():
        for wl, rounds in by_wl.items():
            ok = [r for r in rounds if "error" not in r]
            # Rounds that other processes disturbed count only when no clean one exists.
            ok = [r for r in ok if not r.get("disturbed")] or ok
            keys = {k for r in ok for k, v in r.items() if isinstance(v, (int, float))}
            out.setdefault(peer, {})[wl] = {
                k: statistics.median([r[k] for r in ok if k in r]) for k in sorted(keys)}
    return out


def get(med: dict, peer: str, wl: str, metric: str):
    v = med.get(peer, {}).get(wl, {}).get(metric)
    if v is not None and wl == "idle" and metric == "rss_kib":
        return v / 1024
    return v


def ratio(med: dict, peer: str, ref: str, wl: str, metric: str):
    a, b = get(med, peer, wl, metric), get(med, ref, wl, metric)
    if a is None or b is None or b == 0:
        return None
    return a / b


def _fmt(v, fmt: str) -> str:
    return "—" if v is None else fmt.format(v)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def absolute_table(med: dict, peers: list[str]) -> str:
    header = ["peer"] + [h[2] for h in HEADLINE]
    rows = [[p] + [_fmt(get(med, p, wl, m), f) for wl, m, _, _, f in HEADLINE] for p in peers]
    return _table(header, rows)


def ratio_table(med: dict, peers: list[str], ref: str) -> str:
    header = ["peer"] + [f"{h[2]} {'↑' if h[3] else '↓'}" for h in RATIO_COLS]
    rows = [[p] + [_fmt(ratio(med, p, ref, wl, m), "{:.2f}×") for wl, m, _, _, _ in RATIO_COLS]
            for p in peers]
    return _table(header, rows)


def goals(med: dict) -> list[dict]:
    """Issue 5 item 6, each as measured/limit with met or not."""
    sy, ep, ha, hs, d = BASE, "switchyard-epoll", "haproxy", "haproxy-splice", DIRECT
    cpu = ("connrate", "cpu_us_per_conn_proxy_core")
    out = []

    def add(goal: str, value, limit: float, higher: bool) -> None:
        met = None if value is None else (value >= limit if higher else value <= limit)
        out.append({"goal": goal, "measured": value, "limit": limit,
                    "direction": ">=" if higher else "<=", "met": met})

    add("proxy-core CPU per new connection vs HAProxy", ratio(med, sy, ha, *cpu), 0.8, False)
    add("new connections/s vs HAProxy", ratio(med, sy, ha, "connrate", "conn_per_s"), 1.15, True)
    add("new connections/s vs direct", ratio(med, sy, d, "connrate", "conn_per_s"), 0.85, True)
    add("keep-alive rps vs HAProxy", ratio(med, sy, ha, "keepalive", "rps"), 1.1, True)
    add("keep-alive rps vs direct", ratio(med, sy, d, "keepalive", "rps"), 0.92, True)
    p99 = {p: get(med, p, "latency", "p99_us") for p in (sy, ha, d)}
    added = None
    if None not in p99.values() and p99[ha] - p99[d] > 0:
        added = (p99[sy] - p99[d]) / (p99[ha] - p99[d])
    add("added p99 latency (1 conn) vs HAProxy's added p99", added, 0.5, False)
    best = [x for x in (get(med, ha, "bulk", "gbit_per_s"), get(med, hs, "bulk", "gbit_per_s"))
            if x is not None]
    sy_bulk = get(med, sy, "bulk", "gbit_per_s")
    add("bulk vs HAProxy at its best", sy_bulk / max(best) if best and sy_bulk else None,
        1.1, True)
    add("bulk vs direct", ratio(med, sy, d, "bulk", "gbit_per_s"), 0.85, True)
    add("io_uring CPU per connection vs epoll", ratio(med, sy, ep, *cpu), 0.9, False)
    add("epoll new connections/s vs HAProxy", ratio(med, ep, ha, "connrate", "conn_per_s"),
        1.05, True)
    add("Wasm round-robin CPU per connection vs built-in",
        ratio(med, "switchyard-uring-wasm-rr", sy, *cpu), 1.03, False)
    add("RSS with idle proxied connections vs HAProxy", ratio(med, sy, ha, "idle", "rss_kib"),
        0.7, False)
    # Issue 8: L7 keep-alive through Switchyard vs HAProxy in http mode.
    add("L7 keep-alive rps vs HAProxy http", ratio(med, sy, ha, "l7keepalive", "rps"), 1.0, True)
    add("L7 keep-alive p99 vs HAProxy http", ratio(med, sy, ha, "l7keepalive", "p99_us"), 1.0,
        False)
    # L7 runs on tokio's readiness io in both back ends (proxy/ARCHITECTURE.md,
    # "L7"); the epoll worker is the faster host for it, so show it too.
    add("L7 keep-alive rps vs HAProxy http (epoll worker)",
        ratio(med, ep, ha, "l7keepalive", "rps"), 1.0, True)
    add("L7 keep-alive p99 vs HAProxy http (epoll worker)",
        ratio(med, ep, ha, "l7keepalive", "p99_us"), 1.0, False)
    return out


def transparency_table(med: dict) -> str:
    """Issue 9: what keeping the client's address costs, io_uring, same run."""
    on, off = BASE, "switchyard-uring-opaque"
    rows = []
    for wl, metric, what in (("connrate", "cpu_us_per_conn_proxy_core",
                              "proxy-core CPU per new connection (µs)"),
                             ("connrate", "conn_per_s", "new connections/s"),
                             ("keepalive", "rps", "keep-alive requests/s")):
        a, b = get(med, on, wl, metric), get(med, off, wl, metric)
        rows.append([what, _fmt(a, "{:,.1f}"), _fmt(b, "{:,.1f}"),
                     _fmt(ratio(med, on, off, wl, metric), "{:.2f}×")])
    return _table(["figure", "transparency on", "transparency off", "on / off"], rows)


def goals_table(gs: list[dict]) -> str:
    rows = []
    for g in gs:
        met = {True: "met", False: "**not met**", None: "not measured"}[g["met"]]
        rows.append([g["goal"], _fmt(g["measured"], "{:.2f}"), f"{g['direction']} {g['limit']}",
                     met])
    return _table(["goal (issue 5 item 6)", "measured", "target", ""], rows)


def rounds_table(raw: dict, peers: list[str]) -> str:
    cols = (("connrate", "conn_per_s", "{:,.0f}"), ("connrate", "cpu_us_per_conn_proxy_core",
            "{:.1f}"), ("keepalive", "rps", "{:,.0f}"), ("bulk", "gbit_per_s", "{:.2f}"))
    header = ["peer", "conn/s per round", "proxy-core µs/conn per round", "keep-alive rps per round",
              "bulk Gbit/s per round"]
    rows = []
    for p in peers:
        row = [p]
        for wl, m, f in cols:
            vals = [("err" if "error" in r else _fmt(r.get(m), f))
                    for r in raw.get(p, {}).get(wl, [])]
            row.append(" / ".join(vals) or "—")
        rows.append(row)
    return _table(header, rows)


def write(out_dir: Path, stem: str, record: dict) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    jpath.write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    mpath.write_text(markdown(record))
    return mpath, jpath


def markdown(rec: dict) -> str:
    med, peers = rec["medians"], [p for p in rec["peer_order"] if p in rec["medians"]]
    m = rec["machine"]
    s = [f"# Switchyard benchmark — {rec['date']} ({rec['mode']})", ""]
    s += [f"Machine: {m['cpu_model']}, {m['cores']} cores, {m['mem_gib']:.1f} GiB, kernel "
          f"{m['kernel']}, {m['os']}. Proxy under test pinned to CPU {rec['proxy_cpu']}; load "
          f"generators and backends to CPU {rec['load_cpu']}. {rec['rounds']} interleaved "
          f"round(s); every figure is the median over rounds.", ""]
    s += [line for n in rec.get("user_notes", []) for line in (n, "")]
    if rec.get("interference"):
        s += ["**Other work on the machine during the run** (figures may be noisier): "
              + "; ".join(rec["interference"]), ""]
    s += ["## Ratios against Switchyard io_uring (same run)", "",
          "↑ higher is better, ↓ lower is better for the peer in that row.", "",
          ratio_table(med, peers, BASE), "",
          "## Ratios against a direct connection (same run)", "",
          ratio_table(med, peers, DIRECT), "",
          "## Goals of issue 5 item 6", "", goals_table(rec["goals"]), "",
          "Not measured by this harness: one Wasm decision ≤ 150 ns (criterion, item 4); "
          "10k Services to serving ≤ 1 s and endpoint change ≤ 5 ms p99 (item 3).", "",
          "## Transparent source on vs off (issue 9)", "",
          "Both Switchyard io_uring with the built-in round robin; \"off\" is "
          "`dataplane.transparent: false` (the backend sees the node's address).", "",
          transparency_table(med), "",
          "## Absolute medians", "", absolute_table(med, peers), "",
          "## Per round", "", rounds_table(rec["raw"], peers), ""]
    if rec.get("skipped"):
        s += ["## Skipped", ""] + [f"- {k}: {v}" for k, v in rec["skipped"].items()] + [""]
    if rec.get("notes"):
        s += ["## Notes", ""] + [f"- {e}" for e in rec["notes"]] + [""]
    if rec.get("errors"):
        s += ["## Errors", ""] + [f"- {e}" for e in rec["errors"]] + [""]
    s += ["## How it was measured", ""] + [f"- {line}" for line in rec["method"]] + [""]
    s += ["## Peers", ""]
    for p in rec["peers"]:
        s.append(f"- **{p['name']}** — {p['label']}" + (f": `{p['command']}`"
                                                          if p.get("command") else ""))
    s += ["", "Configurations (HAProxy, nginx, nftables) are in the JSON record, `peers[].config` "
          "/ `peers[].ruleset`.", ""]
    return "\n".join(s)
