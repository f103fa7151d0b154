"""Where a core's time goes, by kernel area: `perf script` call stacks of
`perf record -e cpu-clock -g`, each sample given to one area.

A sample's area is that of the innermost frame of its stack that names an
area (`AREAS`, first match wins per frame): generic frames (spin locks,
memcpy, the slab allocator) say nothing by themselves and take their
caller's area, so a lock taken in `inet_csk_get_port` is bind/port work,
one taken in `try_to_wake_up` a wakeup. Besides that exclusive split,
`inclusive` counts the samples with the area anywhere on the stack: the
TPROXY socket lookup is netfilter work that ends in the TCP lookup code,
and it shows there.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

# Most specific first: a frame is matched against these in order.
AREAS: list[tuple[str, re.Pattern]] = [(name, re.compile(rx)) for name, rx in [
    ("idle", r"^(pv_native_safe_halt|default_idle|cpuidle|do_idle|acpi_idle|intel_idle"
             r"|cpu_startup_entry|native_safe_halt|default_idle_call|poll_idle)"),
    ("netfilter: tproxy / socket match", r"tproxy|^nft_socket|^nf_sk_lookup|^nf_socket"),
    ("netfilter: conntrack", r"^(__)?nf_conntrack|^nf_ct_|^__nf_ct|^nf_nat|^tcp_packet$"
                             r"|^nf_confirm|^ipv4_conntrack|^ipv6_conntrack"),
    ("netfilter: rules", r"^nft_|^__nft_|^nf_hook|^nf_tables|^ipt_|^xt_|^nf_"),
    ("bind / port", r"inet_csk_get_port|__inet_bind|inet_bind|inet_bhash|bind_bucket"
                    r"|__inet_hash_connect|inet_hash_connect|__inet_check_established"
                    r"|inet_csk_bind|inet_bind2|__sys_bind|__x64_sys_bind|sk_reuseport"),
    ("socket create / free", r"^sk_alloc|^sk_prot_alloc|^__sk_destruct|^sk_destruct"
                             r"|^sock_alloc|^__sock_create|^sock_create|^inet_create"
                             r"|^__sys_socket|^sock_release|^__sock_release|^inet_release"
                             r"|^tcp_v[46]_destroy_sock|^inet_csk_destroy_sock|^sk_free"
                             r"|^__sk_free|^sock_close|^__fput|^alloc_file|^sock_alloc_file"
                             r"|^d_alloc|^alloc_inode|^destroy_inode|^sock_free_inode"
                             r"|^tcp_v[46]_init_sock|^tcp_init_sock|^security_sk|^sk_clone"
                             r"|^inet_csk_clone|^tcp_create_openreq_child|^inet_csk_accept"
                             r"|^do_accept|^__sys_accept|^sockfs_|^__alloc_fd|^fd_install"),
    ("sockopt / name", r"setsockopt|getsockopt|getpeername|getsockname|^sock_set"
                       r"|^do_ip_setsockopt|^do_tcp_setsockopt|^sockopt_"),
    ("io_uring", r"^io_|^__io_|^io_uring|tctx_task_work|^task_work_run"),
    ("epoll", r"^ep_|^epoll|^do_epoll|^__x64_sys_epoll|^ep_poll"),
    ("scheduler / wakeup", r"^schedule|^__schedule|try_to_wake_up|^wake_up|^__wake_up"
                           r"|finish_task_switch|^pick_next|^enqueue_|^dequeue_|^update_curr"
                           r"|^ttwu|^sched_|^select_task_rq|^psi_|^switch_mm|^__switch_to"
                           r"|^context_switch|^autoremove_wake|^default_wake"),
    ("tcp / ip", r"^tcp_|^__tcp|^inet_|^__inet|^ip_|^__ip|^ipv4|^ip6_|^__ip6|^ipv6|^raw_"
                 r"|^sk_stream|^sk_reset_timer|^sk_wait|^sock_|^__sock|^release_sock"
                 r"|^lock_sock|^skb_|^__skb|^kfree_skb|^__kfree_skb|^consume_skb|^__alloc_skb"
                 r"|^alloc_skb|^dst_|^fib_|^rt_|^__rt|^neigh_|^__neigh|^udp_|^__udp"
                 r"|^security_sock|^selinux_|^bpf_|^sk_filter|^__cgroup_bpf|^mod_timer"
                 r"|^sk_mem|^__sk_mem|^secure_tcp|^tcp_v4|^__sys_connect|^__sys_send"
                 r"|^__sys_recv|^sock_sendmsg|^sock_recvmsg|^__sys_shutdown|^inet_shutdown"),
    ("device / softirq", r"^veth|^__netif|^netif_|^__dev_queue|^dev_|^napi|^__napi"
                         r"|^net_rx_action|^process_backlog|^__do_softirq|^do_softirq"
                         r"|^handle_softirqs|^__local_bh|^irq_exit|^loopback"
                         r"|^__netdev|^netdev_"),
    ("syscall entry / exit", r"^entry_SYSCALL|^do_syscall|^syscall_|^__x64_sys|^x64_sys"
                             r"|^exit_to_user|^syscall_exit|^__x64"),
]]

ENTRY = "syscall entry / exit"
USER = "user space"
OTHER = "kernel, other"
# Kernel threads: what runs on the core for the peer besides its own
# threads (softirq, io_uring's workers). Any other process (someone's
# build) is left out of every figure, which the bench's CPU figures cannot.
KERNEL_THREAD = re.compile(r"^(swapper|ksoftirqd|kworker|migration|rcu|irq/|iou-|cpuhp)")


def area_of(frames: list[tuple[str, bool]]) -> tuple[str, set[str]]:
    """(exclusive area, every area on the stack) of one sample's frames,
    innermost first; each frame is (symbol, is_kernel)."""
    seen: set[str] = set()
    first = None
    for i, (sym, kernel) in enumerate(frames):
        if not kernel:
            continue
        for name, rx in AREAS:
            # Every syscall passes the entry code: it is the area only of
            # samples taken in it, the rest is "other".
            if name == ENTRY and i > 0:
                continue
            if rx.search(sym):
                seen.add(name)
                first = first or name
                break
    if frames and not frames[0][1]:
        return USER, seen
    return first or OTHER, seen


def samples(data: Path, tids: set[int]) -> tuple[list[list[tuple[str, bool]]], int]:
    """The stacks of a perf.data file, innermost frame first, of the threads
    `tids` and kernel threads; and the count of other samples, left out."""
    text = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,tid,ip,sym,dso"],
                          capture_output=True, timeout=600).stdout.decode(errors="replace")
    stacks, cur, foreign, skip = [], [], 0, False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            if cur and not skip:
                stacks.append(cur)
            cur, skip = [], False
            continue
        if not raw.startswith((" ", "\t")):
            # The sample's header line: its command.
            head = line.split()
            tid = int(head[-1]) if head[-1].isdigit() else -1
            skip = not (tid in tids or tid == 0 or KERNEL_THREAD.match(line))
            foreign += skip
            continue
        # "ffffffff81234567 tcp_v4_rcv+0x12 ([kernel.kallsyms])"
        parts = line.split(None, 1)
        if len(parts) < 2:
            continue
        rest = parts[1]
        dso = rest[rest.rfind("(") + 1:rest.rfind(")")] if "(" in rest else ""
        sym = rest[:rest.rfind("(")].strip() if "(" in rest else rest
        sym = re.sub(r"\+0x[0-9a-f]+$", "", sym)
        cur.append((sym, "kernel" in dso or dso.startswith("[")))
    if cur and not skip:
        stacks.append(cur)
    return stacks, foreign


def split(data: Path, tids: set[int]) -> tuple[int, Counter, Counter, dict[str, Counter], int]:
    """Samples in all, per exclusive area, per inclusive area, the hottest
    leaf symbols per exclusive area, and the foreign samples left out."""
    stacks, foreign = samples(data, tids)
    excl, incl = Counter(), Counter()
    leaves: dict[str, Counter] = {}
    for frames in stacks:
        area, seen = area_of(frames)
        excl[area] += 1
        for a in seen:
            incl[a] += 1
        leaf = frames[0][0] if frames else "?"
        # The leaf of a generic frame says little: name the first frame
        # that set the area too.
        owner = next((s for s, k in frames if k and any(
            rx.search(s) for n, rx in AREAS if n == area)), leaf)
        leaves.setdefault(area, Counter())[owner if owner == leaf else f"{owner} > {leaf}"] += 1
    return len(stacks), excl, incl, leaves, foreign


def table(runs: dict[str, tuple[int, float, Path, set[int]]], leaves_per_area: int = 3) -> str:
    """Markdown: µs of the core per unit (connection or request) per area,
    for each run `name: (units, sample Hz, perf.data, the peer's threads)`."""
    res = {name: (units, hz, *split(data, tids))
           for name, (units, hz, data, tids) in runs.items()}
    names = list(res)
    areas = [a for a, _ in AREAS if a != "idle"] + [OTHER, USER]
    us = lambda name, n: n / res[name][1] * 1e6 / max(res[name][0], 1)
    head = "| area (exclusive) | " + " | ".join(f"{n} µs" for n in names) + " |"
    out = [head, "| --- |" + " ---: |" * len(names)]
    for a in areas:
        out.append(f"| {a} | " + " | ".join(f"{us(n, res[n][3][a]):.2f}" for n in names) + " |")
    busy = {n: res[n][2] - res[n][3]["idle"] for n in names}
    out.append("| **busy, all** | " + " | ".join(f"**{us(n, busy[n]):.2f}**" for n in names)
               + " |")
    out.append("")
    out.append("| area (anywhere on the stack) | " + " | ".join(f"{n} µs" for n in names) + " |")
    out.append("| --- |" + " ---: |" * len(names))
    for a, _ in AREAS:
        if a == "idle":
            continue
        out.append(f"| {a} | " + " | ".join(f"{us(n, res[n][4][a]):.2f}" for n in names) + " |")
    out.append("")
    for n in names:
        out.append(f"{n}: {res[n][0]} units, {res[n][2]} samples "
                   f"({res[n][6]} of other processes left out); hottest per area:")
        for a in areas:
            top = res[n][5].get(a, Counter()).most_common(leaves_per_area)
            if top:
                out.append(f"  {a}: " + "; ".join(f"{s} {us(n, c):.2f}" for s, c in top))
    return "\n".join(out)
