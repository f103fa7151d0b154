//! The kernel datapath's part of a sync from the frontends a change
//! touched: their elements before and after (hairpin elements only for the
//! addresses whose count of kernel frontends reached or left zero), so that
//! an endpoint change on a kernel-path port is O(changed), not a rebuild
//! and diff of every kernel frontend's elements.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use super::elements::{KernelElements, KernelPlan, KernelPort, elements, hairpin_element};
use crate::catalog::Protocol;

/// The plan keys one planner update touched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelKeys {
    pub vips: Vec<(IpAddr, Protocol, u16)>,
    pub node_ports: Vec<(bool, Protocol, u16)>,
}

/// How many kernel frontends (that fit) reach each endpoint address: the
/// hairpin set holds the addresses counted here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hairpin(HashMap<IpAddr, u32>);

fn addresses(k: &KernelPort) -> BTreeSet<IpAddr> {
    k.endpoints.iter().map(|e| e.ip()).collect()
}

fn fitting(plan: &KernelPlan) -> impl Iterator<Item = &KernelPort> {
    plan.vips
        .values()
        .chain(plan.node_ports.values())
        .filter(|k| k.fits())
}

impl Hairpin {
    pub fn of(plan: &KernelPlan) -> Self {
        let mut out = Hairpin::default();
        for k in fitting(plan) {
            for ip in addresses(k) {
                *out.0.entry(ip).or_insert(0) += 1;
            }
        }
        out
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

/// Everything but the hairpin elements, which are counted.
fn frontend_elements(plan: &KernelPlan) -> KernelElements {
    let mut out = elements(plan);
    out.elements.retain(|e| !e.set.starts_with("khairpin"));
    out
}

/// From `old` (installed) to `new` for the frontends `keys` names; moves
/// the hairpin counts along.
pub fn step(old: &KernelPlan, new: &KernelPlan, keys: &KernelKeys, hairpin: &mut Hairpin) -> Step {
    let (old, new) = (sub(old, keys), sub(new, keys));
    let mut out = Step {
        have: frontend_elements(&old),
        want: frontend_elements(&new),
    };
    for k in fitting(&old) {
        for ip in addresses(k) {
            let n = hairpin.0.entry(ip).or_insert(0);
            *n = n.saturating_sub(1);
            if *n == 0 {
                hairpin.0.remove(&ip);
                out.have.elements.insert(hairpin_element(ip));
            }
        }
    }
    for k in fitting(&new) {
        for ip in addresses(k) {
            let n = hairpin.0.entry(ip).or_insert(0);
            if *n == 0 {
                out.want.elements.insert(hairpin_element(ip));
            }
            *n += 1;
        }
    }
    out
}

impl KernelElements {
    /// Records a step the kernel accepted.
    pub fn apply(&mut self, step: &Step) {
        for e in step.have.elements.difference(&step.want.elements) {
            self.elements.remove(e);
        }
        for e in step.want.elements.difference(&step.have.elements) {
            self.elements.insert(e.clone());
        }
    }
}
