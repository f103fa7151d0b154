//! `loadBalancerSourceRanges`, as kube-proxy enforces them: a packet to a
//! restricted LoadBalancer ingress frontend from a source outside its
//! ranges is dropped (no answer) in prerouting, before any diversion to the
//! proxy. ClusterIPs, externalIPs and NodePorts of the Service stay open.
//!
//! Two sets per family: `lbsr4` holds the restricted frontends
//! (`daddr . l4proto . dport`), `lbsr_allow4` the allowed sources per
//! frontend (`daddr . l4proto . dport . saddr`, an interval set). A changed
//! range list is an element update like any other Service change.
//!
//! The same rules run first in prerouting (Pods, external clients) and in
//! output (the node's own processes), as kube-proxy filters both.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::IpAddr;

use super::netlink::{Batch, Element, Family, Verb, key};
use crate::catalog::{Frontend, Protocol, ServiceTable};

/// A restricted frontend.
type Restricted = (IpAddr, Protocol, u16);
/// A frontend and one allowed source prefix.
type Allowed = (IpAddr, Protocol, u16, IpAddr, u8);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceRanges {
    pub restricted: BTreeSet<Restricted>,
    pub allowed: BTreeSet<Allowed>,
}

impl SourceRanges {
    pub fn from_table(table: &ServiceTable) -> Self {
        let mut out = SourceRanges::default();
        for (f, ranges) in &table.source_ranges {
            out.restricted.insert((f.ip, f.protocol, f.port));
            for &(net, len) in ranges.iter() {
                out.allowed.insert((f.ip, f.protocol, f.port, net, len));
            }
        }
        out
    }

    /// The ranges `table` has for `frontends` only.
    pub fn of(table: &ServiceTable, frontends: &[Frontend]) -> Self {
        let mut out = SourceRanges::default();
        for f in frontends {
            if let Some(ranges) = table.source_ranges.get(f) {
                out.restricted.insert((f.ip, f.protocol, f.port));
                for &(net, len) in ranges.iter() {
                    out.allowed.insert((f.ip, f.protocol, f.port, net, len));
                }
            }
        }
        out
    }

    /// What `self` holds for `frontends` only.
    pub fn restricted_to(&self, frontends: &[Frontend]) -> Self {
        let mut out = SourceRanges::default();
        for f in frontends {
            let r = (f.ip, f.protocol, f.port);
            if self.restricted.contains(&r) {
                out.restricted.insert(r);
            }
            let lowest = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
            let highest = IpAddr::V6(std::net::Ipv6Addr::from(u128::MAX));
            out.allowed.extend(self.allowed.range(
                (f.ip, f.protocol, f.port, lowest, 0)
                    ..=(f.ip, f.protocol, f.port, highest, u8::MAX),
            ));
        }
        out
    }

    /// The elements of `self` that `other` has not.
    pub fn minus(&self, other: &SourceRanges) -> Self {
        SourceRanges {
            restricted: self
                .restricted
                .difference(&other.restricted)
                .copied()
                .collect(),
            allowed: self.allowed.difference(&other.allowed).copied().collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.restricted.len() + self.allowed.len()
    }

    /// Deletions of what `old` had and `self` has not.
    pub fn emit_deletions(&self, old: &SourceRanges, table: &str, out: &mut String) {
        let gone: Vec<Allowed> = old.allowed.difference(&self.allowed).copied().collect();
        emit(out, "delete", table, "lbsr_allow", &gone, allowed_element);
        let gone: Vec<Restricted> = old
            .restricted
            .difference(&self.restricted)
            .copied()
            .collect();
        emit(out, "delete", table, "lbsr", &gone, restricted_element);
    }

    /// Additions of what `self` has and `old` had not; the allowed sources
    /// go first, so a frontend is never restricted without them.
    pub fn emit_additions(&self, old: &SourceRanges, table: &str, out: &mut String) {
        let new: Vec<Allowed> = self.allowed.difference(&old.allowed).copied().collect();
        emit(out, "add", table, "lbsr_allow", &new, allowed_element);
        let new: Vec<Restricted> = self
            .restricted
            .difference(&old.restricted)
            .copied()
            .collect();
        emit(out, "add", table, "lbsr", &new, restricted_element);
    }
}

impl SourceRanges {
    /// Deletions of `emit_deletions`, as netlink changes.
    pub fn deletions_batch(&self, old: &SourceRanges, table: &str) -> Batch {
        let mut out = Batch::default();
        for a in old.allowed.difference(&self.allowed) {
            push_allowed(&mut out, Verb::Delete, table, a);
        }
        for r in old.restricted.difference(&self.restricted) {
            push_restricted(&mut out, Verb::Delete, table, r);
        }
        out
    }

