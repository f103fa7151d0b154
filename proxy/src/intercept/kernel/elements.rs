//! The kernel datapath's contents as set and map ELEMENTS (set name, key,
//! optional data), computed by a pure function from each kernel-path
//! frontend's slot table: a table change, an endpoint change or a move
//! between datapaths is element updates only, whichever writer (an `nft`
//! batch or netlink) carries them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::rules::{MAX_PERIOD, SLOT_COUNTS, dnat_chain};
use crate::catalog::Protocol;
use crate::policy::SlotTable;

/// One element: `set` `{ key }` or `{ key : data }`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Element {
    /// One of a fixed few names: not an allocation per element.
    pub set: &'static str,
    pub key: String,
    pub data: Option<String>,
}

/// What a kernel-path frontend executes: the slot table and the endpoints
/// its indices refer to (all of the frontend's family).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPort {
    pub table: Arc<SlotTable>,
    pub endpoints: Arc<[SocketAddr]>,
    /// Masquerade new flows (external frontends, externalTrafficPolicy
    /// Cluster), as kube-proxy does.
    pub masquerade: bool,
}

impl KernelPort {
    /// Whether the rules have a chain for this table.
    pub fn fits(&self) -> bool {
        SLOT_COUNTS.contains(&self.table.slots.len())
            && self
                .table
                .slots
                .iter()
                .all(|&i| (i as usize) < self.endpoints.len())
    }

    /// The slots the kernel holds: the table's repeated prefix when the
    /// rules have a chain for its period, else every slot. The same
    /// decision: slot `s` of the table is slot `s mod p` of the prefix,
    /// so every value of the slot expression `mod p` reaches the
    /// endpoint the table gives it (see ARCHITECTURE.md, "Kernel
    /// datapath").
    pub fn installed_slots(&self) -> &[u32] {
        let slots = &self.table.slots;
        match self.table.period() {
            p if p <= MAX_PERIOD => &slots[..p],
            _ => slots,
        }
    }
}

/// Every kernel-path frontend of the node. Persistent maps: the planner
/// hands a copy to the interceptor at every sync, which keeps the one it
/// installed, without copying the entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelPlan {
    pub vips: imbl::OrdMap<(IpAddr, Protocol, u16), KernelPort>,
    /// NodePorts per family (`true`: IPv6), protocol and port.
    pub node_ports: imbl::OrdMap<(bool, Protocol, u16), KernelPort>,
}

impl KernelPlan {
    pub fn is_empty(&self) -> bool {
        self.vips.is_empty() && self.node_ports.is_empty()
    }
}

/// The hairpin element of an endpoint address (`ep . ep`: masquerade a
/// Pod that reaches itself through a kernel frontend).
pub fn hairpin_element(ip: IpAddr) -> Element {
    el(
        pick(ip.is_ipv6(), "khairpin4", "khairpin6"),
        format!("{ip} . {ip}"),
        None,
    )
}

/// The desired elements of every kernel-datapath set and map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelElements {
    pub elements: BTreeSet<Element>,
}

fn fam(v6: bool) -> u8 {
    if v6 { 6 } else { 4 }
}

fn pick(v6: bool, v4_name: &'static str, v6_name: &'static str) -> &'static str {
    if v6 { v6_name } else { v4_name }
}

fn el(set: &'static str, key: String, data: Option<String>) -> Element {
    Element { set, key, data }
}

/// Which of a frontend's own elements: those that make it reachable (its
/// verdict-map element and its gate element, filled last into a fresh
/// table), or the rest (masquerade mark, slots).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Verdicts,
    Slots,
}

