//! The verdict-map elements (`kfront4/6`, `knp4/6`: frontend → `goto` its
//! DNAT chain) as installed, kept while their frontend is in the service
//! table, whichever path it is on now.
//!
//! Adding an element that jumps to a chain makes the kernel validate the
//! whole table at commit (every base chain, every element of every verdict
//! map bound to a rule): ~2 ms at 10k kernel frontends, most of an
//! endpoint change 0 → 1 (measured: the netlink batch of an add took
//! 2.2–3.4 ms, of a remove 0.2 ms). Deleting one costs nothing. So a
//! frontend that leaves the kernel path (no endpoints any more, moved to
//! the proxy) keeps its element, and coming back with the same chain
//! adds none; only a changed chain (slot key or installed size) or a
//! frontend gone from the table changes it. `kernel_dnat` looks a frontend
//! up in `kfront`/`knp` only when it is in the gate set of kernel
//! frontends (`kvip`/`knode`, plain sets), so a kept element never
//! translates a flow of a frontend that is not on the kernel path.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::elements::{Element, KernelPlan, Part, frontend_elements};
use super::step::KernelKeys;
use crate::catalog::{Frontend, Protocol, ServiceTable};

/// The verdict elements installed, by frontend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdicts {
    vips: imbl::OrdMap<(IpAddr, Protocol, u16), Element>,
    node_ports: imbl::OrdMap<(bool, Protocol, u16), Element>,
}

/// Whether `e` is a verdict-map element.
pub fn is_verdict(e: &Element) -> bool {
    matches!(e.set, "kfront4" | "kfront6" | "knp4" | "knp6")
}

/// The verdict element of a one-frontend plan (`None`: its table does
/// not fit).
fn verdict_of(one: &KernelPlan) -> Option<Element> {
    frontend_elements(one, Some(Part::Verdicts))
        .flatten()
        .find(is_verdict)
}

fn vip_verdict(plan: &KernelPlan, key: &(IpAddr, Protocol, u16)) -> Option<Element> {
    let k = plan.vips.get(key)?;
    let mut one = KernelPlan::default();
    one.vips.insert(*key, k.clone());
    verdict_of(&one)
}

fn node_port_verdict(plan: &KernelPlan, key: &(bool, Protocol, u16)) -> Option<Element> {
    let k = plan.node_ports.get(key)?;
    let mut one = KernelPlan::default();
    one.node_ports.insert(*key, k.clone());
    verdict_of(&one)
}

fn in_table_vip(table: &ServiceTable, &(ip, protocol, port): &(IpAddr, Protocol, u16)) -> bool {
    table
        .frontends
        .get(&Frontend { ip, protocol, port })
        .is_some()
}

fn in_table_node_port(table: &ServiceTable, &(_, proto, port): &(bool, Protocol, u16)) -> bool {
    table.node_ports.get(&(proto, port)).is_some()
}

impl Verdicts {
    /// The verdicts of `plan` alone (a table filled or replaced whole).
    pub fn of(plan: &KernelPlan) -> Self {
        let mut out = Verdicts::default();
        for key in plan.vips.keys() {
            if let Some(e) = vip_verdict(plan, key) {
                out.vips.insert(*key, e);
            }
        }
        for key in plan.node_ports.keys() {
            if let Some(e) = node_port_verdict(plan, key) {
                out.node_ports.insert(*key, e);
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.vips.is_empty() && self.node_ports.is_empty()
    }

    pub fn len(&self) -> usize {
        self.vips.len() + self.node_ports.len()
    }

    /// A step's verdicts: in `have` and `want` (made from the plans, for
    /// the frontends `keys` names) the verdict elements are replaced by
    /// those installed and those to keep; returns what is installed after.
    pub fn step(
        &self,
        plan: &KernelPlan,
        keys: &KernelKeys,
        table: &ServiceTable,
        have: &mut BTreeSet<Element>,
        want: &mut BTreeSet<Element>,
    ) -> Verdicts {
        have.retain(|e| !is_verdict(e));
        want.retain(|e| !is_verdict(e));
        let mut out = self.clone();
        for key in &keys.vips {
            let kept = self.vips.get(key);
            let next = vip_verdict(plan, key)
                .or_else(|| kept.filter(|_| in_table_vip(table, key)).cloned());
            settle(&mut out.vips, *key, kept, next, have, want);
        }
        for key in &keys.node_ports {
            let kept = self.node_ports.get(key);
            let next = node_port_verdict(plan, key)
                .or_else(|| kept.filter(|_| in_table_node_port(table, key)).cloned());
            settle(&mut out.node_ports, *key, kept, next, have, want);
        }
        out
    }

    /// The same over every frontend, for a whole diff.
    pub fn whole(
        &self,
        plan: &KernelPlan,
        table: &ServiceTable,
        have: &mut BTreeSet<Element>,
        want: &mut BTreeSet<Element>,
    ) -> Verdicts {
        have.retain(|e| !is_verdict(e));
        want.retain(|e| !is_verdict(e));
        let mut out = Verdicts::of(plan);
        for (key, e) in &self.vips {
            if !out.vips.contains_key(key) && in_table_vip(table, key) {
                out.vips.insert(*key, e.clone());
            }
        }
        for (key, e) in &self.node_ports {
            if !out.node_ports.contains_key(key) && in_table_node_port(table, key) {
                out.node_ports.insert(*key, e.clone());
            }
        }
        have.extend(self.vips.values().chain(self.node_ports.values()).cloned());
        want.extend(out.vips.values().chain(out.node_ports.values()).cloned());
        out
    }
}

/// One frontend's verdict: installed `kept`, wanted `next`.
fn settle<K: Ord + Clone>(
    out: &mut imbl::OrdMap<K, Element>,
    key: K,
    kept: Option<&Element>,
    next: Option<Element>,
    have: &mut BTreeSet<Element>,
    want: &mut BTreeSet<Element>,
) {
    if let Some(e) = kept {
        have.insert(e.clone());
    }
    match next {
        Some(e) => {
            want.insert(e.clone());
            out.insert(key, e);
        }
        None => {
            out.remove(&key);
        }
    }
}
