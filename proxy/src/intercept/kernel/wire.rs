//! The kernel datapath's elements as netlink element changes, so that they
//! go out in the same atomic batch as the proxy's sets (a frontend moving
//! between the datapaths is never in neither).
//!
//! `elements.rs` names each element the way nft prints it; the set's type
//! (see `rules.rs`) decides how each ` . `-separated field is encoded.

use std::net::IpAddr;

use super::elements::{
    Element, KernelElements, KernelPlan, Part, frontend_elements, shared_elements,
};
use crate::catalog::Protocol;
use crate::intercept::netlink::{self, Batch, Family, Verb, key};

/// Why an element could not be encoded: a bug in `elements.rs`, never
/// outside input, but named rather than panicked on.
#[derive(Debug, thiserror::Error)]
#[error("kernel datapath element `{set} {{ {text} }}` has no netlink encoding")]
pub struct EncodeError {
    pub set: String,
    pub text: String,
}

fn bad(set: &str, text: &str) -> EncodeError {
    EncodeError {
        set: set.to_owned(),
        text: text.to_owned(),
    }
}

/// One field (an address, a protocol or a port) appended to `out`, then
/// padded to 4 bytes as in a concatenation. No allocation: a first fill
/// at 10k frontends encodes ~650k elements.
fn push_field(out: &mut Vec<u8>, text: &str) -> Option<()> {
    match text {
        "tcp" => out.push(key::proto(Protocol::Tcp)),
        "udp" => out.push(key::proto(Protocol::Udp)),
        // Digits only: a port (no address is written so).
        _ if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            out.extend_from_slice(&text.parse::<u16>().ok()?.to_be_bytes());
        }
        _ => match text.parse::<IpAddr>().ok()? {
            IpAddr::V4(v4) => out.extend_from_slice(&v4.octets()),
            IpAddr::V6(v6) => out.extend_from_slice(&v6.octets()),
        },
    }
    out.resize(out.len().next_multiple_of(4), 0);
    Some(())
}

/// A concatenation; in the slot maps the last key field is the slot
/// number (`numgen`/`jhash`: host-order u32), not a port.
fn concat(text: &str, last_is_slot: bool) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(24);
    let mut parts = text.split(" . ").peekable();
    while let Some(part) = parts.next() {
        if last_is_slot && parts.peek().is_none() {
            out.extend_from_slice(&key::slot(part.parse().ok()?));
        } else {
            push_field(&mut out, part)?;
        }
    }
    Some(out)
}

/// The element `e` as it goes over netlink.
pub fn encode(e: &Element, with_data: bool) -> Result<netlink::Element, EncodeError> {
    let data = e.data.as_deref().filter(|_| with_data);
    encode_key(e.set, e.key.clone(), data)
}

/// `encode`, taking the element: its key text becomes the label.
fn encode_owned(e: Element, with_data: bool) -> Result<netlink::Element, EncodeError> {
    let data = e.data.as_deref().filter(|_| with_data);
    encode_key(e.set, e.key, data)
}

fn encode_key(
    set: &'static str,
    key: String,
    data: Option<&str>,
) -> Result<netlink::Element, EncodeError> {
    let slot_map = set.starts_with("kslot") || set.starts_with("knpslot");
    let k = concat(&key, slot_map).ok_or_else(|| bad(set, &key))?;
    let mut label = key;
    if let Some(d) = data {
        label.push_str(" : ");
        label.push_str(d);
    }
    let out = netlink::Element::key(k, label);
    Ok(match data {
        Some(d) => match d.strip_prefix("goto ") {
            Some(chain) => out.with_goto(chain),
            None => out.with_data(concat(d, false).ok_or_else(|| bad(set, d))?),
        },
        None => out,
    })
}