/// A VIP frontend's own elements (not the shared hairpin and reply
/// endpoints: [`shared_elements`]), of one part or both.
fn vip_elements(
    (ip, proto, port): (IpAddr, Protocol, u16),
    k: &KernelPort,
    part: Option<Part>,
    out: &mut Vec<Element>,
) {
    let v6 = ip.is_ipv6();
    let front = format!("{ip} . {} . {port}", proto.nft_name());
    let slots = k.installed_slots();
    if part != Some(Part::Slots) {
        let chain = dnat_chain(false, v6, k.table.key, slots.len());
        out.push(super::gate::vip(ip, proto, port));
        out.push(el(
            pick(v6, "kfront4", "kfront6"),
            front.clone(),
            Some(format!("goto {chain}")),
        ));
    }
    if part == Some(Part::Verdicts) {
        return;
    }
    if k.masquerade {
        out.push(el(pick(v6, "kmasq4", "kmasq6"), front.clone(), None));
    }
    for (slot, &i) in slots.iter().enumerate() {
        let ep = k.endpoints[i as usize];
        out.push(el(
            pick(v6, "kslot4", "kslot6"),
            format!("{front} . {slot}"),
            Some(format!("{} . {}", ep.ip(), ep.port())),
        ));
    }
}

/// A NodePort frontend's own elements, as [`vip_elements`].
fn node_port_elements(
    (v6, proto, port): (bool, Protocol, u16),
    k: &KernelPort,
    part: Option<Part>,
    out: &mut Vec<Element>,
) {
    let front = format!("{} . {port}", proto.nft_name());
    let slots = k.installed_slots();
    if part != Some(Part::Slots) {
        let chain = dnat_chain(true, v6, k.table.key, slots.len());
        out.push(super::gate::node_port(v6, proto, port));
        out.push(el(
            pick(v6, "knp4", "knp6"),
            front.clone(),
            Some(format!("goto {chain}")),
        ));
    }
    if part == Some(Part::Verdicts) {
        return;
    }
    if k.masquerade {
        out.push(el(pick(v6, "knpmasq4", "knpmasq6"), front.clone(), None));
    }
    for (slot, &i) in slots.iter().enumerate() {
        let ep = k.endpoints[i as usize];
        out.push(el(
            pick(v6, "knpslot4", "knpslot6"),
            format!("{front} . {slot}"),
            Some(format!("{} . {}", ep.ip(), ep.port())),
        ));
    }
}

/// The own elements of every frontend of `plan` whose table fits the
/// rules, one frontend at a time (of one part, or both): a fill streams
/// them instead of holding them all.
pub fn frontend_elements(
    plan: &KernelPlan,
    part: Option<Part>,
) -> impl Iterator<Item = Vec<Element>> + '_ {
    let vips = plan
        .vips
        .iter()
        .filter(|(_, k)| k.fits())
        .map(move |(&key, k)| {
            let mut out = Vec::new();
            vip_elements(key, k, part, &mut out);
            out
        });
    let node_ports = plan
        .node_ports
        .iter()
        .filter(|(_, k)| k.fits())
        .map(move |(&key, k)| {
            let mut out = Vec::new();
            node_port_elements(key, k, part, &mut out);
            out
        });
    vips.chain(node_ports)
}

/// The elements several frontends of `plan` may share: the hairpin
/// addresses (the reply gate's endpoints depend on the proxy path too:
/// `replies.rs`).
pub fn shared_elements(plan: &KernelPlan) -> impl Iterator<Item = Element> {
    let mut hairpin = BTreeSet::new();
    let fitting = plan
        .vips
        .values()
        .chain(plan.node_ports.values())
        .filter(|k| k.fits());
    for k in fitting {
        hairpin.extend(k.endpoints.iter().map(|e| e.ip()));
    }
    hairpin.into_iter().map(hairpin_element)
}

/// The elements for `plan`, the raw chain's gate sets (`gate.rs`)
/// included. Frontends whose table does not fit the rules are left out
/// (the caller keeps them on the proxy: `KernelPort::fits`).
pub fn elements(plan: &KernelPlan) -> KernelElements {
    let mut out: BTreeSet<Element> = frontend_elements(plan, None).flatten().collect();
    out.extend(shared_elements(plan));
    KernelElements { elements: out }
}

