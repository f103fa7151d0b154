"""Runs in the client Pod's namespace for `bench/run --swaps` (swaps.py).

`load VIP PORT STOP_FILE SECONDS WORKERS`: WORKERS threads open one new
connection after another (one HTTP/1.0 request each) until STOP_FILE exists,
SECONDS passed or LIMIT connections were made; prints {"ok", "failed",
"errors"} as JSON.

`swap VIP PORT POLICY_FILE FIRST LAST SWAPS`: replaces POLICY_FILE (one
rename) SWAPS times, alternating the modules FIRST and LAST, and after each
replacement opens probe connections one after another until one is answered
by the endpoint the new module sends every flow to; prints one JSON line per
swap and a summary. Kept separate from the load process, so the probes'
timing does not wait on the load's threads for the interpreter lock.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import threading
import time

REQUEST = b"GET /who HTTP/1.0\r\nHost: bench\r\n\r\n"
LIMIT = 2_000_000  # connections of the load, whatever the time bound says


def ask(vip: str, port: int, timeout: float = 2.0) -> str:
    """One new connection, one request; the answering Pod's address."""
    with socket.create_connection((vip, port), timeout=timeout) as s:
        s.sendall(REQUEST)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"answer {head[:40]!r}")
    return body.decode().strip()


def load(vip: str, port: int, stop: str, seconds: float, workers: int) -> None:
    counts = {"ok": 0, "failed": 0, "errors": []}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def work() -> None:
        while not os.path.exists(stop) and time.monotonic() < deadline \
                and counts["ok"] + counts["failed"] < LIMIT:
            try:
                ask(vip, port)
                ok = True
            except (OSError, RuntimeError) as e:
                ok, err = False, repr(e)
            with lock:
                if ok:
                    counts["ok"] += 1
                else:
                    counts["failed"] += 1
                    if len(counts["errors"]) < 5:
                        counts["errors"].append(err)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(counts), flush=True)


def settle(vip: str, port: int, want: str | None, limit: float) -> tuple[str, int, float, float]:
    """Probes until an answer comes from `want` (any answer when None).
    Returns (answer, probes, send time of the deciding probe, send time of
    the probe before it) in monotonic seconds; raises TimeoutError."""
    deadline = time.monotonic() + limit
    probes, prev = 0, time.monotonic()
    while time.monotonic() < deadline:
        sent = time.monotonic()
        probes += 1
        got = ask(vip, port)
        if want is None or got == want:
            return got, probes, sent, prev
        prev = sent
    raise TimeoutError(f"no answer from {want} within {limit} s")


def swap(vip: str, port: int, policy: str, first: str, last: str, swaps: int) -> None:
    staged = {"first": first, "last": last}
    # Which endpoint each module pins: install it, wait until ten new flows
    # in a row reach one endpoint (the other module's, for the second).
    pinned: dict[str, str | None] = {}
    for name in ("first", "last"):
        install(staged[name], policy)
        pinned[name] = None
        for _ in range(200):
            got = {ask(vip, port) for _ in range(10)}
            if len(got) == 1 and got != {pinned.get("first")}:
                pinned[name] = got.pop()
                break
            time.sleep(0.05)
    if pinned["first"] == pinned["last"] or None in pinned.values():
        raise SystemExit(f"the two modules do not pin different endpoints: {pinned}")
    print(json.dumps({"pinned": pinned}), flush=True)
    effective, failed, timeouts = [], 0, 0
    for i in range(swaps):
        name = "first" if i % 2 == 0 else "last"
        tmp = install_staged(staged[name], policy)
        os.replace(tmp, policy)
        t0 = time.monotonic()
        try:
            _, probes, sent, prev = settle(vip, port, pinned[name], 2.0)
        except TimeoutError:
            timeouts += 1
            continue
        except (OSError, RuntimeError):
            failed += 1
            continue
        # The new table was in place by `sent` and, if a probe came before,
        # not yet for that probe's flow at `prev`.
        hi = (sent - t0) * 1e3
        lo = (prev - t0) * 1e3 if probes > 1 else 0.0
        effective.append((lo, hi, probes))
        print(json.dumps({"swap": i, "module": name, "ms_hi": round(hi, 3),
                          "ms_lo": round(lo, 3), "probes": probes}), flush=True)
    print(json.dumps({"summary": True, "swaps": swaps, "measured": len(effective),
                      "probe_failures": failed, "timeouts": timeouts}), flush=True)


def install_staged(src: str, policy: str) -> str:
    """A copy of `src` next to the policies directory, ready for one rename
    (the proxy must never read a half-written module)."""
    tmp = os.path.join(os.path.dirname(os.path.dirname(policy)), ".swap-staged.wasm")
    shutil.copyfile(src, tmp)
    return tmp


def install(src: str, policy: str) -> None:
    os.replace(install_staged(src, policy), policy)


def main(argv: list[str]) -> None:
    mode, vip, port = argv[0], argv[1], int(argv[2])
    if mode == "load":
        load(vip, port, argv[3], float(argv[4]), int(argv[5]))
    elif mode == "swap":
        swap(vip, port, argv[3], argv[4], argv[5], int(argv[6]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
