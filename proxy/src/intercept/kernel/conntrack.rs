//! UDP flows to a removed endpoint: conntrack would keep DNATing a client's
//! datagrams to a Pod that left the Service until the entry times out, so
//! their entries are deleted, as kube-proxy does. TCP needs nothing: the
//! endpoint's connections fail or finish on their own.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use super::elements::KernelElements;

/// One set of entries to delete: the frontend (address or None for a
/// NodePort, and its port) and the removed endpoint.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StaleFlows {
    pub frontend_ip: Option<String>,
    pub frontend_port: String,
    pub endpoint_ip: String,
    pub endpoint_port: String,
}

/// UDP endpoints some frontend had in `old` and has no longer in `new`.
pub fn removed_udp_endpoints(old: &KernelElements, new: &KernelElements) -> Vec<StaleFlows> {
    // A first sync removes nothing: do not index every slot of `new`.
    if old.is_empty() {
        return Vec::new();
    }
    let endpoints = |e: &KernelElements| {
        let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        for el in &e.elements {
            if !(el.set.starts_with("kslot") || el.set.starts_with("knpslot")) {
                continue;
            }
            let Some(data) = &el.data else { continue };
            // "<frontend> . <slot>": strip the slot.
            let Some((front, _slot)) = el.key.rsplit_once(" . ") else {
                continue;
            };
            if !front.contains("udp") {
                continue;
            }
            out.entry((el.set.to_owned(), front.to_owned()))
                .or_default()
                .insert(data.clone());
        }
        out
    };
    let (before, after) = (endpoints(old), endpoints(new));
    let mut stale = Vec::new();
    for ((set, front), eps) in before {
        let kept = after.get(&(set.clone(), front.clone()));
        let parts: Vec<&str> = front.split(" . ").collect();
        let (frontend_ip, frontend_port) = match parts.as_slice() {
            [ip, _, port] => (Some((*ip).to_owned()), (*port).to_owned()),
            [_, port] => (None, (*port).to_owned()),
            _ => continue,
        };
        for ep in eps {
            if kept.is_some_and(|k| k.contains(&ep)) {
                continue;
            }
            let Some((ip, port)) = ep.split_once(" . ") else {
                continue;
            };
            stale.push(StaleFlows {
                frontend_ip: frontend_ip.clone(),
                frontend_port: frontend_port.clone(),
                endpoint_ip: ip.to_owned(),
                endpoint_port: port.to_owned(),
            });
        }
    }
    stale
}

/// `conntrack -D` arguments for one set of stale flows.
pub fn delete_args(s: &StaleFlows) -> Vec<String> {
    let mut args: Vec<String> = vec!["-D".into(), "-p".into(), "udp".into()];
    if let Some(ip) = &s.frontend_ip {
        args.extend(["--orig-dst".into(), ip.clone()]);
    }
    args.extend([
        "--orig-port-dst".into(),
        s.frontend_port.clone(),
        "--reply-src".into(),
        s.endpoint_ip.clone(),
        "--reply-port-src".into(),
        s.endpoint_port.clone(),
    ]);
    args
}

/// Deletes the entries with the `conntrack` tool. Best effort: "no entry
/// matched" is the common case, and a missing tool is logged.
pub fn delete(stale: &[StaleFlows]) {
    for s in stale {
        match Command::new("conntrack").args(delete_args(s)).output() {
            Ok(out) => tracing::debug!(
                endpoint = %s.endpoint_ip,
                port = %s.frontend_port,
                status = out.status.code().unwrap_or(-1),
                "deleted the UDP conntrack entries of a removed endpoint"
            ),
            Err(e) => {
                tracing::warn!(
                    "cannot run conntrack to delete the UDP flows of removed endpoint {}: {e}",
                    s.endpoint_ip
                );
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intercept::kernel::elements::Element;

    fn slot(set: &'static str, front: &str, slot: u32, ep: &str) -> Element {
        Element {
            set,
            key: format!("{front} . {slot}"),
            data: Some(ep.into()),
        }
    }

    #[test]
    fn only_udp_endpoints_that_left_are_reported() {
        let old = KernelElements {
            elements: [
                slot("kslot4", "10.96.0.53 . udp . 53", 0, "10.244.1.11 . 53"),
                slot("kslot4", "10.96.0.53 . udp . 53", 1, "10.244.1.12 . 53"),
                slot("kslot4", "10.96.0.10 . tcp . 80", 0, "10.244.1.11 . 8080"),
                slot("knpslot6", "udp . 30053", 0, "fd00::11 . 53"),
            ]
            .into(),
        };
        let new = KernelElements {
            elements: [
                slot("kslot4", "10.96.0.53 . udp . 53", 0, "10.244.1.12 . 53"),
                slot("kslot4", "10.96.0.53 . udp . 53", 1, "10.244.1.12 . 53"),
            ]
            .into(),
        };
        let stale = removed_udp_endpoints(&old, &new);
        assert_eq!(stale.len(), 2, "{stale:?}");
        assert_eq!(
            delete_args(&stale[1]).join(" "),
            "-D -p udp --orig-dst 10.96.0.53 --orig-port-dst 53 --reply-src 10.244.1.11 --reply-port-src 53"
        );
        assert_eq!(
            delete_args(&stale[0]).join(" "),
            "-D -p udp --orig-port-dst 30053 --reply-src fd00::11 --reply-port-src 53"
        );
        assert!(removed_udp_endpoints(&new, &new).is_empty());
    }
}
