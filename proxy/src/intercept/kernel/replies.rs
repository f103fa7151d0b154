//! The proxy path's endpoints: the replies of a Pod port behind a
//! proxy-path frontend to our transparent upstream sockets (they come from
//! its own address and port, to the client's) reach them only through the
//! socket rule, so raw prerouting sends a packet from one of them there
//! (`pep4/6`, `ours.rs`); a reply from an endpoint only the kernel path
//! uses is accepted without a socket lookup.
//!
//! An endpoint is counted per proxy-path frontend (a frontend in the
//! proxy's `vip`/`noep`/`nodeport`/`nodeport_noep` sets) that routes to
//! it, of either protocol, stepped in place with the touched frontends
//! (the interceptor counts again from what is installed when a sync
//! fails), so a sync touches only the changed frontends' endpoints. One
//! that is no longer counted stays in `pep` for the drain time, for the
//! proxied connections of before.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use super::elements::KernelPlan;
use super::step::{KernelKeys, Shared, Step, step};
use crate::catalog::{Protocol, Route, ServiceTable, TableChange};
use crate::intercept::elements::{Delta, Elements};
use crate::intercept::ours;

/// An endpoint and the protocol of the frontends routing to it.
pub type Endpoint = (SocketAddr, Protocol);

/// How many proxy-path frontends route to each endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyEndpoints {
    counts: HashMap<Endpoint, u32>,
}

/// Every endpoint a proxied connection through `route` may reach (all of
/// the port's scope: a superset only sends a reply to the socket rule).
fn endpoints(route: &Route) -> impl Iterator<Item = Endpoint> + '_ {
    let proto = route.port.protocol;
    route.endpoints().iter().map(move |e| (e.addr, proto))
}

/// Whether `key` is in the proxy path's sets `have`, or will be after `d`.
fn proxied_vip(
    key: &(std::net::IpAddr, Protocol, u16),
    have: &Elements,
    d: Option<&Delta>,
) -> bool {
    let was = have.vips.contains(key) || have.vips_no_endpoints.contains(key);
    match d {
        None => was,
        Some(d) => {
            d.added.vips.contains(key)
                || d.added.vips_no_endpoints.contains(key)
                || (was
                    && !d.removed.vips.contains(key)
                    && !d.removed.vips_no_endpoints.contains(key))
        }
    }
}

/// `proxied_vip` for a NodePort.
fn proxied_node_port(key: &(Protocol, u16), have: &Elements, d: Option<&Delta>) -> bool {
    let was = have.node_ports.contains(key) || have.node_ports_no_endpoints.contains(key);
    match d {
        None => was,
        Some(d) => {
            d.added.node_ports.contains(key)
                || d.added.node_ports_no_endpoints.contains(key)
                || (was
                    && !d.removed.node_ports.contains(key)
                    && !d.removed.node_ports_no_endpoints.contains(key))
        }
    }
}

impl ProxyEndpoints {
    /// The counts for the proxy sets `proxy` of `table`.
    pub fn of(table: &ServiceTable, proxy: &Elements) -> Self {
        let mut out = ProxyEndpoints::default();
        let mut ignored = Vec::new();
        for (f, route) in &table.frontends {
            if proxied_vip(&(f.ip, f.protocol, f.port), proxy, None) {
                out.count(route, true, &mut ignored);
            }
        }
        for (key, route) in &table.node_ports {
            if proxied_node_port(key, proxy, None) {
                out.count(route, true, &mut ignored);
            }
        }
        out
    }

