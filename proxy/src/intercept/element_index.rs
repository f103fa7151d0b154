//! The installed set elements as an index updated from what changed: the
//! frontends whose route is not the very same `Arc` as in the previous
//! table (an untouched Service keeps its translation), instead of
//! collecting every frontend into fresh sets and diffing them whole. When
//! the new table was patched from the old, only the keys its change record
//! names are looked at.

use std::collections::BTreeSet;
use std::hash::Hash;
use std::sync::Arc;

use super::elements::{Delta, Elements, rejects};
use super::kernel::KernelPlan;
use super::source_ranges::SourceRanges;
use crate::catalog::{Frontend, Protocol, Route, ServiceTable, ShardMap};
use crate::config::NodePortAddress;

/// Same port translation and scope: the same set membership.
fn same(a: &Route, b: &Route) -> bool {
    Arc::ptr_eq(&a.port, &b.port) && a.scope == b.scope
}

type Sets<'a, S> = (&'a mut BTreeSet<S>, &'a mut BTreeSet<S>);

/// One map of frontends (VIPs or NodePorts) into its two sets (divert,
/// reject), whose elements `element` makes of the map's keys. `changed`:
/// the keys a patch of the table touched (the table's change record);
/// without it every key of both maps is looked at.
/// `kernel`: whether the kernel datapath serves a key (it is then in
/// neither set but the reject one); given, every key named is looked at,
/// since a key can move to or from the kernel with its route unchanged.
#[allow(clippy::too_many_arguments)]
fn walk<K: Hash + Eq, S: Ord + Copy>(
    old: &ShardMap<K, Route>,
    new: &ShardMap<K, Route>,
    changed: Option<&[K]>,
    kernel: Option<&dyn Fn(&K) -> bool>,
    element: impl Fn(&K) -> S,
    family: impl Fn(&K) -> Option<std::net::IpAddr>,
    installed: (&BTreeSet<S>, &BTreeSet<S>),
    removed: Sets<'_, S>,
    added: Sets<'_, S>,
) {
    let (divert, reject) = installed;
    let mut visit = |key: &K| {
        let el = element(key);
        let route = new.get(key);
        let gone = route
            .is_none_or(|r| !rejects(r, family(key)) && kernel.is_some_and(|served| served(key)));
        let Some(route) = route.filter(|_| !gone) else {
            if divert.contains(&el) {
                removed.0.insert(el);
            }
            if reject.contains(&el) {
                removed.1.insert(el);
            }
            return;
        };
        if kernel.is_none() && old.get(key).is_some_and(|r| same(r, route)) {
            return;
        }
        let (want, other, want_added, other_removed) = if rejects(route, family(key)) {
            (reject, divert, &mut *added.1, &mut *removed.0)
        } else {
            (divert, reject, &mut *added.0, &mut *removed.1)
        };
        if other.contains(&el) {
            other_removed.insert(el);
        }
        if !want.contains(&el) {
            want_added.insert(el);
        }
    };
    match changed {
        Some(keys) => keys.iter().for_each(visit),
        None => {
            new.keys().for_each(&mut visit);
            old.keys().filter(|k| !new.contains_key(*k)).for_each(visit);
        }
    }
}

impl Elements {
    /// What turns `self`, installed for the table `old`, into the
    /// elements of `new`: only frontends whose route changed are looked at.
    ///
    /// `kernel`: the kernel plan in force, when it has frontends; the
    /// caller then passes a `new` patched from `old` whose change record
    /// names every frontend whose place in the plan moved.
    pub fn delta(
        &self,
        old: &ServiceTable,
        new: &ServiceTable,
        node_port_addresses: &[NodePortAddress],
        kernel: Option<&KernelPlan>,
    ) -> Delta {
        let mut d = Delta::default();
        let changes = new.changed_since(old);
        let vip_served = kernel.map(|plan| {
            move |f: &Frontend| {
                plan.vips
                    .get(&(f.ip, f.protocol, f.port))
                    .is_some_and(|k| k.fits())
            }
        });
        let node_port_served = kernel.map(|plan| {
            move |&(proto, port): &(Protocol, u16)| {
                [false, true].iter().any(|&v6| {
                    plan.node_ports
                        .get(&(v6, proto, port))
                        .is_some_and(|k| k.fits())
                })
            }
        });
        walk(
            &old.frontends,
            &new.frontends,
            changes.map(|c| c.frontends.as_slice()),
            vip_served.as_ref().map(|f| f as &dyn Fn(&Frontend) -> bool),
            |f| (f.ip, f.protocol, f.port),
            |f| Some(f.ip),
            (&self.vips, &self.vips_no_endpoints),
            (&mut d.removed.vips, &mut d.removed.vips_no_endpoints),
            (&mut d.added.vips, &mut d.added.vips_no_endpoints),
        );
        walk(
            &old.node_ports,
            &new.node_ports,
            changes.map(|c| c.node_ports.as_slice()),
            node_port_served
                .as_ref()
                .map(|f| f as &dyn Fn(&(Protocol, u16)) -> bool),
            |&k| k,
            |_| None,
            (&self.node_ports, &self.node_ports_no_endpoints),
            (
                &mut d.removed.node_ports,
                &mut d.removed.node_ports_no_endpoints,
            ),
            (
                &mut d.added.node_ports,
                &mut d.added.node_ports_no_endpoints,
            ),
        );
        // Source ranges: those of the frontends the change names, or (a
        // table assembled whole) all of them, a few frontends in practice.
        let (want, have) = match changes {
            Some(c) => (
                SourceRanges::of(new, &c.source_ranges),
                self.source_ranges.restricted_to(&c.source_ranges),
            ),
            None => (SourceRanges::from_table(new), self.source_ranges.clone()),
        };
        d.removed.source_ranges = have.minus(&want);
        d.added.source_ranges = want.minus(&have);
        // A handful of prefixes: recomputed whole.
        let want = Elements::default().with_node_addresses(node_port_addresses, new);
        d.removed.node_addresses = self
            .node_addresses
            .difference(&want.node_addresses)
            .copied()
            .collect();
        d.added.node_addresses = want
            .node_addresses
            .difference(&self.node_addresses)
            .copied()
            .collect();
        d
    }

