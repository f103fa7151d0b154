//! The kernel datapath's part of our nftables table: fixed maps, sets and
//! chains. A Service change only ever changes their elements
//! (`elements.rs`); the rules never change after the table is installed.
//!
//! A kernel-path frontend is looked up in a verdict map that jumps to the
//! chain of its slot key and slot count; that chain DNATs to the endpoint
//! in slot `(frontend, hash-or-counter mod slots)` of one map. Like
//! kube-proxy's nftables mode, the DNAT happens in the NAT hooks (after
//! conntrack), so an established flow keeps its endpoint whatever the
//! tables do next, and only new flows consult them.

use crate::config::InterceptConfig;
use crate::policy::SlotKey;

/// The slot counts the kernel datapath has chains for (`table::slot_count`
/// for up to 1024 endpoints); a table of another size stays on the proxy.
pub const SLOT_COUNTS: [usize; 7] = [67, 131, 257, 521, 1031, 2053, 4099];

/// Periods the kernel datapath has chains for: a table that repeats its
/// first `p ≤ MAX_PERIOD` slots (round robin and random over up to 64
/// endpoints) is installed as those `p` slots, picked `mod p`
/// (`elements.rs`), not as one element per slot. 256 more one-rule chains
/// per family cost `nft -f` ~30 ms once at start; they save ~57 of 67
/// elements per frontend of ten endpoints.
pub const MAX_PERIOD: usize = 64;

/// Every slot-map size a chain exists for: the periods, then the table
/// sizes.
pub fn chain_sizes() -> impl Iterator<Item = usize> {
    (1..=MAX_PERIOD).chain(SLOT_COUNTS)
}

/// The packet-mark bit that asks postrouting to masquerade (kube-proxy's).
pub const MASQUERADE_MARK: u32 = 0x4000;

pub const KEYS: [SlotKey; 4] = [
    SlotKey::Random,
    SlotKey::Sequence,
    SlotKey::FiveTuple,
    SlotKey::ClientAddress,
];

/// A short name for chain names.
pub fn key_tag(key: SlotKey) -> &'static str {
    match key {
        SlotKey::Random => "rand",
        SlotKey::Sequence => "seq",
        SlotKey::FiveTuple => "5t",
        SlotKey::ClientAddress => "client",
    }
}

/// The chain a frontend's verdict-map element jumps to.
pub fn dnat_chain(node_port: bool, v6: bool, key: SlotKey, slots: usize) -> String {
    let kind = if node_port { "kn" } else { "kd" };
    let fam = if v6 { 6 } else { 4 };
    format!("{kind}{fam}_{}_{slots}", key_tag(key))
}

/// The expression that picks a slot for a new flow.
fn slot_expr(key: SlotKey, fam: &str, slots: usize) -> String {
    match key {
        SlotKey::Random => format!("numgen random mod {slots}"),
        SlotKey::Sequence => format!("numgen inc mod {slots}"),
        // The rest of the 5-tuple is the frontend, which the slot map is
        // keyed by already (and IPv6 would run out of registers).
        SlotKey::FiveTuple => format!("jhash {fam} saddr . th sport mod {slots}"),
        SlotKey::ClientAddress => format!("jhash {fam} saddr mod {slots}"),
    }
}

/// The chain `kernel_prerouting` sends a new flow to when `kernel_dnat`
/// did not translate it: a flow the raw prerouting chain let through to
/// conntrack as a kernel-path flow (its frontend in `kvip`) while the
/// sync that took the frontend off the kernel path committed before this
/// hook saw it. Left alone, the SYN went on untranslated to the default
/// route, the client waited for a retransmit, and worse, conntrack kept
/// the untranslated entry (SYN_SENT, refreshed by every SYN of the same
/// ports): each later connection from that client port to the frontend
/// went out untranslated too, on the kernel path as well, until the
/// client port moved on (the scale bench's 0.5 s probe timeouts at a 1 →
/// 0 change, several on one port: bench/results/2026-12-06-s10-hang.md).
/// Here such a flow gets the raw chain's answer of now where that ends
/// its packet: refused if the frontend has no endpoints. A frontend that
/// moved to the proxy with endpoints is dropped, not diverted: TPROXY here
/// would leave a tracked entry of the same kind (`notrack` comes too late
/// after conntrack); the SYN the client sends again meets the raw chain's
/// TPROXY. Dropped or refused, the entry is never confirmed. A flow to no
/// frontend of ours passes untouched. Only a flow's first packet meets a
/// NAT chain: nothing per packet.
pub const FALLBACK_CHAIN: &str = "kernel_untranslated";

