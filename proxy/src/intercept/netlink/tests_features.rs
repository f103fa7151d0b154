//! Round trips of the kernel datapath's maps and the source-range sets:
//! the same changes written as `nft` text in one namespace and over
//! netlink in another must leave the same elements (`nft -j list`), in
//! the real table skeleton (`ruleset::render`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use super::tests::{Netns, TABLE};
use super::*;
use crate::catalog::Protocol;
use crate::config::InterceptConfig;
use crate::intercept::Elements;
use crate::intercept::kernel::{self, KernelElements, KernelPlan, KernelPort};
use crate::policy::{SlotKey, SlotTable};

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

fn a(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn plan_a() -> KernelPlan {
    let mut plan = KernelPlan::default();
    plan.vips.insert(
        (a("10.96.0.10"), Protocol::Tcp, 80),
        port(
            SlotKey::Sequence,
            &["10.244.1.2:8080", "10.244.1.3:8080"],
            67,
            true,
        ),
    );
    plan.vips.insert(
        (a("10.96.0.11"), Protocol::Udp, 53),
        port(SlotKey::FiveTuple, &["10.244.1.4:53"], 67, false),
    );
    plan.vips.insert(
        (a("fd00::10"), Protocol::Tcp, 443),
        port(SlotKey::Random, &["[fd00:244::2]:8443"], 131, false),
    );
    plan.node_ports.insert(
        (true, Protocol::Udp, 30053),
        port(SlotKey::ClientAddress, &["[fd00:244::5]:53"], 67, true),
    );
    plan.node_ports.insert(
        (false, Protocol::Tcp, 30080),
        port(SlotKey::Random, &["10.244.1.2:8080"], 67, false),
    );
    plan
}

/// A slot moved, a frontend left (to the proxy: drained), one arrived.
fn plan_b() -> KernelPlan {
    let mut plan = plan_a();
    let mut moved = plan.vips[&(a("10.96.0.10"), Protocol::Tcp, 80)].clone();
    Arc::make_mut(&mut moved.table).slots[1] = 0;
    plan.vips
        .insert((a("10.96.0.10"), Protocol::Tcp, 80), moved);
    plan.vips.remove(&(a("10.96.0.11"), Protocol::Udp, 53));
    plan.node_ports.remove(&(false, Protocol::Tcp, 30080));
    plan.vips.insert(
        (a("fd00::12"), Protocol::Udp, 53),
        port(SlotKey::Sequence, &["[fd00:244::7]:5353"], 67, true),
    );
    plan
}

fn ranges(items: &[(&str, u16, &str, u8)]) -> Elements {
    let mut e = Elements::default();
    for &(ip, port, net, len) in items {
        e.source_ranges
            .restricted
            .insert((a(ip), Protocol::Tcp, port));
        e.source_ranges
            .allowed
            .insert((a(ip), Protocol::Tcp, port, a(net), len));
    }
    e
}

/// `nft -j` elements without `expires`, which depends on when we look.
fn normalized(ns: &Netns) -> BTreeMap<String, BTreeSet<String>> {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("expires");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    ns.elements()
        .into_iter()
        .map(|(set, elems)| {
            let elems = elems
                .into_iter()
                .map(|e| {
                    let mut v: serde_json::Value = serde_json::from_str(&e).expect("element JSON");
                    strip(&mut v);
                    v.to_string()
                })
                .collect();
            (set, elems)
        })
        .collect()
}

/// One step, both ways: text into `text_ns`, netlink into `nl_ns`.
struct Step<'a> {
    kernel: (&'a KernelElements, &'a KernelElements),
    sets: (&'a Elements, &'a Elements),
    drained: &'a [(IpAddr, Protocol, u16)],
    drained_np: &'a [(Protocol, u16)],
}

fn apply_both(text_ns: &Netns, nl_ns: &Netns, s: &Step) {
    let (k_new, k_old) = s.kernel;
    let (e_new, e_old) = s.sets;
    let mut text = e_new.diff_commands(e_old, TABLE);
    text.push_str(&k_new.diff_commands(k_old, TABLE));
    text.push_str(&kernel::drain_commands(
        TABLE,
        s.drained.iter().copied(),
        3600,
    ));
    text.push_str(&kernel::drain_node_port_commands(
        TABLE,
        s.drained_np.iter().copied(),
        3600,
    ));
    text_ns.nft(&text);
    let mut batch = e_new.diff_batch(e_old, TABLE);
    batch.extend(
        k_new
            .diff_batch(k_old, TABLE)
            .expect("kernel elements encode"),
    );
    batch.extend(kernel::drain_batch(TABLE, s.drained.iter().copied(), 3600));
    batch.extend(kernel::drain_node_port_batch(
        TABLE,
        s.drained_np.iter().copied(),
        3600,
    ));
    let applied = nl_ns.within(|| Writer::default().apply(&batch));
    assert_eq!(applied.expect("one netlink batch applies"), 1);
}