    /// Additions of `emit_additions`, as netlink changes (the allowed
    /// sources first).
    pub fn additions_batch(&self, old: &SourceRanges, table: &str) -> Batch {
        let mut out = Batch::default();
        for a in self.allowed.difference(&old.allowed) {
            push_allowed(&mut out, Verb::Add, table, a);
        }
        for r in self.restricted.difference(&old.restricted) {
            push_restricted(&mut out, Verb::Add, table, r);
        }
        out
    }
}

fn family_set(set: &str, ip: IpAddr) -> String {
    format!("{set}{}", if ip.is_ipv6() { "6" } else { "4" })
}

fn push_restricted(out: &mut Batch, verb: Verb, table: &str, r: &Restricted) {
    let el = Element::key(key::addr_proto_port(r.0, r.1, r.2), restricted_element(r));
    out.push(verb, Family::Inet, table, &family_set("lbsr", r.0), el);
}

/// A prefix in a concatenated interval set is one element: the first and
/// the last address (inclusive) of the prefix, as key and key_end.
fn push_allowed(out: &mut Batch, verb: Verb, table: &str, a: &Allowed) {
    let &(ip, proto, port, net, len) = a;
    let first = crate::config::network(net, len);
    let last = key::last_of_prefix(first, len);
    let with = |src: IpAddr| {
        key::concat(&[
            &key::ip(ip),
            &[key::proto(proto)],
            &port.to_be_bytes(),
            &key::ip(src),
        ])
    };
    let el = Element::key(with(first), allowed_element(a)).with_key_end(with(last));
    out.push(verb, Family::Inet, table, &family_set("lbsr_allow", ip), el);
}

/// The set definitions, in `ruleset.rs`'s layout.
pub fn set_definitions() -> Vec<String> {
    let mut out = Vec::new();
    for (fam, addr) in [("4", "ipv4_addr"), ("6", "ipv6_addr")] {
        out.push(format!(
            "  set lbsr{fam} {{\n    type {addr} . inet_proto . inet_service\n  }}"
        ));
        out.push(format!(
            "  set lbsr_allow{fam} {{\n    type {addr} . inet_proto . inet_service . {addr}\n    flags interval\n  }}"
        ));
    }
    out
}

/// The rules for prerouting and output, each after `when` (output's
/// `ct state new `: kube-proxy checks new connections only; prerouting
/// runs before conntrack and puts them in the SYN's chain instead). They
/// come first, so that nothing is diverted, rejected or delivered to a
/// socket of ours for a source out of range.
pub fn rules(when: &str) -> Vec<String> {
    ["ip", "ip6"]
        .into_iter()
        .map(|fam| rule(fam, when))
        .collect()
}

/// The rule of one family (`ip` or `ip6`).
pub fn rule(fam: &str, when: &str) -> String {
    let n = if fam == "ip" { 4 } else { 6 };
    format!(
        "    {when}{fam} daddr . meta l4proto . th dport @lbsr{n} {fam} daddr . meta l4proto . th dport . {fam} saddr != @lbsr_allow{n} drop"
    )
}

fn restricted_element((ip, proto, port): &Restricted) -> String {
    format!("{ip} . {} . {port}", proto.nft_name())
}

fn allowed_element((ip, proto, port, net, len): &Allowed) -> String {
    format!("{ip} . {} . {port} . {net}/{len}", proto.nft_name())
}

fn emit<K: FirstIp>(
    out: &mut String,
    verb: &str,
    table: &str,
    set: &str,
    keys: &[K],
    element: impl Fn(&K) -> String,
) {
    for (suffix, v6) in [("4", false), ("6", true)] {
        let items: Vec<String> = keys
            .iter()
            .filter(|k| k.first_ip().is_ipv6() == v6)
            .map(&element)
            .collect();
        if !items.is_empty() {
            let _ = writeln!(
                out,
                "{verb} element inet {table} {set}{suffix} {{ {} }}",
                items.join(", ")
            );
        }
    }
}

/// The frontend address of an element, which decides its family.
trait FirstIp {
    fn first_ip(&self) -> IpAddr;
}

impl FirstIp for Restricted {
    fn first_ip(&self) -> IpAddr {
        self.0
    }
}

impl FirstIp for Allowed {
    fn first_ip(&self) -> IpAddr {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    #[test]
    fn a_range_change_is_an_element_update() {
        let mut old = SourceRanges::default();
        old.restricted
            .insert((ip("198.51.100.7"), Protocol::Tcp, 80));
        old.allowed
            .insert((ip("198.51.100.7"), Protocol::Tcp, 80, ip("192.0.2.0"), 24));
        let mut new = old.clone();
        new.allowed.clear();
        new.allowed
            .insert((ip("198.51.100.7"), Protocol::Tcp, 80, ip("203.0.113.0"), 24));
        new.restricted
            .insert((ip("2001:db8::7"), Protocol::Tcp, 80));
        let mut out = String::new();
        new.emit_deletions(&old, "sy", &mut out);
        new.emit_additions(&old, "sy", &mut out);
        assert_eq!(
            out,
            "delete element inet sy lbsr_allow4 { 198.51.100.7 . tcp . 80 . 192.0.2.0/24 }\n\
             add element inet sy lbsr_allow4 { 198.51.100.7 . tcp . 80 . 203.0.113.0/24 }\n\
             add element inet sy lbsr6 { 2001:db8::7 . tcp . 80 }\n"
        );
    }
}
