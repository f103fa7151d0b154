//! The kernel datapath's part of a sync from the frontends a change
//! touched: their elements before and after (the elements several
//! frontends share — hairpin addresses, the gate's reply endpoints — only
//! where their count of kernel frontends reached or left zero), so that an
//! endpoint change on a kernel-path port is O(changed), not a rebuild and
//! diff of every kernel frontend's elements.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use super::elements::{Element, KernelElements, KernelPlan, KernelPort, hairpin_element};
use crate::catalog::Protocol;

/// The plan keys one planner update touched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelKeys {
    pub vips: Vec<(IpAddr, Protocol, u16)>,
    pub node_ports: Vec<(bool, Protocol, u16)>,
}

/// How many kernel frontends (that fit) reach each endpoint address (the
/// hairpin set holds the addresses counted here) and each endpoint of a
/// protocol (the reply gate's `kepx`/`kepsh`, `replies.rs`, are made from
/// these). A sync steps them in place (copying
/// maps of ~100k entries each at 10k frontends was most of an endpoint
/// change's in-process time; persistent maps cost ~40 MiB more there);
/// the interceptor counts again from the installed plan when a sync
/// fails.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shared {
    hairpin: HashMap<IpAddr, u32>,
    replies: HashMap<(SocketAddr, Protocol), u32>,
}

/// What one frontend shares with others.
fn shared_keys(
    proto: Protocol,
    k: &KernelPort,
) -> (BTreeSet<IpAddr>, BTreeSet<(SocketAddr, Protocol)>) {
    (
        k.endpoints.iter().map(|e| e.ip()).collect(),
        k.endpoints.iter().map(|&e| (e, proto)).collect(),
    )
}

fn fitting(plan: &KernelPlan) -> impl Iterator<Item = (Protocol, &KernelPort)> {
    plan.vips
        .iter()
        .map(|(&(_, proto, _), k)| (proto, k))
        .chain(plan.node_ports.iter().map(|(&(_, proto, _), k)| (proto, k)))
        .filter(|(_, k)| k.fits())
}

/// Counts one frontend in (`+1`) or out (`-1`); the elements (if any)
/// of the keys whose count left or reached zero go to `gone` or `new`.
fn count<K: std::hash::Hash + Eq + Copy>(
    counts: &mut HashMap<K, u32>,
    keys: impl IntoIterator<Item = K>,
    add: bool,
    element: impl Fn(K) -> Option<Element>,
    out: &mut BTreeSet<Element>,
) {
    for key in keys {
        let n = counts.entry(key).or_insert(0);
        if add {
            if *n == 0 {
                out.extend(element(key));
            }
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&key);
                out.extend(element(key));
            }
        }
    }
}

impl Shared {
    pub fn of(plan: &KernelPlan) -> Self {
        let mut out = Shared::default();
        let mut ignored = BTreeSet::new();
        for (proto, k) in fitting(plan) {
            out.add(proto, k, &mut ignored);
        }
        out
    }

    /// Whether a kernel frontend (that fits) routes to `ep` by `proto`.
    pub fn serves(&self, ep: SocketAddr, proto: Protocol) -> bool {
        self.replies.contains_key(&(ep, proto))
    }

    /// The endpoints kernel frontends route to by `proto`.
    pub fn endpoints(&self, proto: Protocol) -> impl Iterator<Item = SocketAddr> + '_ {
        self.replies
            .keys()
            .filter(move |(_, p)| *p == proto)
            .map(|&(ep, _)| ep)
    }

    fn add(&mut self, proto: Protocol, k: &KernelPort, new: &mut BTreeSet<Element>) {
        let (ips, replies) = shared_keys(proto, k);
        count(
            &mut self.hairpin,
            ips,
            true,
            |ip| Some(hairpin_element(ip)),
            new,
        );
        count(&mut self.replies, replies, true, |_| None, new);
    }

    fn remove(&mut self, proto: Protocol, k: &KernelPort, gone: &mut BTreeSet<Element>) {
        let (ips, replies) = shared_keys(proto, k);
        count(
            &mut self.hairpin,
            ips,
            false,
            |ip| Some(hairpin_element(ip)),
            gone,
        );
        count(&mut self.replies, replies, false, |_| None, gone);
    }
}

/// The touched frontends' elements as installed and as wanted.
#[derive(Debug, Default)]
pub struct Step {
    pub have: KernelElements,
    pub want: KernelElements,
}

fn sub(plan: &KernelPlan, keys: &KernelKeys) -> KernelPlan {
    KernelPlan {
        vips: keys
            .vips
            .iter()
            .filter_map(|k| plan.vips.get(k).map(|p| (*k, p.clone())))
            .collect(),
        node_ports: keys
            .node_ports
            .iter()
            .filter_map(|k| plan.node_ports.get(k).map(|p| (*k, p.clone())))
            .collect(),
    }
}

/// Everything but the shared elements, which are counted.
fn frontend_elements(plan: &KernelPlan) -> KernelElements {
    KernelElements {
        elements: super::elements::frontend_elements(plan, None)
            .flatten()
            .collect(),
    }
}

/// From `old` (installed) to `new` for the frontends `keys` names; moves
/// the shared counts along.
pub fn step(old: &KernelPlan, new: &KernelPlan, keys: &KernelKeys, shared: &mut Shared) -> Step {
    let (old, new) = (sub(old, keys), sub(new, keys));
    let mut out = Step {
        have: frontend_elements(&old),
        want: frontend_elements(&new),
    };
    for (proto, k) in fitting(&old) {
        shared.remove(proto, k, &mut out.have.elements);
    }
    for (proto, k) in fitting(&new) {
        shared.add(proto, k, &mut out.want.elements);
    }
    out
}

#[cfg(test)]
impl KernelElements {
    /// Applies a step to elements held whole: what the kernel holds after
    /// it. The interceptor keeps only the plan (the elements are
    /// `elements` of it); the property test (`incremental_tests.rs`)
    /// checks that stepping and planning whole agree.
    pub fn apply(&mut self, step: &Step) {
        for e in step.have.elements.difference(&step.want.elements) {
            self.elements.remove(e);
        }
        for e in step.want.elements.difference(&step.have.elements) {
            self.elements.insert(e.clone());
        }
    }
}
