//! The reply gate: TCP replies from kernel-path endpoints accepted before
//! the socket rule (`kepx4/6`), for the endpoints no proxied connection
//! can be talking to.
//!
//! The proxy's upstream sockets are transparent: a Pod port behind a
//! proxy-path frontend answers them from its own address and port, and
//! only the socket rule hands those replies to our socket. So an
//! endpoint goes in `kepx` only while no proxy-path frontend (a frontend
//! in the proxy's `vip`/`nodeport` sets) routes to it, and not while it
//! is in `kepmoved` (elements with a timeout, added when an endpoint
//! stops being routed to by the proxy path for any reason: its frontend
//! moved proxy → kernel, it left a proxied Service, the Service went);
//! the proxied connections of the hour before keep the socket rule.
//!
//! The proxy path's endpoints are counted per frontend (a persistent map:
//! a sync steps a copy and keeps it once the kernel took the batch), so a
//! sync touches only the changed frontends' endpoints.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use super::elements::{Element, KernelPlan};
use super::step::{KernelKeys, Shared};
use crate::catalog::{Protocol, Route, ServiceTable, TableChange};
use crate::intercept::elements::{Delta, Elements};
use crate::intercept::netlink::{self, Batch, Family, Verb, key};

/// How many proxy-path frontends route to each TCP endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyEndpoints {
    counts: imbl::HashMap<SocketAddr, u32>,
}

/// The `kepx` element of an endpoint.
pub fn exclusive_element(ep: SocketAddr) -> Element {
    Element {
        set: if ep.is_ipv6() { "kepx6" } else { "kepx4" },
        key: format!("{} . tcp . {}", ep.ip(), ep.port()),
        data: None,
    }
}

/// Every endpoint a proxied connection through `route` may reach (all of
/// the port's scope: a superset only keeps a reply on the slow path).
fn endpoints(route: &Route) -> impl Iterator<Item = SocketAddr> + '_ {
    route.endpoints().iter().map(|e| e.addr)
}

impl ProxyEndpoints {
    /// The counts for the proxy sets `proxy` of `table`.
    pub fn of(table: &ServiceTable, proxy: &Elements) -> Self {
        let mut out = ProxyEndpoints::default();
        let mut ignored = Vec::new();
        for (f, route) in &table.frontends {
            if f.protocol == Protocol::Tcp && proxy.vips.contains(&(f.ip, f.protocol, f.port)) {
                out.count(route, true, &mut ignored);
            }
        }
        for (&(proto, port), route) in &table.node_ports {
            if proto == Protocol::Tcp && proxy.node_ports.contains(&(proto, port)) {
                out.count(route, true, &mut ignored);
            }
        }
        out
    }

    /// Whether a proxy-path frontend routes to `ep` (TCP).
    pub fn contains(&self, ep: &SocketAddr) -> bool {
        self.counts.contains_key(ep)
    }

    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    fn keys(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.counts.keys().copied()
    }

    /// Counts one frontend's route in or out; every endpoint it names
    /// goes to `touched`.
    fn count(&mut self, route: &Route, add: bool, touched: &mut Vec<SocketAddr>) {
        for ep in endpoints(route) {
            touched.push(ep);
            if add {
                *self.counts.entry(ep).or_insert(0) += 1;
            } else if let Some(n) = self.counts.get_mut(&ep) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.counts.remove(&ep);
                }
            }
        }
    }

    /// The counts after a step from `base` (whose proxy sets are `have`)
    /// to `table` by `d`, touching the frontends of `change` only; and the
    /// endpoints it counted in or out.
    pub fn step(
        &self,
        base: &ServiceTable,
        table: &ServiceTable,
        change: &TableChange,
        have: &Elements,
        d: &Delta,
    ) -> (Self, Vec<SocketAddr>) {
        let mut out = self.clone();
        let mut touched = Vec::new();
        for f in change
            .frontends
            .iter()
            .filter(|f| f.protocol == Protocol::Tcp)
        {
            let key = (f.ip, f.protocol, f.port);
            let was = have.vips.contains(&key);
            let is = d.added.vips.contains(&key) || (was && !d.removed.vips.contains(&key));
            if let (true, Some(route)) = (was, base.frontends.get(f)) {
                out.count(route, false, &mut touched);
            }
            if let (true, Some(route)) = (is, table.frontends.get(f)) {
                out.count(route, true, &mut touched);
            }
        }
        for key in change.node_ports.iter().filter(|k| k.0 == Protocol::Tcp) {
            let was = have.node_ports.contains(key);
            let is =
                d.added.node_ports.contains(key) || (was && !d.removed.node_ports.contains(key));
            if let (true, Some(route)) = (was, base.node_ports.get(key)) {
                out.count(route, false, &mut touched);
            }
            if let (true, Some(route)) = (is, table.node_ports.get(key)) {
                out.count(route, true, &mut touched);
            }
        }
        (out, touched)
    }

    /// The endpoints of `self` that `new` no longer counts: their
    /// proxied connections live on (`kepmoved`).
    pub fn left<'a>(&'a self, new: &'a ProxyEndpoints) -> impl Iterator<Item = SocketAddr> + 'a {
        self.keys().filter(|ep| !new.contains(ep))
    }
}