    /// Records a delta the kernel accepted.
    pub fn apply(&mut self, d: &Delta) {
        for k in &d.removed.vips {
            self.vips.remove(k);
        }
        for k in &d.removed.vips_no_endpoints {
            self.vips_no_endpoints.remove(k);
        }
        for k in &d.removed.node_ports {
            self.node_ports.remove(k);
        }
        for k in &d.removed.node_ports_no_endpoints {
            self.node_ports_no_endpoints.remove(k);
        }
        for k in &d.removed.node_addresses {
            self.node_addresses.remove(k);
        }
        let ranges = &mut self.source_ranges;
        for a in &d.removed.source_ranges.allowed {
            ranges.allowed.remove(a);
        }
        for r in &d.removed.source_ranges.restricted {
            ranges.restricted.remove(r);
        }
        ranges.allowed.extend(&d.added.source_ranges.allowed);
        ranges.restricted.extend(&d.added.source_ranges.restricted);
        self.vips.extend(&d.added.vips);
        self.vips_no_endpoints.extend(&d.added.vips_no_endpoints);
        self.node_ports.extend(&d.added.node_ports);
        self.node_ports_no_endpoints
            .extend(&d.added.node_ports_no_endpoints);
        self.node_addresses.extend(&d.added.node_addresses);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::catalog::{NodeContext, TranslatedService, assemble, translate_service};
    use crate::sources::manifest::parse;

    fn manifest(name: &str, vip: &str, node_port: u16, endpoint: Option<&str>) -> String {
        let eps = match endpoint {
            Some(ip) => {
                format!("endpoints:\n- addresses: [\"{ip}\"]\n  conditions: {{ready: true}}\n")
            }
            None => "endpoints: []\n".to_owned(),
        };
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\n\
             spec:\n  type: NodePort\n  clusterIP: {vip}\n  ports:\n  - {{port: 80, nodePort: {node_port}}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n\
             metadata:\n  name: {name}-1\n  namespace: demo\n  labels: {{kubernetes.io/service-name: {name}}}\n\
             {eps}ports: [{{port: 8080}}]\n"
        )
    }

    fn translate(text: &str) -> TranslatedService {
        let (m, problems) = parse(text, Path::new("t.yaml"));
        assert!(problems.is_empty(), "{problems:?}");
        let slices: Vec<_> = m.slices.iter().collect();
        let t = translate_service(&m.services[0], &slices, &NodeContext::default());
        t.service.expect("proxied")
    }

    #[test]
    fn a_delta_touches_only_changed_frontends_and_matches_a_whole_diff() {
        let a = translate(&manifest("a", "10.96.0.1", 30001, Some("10.0.0.1")));
        let b = translate(&manifest("b", "10.96.0.2", 30002, Some("10.0.0.2")));
        let c = translate(&manifest("c", "10.96.0.3", 30003, None));
        let t1 = assemble([&a, &b, &c]).table;
        // b loses its endpoint, c is deleted, d is new; a is untouched.
        let b2 = translate(&manifest("b", "10.96.0.2", 30002, None));
        let d = translate(&manifest("d", "10.96.0.4", 30004, Some("10.0.0.4")));
        let t2 = assemble([&a, &b2, &d]).table;

        let mut installed = Elements::from_table(&t1);
        let delta = installed.delta(&t1, &t2, &[], None);
        let vip = |ip: &str| (ip.parse().expect("ip"), crate::catalog::Protocol::Tcp, 80);
        assert_eq!(
            delta.removed.vips.iter().copied().collect::<Vec<_>>(),
            [vip("10.96.0.2")]
        );
        assert_eq!(
            delta
                .removed
                .vips_no_endpoints
                .iter()
                .copied()
                .collect::<Vec<_>>(),
            [vip("10.96.0.3")]
        );
        assert_eq!(
            delta.added.vips.iter().copied().collect::<Vec<_>>(),
            [vip("10.96.0.4")]
        );
        assert_eq!(
            delta
                .added
                .vips_no_endpoints
                .iter()
                .copied()
                .collect::<Vec<_>>(),
            [vip("10.96.0.2")]
        );
        installed.apply(&delta);
        assert_eq!(installed, Elements::from_table(&t2));
        // Nothing changed: nothing to send.
        assert!(installed.delta(&t2, &t2, &[], None).is_empty());
    }
}