fn fallback_chain(node_port: &dyn Fn(&str, &str) -> String) -> Vec<String> {
    let mut lines = vec![format!("  chain {FALLBACK_CHAIN} {{")];
    for (f, fam) in [(4, "ip"), (6, "ip6")] {
        lines.push(format!(
            "    {fam} daddr . meta l4proto . th dport @noep{f} goto reject_no_endpoints"
        ));
        lines.push(format!(
            "    {} goto reject_no_endpoints",
            node_port(fam, "@nodeport_noep")
        ));
    }
    for (f, fam) in [(4, "ip"), (6, "ip6")] {
        lines.push(format!(
            "    {fam} daddr . meta l4proto . th dport @vip{f} drop"
        ));
        lines.push(format!("    {} drop", node_port(fam, "@nodeport")));
    }
    lines.push("  }".into());
    lines
}

/// Sets keyed `address . l4proto . port` (frontends, endpoints), each
/// `name` in both families (`name4`, `name6`), with `flags` if any.
pub fn addr_port_sets(names: &[&str], flags: Option<&str>) -> Vec<String> {
    let flags = flags.map_or(String::new(), |f| format!("\n    flags {f}"));
    let mut out = Vec::new();
    for (f, addr) in [(4, "ipv4_addr"), (6, "ipv6_addr")] {
        for name in names {
            out.push(format!(
                "  set {name}{f} {{\n    type {addr} . inet_proto . inet_service{flags}\n  }}"
            ));
        }
    }
    out
}

