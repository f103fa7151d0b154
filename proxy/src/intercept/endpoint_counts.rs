//! The endpoints the bridge steering table must know, kept up to date from
//! the Services that changed between two tables instead of recomputed: at
//! 100,000 endpoints, collecting and diffing the whole set took longer than
//! the rest of a one-endpoint change together.
//!
//! Only endpoints on the steered bridges' subnets are counted (`set_nets`):
//! an endpoint elsewhere (another node's Pod, the usual case at scale)
//! does not share a link with a client on the bridge, so it answers it
//! through its gateway, the node, whose IP layer hands the reply to our
//! socket without steering. At 10k Services / 100k endpoints the first
//! sync counted and sent 100k keys for the few the node's bridge holds.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use super::steer::EndpointKey;
use crate::catalog::{Scope, ServicePort, ServiceTable, Services};

/// How many Service ports use each endpoint key.
#[derive(Debug, Default)]
pub struct EndpointCounts {
    counts: HashMap<EndpointKey, u32>,
    /// The subnets whose endpoints are counted (None: every endpoint).
    nets: Option<Vec<(IpAddr, u8)>>,
}

/// Keys that appeared and keys that went, in one update.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub added: Vec<EndpointKey>,
    pub removed: Vec<EndpointKey>,
}

impl EndpointCounts {
    /// Counts only endpoints inside `nets` from now on. Returns whether
    /// that changed what is counted: the counts are then empty, and the
    /// next `update` must start from nothing (`old` = None).
    pub fn set_nets(&mut self, nets: Vec<(IpAddr, u8)>) -> bool {
        if self.nets.as_ref() == Some(&nets) {
            return false;
        }
        self.nets = Some(nets);
        self.counts.clear();
        true
    }

    /// Moves from `old` (nothing, the first time) to `new`, looking only at
    /// the Services `new`'s change record names when it was patched from
    /// `old`, else at those whose ports are not the very same `Arc`s in
    /// both.
    pub fn update(&mut self, old: Option<&ServiceTable>, new: &ServiceTable) -> Change {
        let empty = Services::new();
        let old_services = old.map_or(&empty, |t| &t.services);
        let mut came: Vec<&Arc<ServicePort>> = Vec::new();
        let mut went: Vec<&Arc<ServicePort>> = Vec::new();
        match old.and_then(|old| new.changed_since(old)) {
            Some(change) => {
                for key in &change.services {
                    let before = old_services.get(key);
                    let after = new.services.get(key);
                    if let (Some(b), Some(a)) = (before, after)
                        && same(b, a)
                    {
                        continue;
                    }
                    came.extend(after.into_iter().flatten());
                    went.extend(before.into_iter().flatten());
                }
            }
            None => {
                for (key, ports) in &new.services {
                    let before = old_services.get(key);
                    if before.is_some_and(|b| same(b, ports)) {
                        continue;
                    }
                    came.extend(ports);
                    went.extend(before.into_iter().flatten());
                }
                went.extend(
                    old_services
                        .iter()
                        .filter(|(key, _)| !new.services.contains_key(*key))
                        .flat_map(|(_, ports)| ports),
                );
            }
        }
        self.count(&came, &went)
    }

    fn count(&mut self, came: &[&Arc<ServicePort>], went: &[&Arc<ServicePort>]) -> Change {
        let mut change = Change::default();
        if self.nets.as_ref().is_some_and(|n| n.is_empty()) {
            return change;
        }
        let nets = self.nets.as_deref();
        for port in came {
            for k in keys(port, nets) {
                let n = self.counts.entry(k).or_insert(0);
                if *n == 0 {
                    change.added.push(k);
                }
                *n += 1;
            }
        }
        // Removals after additions: a key that only moved between Services
        // never drops to zero, so it is neither deleted nor added.
        for port in went {
            for k in keys(port, nets) {
                if let Some(n) = self.counts.get_mut(&k) {
                    *n -= 1;
                    if *n == 0 {
                        self.counts.remove(&k);
                        change.removed.push(k);
                    }
                }
            }
        }
        change.added.retain(|k| self.counts.contains_key(k));
        change
    }

    pub fn keys(&self) -> BTreeSet<EndpointKey> {
        self.counts.keys().copied().collect()
    }
}

