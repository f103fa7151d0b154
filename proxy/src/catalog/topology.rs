//! The endpoints one scope of one Service port may use, with kube-proxy's
//! rules (pkg/proxy/topology.go, `CategorizeEndpoints`), applied before any
//! policy sees the set:
//!
//! - Each IP family is categorised on its own, as kube-proxy runs one
//!   proxier per family: a frontend of one family only reaches endpoints of
//!   that family, so readiness and hints of the other family must not
//!   decide its set.
//! - `Local` traffic policy: the ready endpoints on this node, else this
//!   node's serving and terminating ones; topology hints do not apply.
//! - `Cluster`: the topology mode comes from the hints of the *ready*
//!   endpoints. Same node (`hints.forNodes`, `trafficDistribution:
//!   PreferSameNode`) when every ready endpoint has node hints and one is
//!   hinted for this node; else same zone (`hints.forZones`, `PreferClose`
//!   or `topology-mode: Auto`) when every ready endpoint has zone hints and
//!   one is hinted for this node's zone; else no topology. Then the ready
//!   endpoints available for that mode, else the serving and terminating
//!   ones available for it.
//!
//! The EndpointSlice controller writes hints only for Services that ask for
//! them, so the hints alone decide, as in kube-proxy 1.31+.

use std::sync::Arc;

use super::build::NodeContext;
use super::table::Endpoint;

/// An endpoint of one port with its topology hints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub endpoint: Endpoint,
    /// `hints.forZones[].name`
    pub zones: Vec<String>,
    /// `hints.forNodes[].name`
    pub nodes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Everywhere,
    SameNode,
    SameZone,
}

/// The endpoints a scope uses, IPv4 first then IPv6 (each family sorted by
/// address, as `all` is).
pub(crate) fn categorize(
    all: &[Candidate],
    local_only: bool,
    node: &NodeContext,
) -> Arc<[Endpoint]> {
    let (v4, v6): (Vec<&Candidate>, Vec<&Candidate>) =
        all.iter().partition(|c| c.endpoint.addr.is_ipv4());
    let mut out = family(&v4, local_only, node);
    out.extend(family(&v6, local_only, node));
    out.into()
}

fn family(all: &[&Candidate], local_only: bool, node: &NodeContext) -> Vec<Endpoint> {
    let node_name = node.node_name.as_deref();
    let zone = node.zone.as_deref();
    let mode = if local_only {
        Mode::Everywhere
    } else {
        mode_from_hints(all, node_name, zone)
    };
    let usable = |c: &&&Candidate| {
        let local = node_name.is_some_and(|n| c.endpoint.node_name.as_deref() == Some(n));
        (!local_only || local) && available(c, mode, node_name, zone)
    };
    let ready: Vec<Endpoint> = all
        .iter()
        .filter(usable)
        .filter(|c| c.endpoint.ready)
        .map(|c| c.endpoint.clone())
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    all.iter()
        .filter(usable)
        .filter(|c| c.endpoint.serving && c.endpoint.terminating)
        .map(|c| c.endpoint.clone())
        .collect()
}

fn mode_from_hints(all: &[&Candidate], node_name: Option<&str>, zone: Option<&str>) -> Mode {
    let ready = || all.iter().filter(|c| c.endpoint.ready);
    let has = |names: &[String], wanted: Option<&str>| {
        wanted.is_some_and(|w| names.iter().any(|n| n == w))
    };
    if ready().next().is_none() {
        return Mode::Everywhere;
    }
    if ready().all(|c| !c.nodes.is_empty()) && ready().any(|c| has(&c.nodes, node_name)) {
        return Mode::SameNode;
    }
    if ready().all(|c| !c.zones.is_empty()) && ready().any(|c| has(&c.zones, zone)) {
        return Mode::SameZone;
    }
    Mode::Everywhere
}

fn available(c: &Candidate, mode: Mode, node_name: Option<&str>, zone: Option<&str>) -> bool {
    match mode {
        Mode::Everywhere => true,
        Mode::SameNode => node_name.is_some_and(|n| c.nodes.iter().any(|h| h == n)),
        Mode::SameZone => zone.is_some_and(|z| c.zones.iter().any(|h| h == z)),
    }
}
