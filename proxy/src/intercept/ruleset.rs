//! The whole `inet <table>` ruleset, rendered as one `nft -f` batch that
//! atomically replaces whatever stale copy of our table exists. Rules are
//! fixed; Services only ever change set elements.

use super::elements::Elements;
use crate::config::InterceptConfig;

/// Renders the batch: create-if-missing, delete, recreate with elements.
/// nft applies a batch atomically, so traffic never sees an empty table.
pub fn render(cfg: &InterceptConfig, listen_port: u16, elements: &Elements) -> String {
    let t = &cfg.table;
    let divert = format!("meta mark set meta mark | 0x{:x}", cfg.divert_mark);
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
    let restricted = !cfg.node_port_addresses.is_empty();
    let node_dst = |fam: &str| {
        let set = if fam == "ip" {
            "nodeaddr4"
        } else {
            "nodeaddr6"
        };
        if restricted {
            format!("fib daddr type local {fam} daddr @{set}")
        } else {
            format!("meta nfproto {} fib daddr type local", nfproto(fam))
        }
    };
    lines.extend(super::kernel::rules::render(cfg, &node_dst));
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
                "{ct_new}{} meta l4proto . th dport @nodeport_noep goto reject_no_endpoints",
                node_dst(fam)
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
    lines.push("  chain prerouting {".into());
    lines.push("    type filter hook prerouting priority raw; policy accept;".into());
    lines.extend(super::source_ranges::prerouting_rules());
    lines.push(format!(
        "    tcp flags & (syn | ack) != syn socket transparent 1 {divert} notrack accept"
    ));
    lines.push(format!(
        "    meta l4proto != tcp socket transparent 1 {divert} notrack accept"
    ));
    // A frontend that left the kernel datapath: its established flows
    // (DNATed, in conntrack) go on past the proxy; only new ones divert.
    for (fam, f) in [("ip", 4), ("ip6", 6)] {
        lines.push(format!(
            "    tcp flags & (syn | ack) != syn {fam} daddr . meta l4proto . th dport @kdrain{f} accept"
        ));
        lines.push(format!(
            "    tcp flags & (syn | ack) != syn {} meta l4proto . th dport @kdrainnp accept",
            node_dst(fam)
        ));
    }
    lines.extend(reject("").iter().map(|r| format!("    {r}")));
    for proto in ["tcp", "udp"] {
        for (fam, set) in [("ip", "vip4"), ("ip6", "vip6")] {
            lines.push(format!(
                "    meta l4proto {proto} {fam} daddr . meta l4proto . th dport @{set} {divert} notrack tproxy {fam} to :{listen_port} accept"
            ));
        }
        for fam in ["ip", "ip6"] {
            lines.push(format!(
                "    meta l4proto {proto} {} meta l4proto . th dport @nodeport {divert} notrack tproxy {fam} to :{listen_port} accept",
                node_dst(fam)
            ));
        }
    }
    // A SYN for a socket of ours to an address that is no frontend (any
    // more): deliver it rather than let it be routed out.
    lines.push(format!("    socket transparent 1 {divert} notrack accept"));
    lines.push("  }".into());
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
    lines.extend(super::source_ranges::prerouting_rules());
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
            "    {} meta l4proto . th dport @nodeport {divert} {ct_divert}",
            node_dst(fam)
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

fn nfproto(fam: &str) -> &'static str {
    if fam == "ip" { "ipv4" } else { "ipv6" }
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
        let text = render(&InterceptConfig::default(), 15001, &elements);
        assert!(text.starts_with("table inet switchyard {}\ndelete table inet switchyard\n"));
        assert!(text.contains("tproxy ip to :15001"));
        assert!(text.contains("tproxy ip6 to :15001"));
        assert!(text.ends_with("add element inet switchyard vip4 { 10.96.0.10 . tcp . 80 }\n"));
        assert!(
            text.contains(
                "meta nfproto ipv4 fib daddr type local meta l4proto . th dport @nodeport"
            )
        );
        assert!(!text.contains("@nodeaddr4 "));
        // TPROXY sees a frontend's SYNs before any socket rule does.
        let tproxy = text.find("tproxy ip to").expect("tproxy rule");
        let syn_socket = text
            .find("\n    socket transparent 1")
            .expect("socket rule");
        assert!(tproxy < syn_socket);
        assert!(text.contains("tcp flags & (syn | ack) != syn socket transparent 1"));
    }

    #[test]
    fn node_port_addresses_restrict_node_ports() {
        let cfg = InterceptConfig {
            node_port_addresses: vec![crate::config::NodePortAddress::Primary],
            ..InterceptConfig::default()
        };
        let text = render(&cfg, 15001, &Elements::default());
        assert!(text.contains(
            "fib daddr type local ip daddr @nodeaddr4 meta l4proto . th dport @nodeport "
        ));
        assert!(text.contains(
            "fib daddr type local ip6 daddr @nodeaddr6 meta l4proto . th dport @nodeport_noep goto"
        ));
        assert!(!text.contains("meta nfproto ipv4 fib daddr type local"));
    }
}
