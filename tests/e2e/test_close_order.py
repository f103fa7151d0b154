"""Close order: when the backend closes first, the client never becomes the active closer.

A client Pod runs with the kernel's default sysctls (no tcp_tw_reuse for
remote peers, 28k ephemeral ports). Behind a kube-proxy DNAT, nginx closing a
`Connection: close` exchange holds the TIME_WAIT; a proxy that relays the
backend's FIN late lets the client read the whole response and close first,
so the TIME_WAIT lands in the client, whose ports to the Service run out
after 28k connections (issue 19). Two rounds of 20,000 connections each,
more than the client's port range: the second round keeps the first's rate
(≥ 0.9×) only if the client holds (almost) no TIME_WAIT.
"""

from __future__ import annotations

import json
import re

import manifests as mf

ROUND = 20_000
CONNS = 16
# The upper bound of a round; a round normally ends at its request count.
ROUND_SECONDS = 40
# Some clients still close first: when the backend's FIN trails its data,
# the proxy relays it a wakeup later, and a busy client may have read the
# response and closed by then. Measured on the debug build: straight to the
# Pod the client holds almost none (3 and 22 of 10,000); through the proxy
# 2-12% at 1.5-3k conn/s and 15-18% at 6-7k conn/s, on either back end. With
# the FIN relayed a ring turn late (the defect of issue 19): 35% and the
# second round at half the rate at 1.6k conn/s; at 6k conn/s the client ran
# out of ports and a round never completed.
MAX_CLIENT_TIME_WAIT = ROUND * 3 // 10

# wrk has no request count. At `limit` responses the (single) thread
# prints the rate it saw between its first and its last response (wall
# clock from /proc/uptime, 10 ms steps, over seconds) and sends wrk a SIGINT,
# which stops the threads and ends the main thread's sleep for the duration.
# The kernel may hand that signal to the load thread instead of the main
# one; then a second SIGINT, once the load thread has stopped, ends the
# sleep. Through popen, not os.execute: system() ignores SIGINT in its
# caller while the command runs.
STOP_AT_COUNT = """
local limit = tonumber(os.getenv("SY_REQUESTS"))
local count = 0
local pid = io.open("/proc/self/stat"):read("*n")
local function uptime()
  local f = io.open("/proc/uptime")
  local t = f:read("*n")
  f:close()
  return t
end
local first
response = function(status, headers, body)
  count = count + 1
  if count == 1 then
    first = uptime()
  elseif count == limit then
    io.write(string.format("SYRATE %.1f\\n", (limit - 1) / (uptime() - first)))
    io.popen("kill -INT " .. pid .. "; (sleep 0.5; [ \\"$(cat /proc/" .. pid ..
             "/comm 2>/dev/null)\\" = wrk ] && kill -INT " .. pid .. ") >/dev/null 2>&1 &"):close()
  end
end
"""


def _round(cluster, script, url: str, requests: int = ROUND) -> dict:
    """One round of `requests` connections, one request each; wrk's summary."""
    proc = cluster.run_in("client", [
        "env", f"SY_REQUESTS={requests}",
        "wrk", "-t1", f"-c{CONNS}", f"-d{ROUND_SECONDS}s", "--timeout", "5s",
        "-H", "Connection: close", "-s", str(script), url,
    ], timeout=ROUND_SECONDS + 20)
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, f"wrk failed ({proc.returncode}):\n{out}\n{proc.stderr!r}"
    done = re.search(r"(\d+) requests in", out)
    assert done, f"no wrk summary:\n{out}"
    rate = re.search(r"SYRATE ([\d.]+)", out)
    assert rate, (f"a round fell short of {requests} connections in {ROUND_SECONDS} s "
                  f"(the client out of ports?); TIME_WAIT in the client: "
                  f"{_time_wait(cluster, 'client')}\n{out}")
    return {"requests": int(done.group(1)), "rate": float(rate.group(1)), "out": out}


def _time_wait(cluster, where: str, *dst: str) -> int:
    proc = cluster.run_in(where, ["ss", "-Htan", "state", "time-wait", *dst])
    assert proc.returncode == 0, proc.stderr
    return len([line for line in proc.stdout.decode().splitlines() if line.strip()])


def _syn_retransmits(cluster) -> int:
    proc = cluster.run_in("client", ["nstat", "-asz", "--json"])
    assert proc.returncode == 0, proc.stderr
    return int(json.loads(proc.stdout)["kernel"].get("TcpExtTCPSynRetrans", 0))


def test_backend_closing_first_leaves_no_time_wait_in_the_client(cluster):
    cluster.start_nginx(payload_mib=1)
    script = cluster.write_file("stop-at-count.lua", STOP_AT_COUNT)
    url = f"http://{mf.NGINX_VIP}/pod.txt"
    syn = [_syn_retransmits(cluster)]
    rounds = [_round(cluster, script, url)]
    syn.append(_syn_retransmits(cluster))
    client_tw = _time_wait(cluster, "client", "dst", mf.NGINX_VIP)
    node_tw = _time_wait(cluster, "node")
    rounds.append(_round(cluster, script, url))
    syn.append(_syn_retransmits(cluster))
    # Another process may take the cores during a round of a few seconds.
    # Up to two more rounds tell that apart from a client short of ports,
    # which only gets worse as its TIME_WAIT sockets pile up.
    for _ in range(2):
        if max(r["rate"] for r in rounds[1:]) >= 0.9 * rounds[0]["rate"]:
            break
        rounds.append(_round(cluster, script, url))
        syn.append(_syn_retransmits(cluster))
    summary = (", ".join(f"round {i + 1}: {r['requests']} requests at {r['rate']:.0f}/s"
                         for i, r in enumerate(rounds))
               + f"; TIME_WAIT after round 1: client {client_tw}, node {node_tw}; "
               f"client SYN retransmits per round: {[b - a for a, b in zip(syn, syn[1:])]}")
    print(summary)
    for r in rounds:
        assert r["requests"] >= ROUND, f"a round fell short of {ROUND}: {summary}\n{r['out']}"
    assert client_tw <= MAX_CLIENT_TIME_WAIT, f"the client closed first: {summary}"
    later = max(r["rate"] for r in rounds[1:])
    assert later >= 0.9 * rounds[0]["rate"], f"the rate did not hold: {summary}"
