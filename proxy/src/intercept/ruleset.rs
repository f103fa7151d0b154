//! The whole `inet <table>` ruleset, rendered as one `nft -f` batch that
//! atomically replaces whatever stale copy of our table exists. Rules are
//! fixed; Services only ever change set elements.

use super::elements::Elements;
use crate::config::InterceptConfig;

/// Renders the batch: create-if-missing, delete, recreate with elements.
/// nft applies a batch atomically, so traffic never sees an empty table.
/// `hooked`: with the raw prerouting hook (`hook.rs`: only while the
/// proxy path has work).
pub fn render(
    cfg: &InterceptConfig,
    listen_port: u16,
    elements: &Elements,
    hooked: bool,
) -> String {
    let t = &cfg.table;
    let divert = divert(cfg);
    let bypass = format!("0x{:x}", cfg.bypass_mark);
    let mut lines: Vec<String> = vec![
        format!("table inet {t} {{}}"),
        format!("delete table inet {t}"),
        format!("table inet {t} {{"),
    ];
    for (set, ty) in [
        ("vip4", "ipv4_addr . inet_proto . inet_service"),
        ("vip6", "ipv6_addr . inet_proto . inet_service"),
        ("noep4", "ipv4_addr . inet_proto . inet_service"),
        ("noep6", "ipv6_addr . inet_proto . inet_service"),
        ("nodeport", "inet_proto . inet_service"),
        ("nodeport_noep", "inet_proto . inet_service"),
    ] {
        lines.push(format!("  set {set} {{\n    type {ty}\n  }}"));
    }
    for (set, ty) in [("nodeaddr4", "ipv4_addr"), ("nodeaddr6", "ipv6_addr")] {
        lines.push(format!(
            "  set {set} {{\n    type {ty}\n    flags interval\n  }}"
        ));
    }
    lines.extend(super::source_ranges::set_definitions());
    // A NodePort is a local destination, restricted to the configured
    // addresses (kube-proxy's --nodeport-addresses) when there are any.
    // nft evaluates a rule's expressions left to right and stops at the
    // first that fails: the family, then the port lookup, and only a
    // packet to a NodePort pays the `fib` route lookup.
    let restricted = !cfg.node_port_addresses.is_empty();
    let node_port = |fam: &str, set: &str| {
        let local = if restricted {
            let addrs = if fam == "ip" {
                "nodeaddr4"
            } else {
                "nodeaddr6"
            };
            format!("fib daddr type local {fam} daddr @{addrs}")
        } else {
            "fib daddr type local".to_string()
        };
        format!(
            "meta nfproto {} meta l4proto . th dport {set} {local}",
            nfproto(fam)
        )
    };
    lines.extend(super::kernel::rules::render(cfg, &node_port));
    // A connection to a Service port without endpoints is refused. Where
    // conntrack runs (output) that is a new connection; prerouting runs
    // before conntrack, where it is any packet that no socket of ours took.
    let reject = |ct_new: &str| {
        let mut rules = vec![
            format!("{ct_new}ip daddr . meta l4proto . th dport @noep4 goto reject_no_endpoints"),
            format!("{ct_new}ip6 daddr . meta l4proto . th dport @noep6 goto reject_no_endpoints"),
        ];
        for fam in ["ip", "ip6"] {
            rules.push(format!(
                "{ct_new}{} goto reject_no_endpoints",
                node_port(fam, "@nodeport_noep")
            ));
        }
        rules
    };

    // Pod and external traffic. A packet for a socket of ours (its socket
    // is transparent: a proxied connection, an upstream connection's
    // replies, a UDP flow) goes straight to it, whatever happened to its
    // Service since, and keeps the kernel's early demux. A new connection
    // to a frontend is diverted to the listeners with TPROXY. A TCP SYN
    // skips the socket rule: only TPROXY hands a SYN that meets one of our
    // TIME_WAIT sockets (a client reusing its port) to the listener; the
    // socket rule would deliver it to the TIME_WAIT socket, which answers
    // with a stale ACK, and the client would retry only after a reset and
    // a retransmit timeout (a third of all connections at a high
    // connection rate, bench/results/2026-11-25-timewait.md). The divert
    // mark makes the fwmark rule route the packet to `lo`, i.e. deliver it
    // locally although no interface owns the VIP.
    //
    // The chain runs before conntrack (priority raw) and takes what it
    // diverts out of connection tracking: a proxied connection ends at our
    // socket, so there is nothing to translate, and tracking it cost about
    // a twentieth of the CPU per connection on each core. Our replies and
    // upstream packets carry the bypass mark and skip tracking in output.
    //
    // Every packet that crosses the node meets this chain, a kernel-path
    // flow's too (both directions), and nft's cost is per rule evaluated:
    // one dispatch by family and protocol, then only that pair's rules
    // (`prerouting_chains`), in the order above. `goto`: a packet that
    // leaves its pair's chains without a verdict is done (each pair's
    // chains hold the socket rule already; a `jump` came back here and ran
    // the socket rule below a second time). Compares instead of the
    // concatenated lookup measured the same (2026-12-06-s10-kernel.md).
    if hooked {
        lines.extend(raw_hook(cfg));
    }
    lines.extend(prerouting_chains(&divert, listen_port, &node_port));
    lines.push("  chain output_raw {".into());
    lines.push("    type filter hook output priority raw; policy accept;".into());
    lines.push(format!("    meta mark & {bypass} != 0 notrack"));
    lines.push("  }".into());

    // The node's own processes: TPROXY works only in prerouting, so mark the
    // packet here; the fwmark rule routes it through `lo`, where prerouting
    // diverts it. The conntrack mark keeps a diverted flow diverted after
    // its Service changed. Our own upstream sockets carry the bypass mark.
    let ct_divert = format!("ct mark set ct mark | 0x{:x}", cfg.divert_mark);
    lines.push("  chain output {".into());
    lines.push("    type route hook output priority mangle; policy accept;".into());
    lines.push(format!("    meta mark & {bypass} != 0 return"));
    lines.extend(super::source_ranges::rules("ct state new "));
    lines.push(format!(
        "    ct mark & 0x{:x} != 0 {divert} accept",
        cfg.divert_mark
    ));
    lines.extend(reject("ct state new ").iter().map(|r| format!("    {r}")));
    lines.push(format!(
        "    ip daddr . meta l4proto . th dport @vip4 {divert} {ct_divert}"
    ));
    lines.push(format!(
        "    ip6 daddr . meta l4proto . th dport @vip6 {divert} {ct_divert}"
    ));
    for fam in ["ip", "ip6"] {
        lines.push(format!(
            "    {} {divert} {ct_divert}",
            node_port(fam, "@nodeport")
        ));
    }
    lines.push("  }".into());

    // kube-proxy answers a Service port without endpoints at once instead
    // of letting the client time out.
    lines.push("  chain reject_no_endpoints {\n    meta l4proto tcp reject with tcp reset\n    reject\n  }".into());
    lines.push("}".into());
    let mut out = lines.join("\n");
    out.push('\n');
    out.push_str(&elements.diff_commands(&Elements::default(), t));
    out
}