/// Whether `ep` belongs in `kepx`: a kernel frontend's TCP endpoint that
/// no proxy-path frontend routes to.
fn exclusive(ep: SocketAddr, shared: &Shared, proxy: &ProxyEndpoints) -> bool {
    shared.serves(ep, Protocol::Tcp) && !proxy.contains(&ep)
}

/// The whole `kepx` contents.
pub fn exclusive_elements(shared: &Shared, proxy: &ProxyEndpoints) -> BTreeSet<Element> {
    shared
        .endpoints(Protocol::Tcp)
        .filter(|ep| !proxy.contains(ep))
        .map(exclusive_element)
        .collect()
}

/// The TCP endpoints of the kernel frontends `keys` names, in `plan`.
pub fn kernel_endpoints<'a>(
    plan: &'a KernelPlan,
    keys: &'a KernelKeys,
) -> impl Iterator<Item = SocketAddr> + 'a {
    let vips = keys
        .vips
        .iter()
        .filter(|k| k.1 == Protocol::Tcp)
        .filter_map(|k| plan.vips.get(k));
    let node_ports = keys
        .node_ports
        .iter()
        .filter(|k| k.1 == Protocol::Tcp)
        .filter_map(|k| plan.node_ports.get(k));
    vips.chain(node_ports)
        .filter(|k| k.fits())
        .flat_map(|k| k.endpoints.iter().copied())
}

/// The `kepx` elements of `candidates` before (into `have`) and after
/// (into `want`) a step: the batch's diff then adds and deletes only
/// those whose membership changed.
pub fn exclusive_step(
    candidates: impl IntoIterator<Item = SocketAddr>,
    (old_shared, old_proxy): (&Shared, &ProxyEndpoints),
    (new_shared, new_proxy): (&Shared, &ProxyEndpoints),
    have: &mut BTreeSet<Element>,
    want: &mut BTreeSet<Element>,
) {
    let candidates: BTreeSet<SocketAddr> = candidates.into_iter().collect();
    for ep in candidates {
        if exclusive(ep, old_shared, old_proxy) {
            have.insert(exclusive_element(ep));
        }
        if exclusive(ep, new_shared, new_proxy) {
            want.insert(exclusive_element(ep));
        }
    }
}

/// `kepmoved4/6` elements for endpoints the proxy path no longer routes
/// to: `add` only, with a timeout (an expired element must never be
/// deleted by name), as `kmoved`.
pub fn moved_batch(
    table: &str,
    left: impl IntoIterator<Item = SocketAddr>,
    timeout_s: u64,
) -> Batch {
    let mut out = Batch::default();
    for ep in left {
        let set = if ep.is_ipv6() {
            "kepmoved6"
        } else {
            "kepmoved4"
        };
        let el = netlink::Element::key(
            key::addr_proto_port(ep.ip(), Protocol::Tcp, ep.port()),
            format!("{} . tcp . {} timeout {timeout_s}s", ep.ip(), ep.port()),
        )
        .with_timeout_ms(timeout_s.saturating_mul(1000));
        out.push(Verb::Add, Family::Inet, table, set, el);
    }
    out
}

