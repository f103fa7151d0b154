//! Positive matching in raw prerouting: the sets that say which packets
//! may be ours, i.e. may need the socket rule, TPROXY or a reject. Every
//! other packet (a kernel-path flow in either direction, traffic that is
//! no Service's) is accepted after three lookups that miss (`ruleset.rs`).
//!
//! - `pfront4/6` (`daddr . l4proto . dport`): the proxy path's frontends,
//!   with or without endpoints (`vip`, `noep`);
//! - `pnp` (`l4proto . dport`, then `fib daddr type local`): its NodePorts
//!   (`nodeport`, `nodeport_noep`);
//! - `pep4/6` (`saddr . l4proto . sport`): the endpoints its frontends
//!   route to, whose replies to our transparent upstream sockets only the
//!   socket rule delivers (`kernel/replies.rs` counts them).
//!
//! A key that leaves one of these stays `DRAIN_SECONDS` as an element with
//! a timeout: the proxied connections of a frontend that moved to the
//! kernel path or went away, and of an endpoint no proxy-path frontend
//! routes to any more, keep reaching their sockets that long. A key that
//! comes (back) is first destroyed, since a drain element with a timeout
//! may be there (or may have expired: only `destroy` never fails), then
//! added for good.

use std::net::{IpAddr, SocketAddr};

use super::netlink::{Batch, Element, Family, Verb, key};
use crate::catalog::Protocol;

/// How long a frontend or endpoint that left the proxy path keeps the
/// socket rule for its proxied connections (conntrack's TCP established
/// timeout is longer; a proxied connection idle past this and then
/// speaking again is routed instead, and its client sees a reset or a
/// timeout).
pub const DRAIN_SECONDS: u64 = 3600;

/// One key of the sets above.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Frontend(IpAddr, Protocol, u16),
    NodePort(Protocol, u16),
    Endpoint(SocketAddr, Protocol),
}

impl Key {
    fn set(&self) -> &'static str {
        match self {
            Key::Frontend(ip, ..) if ip.is_ipv6() => "pfront6",
            Key::Frontend(..) => "pfront4",
            Key::NodePort(..) => "pnp",
            Key::Endpoint(ep, _) if ep.is_ipv6() => "pep6",
            Key::Endpoint(..) => "pep4",
        }
    }

    fn label(&self) -> String {
        match self {
            Key::Frontend(ip, proto, port) => format!("{ip} . {} . {port}", proto.nft_name()),
            Key::NodePort(proto, port) => format!("{} . {port}", proto.nft_name()),
            Key::Endpoint(ep, proto) => {
                format!("{} . {} . {}", ep.ip(), proto.nft_name(), ep.port())
            }
        }
    }

    fn element(&self, timeout_s: Option<u64>) -> Element {
        let bytes = match *self {
            Key::Frontend(ip, proto, port) => key::addr_proto_port(ip, proto, port),
            Key::NodePort(proto, port) => key::proto_port(proto, port),
            Key::Endpoint(ep, proto) => key::addr_proto_port(ep.ip(), proto, ep.port()),
        };
        match timeout_s {
            None => Element::key(bytes, self.label()),
            Some(s) => Element::key(bytes, format!("{} timeout {s}s", self.label()))
                .with_timeout_ms(s.saturating_mul(1000)),
        }
    }
}

/// The changes that make the keys of `came` ours for good and those of
/// `left` ours for `DRAIN_SECONDS` more. `fresh`: the sets are known
/// empty (a new table), nothing to destroy first.
pub fn batch(
    table: &str,
    came: impl IntoIterator<Item = Key>,
    left: impl IntoIterator<Item = Key>,
    fresh: bool,
) -> Batch {
    let came: Vec<Key> = came.into_iter().collect();
    let left: Vec<Key> = left.into_iter().collect();
    let mut out = Batch::default();
    if !fresh {
        for k in came.iter().chain(&left) {
            out.push(Verb::Destroy, Family::Inet, table, k.set(), k.element(None));
        }
    }
    for k in &came {
        out.push(Verb::Add, Family::Inet, table, k.set(), k.element(None));
    }
    for k in &left {
        let el = k.element(Some(DRAIN_SECONDS));
        out.push(Verb::Add, Family::Inet, table, k.set(), el);
    }
    out
}

/// `add element` commands for keys ours for good, in an `nft -f` batch
/// that creates the table.
pub fn add_commands(table: &str, keys: impl IntoIterator<Item = Key>) -> String {
    let mut out = String::new();
    for k in keys {
        out.push_str(&format!(
            "add element inet {table} {} {{ {} }}\n",
            k.set(),
            k.label()
        ));
    }
    out
}

/// The set definitions, inside `table inet <t> { ... }`.
pub fn set_definitions() -> Vec<String> {
    let mut out = Vec::new();
    for (f, addr) in [(4, "ipv4_addr"), (6, "ipv6_addr")] {
        for set in ["pfront", "pep"] {
            out.push(format!(
                "  set {set}{f} {{\n    type {addr} . inet_proto . inet_service\n    flags timeout\n  }}"
            ));
        }
    }
    out.push("  set pnp {\n    type inet_proto . inet_service\n    flags timeout\n  }".into());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_that_comes_is_destroyed_then_added_for_good_one_that_leaves_drains() {
        let came = [
            Key::Frontend("10.96.0.10".parse().expect("ip"), Protocol::Tcp, 80),
            Key::Endpoint("[fd00::2]:53".parse().expect("ep"), Protocol::Udp),
        ];
        let left = [Key::NodePort(Protocol::Tcp, 30080)];
        let shown: Vec<String> = batch("sy", came, left, false)
            .changes
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            shown,
            [
                "destroy element inet sy pfront4 { 10.96.0.10 . tcp . 80 }",
                "destroy element inet sy pep6 { fd00::2 . udp . 53 }",
                "destroy element inet sy pnp { tcp . 30080 }",
                "add element inet sy pfront4 { 10.96.0.10 . tcp . 80 }",
                "add element inet sy pep6 { fd00::2 . udp . 53 }",
                "add element inet sy pnp { tcp . 30080 timeout 3600s }",
            ]
        );
        let fresh = batch("sy", came, [], true);
        assert!(fresh.changes.iter().all(|c| c.verb == Verb::Add));
        assert_eq!(fresh.changes[0].element.timeout_ms, None);
        let drained = batch("sy", [], left, true);
        assert_eq!(drained.changes[0].element.timeout_ms, Some(3_600_000));
    }
}