fn divert(cfg: &InterceptConfig) -> String {
    format!("meta mark set meta mark | 0x{:x}", cfg.divert_mark)
}

/// The raw prerouting base chain (see `render`), as lines inside
/// `table inet <t> { ... }`: `hook.rs` adds it to a table without it.
pub fn raw_hook(cfg: &InterceptConfig) -> Vec<String> {
    let mut lines = vec![
        format!("  chain {} {{", super::hook::CHAIN),
        "    type filter hook prerouting priority raw; policy accept;".into(),
    ];
    // Kernel-path flows first, on one lookup each (`kernel/fast.rs`).
    lines.extend(super::kernel::fast::rules());
    lines.push(
        "    meta nfproto . meta l4proto vmap { ipv4 . tcp : goto pre4_tcp, ipv4 . udp : goto pre4_udp, ipv6 . tcp : goto pre6_tcp, ipv6 . udp : goto pre6_udp }"
            .into(),
    );
    // Other protocols: an ICMP error about a flow of one of our sockets
    // (the socket match reads the embedded header).
    lines.push(format!(
        "    socket transparent 1 {} notrack accept",
        divert(cfg)
    ));
    lines.push("  }".into());
    lines
}

/// The per family and protocol chains of prerouting (see `render`).
fn prerouting_chains(
    divert: &str,
    listen_port: u16,
    node_port: &dyn Fn(&str, &str) -> String,
) -> Vec<String> {
    let mut lines = Vec::new();
    for (fam, f) in [("ip", 4), ("ip6", 6)] {
        let lbsr = super::source_ranges::rule(fam, "");
        let socket = format!("    socket transparent 1 {divert} notrack accept");
        // A packet to a frontend that no socket of ours took: refused
        // without endpoints, else diverted (a TCP packet other than a SYN
        // then meets the listener, which resets it).
        for proto in ["tcp", "udp"] {
            lines.push(format!("  chain pre{f}_front_{proto} {{"));
            lines.push(format!(
                "    {fam} daddr . meta l4proto . th dport @noep{f} goto reject_no_endpoints"
            ));
            lines.push(format!(
                "    {} goto reject_no_endpoints",
                node_port(fam, "@nodeport_noep")
            ));
            lines.push(format!(
                "    meta l4proto {proto} {fam} daddr . meta l4proto . th dport @vip{f} {divert} notrack tproxy {fam} to :{listen_port} accept"
            ));
            lines.push(format!(
                "    meta l4proto {proto} {} {divert} notrack tproxy {fam} to :{listen_port} accept",
                node_port(fam, "@nodeport")
            ));
            lines.push("  }".into());
        }
        // A kernel-path flow that no socket of ours took (the socket rule
        // still catches a proxied connection from before its frontend moved
        // to the kernel path) leaves for conntrack and the NAT chains: to a
        // kernel frontend, or a reply from a kernel endpoint (TCP only: a
        // UDP endpoint may send from its service port to a proxied
        // frontend, a DNS forwarder does).
        let kvip = format!("    {fam} daddr . meta l4proto . th dport @kvip{f} accept");
        let knode = format!("    {} accept", node_port(fam, &format!("@knode{f}")));
        // The same, before the socket rule, for kernel frontends that did
        // not come from the proxy path within the last hour (`kmoved`,
        // elements with a timeout): only a frontend that moved proxy →
        // kernel can have proxied connections, whose packets the socket
        // rule must still give to our sockets. Every other packet to a
        // kernel frontend skips the socket lookup.
        let kvip_early = format!(
            "    {fam} daddr . meta l4proto . th dport @kvip{f} {fam} daddr . meta l4proto . th dport != @kmoved{f} accept"
        );
        let knode_early = format!(
            "    {} meta l4proto . th dport != @kmovednp accept",
            node_port(fam, &format!("@knode{f}"))
        );
        // TCP: a SYN skips the socket rule (TIME_WAIT, see above). Load
        // balancer source ranges are checked on the SYN only: kube-proxy
        // checks new connections (`ct state new`), and without the SYN no
        // connection is made (the kernel path's endpoint or the proxy's
        // listener resets anything else). Every TCP packet of an
        // established flow is spared the lookup.
        lines.push(format!("  chain pre{f}_tcp {{"));
        lines.push(format!(
            "    tcp flags & (syn | ack) == syn goto pre{f}_syn"
        ));
        lines.push(kvip_early.clone());
        // A reply from a kernel endpoint: sent on at once if no proxied
        // connection can be talking to it (`kepx`: no proxy-path frontend
        // routes to it, and none did within the last hour, `kepmoved`; see
        // kernel/replies.rs); if a proxy-path frontend routes to it too
        // (`kepsh`), the socket rule first (`pre{f}_ep`). One that left
        // the proxy path within the hour takes the socket rule below, then
        // is sent on. Two disjoint plain sets: an endpoint is one element.
        // Verdict maps would spare a lookup but make the kernel validate
        // every element of every verdict map at each commit that changes
        // one (100k endpoints: 24-39 ms a change).
        lines.push(format!(
            "    {fam} saddr . meta l4proto . th sport @kepx{f} {fam} saddr . meta l4proto . th sport != @kepmoved{f} accept"
        ));
        lines.push(format!(
            "    {fam} saddr . meta l4proto . th sport @kepsh{f} goto pre{f}_ep"
        ));
        lines.push(knode_early.clone());
        lines.push(socket.clone());
        lines.push(kvip.clone());
        // A reply from an endpoint the proxy path left within the hour
        // (`kepx` and `kepmoved`) that no socket of ours took: a
        // kernel-path flow's, sent on (the front rules below must not see
        // it: a NodePort's number can be a local client's port).
        lines.push(format!(
            "    {fam} saddr . meta l4proto . th sport @kepx{f} accept"
        ));
        lines.push(knode.clone());
        // A frontend that left the kernel datapath: its established flows
        // (DNATed, in conntrack) go on past the proxy; only new ones divert.
        lines.push(format!(
            "    {fam} daddr . meta l4proto . th dport @kdrain{f} accept"
        ));
        lines.push(format!("    {} accept", node_port(fam, "@kdrainnp")));
        lines.push(format!("    goto pre{f}_front_tcp"));
        lines.push("  }".into());
        lines.push(format!("  chain pre{f}_ep {{"));
        lines.push(socket.clone());
        lines.push("    accept".into());
        lines.push("  }".into());
        // A SYN to a kernel frontend is a new kernel-path flow (DNAT), even
        // if a proxied connection of the same addresses left a TIME_WAIT. A
        // SYN for a socket of ours to an address that is no frontend (any
        // more): deliver it rather than let it be routed out.
        lines.push(format!("  chain pre{f}_syn {{"));
        lines.push(lbsr.clone());
        lines.push(kvip.clone());
        lines.push(knode.clone());
        lines.push(format!("    jump pre{f}_front_tcp"));
        lines.push(socket.clone());
        lines.push("  }".into());
        lines.push(format!("  chain pre{f}_udp {{"));
        lines.push(lbsr.clone());
        lines.push(kvip_early);
        lines.push(knode_early);
        lines.push(socket.clone());
        lines.push(kvip);
        lines.push(knode);
        lines.push(format!("    goto pre{f}_front_udp"));
        lines.push("  }".into());
    }
    lines
}

