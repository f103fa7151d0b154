//! Replies of transparent connections on a flat bridge. When Pods share one
//! subnet on a Linux bridge, a backend answers a same-node client (whose
//! address our upstream connection borrowed) straight over layer 2, and the
//! reply would never reach our socket. A `bridge`-family table of ours
//! rewrites the destination MAC of frames *from* endpoints to the bridge's
//! own, so they go up to the node's IP layer, where prerouting hands them to
//! the transparent socket; frames of other conversations that match are
//! routed back onto the bridge by the node as before.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::IpAddr;

use super::netlink::{Batch, Element, Family, Verb, key};
use crate::catalog::Protocol;

/// A Linux bridge in our network namespace: its MAC and the subnets of its
/// addresses (the kernel here has no `meta ibrname` in the bridge family,
/// so a frame's destination subnet tells which bridge it crosses).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bridge {
    pub name: String,
    pub mac: String,
    pub nets: Vec<(IpAddr, u8)>,
}

/// An endpoint's address, protocol and port.
pub type EndpointKey = (IpAddr, Protocol, u16);

/// The bridges of this network namespace (those with /sys/class/net/X/bridge).
pub fn bridges() -> Vec<Bridge> {
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    let addresses = crate::netif::addresses();
    let mut out: Vec<Bridge> = entries
        .flatten()
        .filter(|e| e.path().join("bridge").is_dir())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let mac = std::fs::read_to_string(e.path().join("address"))
                .ok()?
                .trim()
                .to_owned();
            let safe = name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            let mac_ok = mac.len() == 17 && mac.chars().all(|c| c.is_ascii_hexdigit() || c == ':');
            if !(safe && mac_ok) {
                return None;
            }
            let nets = subnets(&addresses, &name);
            (!nets.is_empty()).then_some(Bridge { name, mac, nets })
        })
        .collect();
    out.sort();
    out
}

/// The subnets of a device's global addresses.
fn subnets(addresses: &[crate::netif::IfAddr], dev: &str) -> Vec<(IpAddr, u8)> {
    let mut nets: Vec<(IpAddr, u8)> = addresses
        .iter()
        .filter(|a| a.interface == dev)
        .filter(|a| match a.ip {
            IpAddr::V4(v4) => !v4.is_link_local(),
            IpAddr::V6(v6) => !v6.is_unicast_link_local(),
        })
        .filter_map(|a| network(a.ip, a.prefix))
        .collect();
    nets.sort();
    nets.dedup();
    nets
}

/// `ip/prefix` with the host bits cleared.
fn network(ip: IpAddr, prefix: u8) -> Option<(IpAddr, u8)> {
    match ip {
        IpAddr::V4(v4) if prefix <= 32 => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            Some((IpAddr::from((u32::from(v4) & mask).to_be_bytes()), prefix))
        }
        IpAddr::V6(v6) if prefix <= 128 => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix)
            };
            Some((IpAddr::from((u128::from(v6) & mask).to_be_bytes()), prefix))
        }
        _ => None,
    }
}

fn element((ip, proto, port): &EndpointKey) -> String {
    format!("{ip} . {} . {port}", proto.nft_name())
}

fn emit(out: &mut String, verb: &str, table: &str, keys: &[&EndpointKey]) {
    for (set, v6) in [("ep4", false), ("ep6", true)] {
        let items: Vec<String> = keys
            .iter()
            .filter(|k| k.0.is_ipv6() == v6)
            .map(|k| element(k))
            .collect();
        if !items.is_empty() {
            let _ = writeln!(
                out,
                "{verb} element bridge {table} {set} {{ {} }}",
                items.join(", ")
            );
        }
    }
}