/// The maps, sets and chains, as lines inside `table inet <t> { ... }`.
/// `node_port(fam, "@set")` is the ruleset's NodePort match: family, port
/// lookup in the set (or map), local destination.
pub fn render(cfg: &InterceptConfig, node_port: &dyn Fn(&str, &str) -> String) -> Vec<String> {
    let mut lines = Vec::new();
    for (v6, fam, addr) in [(false, "ip", "ipv4_addr"), (true, "ip6", "ipv6_addr")] {
        let f = if v6 { 6 } else { 4 };
        lines.push(format!(
            "  map kfront{f} {{\n    type {addr} . inet_proto . inet_service : verdict\n  }}"
        ));
        lines.push(format!(
            "  map knp{f} {{\n    type inet_proto . inet_service : verdict\n  }}"
        ));
        lines.push(format!(
            "  map kslot{f} {{\n    typeof {fam} daddr . meta l4proto . th dport . numgen inc mod 2 : {fam} daddr . th dport\n  }}"
        ));
        lines.push(format!(
            "  map knpslot{f} {{\n    typeof meta l4proto . th dport . numgen inc mod 2 : {fam} daddr . th dport\n  }}"
        ));
        lines.push(format!(
            "  set kmasq{f} {{\n    type {addr} . inet_proto . inet_service\n  }}"
        ));
        lines.push(format!(
            "  set knpmasq{f} {{\n    type inet_proto . inet_service\n  }}"
        ));
        lines.push(format!(
            "  set khairpin{f} {{\n    type {addr} . {addr}\n  }}"
        ));
        // Frontends that left the kernel path: their established flows
        // stay with conntrack (see ruleset.rs). Elements expire by
        // themselves and are never deleted.
        lines.push(format!(
            "  set kdrain{f} {{\n    type {addr} . inet_proto . inet_service\n    flags timeout\n  }}"
        ));
        // Frontends that came from the proxy path: their proxied
        // connections still need the socket rule (see ruleset.rs). Same
        // rule for elements: they expire, and are never deleted.
        lines.push(format!(
            "  set kmoved{f} {{\n    type {addr} . inet_proto . inet_service\n    flags timeout\n  }}"
        ));
        if !v6 {
            lines.push(
                "  set kdrainnp {\n    type inet_proto . inet_service\n    flags timeout\n  }"
                    .into(),
            );
            lines.push(
                "  set kmovednp {\n    type inet_proto . inet_service\n    flags timeout\n  }"
                    .into(),
            );
        }
        for key in KEYS {
            for slots in chain_sizes() {
                let pick = slot_expr(key, fam, slots);
                lines.push(format!(
                    "  chain {} {{\n    dnat {fam} to {fam} daddr . meta l4proto . th dport . {pick} map @kslot{f}\n  }}",
                    dnat_chain(false, v6, key, slots)
                ));
                lines.push(format!(
                    "  chain {} {{\n    dnat {fam} to meta l4proto . th dport . {pick} map @knpslot{f}\n  }}",
                    dnat_chain(true, v6, key, slots)
                ));
            }
        }
    }
    lines.extend(super::gate::set_definitions());
    lines.extend(super::fast::set_definitions());
    lines.extend(super::replies::set_definitions());
    // New flows only: the NAT hooks see the first packet of a connection.
    let masq = format!("meta mark set meta mark | 0x{MASQUERADE_MARK:x}");
    lines.push("  chain kernel_dnat {".into());
    for (f, fam) in [(4, "ip"), (6, "ip6")] {
        lines.push(format!(
            "    {fam} daddr . meta l4proto . th dport @kmasq{f} {masq}"
        ));
        // Only a kernel frontend (`kvip`): the verdict maps keep the
        // elements of frontends that left the kernel path
        // (`verdicts.rs`).
        lines.push(format!(
            "    {fam} daddr . meta l4proto . th dport @kvip{f} {fam} daddr . meta l4proto . th dport vmap @kfront{f}"
        ));
        // The map doubles as a set: only a new flow to a NodePort pays
        // the `fib` lookup.
        lines.push(format!(
            "    {} {masq}",
            node_port(fam, &format!("@knpmasq{f}"))
        ));
        lines.push(format!(
            "    {} meta l4proto . th dport vmap @knp{f}",
            node_port(fam, &format!("@knode{f}"))
        ));
    }
    lines.push("  }".into());
    lines.push("  chain kernel_prerouting {".into());
    lines.push("    type nat hook prerouting priority dstnat; policy accept;".into());
    lines.push("    jump kernel_dnat".into());
    lines.push(format!("    goto {FALLBACK_CHAIN}"));
    lines.push("  }".into());
    lines.extend(fallback_chain(node_port));
    lines.push("  chain kernel_output {\n    type nat hook output priority -100; policy accept;\n    jump kernel_dnat\n  }".into());
    // Masquerade only where kube-proxy does: flows marked above (external
    // frontends with externalTrafficPolicy Cluster) and hairpin (a Pod
    // reaching itself through its Service).
    let _ = cfg;
    lines.push(format!(
        "  chain kernel_postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    meta mark & 0x{m:x} == 0x{m:x} ct status dnat meta mark set meta mark & 0x{keep:x} masquerade\n    ct status dnat ip saddr . ip daddr @khairpin4 masquerade\n    ct status dnat ip6 saddr . ip6 daddr @khairpin6 masquerade\n  }}",
        m = MASQUERADE_MARK,
        keep = !MASQUERADE_MARK
    ));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_cover_every_key_and_slot_count_in_both_families() {
        let text = render(&InterceptConfig::default(), &|fam, set| {
            format!("meta nfproto {fam} meta l4proto . th dport {set} fib daddr type local")
        })
        .join("\n");
        for key in KEYS {
            for slots in chain_sizes() {
                for v6 in [false, true] {
                    for np in [false, true] {
                        assert!(
                            text.contains(&format!("chain {} {{", dnat_chain(np, v6, key, slots)))
                        );
                    }
                }
            }
        }
        assert!(text.contains(
            "dnat ip to ip daddr . meta l4proto . th dport . numgen inc mod 257 map @kslot4"
        ));
        assert!(text.contains(
            "dnat ip6 to meta l4proto . th dport . jhash ip6 saddr mod 4099 map @knpslot6"
        ));
        assert!(text.contains(
            "dnat ip to ip daddr . meta l4proto . th dport . numgen inc mod 3 map @kslot4"
        ));
        assert!(text.contains(
            "dnat ip6 to ip6 daddr . meta l4proto . th dport . jhash ip6 saddr . th sport mod 64 map @kslot6"
        ));
        assert!(
            text.contains("dnat ip to meta l4proto . th dport . numgen random mod 1 map @knpslot4")
        );
        assert!(!text.contains("mod 65 "));
        assert!(text.contains("type nat hook prerouting priority dstnat"));
        assert!(text.contains(
            "meta nfproto ip meta l4proto . th dport @knode4 fib daddr type local meta l4proto . th dport vmap @knp4"
        ));
        assert!(text.contains("ct status dnat ip saddr . ip daddr @khairpin4 masquerade"));
        assert!(text.contains(
            "ip6 daddr . meta l4proto . th dport @kvip6 ip6 daddr . meta l4proto . th dport vmap @kfront6"
        ));
    }

    /// A new flow the raw chain sent to the kernel path that the NAT
    /// chain did not translate (its frontend left the kernel path between
    /// the two hooks) is refused if its frontend has no endpoints, dropped
    /// if it is the proxy's now (never diverted from here: the entry would
    /// stay), and left alone otherwise; the output hook has no such
    /// fallback.
    #[test]
    fn an_untranslated_new_flow_is_refused_or_dropped_never_diverted() {
        let text = crate::intercept::ruleset::render(
            &InterceptConfig::default(),
            15001,
            &crate::intercept::Elements::default(),
            true,
        );
        let chain = |name: &str| crate::intercept::ruleset::chain(&text, name);
        assert_eq!(
            chain("kernel_prerouting"),
            [
                "type nat hook prerouting priority dstnat; policy accept;",
                "jump kernel_dnat",
                "goto kernel_untranslated",
            ]
        );
        assert_eq!(chain("kernel_output")[1..], ["jump kernel_dnat"]);
        let fallback = chain(FALLBACK_CHAIN);
        assert_eq!(fallback.len(), 8, "{fallback:?}");
        for rule in &fallback[..4] {
            assert!(rule.ends_with(" goto reject_no_endpoints"), "{rule}");
            assert!(rule.contains("@noep") || rule.contains("@nodeport_noep fib daddr type local"));
        }
        for rule in &fallback[4..] {
            assert!(rule.ends_with(" drop"), "{rule}");
            assert!(rule.contains("@vip") || rule.contains("@nodeport fib daddr type local"));
        }
        assert!(!fallback.iter().any(|r| r.contains("tproxy")));
    }
}