fn nfproto(fam: &str) -> &'static str {
    if fam == "ip" { "ipv4" } else { "ipv6" }
}

/// The rules of one chain of a rendered batch, trimmed (tests).
#[cfg(test)]
pub(crate) fn chain<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    let start = text
        .find(&format!("  chain {name} {{\n"))
        .unwrap_or_else(|| panic!("chain {name}"));
    text[start..]
        .lines()
        .skip(1)
        .take_while(|l| *l != "  }")
        .map(str::trim)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_replaces_the_table_atomically_and_fills_sets() {
        let mut elements = Elements::default();
        elements.vips.insert((
            "10.96.0.10".parse().expect("ip"),
            crate::catalog::Protocol::Tcp,
            80,
        ));
        let text = render(&InterceptConfig::default(), 15001, &elements, true);
        assert!(text.starts_with("table inet switchyard {}\ndelete table inet switchyard\n"));
        assert!(text.contains("tproxy ip to :15001"));
        assert!(text.contains("tproxy ip6 to :15001"));
        assert!(text.ends_with("add element inet switchyard vip4 { 10.96.0.10 . tcp . 80 }\n"));
        assert!(text.contains(
            "meta nfproto ipv4 meta l4proto . th dport @nodeport fib daddr type local meta mark"
        ));
        assert!(!text.contains("@nodeaddr4 "));
        // TPROXY sees a frontend's SYNs before any socket rule does.
        assert_eq!(
            chain(&text, "pre4_syn")[1..],
            [
                "ip daddr . meta l4proto . th dport @kvip4 accept",
                "meta nfproto ipv4 meta l4proto . th dport @knode4 fib daddr type local accept",
                "jump pre4_front_tcp",
                "socket transparent 1 meta mark set meta mark | 0x200000 notrack accept"
            ]
        );
        // Host processes: source ranges on new connections, as kube-proxy.
        assert!(chain(&text, "output").iter().any(|r| r.starts_with(
            "ct state new ip daddr . meta l4proto . th dport @lbsr4 ip daddr . meta l4proto . th dport . ip saddr != @lbsr_allow4 drop"
        )));
        assert!(chain(&text, "pre6_front_tcp").iter().any(|r| r.ends_with(
            "@vip6 meta mark set meta mark | 0x200000 notrack tproxy ip6 to :15001 accept"
        )));
    }

    use super::chain;

    /// Without the hook the table is the same but for the base chain: the
    /// chains it dispatches to stay, for the hook to come back to.
    #[test]
    fn a_table_without_the_raw_hook_differs_only_by_its_base_chain() {
        let cfg = InterceptConfig::default();
        let with = render(&cfg, 15001, &Elements::default(), true);
        let without = render(&cfg, 15001, &Elements::default(), false);
        assert!(!without.contains("  chain prerouting {"));
        assert!(!without.contains("hook prerouting priority raw"));
        let base = raw_hook(&cfg).join("\n") + "\n";
        assert_eq!(with.replacen(&base, "", 1), without);
        let batch = super::super::hook::add_batch(&cfg.table, &raw_hook(&cfg));
        assert!(batch.starts_with("table inet switchyard {\n  chain prerouting {\n"));
        assert_eq!(
            super::super::hook::delete_batch(&cfg.table),
            "delete chain inet switchyard prerouting\n"
        );
    }

    /// A packet that is none of ours (a kernel-path flow, unrelated
    /// traffic) meets one dispatch and its family and protocol's rules: one
    /// socket lookup, and a route lookup only if its port is a NodePort.
    #[test]
    fn packets_not_ours_meet_their_own_rules_and_one_socket_lookup() {
        for cfg in [
            InterceptConfig::default(),
            InterceptConfig {
                node_port_addresses: vec![crate::config::NodePortAddress::Primary],
                ..InterceptConfig::default()
            },
        ] {
            let text = render(&cfg, 15001, &Elements::default(), true);
            let base = chain(&text, "prerouting");
            assert_eq!(base.len(), 7, "{base:?}");
            assert!(base[1].ends_with("@kfast4 accept"));
            assert!(base[4].ends_with("@kepfast6 tcp flags & (syn | ack) != syn accept"));
            assert!(
                base[5]
                    .starts_with("meta nfproto . meta l4proto vmap { ipv4 . tcp : goto pre4_tcp,")
            );
            assert!(!base[5].contains("jump"));
            for (f, fam) in [(4, "ip"), (6, "ip6")] {
                let tcp = chain(&text, &format!("pre{f}_tcp"));
                let shape: Vec<&str> = tcp
                    .iter()
                    .map(|r| {
                        r.split(" @")
                            .next()
                            .unwrap_or_default()
                            .split(" meta mark")
                            .next()
                            .unwrap_or_default()
                    })
                    .collect();
                let np = format!("meta nfproto {} meta l4proto . th dport", nfproto(fam));
                assert_eq!(
                    shape,
                    [
                        // Source ranges: on the SYN only (pre_syn).
                        format!("tcp flags & (syn | ack) == syn goto pre{f}_syn").as_str(),
                        // Kernel frontends that did not come from the
                        // proxy path: no socket lookup.
                        &format!("{fam} daddr . meta l4proto . th dport"),
                        // Replies from kernel endpoints no proxied
                        // connection can be talking to: no socket lookup;
                        // from those a proxied Service shares: pre_ep.
                        &format!("{fam} saddr . meta l4proto . th sport"),
                        &format!("{fam} saddr . meta l4proto . th sport"),
                        &np,
                        "socket transparent 1",
                        // Kernel-path flows leave here: to a moved
                        // frontend, from a moved endpoint, to a NodePort.
                        &format!("{fam} daddr . meta l4proto . th dport"),
                        &format!("{fam} saddr . meta l4proto . th sport"),
                        &np,
                        // The proxy's drains, then its frontends.
                        &format!("{fam} daddr . meta l4proto . th dport"),
                        &np,
                        &format!("goto pre{f}_front_tcp"),
                    ]
                );
                assert!(tcp[1].ends_with(&format!(
                    "@kvip{f} {fam} daddr . meta l4proto . th dport != @kmoved{f} accept"
                )));
                assert!(tcp[2].ends_with(&format!(
                    "@kepx{f} {fam} saddr . meta l4proto . th sport != @kepmoved{f} accept"
                )));
                assert!(tcp[3].ends_with(&format!("@kepsh{f} goto pre{f}_ep")));
                assert!(tcp[4].contains(&format!("@knode{f} fib daddr type local")));
                assert!(tcp[4].ends_with("meta l4proto . th dport != @kmovednp accept"));
                assert!(tcp[6].ends_with(&format!("@kvip{f} accept")));
                assert!(tcp[7].ends_with(&format!("@kepx{f} accept")));
                assert!(tcp[8].contains(&format!("@knode{f} fib daddr type local")));
                let ep = chain(&text, &format!("pre{f}_ep"));
                assert_eq!(ep.len(), 2, "{ep:?}");
                assert!(
                    ep[0].starts_with("socket transparent 1 ")
                        && ep[0].ends_with(" notrack accept")
                );
                assert_eq!(ep[1], "accept");
                let syn = chain(&text, &format!("pre{f}_syn"));
                assert!(syn[0].contains(&format!("@lbsr{f} ")) && syn[0].ends_with(" drop"));
                let udp = chain(&text, &format!("pre{f}_udp"));
                assert!(udp[1].ends_with(&format!("!= @kmoved{f} accept")));
                assert!(udp[2].ends_with("!= @kmovednp accept"));
                assert!(udp[3].starts_with("socket transparent 1"));
                assert!(udp[4].ends_with(&format!("@kvip{f} accept")));
                assert!(!udp.iter().any(|r| r.contains("@kep")));
                assert_eq!(udp[6], format!("goto pre{f}_front_udp"));
            }
            let sockets = text.matches("socket transparent 1").count();
            // Base chain (other protocols) + per family: tcp, ep, syn, udp.
            assert_eq!(sockets, 9);
            for line in text.lines().filter(|l| l.contains("fib daddr")) {
                let fib = line.find("fib daddr").expect("fib");
                let lookup = line.find(" @").expect("a set lookup on a fib rule");
                assert!(lookup < fib, "fib before the set lookup: {line}");
            }
        }
    }

    #[test]
    fn node_port_addresses_restrict_node_ports() {
        let cfg = InterceptConfig {
            node_port_addresses: vec![crate::config::NodePortAddress::Primary],
            ..InterceptConfig::default()
        };
        let text = render(&cfg, 15001, &Elements::default(), true);
        assert!(text.contains(
            "meta l4proto . th dport @nodeport fib daddr type local ip daddr @nodeaddr4 "
        ));
        assert!(text.contains(
            "meta nfproto ipv6 meta l4proto . th dport @nodeport_noep fib daddr type local ip6 daddr @nodeaddr6 goto"
        ));
        assert!(!text.contains("meta nfproto ipv4 fib daddr type local"));
    }
}
