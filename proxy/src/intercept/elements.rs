//! The set elements that make nftables divert (or reject) exactly the
//! frontends of the service table, and the diff between two such sets.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::IpAddr;

use crate::catalog::{Protocol, ServiceTable};

/// One element of a `vip4`/`vip6`/`noep4`/`noep6` set.
type VipKey = (IpAddr, Protocol, u16);
/// One element of a `nodeport`/`nodeport_noep` set.
type PortKey = (Protocol, u16);

/// Desired contents of every set in our table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Elements {
    /// Frontends with endpoints: diverted to the proxy.
    pub vips: BTreeSet<VipKey>,
    /// Frontends without endpoints: rejected at once, as kube-proxy does.
    pub vips_no_endpoints: BTreeSet<VipKey>,
    pub node_ports: BTreeSet<PortKey>,
    pub node_ports_no_endpoints: BTreeSet<PortKey>,
}

impl Elements {
    pub fn from_table(table: &ServiceTable) -> Self {
        let mut out = Elements::default();
        for (frontend, route) in &table.frontends {
            let key = (frontend.ip, frontend.protocol, frontend.port);
            if route.endpoints().is_empty() {
                out.vips_no_endpoints.insert(key);
            } else {
                out.vips.insert(key);
            }
        }
        for (&key, route) in &table.node_ports {
            if route.endpoints().is_empty() {
                out.node_ports_no_endpoints.insert(key);
            } else {
                out.node_ports.insert(key);
            }
        }
        out
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
        out
    }

    pub fn len(&self) -> usize {
        self.vips.len()
            + self.vips_no_endpoints.len()
            + self.node_ports.len()
            + self.node_ports_no_endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn vip_element((ip, proto, port): &VipKey) -> String {
    format!("{ip} . {} . {port}", proto.nft_name())
}

/// Writes `verb element inet T <set>4 { ... }` and the `6` twin.
fn emit_vips(out: &mut String, verb: &str, table: &str, set: &str, keys: &[VipKey]) {
    for (suffix, v6) in [("4", false), ("6", true)] {
        let items: Vec<String> = keys
            .iter()
            .filter(|k| k.0.is_ipv6() == v6)
            .map(vip_element)
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
}