impl KernelElements {
    /// `nft` commands that turn `old` into `self`: deletions first (a map
    /// element whose data changes is deleted and added again), in one
    /// batch, so the kernel switches atomically.
    pub fn diff_commands(&self, old: &KernelElements, table: &str) -> String {
        let mut out = String::new();
        let removed = old.elements.difference(&self.elements);
        let added = self.elements.difference(&old.elements);
        emit(&mut out, "delete", table, removed, false);
        emit(&mut out, "add", table, added, true);
        out
    }

    pub fn len(&self) -> usize {
        self.elements.len()
    }

    pub fn is_empty(&self) -> bool {
        self.elements.is_empty()
    }
}

/// One command per set, elements comma-separated.
fn emit<'a>(
    out: &mut String,
    verb: &str,
    table: &str,
    elements: impl Iterator<Item = &'a Element>,
    with_data: bool,
) {
    let mut by_set: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for e in elements {
        let text = match (&e.data, with_data) {
            (Some(d), true) => format!("{} : {d}", e.key),
            _ => e.key.clone(),
        };
        by_set.entry(e.set).or_default().push(text);
    }
    for (set, items) in by_set {
        for chunk in items.chunks(4096) {
            let _ = writeln!(
                out,
                "{verb} element inet {table} {set} {{ {} }}",
                chunk.join(", ")
            );
        }
    }
}

/// Elements that mark NodePorts leaving the kernel path (see
/// [`drain_commands`]).
pub fn drain_node_port_commands(
    table: &str,
    left: impl IntoIterator<Item = (Protocol, u16)>,
    timeout_s: u64,
) -> String {
    let mut out = String::new();
    for (proto, port) in left {
        let _ = writeln!(
            out,
            "add element inet {table} kdrainnp {{ {} . {port} timeout {timeout_s}s }}",
            proto.nft_name()
        );
    }
    out
}

