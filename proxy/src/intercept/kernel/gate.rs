//! The raw prerouting chain's early exit for kernel-path flows: plain sets
//! of the kernel frontends (`kvip4/6`: `daddr . l4proto . dport`; `knode4/6`:
//! NodePorts, `l4proto . dport`). A packet that no socket of ours took and
//! that belongs to one leaves the chain there, instead of walking the
//! proxy's drain, reject and TPROXY rules (see `ruleset.rs`). The replies
//! of their endpoints have a gate of their own (`replies.rs`).
//! The verdict maps `kfront`/`knp` cannot serve: the kernel refuses a
//! lookup from a filter chain in a map whose elements jump to DNAT chains.
//!
//! `elements.rs` makes them with the other elements of each kernel
//! frontend: they join the kernel datapath's in the same diff or step and
//! the same atomic batch.

use std::net::IpAddr;

use super::elements::Element;
use crate::catalog::Protocol;

/// A kernel VIP frontend (`kvip4/6`).
pub fn vip(ip: IpAddr, proto: Protocol, port: u16) -> Element {
    Element {
        set: if ip.is_ipv6() { "kvip6" } else { "kvip4" },
        key: format!("{ip} . {} . {port}", proto.nft_name()),
        data: None,
    }
}

/// A kernel NodePort (`knode4/6`).
pub fn node_port(v6: bool, proto: Protocol, port: u16) -> Element {
    Element {
        set: if v6 { "knode6" } else { "knode4" },
        key: format!("{} . {port}", proto.nft_name()),
        data: None,
    }
}

/// The set definitions, in `rules.rs`'s layout.
pub fn set_definitions() -> Vec<String> {
    let mut out = super::rules::addr_port_sets(&["kvip"], None);
    for f in [4, 6] {
        out.push(format!(
            "  set knode{f} {{\n    type inet_proto . inet_service\n  }}"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::elements::{KernelPlan, elements};
    use super::*;
    use crate::policy::{SlotKey, SlotTable};
    use std::collections::BTreeSet;
    use std::sync::Arc;

    fn port(endpoints: &[&str], slots: usize) -> super::super::KernelPort {
        let endpoints: Vec<std::net::SocketAddr> = endpoints
            .iter()
            .map(|e| e.parse().expect("test endpoint"))
            .collect();
        let n = endpoints.len() as u32;
        super::super::KernelPort {
            table: Arc::new(SlotTable {
                key: SlotKey::Sequence,
                slots: (0..slots as u32).map(|s| s % n).collect(),
            }),
            endpoints: endpoints.into(),
            masquerade: false,
        }
    }

    fn keys(elements: &BTreeSet<Element>, set: &str) -> Vec<String> {
        elements
            .iter()
            .filter(|e| e.set == set)
            .map(|e| e.key.clone())
            .collect()
    }

    #[test]
    fn frontends_node_ports_and_endpoints_of_fitting_ports() {
        let mut plan = KernelPlan::default();
        plan.vips.insert(
            ("10.96.0.10".parse().expect("ip"), Protocol::Tcp, 80),
            port(&["10.244.1.2:8080", "10.244.1.3:8080"], 67),
        );
        plan.vips.insert(
            ("fd00::10".parse().expect("ip"), Protocol::Udp, 53),
            port(&["[fd00:244::2]:5353"], 67),
        );
        plan.node_ports.insert(
            (false, Protocol::Tcp, 30080),
            port(&["10.244.1.4:8080"], 67),
        );
        // A slot count without chains stays on the proxy: no gate either.
        plan.vips.insert(
            ("10.96.0.11".parse().expect("ip"), Protocol::Tcp, 80),
            port(&["10.244.1.9:8080"], 5),
        );
        let got = elements(&plan).elements;
        assert_eq!(keys(&got, "kvip4"), ["10.96.0.10 . tcp . 80"]);
        assert_eq!(keys(&got, "kvip6"), ["fd00::10 . udp . 53"]);
        assert_eq!(keys(&got, "knode4"), ["tcp . 30080"]);
        // The reply gate needs the proxy path's endpoints: replies.rs.
        assert!(!got.iter().any(|e| e.set.starts_with("kep")));
        assert!(
            got.iter()
                .filter(|e| ["kvip", "knode"].iter().any(|g| e.set.starts_with(g)))
                .all(|e| e.data.is_none())
        );
    }
}