impl KernelElements {
    /// The same changes as `diff_commands`, as netlink changes: deletions
    /// first, a map element whose data changed deleted and added again.
    pub fn diff_batch(&self, old: &KernelElements, table: &str) -> Result<Batch, EncodeError> {
        let mut out = Batch::default();
        if old.is_empty() {
            out.changes.reserve_exact(self.len());
        }
        for e in old.elements.difference(&self.elements) {
            out.push(Verb::Delete, Family::Inet, table, e.set, encode(e, false)?);
        }
        for e in self.elements.difference(&old.elements) {
            out.push(Verb::Add, Family::Inet, table, e.set, encode(e, true)?);
        }
        Ok(out)
    }
}

/// Every element of `plan` as an addition to empty sets, in batches of at
/// most `chunk` elements, made one frontend at a time, so that a first
/// sync at scale never holds its elements (~160k at 10k frontends of ten
/// endpoints) at once, as strings or encoded. The verdict elements come
/// last: a frontend is reachable only once its slots are in.
pub fn fill_batches<'a>(
    plan: &'a KernelPlan,
    table: &'a str,
    chunk: usize,
) -> impl Iterator<Item = Result<Batch, EncodeError>> + 'a {
    let slots = frontend_elements(plan, Some(Part::Slots)).flatten();
    let verdicts = frontend_elements(plan, Some(Part::Verdicts)).flatten();
    let mut all = slots
        .chain(std::iter::once(()).flat_map(move |()| shared_elements(plan)))
        .chain(verdicts)
        .peekable();
    std::iter::from_fn(move || {
        all.peek()?;
        let mut out = Batch::default();
        for e in all.by_ref().take(chunk.max(1)) {
            let set = e.set;
            match encode_owned(e, true) {
                Ok(n) => out.push(Verb::Add, Family::Inet, table, set, n),
                Err(err) => return Some(Err(err)),
            }
        }
        Some(Ok(out))
    })
}

/// Elements with a timeout in `set4`/`set6` (by the address's family):
/// `add` only (an expired element must never be deleted by name).
fn timed_vips(
    table: &str,
    (set4, set6): (&'static str, &'static str),
    frontends: impl IntoIterator<Item = (IpAddr, Protocol, u16)>,
    timeout_s: u64,
) -> Batch {
    let mut out = Batch::default();
    for (ip, proto, port) in frontends {
        let set = if ip.is_ipv6() { set6 } else { set4 };
        let el = netlink::Element::key(
            key::addr_proto_port(ip, proto, port),
            format!("{ip} . {} . {port} timeout {timeout_s}s", proto.nft_name()),
        )
        .with_timeout_ms(timeout_s.saturating_mul(1000));
        out.push(Verb::Add, Family::Inet, table, set, el);
    }
    out
}

/// NodePort elements with a timeout in `set`, as [`timed_vips`].
fn timed_node_ports(
    table: &str,
    set: &'static str,
    node_ports: impl IntoIterator<Item = (Protocol, u16)>,
    timeout_s: u64,
) -> Batch {
    let mut out = Batch::default();
    for (proto, port) in node_ports {
        let el = netlink::Element::key(
            key::proto_port(proto, port),
            format!("{} . {port} timeout {timeout_s}s", proto.nft_name()),
        )
        .with_timeout_ms(timeout_s.saturating_mul(1000));
        out.push(Verb::Add, Family::Inet, table, set, el);
    }
    out
}

/// `kdrain4`/`kdrain6` elements for frontends that left the kernel path.
pub fn drain_batch(
    table: &str,
    left: impl IntoIterator<Item = (IpAddr, Protocol, u16)>,
    timeout_s: u64,
) -> Batch {
    timed_vips(table, ("kdrain4", "kdrain6"), left, timeout_s)
}

/// `kdrainnp` elements for NodePorts that left the kernel path.
pub fn drain_node_port_batch(
    table: &str,
    left: impl IntoIterator<Item = (Protocol, u16)>,
    timeout_s: u64,
) -> Batch {
    timed_node_ports(table, "kdrainnp", left, timeout_s)
}