/// Elements that mark frontends leaving the kernel path, with a timeout:
/// `add` only (an expired element must never be deleted by name).
pub fn drain_commands(
    table: &str,
    left: impl IntoIterator<Item = (IpAddr, Protocol, u16)>,
    timeout_s: u64,
) -> String {
    let mut out = String::new();
    for (ip, proto, port) in left {
        let _ = writeln!(
            out,
            "add element inet {table} kdrain{} {{ {ip} . {} . {port} timeout {timeout_s}s }}",
            fam(ip.is_ipv6()),
            proto.nft_name()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::SlotKey;

    fn port(key: SlotKey, endpoints: &[&str], slots: usize, masquerade: bool) -> KernelPort {
        let n = endpoints.len() as u32;
        KernelPort {
            table: Arc::new(SlotTable {
                key,
                slots: (0..slots as u32).map(|s| s % n).collect(),
            }),
            endpoints: endpoints.iter().map(|e| e.parse().expect("addr")).collect(),
            masquerade,
        }
    }

    fn vip(ip: &str, port: u16) -> (IpAddr, Protocol, u16) {
        (ip.parse().expect("ip"), Protocol::Tcp, port)
    }

    /// A table of two endpoints that repeats nothing (weighted 2:1 but
    /// for one slot).
    fn uneven(endpoints: &[&str], slots: usize) -> KernelPort {
        let mut k = port(SlotKey::Sequence, endpoints, slots, false);
        let t = Arc::make_mut(&mut k.table);
        t.slots = (0..slots as u32).map(|s| u32::from(s % 3 == 2)).collect();
        t.slots[0] = 1;
        k
    }

    #[test]
    fn a_frontend_is_a_verdict_element_and_one_map_element_per_slot() {
        let mut plan = KernelPlan::default();
        let k = uneven(&["10.244.1.2:8080", "10.244.1.3:8080"], 257);
        assert_eq!(k.installed_slots().len(), 257);
        plan.vips.insert(vip("10.96.0.10", 80), k);
        let e = elements(&plan);
        let kfront: Vec<_> = e.elements.iter().filter(|e| e.set == "kfront4").collect();
        assert_eq!(kfront.len(), 1);
        assert_eq!(kfront[0].key, "10.96.0.10 . tcp . 80");
        assert_eq!(kfront[0].data.as_deref(), Some("goto kd4_seq_257"));
        let slots: Vec<_> = e.elements.iter().filter(|e| e.set == "kslot4").collect();
        assert_eq!(slots.len(), 257);
        assert!(e.elements.contains(&Element {
            set: "kslot4",
            key: "10.96.0.10 . tcp . 80 . 2".into(),
            data: Some("10.244.1.3 . 8080".into()),
        }));
        assert!(
            e.elements
                .iter()
                .any(|e| e.set == "khairpin4" && e.key == "10.244.1.2 . 10.244.1.2")
        );
        assert!(!e.elements.iter().any(|e| e.set == "kmasq4"));
    }

    #[test]
    fn a_repeating_table_is_installed_as_one_period() {
        let mut plan = KernelPlan::default();
        let eps = ["10.244.1.2:80", "10.244.1.3:80", "10.244.1.4:80"];
        plan.vips.insert(
            vip("10.96.0.10", 80),
            port(SlotKey::Random, &eps, 67, false),
        );
        let e = elements(&plan);
        assert!(e.elements.contains(&Element {
            set: "kfront4",
            key: "10.96.0.10 . tcp . 80".into(),
            data: Some("goto kd4_rand_3".into()),
        }));
        let slots: Vec<_> = e
            .elements
            .iter()
            .filter(|e| e.set == "kslot4")
            .map(|e| (e.key.as_str(), e.data.as_deref()))
            .collect();
        assert_eq!(
            slots,
            [
                ("10.96.0.10 . tcp . 80 . 0", Some("10.244.1.2 . 80")),
                ("10.96.0.10 . tcp . 80 . 1", Some("10.244.1.3 . 80")),
                ("10.96.0.10 . tcp . 80 . 2", Some("10.244.1.4 . 80")),
            ]
        );
        // 65 endpoints in 521 slots: a period past the chains, every slot.
        let many: Vec<String> = (0..65).map(|i| format!("10.244.2.{i}:80")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let k = port(SlotKey::Sequence, &many, 521, false);
        assert_eq!(k.table.period(), 65);
        assert_eq!(k.installed_slots().len(), 521);
    }

    #[test]
    fn a_period_change_is_an_element_delta() {
        let mut plan = KernelPlan::default();
        let two = ["10.244.1.2:80", "10.244.1.3:80"];
        plan.vips.insert(
            vip("10.96.0.10", 80),
            port(SlotKey::Sequence, &two, 67, false),
        );
        let before = elements(&plan);
        // A third endpoint: period 2 → 3, same slot count.
        let three = ["10.244.1.2:80", "10.244.1.3:80", "10.244.1.4:80"];
        plan.vips.insert(
            vip("10.96.0.10", 80),
            port(SlotKey::Sequence, &three, 67, false),
        );
        let after = elements(&plan);
        let batch = after.diff_commands(&before, "sy");
        assert_eq!(
            batch,
            "delete element inet sy kfront4 { 10.96.0.10 . tcp . 80 }\n\
             add element inet sy kfront4 { 10.96.0.10 . tcp . 80 : goto kd4_seq_3 }\n\
             add element inet sy khairpin4 { 10.244.1.4 . 10.244.1.4 }\n\
             add element inet sy kslot4 { 10.96.0.10 . tcp . 80 . 2 : 10.244.1.4 . 80 }\n"
        );
        // One slot off the pattern: the whole table, in the same delta.
        let mut k = port(SlotKey::Sequence, &three, 67, false);
        Arc::make_mut(&mut k.table).slots[1] = 0;
        plan.vips.insert(vip("10.96.0.10", 80), k);
        let whole = elements(&plan);
        let batch = whole.diff_commands(&after, "sy");
        assert!(
            batch.contains(
                "add element inet sy kfront4 { 10.96.0.10 . tcp . 80 : goto kd4_seq_67 }"
            )
        );
        assert_eq!(
            whole.elements.iter().filter(|e| e.set == "kslot4").count(),
            67
        );
        // Slots 0 and 2 stay; slot 1 moved to the first endpoint.
        assert!(batch.contains("delete element inet sy kslot4 { 10.96.0.10 . tcp . 80 . 1 }\n"));
        assert_eq!(batch.matches("delete element").count(), 2);
    }

    #[test]
    fn ipv6_node_ports_and_masquerade_land_in_their_own_sets() {
        let mut plan = KernelPlan::default();
        plan.node_ports.insert(
            (true, Protocol::Udp, 30053),
            port(SlotKey::ClientAddress, &["[fd00::5]:53"], 521, true),
        );
        let e = elements(&plan);
        assert!(e.elements.contains(&Element {
            set: "knp6",
            key: "udp . 30053".into(),
            data: Some("goto kn6_client_1".into()),
        }));
        assert!(
            e.elements
                .iter()
                .any(|e| e.set == "knpmasq6" && e.key == "udp . 30053")
        );
        assert_eq!(e.elements.iter().filter(|e| e.set == "knpslot6").count(), 1);
        assert!(
            e.elements
                .iter()
                .any(|e| e.set == "khairpin6" && e.key == "fd00::5 . fd00::5")
        );
    }

    #[test]
    fn tables_that_do_not_fit_the_rules_are_left_out() {
        let mut plan = KernelPlan::default();
        plan.vips.insert(
            vip("10.96.0.11", 80),
            port(SlotKey::Random, &["10.244.1.2:80"], 100, false),
        );
        let mut bad = port(SlotKey::Random, &["10.244.1.2:80"], 257, false);
        Arc::make_mut(&mut bad.table).slots[3] = 7;
        plan.vips.insert(vip("10.96.0.12", 80), bad);
        assert!(elements(&plan).is_empty());
    }

    #[test]
    fn an_endpoint_change_only_rewrites_the_slots_that_moved() {
        let mut plan = KernelPlan::default();
        let eps = ["10.244.1.2:80", "10.244.1.3:80"];
        plan.vips.insert(vip("10.96.0.10", 80), uneven(&eps, 257));
        let before = elements(&plan);
        let mut k = uneven(&eps, 257);
        Arc::make_mut(&mut k.table).slots[1] = 1;
        plan.vips.insert(vip("10.96.0.10", 80), k);
        let after = elements(&plan);
        let batch = after.diff_commands(&before, "switchyard");
        assert_eq!(
            batch,
            "delete element inet switchyard kslot4 { 10.96.0.10 . tcp . 80 . 1 }\n\
             add element inet switchyard kslot4 { 10.96.0.10 . tcp . 80 . 1 : 10.244.1.3 . 80 }\n"
        );
        assert_eq!(after.diff_commands(&after, "switchyard"), "");
        let gone = KernelElements::default().diff_commands(&after, "switchyard");
        assert!(
            gone.contains("delete element inet switchyard kfront4 { 10.96.0.10 . tcp . 80 }\n")
        );
        assert!(gone.contains("delete element inet switchyard kvip4 { 10.96.0.10 . tcp . 80 }\n"));
        assert!(!gone.contains("add element"));
    }

    #[test]
    fn node_port_drains_are_added_with_a_timeout() {
        let text = drain_node_port_commands("switchyard", [(Protocol::Udp, 30053)], 60);
        assert_eq!(
            text,
            "add element inet switchyard kdrainnp { udp . 30053 timeout 60s }\n"
        );
    }

    #[test]
    fn drains_are_added_with_a_timeout() {
        let text = drain_commands("switchyard", [vip("fd00::a", 443)], 600);
        assert_eq!(
            text,
            "add element inet switchyard kdrain6 { fd00::a . tcp . 443 timeout 600s }\n"
        );
    }
}