    /// Whether a proxy-path frontend routes to `ep`.
    pub fn contains(&self, ep: &Endpoint) -> bool {
        self.counts.contains_key(ep)
    }

    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Its endpoints, as `pep` keys (`ours.rs`).
    pub fn ours(&self) -> impl Iterator<Item = ours::Key> + '_ {
        self.keys()
            .map(|(ep, proto)| ours::Key::Endpoint(ep, proto))
    }

    pub fn keys(&self) -> impl Iterator<Item = Endpoint> + '_ {
        self.counts.keys().copied()
    }

    /// Every endpoint a route of `change` names, in `base` or `table`.
    pub fn named_by(
        base: &ServiceTable,
        table: &ServiceTable,
        change: &TableChange,
    ) -> BTreeSet<Endpoint> {
        let mut out = BTreeSet::new();
        for f in &change.frontends {
            for t in [base, table] {
                out.extend(t.frontends.get(f).into_iter().flat_map(endpoints));
            }
        }
        for key in &change.node_ports {
            for t in [base, table] {
                out.extend(t.node_ports.get(key).into_iter().flat_map(endpoints));
            }
        }
        out
    }

    /// Counts one frontend's route in or out; every endpoint it names
    /// goes to `touched`.
    fn count(&mut self, route: &Route, add: bool, touched: &mut Vec<Endpoint>) {
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
    /// endpoints it counts now and did not before (`came`), and those it
    /// no longer counts at all (`gone`).
    pub fn step(
        &mut self,
        base: &ServiceTable,
        table: &ServiceTable,
        change: &TableChange,
        have: &Elements,
        d: &Delta,
    ) -> (Vec<Endpoint>, Vec<Endpoint>) {
        let named = Self::named_by(base, table, change);
        let before: Vec<bool> = named.iter().map(|ep| self.contains(ep)).collect();
        let out = self;
        let mut touched = Vec::new();
        for f in &change.frontends {
            let key = (f.ip, f.protocol, f.port);
            let was = proxied_vip(&key, have, None);
            let is = proxied_vip(&key, have, Some(d));
            if let (true, Some(route)) = (was, base.frontends.get(f)) {
                out.count(route, false, &mut touched);
            }
            if let (true, Some(route)) = (is, table.frontends.get(f)) {
                out.count(route, true, &mut touched);
            }
        }
        for key in &change.node_ports {
            let was = proxied_node_port(key, have, None);
            let is = proxied_node_port(key, have, Some(d));
            if let (true, Some(route)) = (was, base.node_ports.get(key)) {
                out.count(route, false, &mut touched);
            }
            if let (true, Some(route)) = (is, table.node_ports.get(key)) {
                out.count(route, true, &mut touched);
            }
        }
        let mut came = Vec::new();
        let mut gone = Vec::new();
        for (ep, was) in named.into_iter().zip(before) {
            match (was, out.contains(&ep)) {
                (false, true) => came.push(ep),
                (true, false) => gone.push(ep),
                _ => {}
            }
        }
        (came, gone)
    }

    /// The endpoints of `self` that `new` no longer counts: their
    /// proxied connections live on (`ours.rs`).
    pub fn left<'a>(&'a self, new: &'a ProxyEndpoints) -> impl Iterator<Item = Endpoint> + 'a {
        self.keys().filter(|ep| !new.contains(ep))
    }
}

/// The `pep` changes from the counts `old` to `new`.
pub fn ours_batch(
    table: &str,
    old: &ProxyEndpoints,
    new: &ProxyEndpoints,
    fresh: bool,
) -> crate::intercept::netlink::Batch {
    batch(table, new.left(old), old.left(new), fresh)
}

/// The `pep` changes for endpoints that came and those that went.
pub fn batch(
    table: &str,
    came: impl IntoIterator<Item = Endpoint>,
    gone: impl IntoIterator<Item = Endpoint>,
    fresh: bool,
) -> crate::intercept::netlink::Batch {
    let key = |(ep, proto): Endpoint| ours::Key::Endpoint(ep, proto);
    ours::batch(
        table,
        came.into_iter().map(key),
        gone.into_iter().map(key),
        fresh,
    )
}

/// A kernel step with the proxy path's endpoints: steps the proxy
/// path's endpoint counts (`proxy`, from `base` installed as `have` to
/// `table` by `d`) and the kernel's shared counts (`shared`, the frontends
/// `keys` names from `old` to `new`) in place, and returns the kernel
/// elements to change and the endpoints the proxy path now routes to and
/// no longer routes to (for `pep`).
pub fn gate_step(
    proxy: &mut ProxyEndpoints,
    shared: &mut Shared,
    (base, table, change): (&ServiceTable, &ServiceTable, &TableChange),
    (have, d): (&Elements, &Delta),
    (old, new, keys): (&KernelPlan, &KernelPlan, &KernelKeys),
) -> (Step, Vec<Endpoint>, Vec<Endpoint>) {
    let (came, gone) = proxy.step(base, table, change, have, d);
    (step(old, new, keys, shared), came, gone)
}
