//! The reply gate: TCP replies from kernel-path endpoints, sorted before
//! the socket rule by two sets that split the kernel frontends' TCP
//! endpoints: `kepx4/6`, those no proxied connection can be talking to
//! (accepted at once), and `kepsh4/6`, those a proxy-path frontend also
//! routes to (the socket rule, then accepted).
//!
//! The proxy's upstream sockets are transparent: a Pod port behind a
//! proxy-path frontend answers them from its own address and port, and
//! only the socket rule hands those replies to our socket. So an
//! endpoint goes in `kepx` only while no proxy-path frontend (a frontend
//! in the proxy's `vip`/`nodeport` sets) routes to it (else in `kepsh`),
//! and `kepx` is honoured only while the endpoint is not in `kepmoved`
//! (elements with a timeout, added when an endpoint
//! stops being routed to by the proxy path for any reason: its frontend
//! moved proxy → kernel, it left a proxied Service, the Service went);
//! the proxied connections of the hour before keep the socket rule.
//!
//! The proxy path's endpoints are counted per frontend, stepped in place
//! with the touched frontends (the interceptor counts again from what is
//! installed when a sync fails), so a sync touches only the changed
//! frontends' endpoints.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use super::elements::{Element, KernelPlan};
use super::step::{KernelKeys, Shared, Step, step};
use crate::catalog::{Protocol, Route, ServiceTable, TableChange};
use crate::intercept::elements::{Delta, Elements};
use crate::intercept::netlink::{self, Batch, Family, Verb, key};

/// How many proxy-path frontends route to each TCP endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyEndpoints {
    counts: HashMap<SocketAddr, u32>,
}

/// The gate's element of a kernel endpoint: `kepx` if no proxy-path
/// frontend routes to it (`exclusive`), else `kepsh`.
pub fn gate_element(ep: SocketAddr, exclusive: bool) -> Element {
    let set = match (exclusive, ep.is_ipv6()) {
        (true, false) => "kepx4",
        (true, true) => "kepx6",
        (false, false) => "kepsh4",
        (false, true) => "kepsh6",
    };
    Element {
        set,
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

    /// Every endpoint a route of `change` names, in `base` or `table`.
    pub fn named_by(
        base: &ServiceTable,
        table: &ServiceTable,
        change: &TableChange,
    ) -> BTreeSet<SocketAddr> {
        let mut out = BTreeSet::new();
        for f in change
            .frontends
            .iter()
            .filter(|f| f.protocol == Protocol::Tcp)
        {
            for t in [base, table] {
                out.extend(t.frontends.get(f).into_iter().flat_map(endpoints));
            }
        }
        for key in change.node_ports.iter().filter(|k| k.0 == Protocol::Tcp) {
            for t in [base, table] {
                out.extend(t.node_ports.get(key).into_iter().flat_map(endpoints));
            }
        }
        out
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

    /// Steps the counts from `base` (whose proxy sets are `have`) to
    /// `table` by `d`, touching the frontends of `change` only. Returns the
    /// endpoints it may have counted in or out, and those it no longer
    /// counts at all (`gone`).
    pub fn step(
        &mut self,
        base: &ServiceTable,
        table: &ServiceTable,
        change: &TableChange,
        have: &Elements,
        d: &Delta,
    ) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
        let named = Self::named_by(base, table, change);
        let before: Vec<bool> = named.iter().map(|ep| self.contains(ep)).collect();
        let out = self;
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
        let gone = named
            .into_iter()
            .zip(before)
            .filter(|(ep, was)| *was && !out.contains(ep))
            .map(|(ep, _)| ep)
            .collect();
        let touched: BTreeSet<SocketAddr> = touched.into_iter().collect();
        (touched.into_iter().collect(), gone)
    }

    /// The endpoints of `self` that `new` no longer counts: their
    /// proxied connections live on (`kepmoved`).
    pub fn left<'a>(&'a self, new: &'a ProxyEndpoints) -> impl Iterator<Item = SocketAddr> + 'a {
        self.keys().filter(|ep| !new.contains(ep))
    }
}

/// The whole gate: every kernel frontend's TCP endpoint, in `kepx` or
/// `kepsh` by `proxy`.
pub fn gate_elements(shared: &Shared, proxy: &ProxyEndpoints) -> BTreeSet<Element> {
    shared
        .endpoints(Protocol::Tcp)
        .map(|ep| gate_element(ep, !proxy.contains(&ep)))
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

/// The gate's elements of `candidates` by `shared` and `proxy`: taken
/// before a step (into its `have`) and after (into its `want`), the
/// batch's diff adds and deletes only those whose set changed.
pub fn gate_of<'a>(
    candidates: impl IntoIterator<Item = &'a SocketAddr>,
    shared: &Shared,
    proxy: &ProxyEndpoints,
    out: &mut BTreeSet<Element>,
) {
    for &ep in candidates {
        if shared.serves(ep, Protocol::Tcp) {
            out.insert(gate_element(ep, !proxy.contains(&ep)));
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
    let mut out = super::rules::addr_port_sets(&["kepx", "kepsh"], None);
    out.extend(super::rules::addr_port_sets(&["kepmoved"], Some("timeout")));
    out
}

/// A kernel step with its reply gate: steps the proxy path's endpoint
/// counts (`proxy`, from `base` installed as `have` to `table` by `d`) and
/// the kernel's shared counts (`shared`, the frontends `keys` names from
/// `old` to `new`) in place, and returns the kernel elements to change,
/// `kepx`/`kepsh` included, and the endpoints the proxy path no longer routes to
/// (for `kepmoved`).
pub fn gate_step(
    proxy: &mut ProxyEndpoints,
    shared: &mut Shared,
    (base, table, change): (&ServiceTable, &ServiceTable, &TableChange),
    (have, d): (&Elements, &Delta),
    (old, new, keys): (&KernelPlan, &KernelPlan, &KernelKeys),
) -> (Step, Vec<SocketAddr>) {
    let mut candidates: BTreeSet<SocketAddr> = kernel_endpoints(old, keys)
        .chain(kernel_endpoints(new, keys))
        .chain(ProxyEndpoints::named_by(base, table, change))
        .collect();
    let mut gate_have = BTreeSet::new();
    gate_of(&candidates, shared, proxy, &mut gate_have);
    let (touched, gone) = proxy.step(base, table, change, have, d);
    candidates.extend(touched);
    let mut k = step(old, new, keys, shared);
    k.have.elements.extend(gate_have);
    gate_of(&candidates, shared, proxy, &mut k.want.elements);
    (k, gone)
}
