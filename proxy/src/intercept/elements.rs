//! The set elements that make nftables divert (or reject) exactly the
//! frontends of the service table, and the diff between two such sets.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::IpAddr;

use super::netlink::{Batch, Element, Family, Verb, key};
use crate::catalog::{Protocol, Route, ServiceTable};
use crate::config::{NodePortAddress, network};

/// One element of a `vip4`/`vip6`/`noep4`/`noep6` set.
pub type VipKey = (IpAddr, Protocol, u16);
/// One element of a `nodeport`/`nodeport_noep` set.
pub type PortKey = (Protocol, u16);
/// One prefix of a `nodeaddr4`/`nodeaddr6` interval set.
pub type Prefix = (IpAddr, u8);

/// Desired contents of every set in our table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Elements {
    /// Frontends with endpoints: diverted to the proxy.
    pub vips: BTreeSet<VipKey>,
    /// Frontends without endpoints: rejected at once, as kube-proxy does.
    pub vips_no_endpoints: BTreeSet<VipKey>,
    pub node_ports: BTreeSet<PortKey>,
    pub node_ports_no_endpoints: BTreeSet<PortKey>,
    /// The addresses NodePorts are accepted on, when
    /// `intercept.nodePortAddresses` restricts them (empty otherwise: the
    /// rules then match every local address).
    pub node_addresses: BTreeSet<Prefix>,
    /// `loadBalancerSourceRanges` (`source_ranges.rs`).
    pub source_ranges: super::source_ranges::SourceRanges,
}

impl Elements {
    pub fn from_table(table: &ServiceTable) -> Self {
        let mut out = Elements::default();
        for (frontend, route) in &table.frontends {
            let key = (frontend.ip, frontend.protocol, frontend.port);
            if rejects(route, Some(frontend.ip)) {
                out.vips_no_endpoints.insert(key);
            } else {
                out.vips.insert(key);
            }
        }
        for (&key, route) in &table.node_ports {
            if rejects(route, None) {
                out.node_ports_no_endpoints.insert(key);
            } else {
                out.node_ports.insert(key);
            }
        }
        out.source_ranges = super::source_ranges::SourceRanges::from_table(table);
        out
    }

    /// Leaves out the frontends the kernel datapath serves: they must not
    /// be diverted to the proxy (their rejects for "no endpoints" stay).
    pub fn without_kernel(mut self, plan: &super::kernel::KernelPlan) -> Self {
        for key in plan.vips.iter().filter(|(_, k)| k.fits()).map(|(k, _)| k) {
            self.vips.remove(key);
        }
        for &(_, proto, port) in plan
            .node_ports
            .iter()
            .filter(|(_, k)| k.fits())
            .map(|(k, _)| k)
        {
            self.node_ports.remove(&(proto, port));
        }
        self
    }

    /// Adds the prefixes `nodePortAddresses` stands for: its CIDRs, and the
    /// Node object's addresses for `primary`. Prefixes inside another are
    /// left out: an interval set refuses overlapping elements.
    pub fn with_node_addresses(mut self, wanted: &[NodePortAddress], table: &ServiceTable) -> Self {
        let mut prefixes: Vec<Prefix> = Vec::new();
        for entry in wanted {
            match *entry {
                NodePortAddress::Cidr(ip, len) => prefixes.push((ip, len)),
                NodePortAddress::Primary => prefixes.extend(
                    table
                        .node_addresses
                        .iter()
                        .map(|&ip| (ip, if ip.is_ipv4() { 32 } else { 128 })),
                ),
            }
        }
        // Widest first, so that a prefix only needs checking against kept ones.
        prefixes.sort_by_key(|&(ip, len)| (len, ip));
        for (ip, len) in prefixes {
            let covered = self
                .node_addresses
                .iter()
                .any(|&(net, l)| net.is_ipv4() == ip.is_ipv4() && network(ip, l) == net);
            if !covered {
                self.node_addresses.insert((ip, len));
            }
        }
        self
    }

    /// `add element` / `delete element` commands that turn `old` into
    /// `self`, deletions first so that a frontend moving between sets is
    /// never in both. Empty when nothing changed.
    pub fn diff_commands(&self, old: &Elements, table: &str) -> String {
        let mut out = String::new();
        let pairs = [
            (&old.vips, &self.vips, "vip"),
            (&old.vips_no_endpoints, &self.vips_no_endpoints, "noep"),
        ];
        for (from, to, set) in pairs {
            let gone: Vec<_> = from.difference(to).copied().collect();
            emit_vips(&mut out, "delete", table, set, &gone);
        }
        for (from, to, set) in [
            (&old.node_ports, &self.node_ports, "nodeport"),
            (
                &old.node_ports_no_endpoints,
                &self.node_ports_no_endpoints,
                "nodeport_noep",
            ),
        ] {
            let gone: Vec<_> = from.difference(to).copied().collect();
            emit_ports(&mut out, "delete", table, set, &gone);
        }
        let gone: Vec<_> = old
            .node_addresses
            .difference(&self.node_addresses)
            .copied()
            .collect();
        emit_prefixes(&mut out, "delete", table, &gone);
        self.source_ranges
            .emit_deletions(&old.source_ranges, table, &mut out);
        let new: Vec<_> = self
            .node_addresses
            .difference(&old.node_addresses)
            .copied()
            .collect();
        emit_prefixes(&mut out, "add", table, &new);
        for (from, to, set) in pairs {
            let new: Vec<_> = to.difference(from).copied().collect();
            emit_vips(&mut out, "add", table, set, &new);
        }
        for (from, to, set) in [
            (&old.node_ports, &self.node_ports, "nodeport"),
            (
                &old.node_ports_no_endpoints,
                &self.node_ports_no_endpoints,
                "nodeport_noep",
            ),
        ] {
            let new: Vec<_> = to.difference(from).copied().collect();
            emit_ports(&mut out, "add", table, set, &new);
        }
        self.source_ranges
            .emit_additions(&old.source_ranges, table, &mut out);
        out
    }