#[test]
fn kernel_maps_drains_and_source_ranges_match_what_nft_text_writes() {
    let cfg = InterceptConfig {
        table: TABLE.into(),
        ..InterceptConfig::default()
    };
    let skeleton = crate::intercept::ruleset::render(&cfg, 15001, &Elements::default(), true);
    let (text_ns, nl_ns) = (Netns::new(), Netns::new());
    text_ns.nft(&skeleton);
    nl_ns.nft(&skeleton);

    let empty_k = KernelElements::default();
    let k_a = kernel::elements(&plan_a());
    let k_b = kernel::elements(&plan_b());
    let empty_e = Elements::default();
    let e_a = ranges(&[
        ("198.51.100.7", 80, "192.0.2.0", 24),
        ("198.51.100.7", 443, "203.0.113.9", 32),
        ("2001:db8::7", 80, "2001:db8:1::", 48),
    ]);
    let mut e_b = ranges(&[
        ("198.51.100.7", 80, "192.0.2.0", 25),
        ("2001:db8::7", 80, "2001:db8:1::", 48),
    ]);
    e_b.source_ranges.allowed.insert((
        a("2001:db8::7"),
        Protocol::Tcp,
        80,
        a("2001:db8:2::1"),
        128,
    ));

    apply_both(
        &text_ns,
        &nl_ns,
        &Step {
            kernel: (&k_a, &empty_k),
            sets: (&e_a, &empty_e),
            drained: &[],
            drained_np: &[],
        },
    );
    let first = normalized(&nl_ns);
    assert_eq!(first, normalized(&text_ns));
    // Every kind is there (equal and empty would prove nothing).
    for (set, n) in [
        ("kfront4", 2),
        ("kfront6", 1),
        ("knp4", 1),
        ("knp6", 1),
        // Round robin over 2 and over 1: one period each.
        ("kslot4", 2 + 1),
        ("kslot6", 1),
        ("knpslot6", 1),
        ("kmasq4", 1),
        ("knpmasq6", 1),
        ("khairpin4", 3),
        ("lbsr4", 2),
        ("lbsr_allow4", 2),
        ("lbsr_allow6", 1),
    ] {
        assert_eq!(first[set].len(), n, "{set}: {:?}", first[set]);
    }

    apply_both(
        &text_ns,
        &nl_ns,
        &Step {
            kernel: (&k_b, &k_a),
            sets: (&e_b, &e_a),
            drained: &[(a("10.96.0.11"), Protocol::Udp, 53)],
            drained_np: &[(Protocol::Tcp, 30080)],
        },
    );
    let second = normalized(&nl_ns);
    assert_eq!(second, normalized(&text_ns));
    assert_eq!(second["kdrain4"].len(), 1, "{:?}", second["kdrain4"]);
    assert!(
        second["kdrain4"]
            .iter()
            .all(|e| e.contains("\"timeout\":3600")),
        "{:?}",
        second["kdrain4"]
    );
    assert_eq!(second["kdrainnp"].len(), 1);
    assert_eq!(second["kslot6"].len(), 1 + 1);
    // The moved slot broke 10.96.0.10's period: every slot, another chain.
    assert_eq!(second["kslot4"].len(), 67);
    assert_eq!(second["lbsr_allow6"].len(), 2);

    // And back to nothing: every element deleted by its netlink encoding.
    apply_both(
        &text_ns,
        &nl_ns,
        &Step {
            kernel: (&empty_k, &k_b),
            sets: (&empty_e, &e_b),
            drained: &[],
            drained_np: &[],
        },
    );
    let last = normalized(&nl_ns);
    assert_eq!(last, normalized(&text_ns));
    for (set, elems) in &last {
        if !set.starts_with("kdrain") {
            assert!(elems.is_empty(), "{set}: {elems:?}");
        }
    }
}