/// `kmoved4`/`kmoved6` elements for frontends that came to the kernel path
/// from the proxy's: their packets meet the socket rule first while the
/// element lives (proxied connections from before the move).
pub fn moved_batch(
    table: &str,
    came: impl IntoIterator<Item = (IpAddr, Protocol, u16)>,
    timeout_s: u64,
) -> Batch {
    timed_vips(table, ("kmoved4", "kmoved6"), came, timeout_s)
}

/// `kmovednp` elements for NodePorts that came from the proxy path.
pub fn moved_node_port_batch(
    table: &str,
    came: impl IntoIterator<Item = (Protocol, u16)>,
    timeout_s: u64,
) -> Batch {
    timed_node_ports(table, "kmovednp", came, timeout_s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_adds_every_element_in_bounded_batches_verdicts_last() {
        use crate::intercept::kernel::elements::{KernelPort, elements};
        use crate::policy::{SlotKey, SlotTable};
        use std::sync::Arc;
        let mut plan = KernelPlan::default();
        for i in 0..3u8 {
            plan.vips.insert(
                (IpAddr::from([10, 96, 0, i]), Protocol::Udp, 53),
                KernelPort {
                    table: Arc::new(SlotTable {
                        key: SlotKey::Sequence,
                        slots: (0..257u32).map(|s| s % 2).collect(),
                    }),
                    endpoints: vec![
                        format!("10.244.{i}.2:53").parse().expect("addr"),
                        format!("10.244.{i}.3:53").parse().expect("addr"),
                    ]
                    .into(),
                    masquerade: true,
                },
            );
        }
        let want = elements(&plan);
        let whole = want
            .diff_batch(&KernelElements::default(), "sy")
            .expect("encodes");
        let batches: Vec<Batch> = fill_batches(&plan, "sy", 5)
            .collect::<Result<_, _>>()
            .expect("encodes");
        assert!(batches.len() > 1);
        assert!(batches.iter().all(|b| !b.is_empty() && b.len() <= 5));
        let filled: Vec<_> = batches.into_iter().flat_map(|b| b.changes).collect();
        assert_eq!(filled.len(), whole.len());
        for c in &whole.changes {
            assert!(filled.contains(c), "{c} missing from the fill");
        }
        // Three verdicts and three gate elements, last.
        let first_verdict = filled
            .iter()
            .position(|c| c.set.starts_with("kfront") || c.set.starts_with("kvip"))
            .expect("verdicts are filled");
        assert_eq!(first_verdict, filled.len() - 6);
        assert!(
            filled[first_verdict..]
                .iter()
                .all(|c| c.set.starts_with("kfront") || c.set.starts_with("kvip"))
        );
    }

    #[test]
    fn slot_map_elements_encode_the_slot_in_host_order_and_padded_data() {
        let e = Element {
            set: "kslot4",
            key: "10.96.0.10 . tcp . 80 . 1".into(),
            data: Some("10.244.1.3 . 8080".into()),
        };
        let n = encode(&e, true).expect("encodes");
        let mut want = vec![10, 96, 0, 10, 6, 0, 0, 0, 0, 80, 0, 0];
        want.extend_from_slice(&1u32.to_ne_bytes());
        assert_eq!(n.key, want);
        assert_eq!(n.data, Some(vec![10, 244, 1, 3, 0x1f, 0x90, 0, 0]));
        let v = Element {
            set: "knp6",
            key: "udp . 30053".into(),
            data: Some("goto kn6_client_521".into()),
        };
        let n = encode(&v, true).expect("encodes");
        assert_eq!(n.goto.as_deref(), Some("kn6_client_521"));
        assert_eq!(n.data, None);
        assert_eq!(encode(&v, false).expect("encodes").goto, None);
        let broken = Element {
            set: "kfront4",
            key: "10.96.0.10 . sctp . 80".into(),
            data: None,
        };
        assert!(encode(&broken, false).is_err());
    }
}
