//! What a LoadBalancer Service asks of every node besides proxying:
//! `spec.healthCheckNodePort` (served for `externalTrafficPolicy: Local`,
//! see `admin/health_check_ports.rs`) and `spec.loadBalancerSourceRanges`
//! (enforced on the load balancer's ingress IPs, see
//! `intercept/source_ranges.rs`).

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServiceSpec};

use super::check::Checker;
use crate::config::NodePortAddress;

/// The annotation kube-proxy reads when the spec field is empty.
pub const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// A prefix (network address, length).
pub type Prefix = (IpAddr, u8);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LoadBalancerExtras {
    /// Served only for LoadBalancer Services with `externalTrafficPolicy:
    /// Local`, as kube-proxy does.
    pub health_check_node_port: Option<u16>,
    /// `None`: open to every source. `Some`: only these sources reach the
    /// ingress IPs. An invalid entry is an error (the Service is not
    /// served rather than served open).
    pub source_ranges: Option<Vec<Prefix>>,
}

pub(crate) fn load_balancer_extras(
    svc: &Service,
    spec: &ServiceSpec,
    load_balancer: bool,
    external_local: bool,
    ck: &mut Checker,
) -> LoadBalancerExtras {
    if !load_balancer {
        return LoadBalancerExtras::default();
    }
    let health_check_node_port = match spec.health_check_node_port {
        Some(port) if external_local => match u16::try_from(port) {
            Ok(port) if port > 0 => Some(port),
            _ => {
                ck.error(
                    "spec.healthCheckNodePort",
                    format!("expected a port from 1 to 65535, got {port}"),
                );
                None
            }
        },
        _ => None,
    };
    let from_spec: Vec<(String, String)> = spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| (format!("spec.loadBalancerSourceRanges[{i}]"), r.clone()))
        .collect();
    let entries = if from_spec.is_empty() {
        let field = format!("metadata.annotations[\"{SOURCE_RANGES_ANNOTATION}\"]");
        svc.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SOURCE_RANGES_ANNOTATION))
            .map(|text| {
                text.split(',')
                    .map(str::trim)
                    .filter(|r| !r.is_empty())
                    .map(|r| (field.clone(), r.to_owned()))
                    .collect()
            })
            .unwrap_or_default()
    } else {
        from_spec
    };
    let mut ranges = Vec::new();
    for (field, text) in &entries {
        match NodePortAddress::parse(text) {
            Ok(NodePortAddress::Cidr(ip, len)) => ranges.push((ip, len)),
            _ => ck.error(
                field.clone(),
                format!("expected a CIDR such as \"203.0.113.0/24\", got {text:?}"),
            ),
        }
    }
    LoadBalancerExtras {
        health_check_node_port,
        source_ranges: (!entries.is_empty()).then_some(ranges),
    }
}

/// The ranges of `vip`'s family, without prefixes inside another (an
/// nftables interval set refuses overlapping elements). Empty when the
/// Service restricts sources but names none of this family: nobody of that
/// family may reach it.
pub fn ranges_for(vip: IpAddr, ranges: &[Prefix]) -> Vec<Prefix> {
    let mut own: Vec<Prefix> = ranges
        .iter()
        .copied()
        .filter(|(ip, _)| ip.is_ipv4() == vip.is_ipv4())
        .collect();
    own.sort_by_key(|&(ip, len)| (len, ip));
    let mut kept: Vec<Prefix> = Vec::new();
    for (ip, len) in own {
        let covered = kept
            .iter()
            .any(|&(k, klen)| klen <= len && crate::config::network(ip, klen) == k);
        if !covered {
            kept.push((ip, len));
        }
    }
    kept.sort();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Prefix {
        match NodePortAddress::parse(text) {
            Ok(NodePortAddress::Cidr(ip, len)) => (ip, len),
            other => panic!("bad test prefix {text}: {other:?}"),
        }
    }

    #[test]
    fn ranges_keep_the_family_and_drop_nested_prefixes() {
        let all = [
            p("10.0.0.0/8"),
            p("10.1.0.0/16"),
            p("192.0.2.7"),
            p("2001:db8::/32"),
        ];
        let v4: IpAddr = "198.51.100.1".parse().expect("ip");
        let v6: IpAddr = "2001:db8:ffff::1".parse().expect("ip");
        assert_eq!(ranges_for(v4, &all), [p("10.0.0.0/8"), p("192.0.2.7/32")]);
        assert_eq!(ranges_for(v6, &all), [p("2001:db8::/32")]);
        assert!(ranges_for(v6, &all[..2]).is_empty());
    }
}