    /// The same changes as `diff_commands`, as netlink element changes.
    pub fn diff_batch(&self, old: &Elements, table: &str) -> Batch {
        let minus = |a: &Elements, b: &Elements| Elements {
            vips: a.vips.difference(&b.vips).copied().collect(),
            vips_no_endpoints: a
                .vips_no_endpoints
                .difference(&b.vips_no_endpoints)
                .copied()
                .collect(),
            node_ports: a.node_ports.difference(&b.node_ports).copied().collect(),
            node_ports_no_endpoints: a
                .node_ports_no_endpoints
                .difference(&b.node_ports_no_endpoints)
                .copied()
                .collect(),
            node_addresses: a
                .node_addresses
                .difference(&b.node_addresses)
                .copied()
                .collect(),
            // Source ranges: below, with their own order.
            source_ranges: Default::default(),
        };
        let mut out = self
            .source_ranges
            .deletions_batch(&old.source_ranges, table);
        out.extend(
            Delta {
                removed: minus(old, self),
                added: minus(self, old),
            }
            .batch(table),
        );
        out.extend(
            self.source_ranges
                .additions_batch(&old.source_ranges, table),
        );
        out
    }

    pub fn len(&self) -> usize {
        self.vips.len()
            + self.vips_no_endpoints.len()
            + self.node_ports.len()
            + self.node_ports_no_endpoints.len()
            + self.node_addresses.len()
            + self.source_ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `vip4`, `noep6`, `nodeaddr4`...: the set of the address's family.
fn vip_set(set: &str, ip: IpAddr) -> String {
    format!("{set}{}", if ip.is_ipv4() { "4" } else { "6" })
}

fn vip_netlink(k: &VipKey) -> Element {
    Element::key(key::addr_proto_port(k.0, k.1, k.2), vip_element(k))
}

/// A prefix in a (non-concatenated) interval set is two elements: its
/// first address, and the first address after it flagged as an interval
/// end (none when the prefix reaches the end of the address space).
fn prefix_netlink(ip: IpAddr, len: u8) -> Vec<Element> {
    let ip = network(ip, len);
    let mut out = vec![Element::key(key::ip(ip), format!("{ip}/{len}"))];
    if let Some(after) = key::after_prefix(ip, len) {
        let mut end = Element::key(key::ip(after), format!("{ip}/{len} (interval end)"));
        end.interval_end = true;
        out.push(end);
    }
    out
}

/// Whether a frontend belongs in the reject sets. An L7 port without
/// endpoints stays diverted: its clients get a 503 (or gRPC UNAVAILABLE)
/// that says why, not a reset. A VIP frontend (`ip`) reaches only its own
/// family's endpoints; a NodePort (`None`) any.
pub fn rejects(route: &Route, ip: Option<IpAddr>) -> bool {
    let none = match ip {
        Some(ip) => crate::catalog::family_range(route.endpoints(), ip).is_empty(),
        None => route.endpoints().is_empty(),
    };
    none && route.port.l7.is_none()
}

/// Elements to delete and elements to add, per set.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub removed: Elements,
    pub added: Elements,
}

impl Delta {
    pub fn len(&self) -> usize {
        self.removed.len() + self.added.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Deletions first: a frontend moving between sets is never in both.
    /// Source ranges as in `diff_batch`: theirs before, their additions
    /// after the rest.
    pub fn batch(&self, table: &str) -> Batch {
        let (gone, new) = (&self.removed.source_ranges, &self.added.source_ranges);
        let mut out = new.deletions_batch(gone, table);
        for (verb, els) in [(Verb::Delete, &self.removed), (Verb::Add, &self.added)] {
            for (keys, set) in [(&els.vips, "vip"), (&els.vips_no_endpoints, "noep")] {
                for k in keys {
                    out.push(
                        verb,
                        Family::Inet,
                        table,
                        &vip_set(set, k.0),
                        vip_netlink(k),
                    );
                }
            }
            for (keys, set) in [
                (&els.node_ports, "nodeport"),
                (&els.node_ports_no_endpoints, "nodeport_noep"),
            ] {
                for &(p, port) in keys {
                    let el = Element::key(
                        key::proto_port(p, port),
                        format!("{} . {port}", p.nft_name()),
                    );
                    out.push(verb, Family::Inet, table, set, el);
                }
            }
            for &(ip, len) in &els.node_addresses {
                let set = vip_set("nodeaddr", ip);
                for el in prefix_netlink(ip, len) {
                    out.push(verb, Family::Inet, table, &set, el);
                }
            }
        }
        out.extend(new.additions_batch(gone, table));
        out
    }
}

fn vip_element((ip, proto, port): &VipKey) -> String {
    format!("{ip} . {} . {port}", proto.nft_name())
}

/// Writes `verb element inet T <set>4 { ... }` and the `6` twin.
fn emit_vips(out: &mut String, verb: &str, table: &str, set: &str, keys: &[VipKey]) {
    emit_by_family(out, verb, table, set, keys, |k| k.0, vip_element);
}

/// Splits `keys` by address family into `<set>4` and `<set>6` commands.
fn emit_by_family<K>(
    out: &mut String,
    verb: &str,
    table: &str,
    set: &str,
    keys: &[K],
    ip: impl Fn(&K) -> IpAddr,
    element: impl Fn(&K) -> String,
) {
    for (suffix, v6) in [("4", false), ("6", true)] {
        let items: Vec<String> = keys
            .iter()
            .filter(|k| ip(k).is_ipv6() == v6)
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

fn emit_prefixes(out: &mut String, verb: &str, table: &str, keys: &[Prefix]) {
    emit_by_family(
        out,
        verb,
        table,
        "nodeaddr",
        keys,
        |k| k.0,
        |(ip, len)| format!("{ip}/{len}"),
    );
}

fn emit_ports(out: &mut String, verb: &str, table: &str, set: &str, keys: &[PortKey]) {
    if keys.is_empty() {
        return;
    }
    let items: Vec<String> = keys
        .iter()
        .map(|(p, port)| format!("{} . {port}", p.nft_name()))
        .collect();
    let _ = writeln!(
        out,
        "{verb} element inet {table} {set} {{ {} }}",
        items.join(", ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(ip: &str, port: u16) -> VipKey {
        (ip.parse().expect("ip"), Protocol::Tcp, port)
    }

    #[test]
    fn diff_moves_a_frontend_between_sets() {
        let mut old = Elements::default();
        old.vips.insert(vip("10.96.0.10", 80));
        old.vips.insert(vip("fd00::10", 80));
        let mut new = Elements::default();
        new.vips_no_endpoints.insert(vip("10.96.0.10", 80));
        new.vips.insert(vip("fd00::10", 80));
        new.node_ports.insert((Protocol::Udp, 30053));
        let cmds = new.diff_commands(&old, "sy");
        assert_eq!(
            cmds,
            "delete element inet sy vip4 { 10.96.0.10 . tcp . 80 }\n\
             add element inet sy noep4 { 10.96.0.10 . tcp . 80 }\n\
             add element inet sy nodeport { udp . 30053 }\n"
        );
        assert!(new.diff_commands(&new, "sy").is_empty());
    }

    #[test]
    fn netlink_diff_deletes_before_it_adds_and_splits_prefixes() {
        let mut old = Elements::default();
        old.vips.insert(vip("10.96.0.10", 80));
        let mut new = Elements::default();
        new.vips_no_endpoints.insert(vip("10.96.0.10", 80));
        new.node_addresses
            .insert(("192.168.50.0".parse().expect("ip"), 24));
        let shown: Vec<String> = new
            .diff_batch(&old, "sy")
            .changes
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            shown,
            [
                "delete element inet sy vip4 { 10.96.0.10 . tcp . 80 }",
                "add element inet sy noep4 { 10.96.0.10 . tcp . 80 }",
                "add element inet sy nodeaddr4 { 192.168.50.0/24 }",
                "add element inet sy nodeaddr4 { 192.168.50.0/24 (interval end) }",
            ]
        );
        assert!(new.diff_batch(&new, "sy").is_empty());
    }

    #[test]
    fn node_addresses_merge_config_and_node_object_without_overlap() {
        let table = ServiceTable {
            node_addresses: vec![
                "192.168.50.1".parse().expect("ip"),
                "10.0.0.5".parse().expect("ip"),
                "fd00:50::1".parse().expect("ip"),
            ],
            ..ServiceTable::default()
        };
        let wanted = [
            NodePortAddress::parse("192.168.50.0/24").expect("cidr"),
            NodePortAddress::Primary,
        ];
        let el = Elements::default().with_node_addresses(&wanted, &table);
        let cmds = el.diff_commands(&Elements::default(), "sy");
        assert_eq!(
            cmds,
            "add element inet sy nodeaddr4 { 10.0.0.5/32, 192.168.50.0/24 }\n\
             add element inet sy nodeaddr6 { fd00:50::1/128 }\n"
        );
        // Unrestricted: no addresses, the rules match every local one.
        assert!(
            Elements::default()
                .with_node_addresses(&[], &table)
                .node_addresses
                .is_empty()
        );
    }
}