/// The set definitions, in `rules.rs`'s layout.
pub fn set_definitions() -> Vec<String> {
    let mut out = Vec::new();
    for (f, addr) in [(4, "ipv4_addr"), (6, "ipv6_addr")] {
        out.push(format!(
            "  set kepx{f} {{\n    type {addr} . inet_proto . inet_service\n  }}"
        ));
        out.push(format!(
            "  set kepmoved{f} {{\n    type {addr} . inet_proto . inet_service\n    flags timeout\n  }}"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::catalog::datapath::DatapathMode;
    use crate::catalog::{Assembly, NodeContext, Replaced, TranslatedService};
    use crate::intercept::kernel::{Planner, step};
    use crate::policy::Bindings;
    use crate::policy::kernel_tables::TableCache;

    /// A ClusterIP Service `name` on 10.96.0.`ip`:80 → 10.0.0.`ep`:8080.
    fn service(name: &str, ip: u8, datapath: &str, ep: u8) -> TranslatedService {
        let text = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: demo\n  \
             annotations: {{switchyard.dev/datapath: {datapath}}}\n\
             spec:\n  clusterIP: 10.96.0.{ip}\n  ports:\n  - {{port: 80}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n\
             metadata:\n  name: {name}-1\n  namespace: demo\n  labels: {{kubernetes.io/service-name: {name}}}\n\
             endpoints:\n- addresses: [\"10.0.0.{ep}\"]\n  conditions: {{ready: true}}\n\
             ports: [{{port: 8080}}]\n"
        );
        let (m, problems) = crate::sources::manifest::parse(&text, Path::new("t.yaml"));
        assert!(problems.is_empty(), "{problems:?}");
        let slices: Vec<_> = m.slices.iter().collect();
        crate::catalog::translate_service(&m.services[0], &slices, &NodeContext::default())
            .service
            .expect("proxied")
    }

    /// The interceptor's state, stepped as `sync` steps it.
    struct Node {
        assembly: Assembly,
        table: Arc<ServiceTable>,
        planner: Planner,
        cache: TableCache,
        proxy: Elements,
        plan: KernelPlan,
        shared: Shared,
        endpoints: ProxyEndpoints,
        /// The Services by name.
        services: std::collections::BTreeMap<String, TranslatedService>,
    }

    /// A step's reply gate: `kepx` deleted and added, `kepmoved` added.
    type Gate = (Vec<String>, Vec<String>, Vec<String>);

    impl Node {
        fn new(list: &[(&str, TranslatedService)]) -> Self {
            let services: std::collections::BTreeMap<_, _> = list
                .iter()
                .map(|(n, s)| (n.to_string(), s.clone()))
                .collect();
            let mut assembly = Assembly::new(1);
            assembly.whole(services.values());
            let table = Arc::new(assembly.table().clone());
            let mut planner = Planner::default();
            let mut cache = TableCache::new(None, Default::default());
            let bindings = Bindings::new();
            planner.update(&table, &bindings, true, &mut cache, DatapathMode::Auto);
            let plan = planner.plan().clone();
            let proxy = Elements::from_table(&table).without_kernel(&plan);
            let shared = Shared::of(&plan);
            let endpoints = ProxyEndpoints::of(&table, &proxy);
            Node {
                assembly,
                table,
                planner,
                cache,
                proxy,
                plan,
                shared,
                endpoints,
                services,
            }
        }

        fn gate(&self) -> BTreeSet<Element> {
            exclusive_elements(&self.shared, &self.endpoints)
        }

        /// Replaces Service `name` by `new`.
        fn change(&mut self, name: &str, new: &TranslatedService) -> Gate {
            let old = self.services.insert(name.to_owned(), new.clone());
            let changes: Vec<Replaced<'_>> = vec![(old.as_ref(), Some(new))];
            let services = &self.services;
            self.assembly
                .update(&changes, || services.values().collect());
            let table = Arc::new(self.assembly.table().clone());
            let bindings = Bindings::new();
            self.planner.update(
                &table,
                &bindings,
                false,
                &mut self.cache,
                DatapathMode::Auto,
            );
            let keys = self.planner.keys().expect("stepped").clone();
            let plan = self.planner.plan().clone();
            let change = table.changed_since(&self.table).expect("patched");
            let d = self.proxy.delta(&self.table, &table, &[], Some(&plan));
            let (endpoints, touched) =
                self.endpoints
                    .step(&self.table, &table, change, &self.proxy, &d);
            let mut shared = self.shared.clone();
            let mut k = step(&self.plan, &plan, &keys, &mut shared);
            let candidates = touched
                .iter()
                .copied()
                .chain(kernel_endpoints(&self.plan, &keys))
                .chain(kernel_endpoints(&plan, &keys));
            exclusive_step(
                candidates,
                (&self.shared, &self.endpoints),
                (&shared, &endpoints),
                &mut k.have.elements,
                &mut k.want.elements,
            );
            let gone = touched
                .into_iter()
                .filter(|ep| self.endpoints.contains(ep) && !endpoints.contains(ep));
            let moved: Vec<String> = moved_batch("sy", gone, 3600)
                .changes
                .iter()
                .map(ToString::to_string)
                .collect();
            let batch = k.want.diff_batch(&k.have, "sy").expect("encodes");
            let named = |verb: Verb| -> Vec<String> {
                batch
                    .changes
                    .iter()
                    .filter(|c| c.verb == verb && c.set.starts_with("kepx"))
                    .map(ToString::to_string)
                    .collect()
            };
            let gate = (named(Verb::Delete), named(Verb::Add), moved);
            self.proxy.apply(&d);
            self.table = table;
            self.plan = plan;
            self.shared = shared;
            self.endpoints = endpoints;
            assert_eq!(self.endpoints, ProxyEndpoints::of(&self.table, &self.proxy));
            assert_eq!(
                self.gate(),
                exclusive_elements(&Shared::of(&self.plan), &self.endpoints)
            );
            gate
        }
    }

    const EP: &str = "10.0.0.1 . tcp . 8080";

    #[test]
    fn an_endpoint_a_proxied_service_shares_stays_behind_the_socket_rule() {
        let kernel = service("a", 1, "kernel", 1);
        let proxied = service("b", 2, "proxy", 1);
        let mut node = Node::new(&[("a", kernel), ("b", proxied.clone())]);
        assert_eq!(node.plan.vips.len(), 1, "a is on the kernel path");
        assert!(
            node.shared
                .serves("10.0.0.1:8080".parse().expect("ep"), Protocol::Tcp)
        );
        assert!(
            node.gate().is_empty(),
            "b's upstream replies need our socket"
        );

        // b's endpoint moves away: a's replies skip the socket lookup,
        // but only after b's proxied connections had an hour.
        let elsewhere = service("b", 2, "proxy", 2);
        let (deleted, added, moved) = node.change("b", &elsewhere);
        assert!(deleted.is_empty());
        assert_eq!(added, [format!("add element inet sy kepx4 {{ {EP} }}")]);
        assert_eq!(
            moved,
            [format!(
                "add element inet sy kepmoved4 {{ {EP} timeout 3600s }}"
            )]
        );

        // And back: out of the gate again; the endpoint b leaves now
        // (no kernel frontend's) is timed all the same.
        let (deleted, added, moved) = node.change("b", &proxied);
        assert_eq!(
            deleted,
            [format!("delete element inet sy kepx4 {{ {EP} }}")]
        );
        assert!(added.is_empty());
        assert_eq!(
            moved,
            ["add element inet sy kepmoved4 { 10.0.0.2 . tcp . 8080 timeout 3600s }"]
        );
    }

    #[test]
    fn a_frontend_moving_proxy_to_kernel_puts_its_endpoints_in_the_gate_after_an_hour() {
        let proxied = service("b", 2, "proxy", 1);
        let mut node = Node::new(&[("b", proxied.clone())]);
        assert!(node.plan.is_empty() && node.gate().is_empty());
        // An annotation edit moves b to the kernel path.
        let moved_to_kernel = service("b", 2, "kernel", 1);
        let (deleted, added, moved) = node.change("b", &moved_to_kernel);
        assert!(deleted.is_empty());
        assert_eq!(added, [format!("add element inet sy kepx4 {{ {EP} }}")]);
        // The proxied connections from before the move keep the socket
        // rule (`kepmoved`), as the frontend's requests do (`kmoved`).
        assert_eq!(
            moved,
            [format!(
                "add element inet sy kepmoved4 {{ {EP} timeout 3600s }}"
            )]
        );
        // Kernel → proxy: the endpoint leaves the gate at once.
        let (deleted, added, moved) = node.change("b", &proxied);
        assert_eq!(
            deleted,
            [format!("delete element inet sy kepx4 {{ {EP} }}")]
        );
        assert!(added.is_empty() && moved.is_empty());
    }
}