fn same(a: &[Arc<ServicePort>], b: &[Arc<ServicePort>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
}

/// One port's endpoint keys inside `nets` (None: all), each once (a Pod
/// can be in both scopes).
fn keys(port: &ServicePort, nets: Option<&[(IpAddr, u8)]>) -> BTreeSet<EndpointKey> {
    [Scope::Internal, Scope::External]
        .iter()
        .flat_map(|&scope| port.endpoints(scope).iter())
        .map(|e| (e.addr.ip(), port.protocol, e.addr.port()))
        .filter(|k| nets.is_none_or(|nets| nets.iter().any(|&(net, len)| within(k.0, net, len))))
        .collect()
}

/// Whether `ip` is in `net/len` (of the same family).
fn within(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let shift = 32u32.saturating_sub(u32::from(len));
            u32::from(ip).checked_shr(shift).unwrap_or(0)
                == u32::from(net).checked_shr(shift).unwrap_or(0)
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let shift = 128u32.saturating_sub(u32::from(len));
            u128::from(ip).checked_shr(shift).unwrap_or(0)
                == u128::from(net).checked_shr(shift).unwrap_or(0)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::catalog::{NodeContext, build};
    use crate::sources::manifest::parse;

    fn service(name: &str, ip: &str, pods: &[&str]) -> String {
        let eps: Vec<String> = pods
            .iter()
            .map(|p| format!("{{addresses: [{p}]}}"))
            .collect();
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: t}}\n\
             spec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}-1, namespace: t, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nendpoints: [{}]\nports: [{{port: 8080}}]\n---\n",
            eps.join(", ")
        )
    }

    fn table(text: &str) -> ServiceTable {
        let (m, problems) = parse(text, Path::new("t.yaml"));
        assert!(problems.is_empty(), "{problems:?}");
        build(&m.services, &m.slices, &NodeContext::default()).table
    }

    fn ips(keys: &[EndpointKey]) -> Vec<String> {
        let mut v: Vec<String> = keys.iter().map(|k| k.0.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn only_keys_no_service_uses_any_more_are_removed() {
        let mut counts = EndpointCounts::default();
        let a = service("a", "10.96.0.1", &["10.244.1.1", "10.244.1.2"]);
        let b = service("b", "10.96.0.2", &["10.244.1.2"]);
        let first = table(&(a.clone() + &b));
        let change = counts.update(None, &first);
        assert_eq!(ips(&change.added), ["10.244.1.1", "10.244.1.2"]);

        // b loses its Pod, which a still uses: nothing to delete.
        let second = table(&(a + &service("b", "10.96.0.2", &["10.244.1.3"])));
        let change = counts.update(Some(&first), &second);
        assert_eq!(ips(&change.added), ["10.244.1.3"]);
        assert!(change.removed.is_empty());

        // a goes away: its keys nobody else has are deleted.
        let third = table(&service("b", "10.96.0.2", &["10.244.1.3"]));
        let change = counts.update(Some(&second), &third);
        assert!(change.added.is_empty(), "{change:?}");
        assert_eq!(ips(&change.removed), ["10.244.1.1", "10.244.1.2"]);
        assert_eq!(counts.keys().len(), 1);
    }

    #[test]
    fn only_endpoints_on_the_bridges_subnets_are_counted() {
        let mut counts = EndpointCounts::default();
        let net = ("10.244.1.0".parse().expect("ip"), 24);
        assert!(counts.set_nets(vec![net]));
        assert!(!counts.set_nets(vec![net]));
        let a = service(
            "a",
            "10.96.0.1",
            &["10.244.1.1", "10.244.2.1", "10.100.0.1"],
        );
        let first = table(&a);
        let change = counts.update(None, &first);
        assert_eq!(ips(&change.added), ["10.244.1.1"]);

        // An endpoint off the subnet comes and goes: nothing to send.
        let second = table(&service("a", "10.96.0.1", &["10.244.1.1"]));
        let change = counts.update(Some(&first), &second);
        assert_eq!(change, Change::default());

        // Another bridge: counting starts again from nothing.
        assert!(counts.set_nets(vec![net, ("10.100.0.0".parse().expect("ip"), 16)]));
        assert!(counts.keys().is_empty());
        let change = counts.update(None, &first);
        assert_eq!(ips(&change.added), ["10.100.0.1", "10.244.1.1"]);

        // No bridge: nothing is counted.
        assert!(counts.set_nets(Vec::new()));
        assert_eq!(counts.update(None, &first), Change::default());
        assert!(counts.keys().is_empty());
    }

    #[test]
    fn within_compares_the_prefix_only() {
        let ip = |s: &str| -> IpAddr { s.parse().expect("ip") };
        assert!(within(ip("10.244.1.77"), ip("10.244.1.0"), 24));
        assert!(!within(ip("10.244.2.1"), ip("10.244.1.0"), 24));
        assert!(within(ip("1.2.3.4"), ip("0.0.0.0"), 0));
        assert!(within(ip("fd00::1:5"), ip("fd00::1:0"), 112));
        assert!(!within(ip("fd00::2:5"), ip("fd00::1:0"), 112));
        assert!(!within(ip("10.244.1.1"), ip("fd00::"), 0));
    }
}
