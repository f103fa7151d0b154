//! The whole `inet <table>` ruleset, rendered as one `nft -f` batch that
//! atomically replaces whatever stale copy of our table exists. Rules are
//! fixed; Services only ever change set elements.

use std::fmt::Write;

use super::elements::Elements;
use crate::config::InterceptConfig;

/// Renders the batch: create-if-missing, delete, recreate with elements.
/// nft applies a batch atomically, so traffic never sees an empty table.
pub fn render(cfg: &InterceptConfig, listen_port: u16, elements: &Elements) -> String {
    let t = &cfg.table;
    let divert = format!("0x{:x}", cfg.divert_mark);
    let bypass = format!("0x{:x}", cfg.bypass_mark);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "table inet {t} {{}}\ndelete table inet {t}\ntable inet {t} {{"
    );
    for (set, ty) in [
        ("vip4", "ipv4_addr . inet_proto . inet_service"),
        ("vip6", "ipv6_addr . inet_proto . inet_service"),
        ("noep4", "ipv4_addr . inet_proto . inet_service"),
        ("noep6", "ipv6_addr . inet_proto . inet_service"),
        ("nodeport", "inet_proto . inet_service"),
        ("nodeport_noep", "inet_proto . inet_service"),
    ] {
        let _ = writeln!(s, "  set {set} {{\n    type {ty}\n  }}");
    }
    // Pod and external traffic: TPROXY to the local listeners. The divert
    // mark makes the fwmark rule route the packet to `lo`, i.e. deliver it
    // locally even though no interface owns the VIP.
    let _ = writeln!(
        s,
        "  chain prerouting {{\n    type filter hook prerouting priority mangle; policy accept;"
    );
    let _ = writeln!(
        s,
        "    ip daddr . meta l4proto . th dport @noep4 goto reject_no_endpoints"
    );
    let _ = writeln!(
        s,
        "    ip6 daddr . meta l4proto . th dport @noep6 goto reject_no_endpoints"
    );
    let _ = writeln!(
        s,
        "    fib daddr type local meta l4proto . th dport @nodeport_noep goto reject_no_endpoints"
    );
    for proto in ["tcp", "udp"] {
        for (fam, set) in [("ip", "vip4"), ("ip6", "vip6")] {
            let _ = writeln!(
                s,
                "    meta l4proto {proto} {fam} daddr . meta l4proto . th dport @{set} meta mark set meta mark | {divert} tproxy {fam} to :{listen_port} accept"
            );
        }
        for (nfproto, fam) in [("ipv4", "ip"), ("ipv6", "ip6")] {
            let _ = writeln!(
                s,
                "    meta nfproto {nfproto} meta l4proto {proto} fib daddr type local meta l4proto . th dport @nodeport meta mark set meta mark | {divert} tproxy {fam} to :{listen_port} accept"
            );
        }
    }
    let _ = writeln!(s, "  }}");
    // The node's own processes: TPROXY works only in prerouting, so mark the
    // packet here; the fwmark rule routes it through `lo`, where prerouting
    // diverts it. Our own upstream sockets carry the bypass mark.
    let _ = writeln!(
        s,
        "  chain output {{\n    type route hook output priority mangle; policy accept;"
    );
    let _ = writeln!(s, "    meta mark & {bypass} != 0 return");
    let _ = writeln!(
        s,
        "    ip daddr . meta l4proto . th dport @noep4 goto reject_no_endpoints"
    );
    let _ = writeln!(
        s,
        "    ip6 daddr . meta l4proto . th dport @noep6 goto reject_no_endpoints"
    );
    let _ = writeln!(
        s,
        "    fib daddr type local meta l4proto . th dport @nodeport_noep goto reject_no_endpoints"
    );
    let _ = writeln!(
        s,
        "    ip daddr . meta l4proto . th dport @vip4 meta mark set meta mark | {divert}"
    );
    let _ = writeln!(
        s,
        "    ip6 daddr . meta l4proto . th dport @vip6 meta mark set meta mark | {divert}"
    );
    let _ = writeln!(
        s,
        "    fib daddr type local meta l4proto . th dport @nodeport meta mark set meta mark | {divert}"
    );
    let _ = writeln!(s, "  }}");
    // kube-proxy answers a Service port without endpoints at once instead
    // of letting the client time out.
    let _ = writeln!(
        s,
        "  chain reject_no_endpoints {{\n    meta l4proto tcp reject with tcp reset\n    reject\n  }}\n}}"
    );
    s.push_str(&elements.diff_commands(&Elements::default(), t));
    s
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
    }
}