/// The whole table, replacing any stale copy atomically.
pub fn render(table: &str, bridges: &[Bridge], endpoints: &BTreeSet<EndpointKey>) -> String {
    let mut s = format!(
        "table bridge {table} {{}}\ndelete table bridge {table}\ntable bridge {table} {{\n"
    );
    s.push_str("  set ep4 {\n    type ipv4_addr . inet_proto . inet_service\n  }\n");
    s.push_str("  set ep6 {\n    type ipv6_addr . inet_proto . inet_service\n  }\n");
    s.push_str(
        "  chain prerouting {\n    type filter hook prerouting priority -300; policy accept;\n",
    );
    // A frame already addressed to a bridge goes up to the node's IP layer
    // anyway (the bridge set PACKET_HOST before this hook): Pods routed
    // through the node (per-Pod /32 behind a gateway on the bridge) send
    // every frame so. It leaves after one comparison, and unwritten (the
    // rewrite below copies a cloned frame's header).
    let macs: BTreeSet<&str> = bridges.iter().map(|b| b.mac.as_str()).collect();
    if !macs.is_empty() {
        let macs: Vec<&str> = macs.into_iter().collect();
        let _ = writeln!(s, "    ether daddr {{ {} }} accept", macs.join(", "));
    }
    for b in bridges {
        for (net, prefix) in &b.nets {
            let (ty, fam, set) = if net.is_ipv4() {
                ("ip", "ip", "ep4")
            } else {
                ("ip6", "ip6", "ep6")
            };
            let _ = writeln!(
                s,
                "    ether type {ty} {fam} daddr {net}/{prefix} {fam} saddr . meta l4proto . th sport @{set} ether daddr set {} meta pkttype set host comment \"{}\"",
                b.mac, b.name
            );
        }
    }
    s.push_str("  }\n}\n");
    let all: Vec<&EndpointKey> = endpoints.iter().collect();
    emit(&mut s, "add", table, &all);
    s
}

/// Element changes, deletions first so a batch never holds a key twice.
pub fn diff_batch(table: &str, removed: &[EndpointKey], added: &[EndpointKey]) -> Batch {
    let mut out = Batch::default();
    for (verb, keys) in [(Verb::Delete, removed), (Verb::Add, added)] {
        for k in keys {
            let set = if k.0.is_ipv4() { "ep4" } else { "ep6" };
            let el = Element::key(key::addr_proto_port(k.0, k.1, k.2), element(k));
            out.push(verb, Family::Bridge, table, set, el);
        }
    }
    out
}

/// Removes the table (absent is fine: the batch creates it first).
pub fn remove(table: &str) -> String {
    format!("table bridge {table} {{}}\ndelete table bridge {table}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_rule_per_bridge_and_family() {
        let net = network("10.244.1.1".parse().expect("ip"), 24).expect("net");
        assert_eq!(net, ("10.244.1.0".parse().expect("ip"), 24));
        let b = [Bridge {
            name: "br0".into(),
            mac: "02:00:0a:f4:01:01".into(),
            nets: vec![net],
        }];
        let eps = BTreeSet::from([("10.244.1.11".parse().expect("ip"), Protocol::Tcp, 8080)]);
        let text = render("switchyard", &b, &eps);
        assert!(text.contains(
            "policy accept;\n    ether daddr { 02:00:0a:f4:01:01 } accept\n    ether type ip "
        ));
        assert!(text.contains("ether type ip ip daddr 10.244.1.0/24 ip saddr . meta l4proto . th sport @ep4 ether daddr set 02:00:0a:f4:01:01 meta pkttype set host comment \"br0\""), "{text}");
        assert!(text.ends_with("add element bridge switchyard ep4 { 10.244.1.11 . tcp . 8080 }\n"));
        let gone: Vec<EndpointKey> = eps.iter().copied().collect();
        let batch = diff_batch("switchyard", &gone, &[]);
        assert_eq!(batch.len(), 1);
        assert_eq!(
            batch.changes[0].to_string(),
            "delete element bridge switchyard ep4 { 10.244.1.11 . tcp . 8080 }"
        );
    }
}
