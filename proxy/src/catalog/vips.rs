//! The addresses of a Service: cluster IPs (internal) and externalIPs
//! with LoadBalancer ingress IPs (external).

use k8s_openapi::api::core::v1::{Service, ServiceSpec};

use super::check::{Checker, parse_ip};
use super::service::Vip;

pub(super) fn is_headless(spec: &ServiceSpec) -> bool {
    let first = spec.cluster_ips.as_ref().and_then(|ips| ips.first());
    spec.cluster_ip.as_deref() == Some("None") || first.is_some_and(|ip| ip == "None")
}

/// `spec.clusterIPs` (dual-stack) when set, else `spec.clusterIP`.
pub(super) fn cluster_vips(spec: &ServiceSpec, ck: &mut Checker) -> Vec<Vip> {
    let single = spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty());
    let list = spec.cluster_ips.as_deref().unwrap_or_default();
    let mut vips: Vec<Vip> = Vec::new();
    if list.is_empty() {
        let Some(text) = single else {
            ck.error(
                "spec.clusterIP",
                "expected an IP address, or \"None\" for a headless Service; the Service has \
                 no cluster IP",
            );
            return vips;
        };
        push_vip(&mut vips, text, "spec.clusterIP".to_owned(), ck);
        return vips;
    }
    if let (Some(single), Some(first)) = (single, list.first())
        && single != first
    {
        ck.error(
            "spec.clusterIPs[0]",
            format!("expected the same address as spec.clusterIP ({single}), got {first:?}"),
        );
    }
    for (i, text) in list.iter().enumerate() {
        let field = format!("spec.clusterIPs[{i}]");
        let before = vips.len();
        push_vip(&mut vips, text, field.clone(), ck);
        let Some(new) = vips.get(before).map(|v| v.ip) else {
            continue;
        };
        if vips[..before]
            .iter()
            .any(|v| v.ip.is_ipv4() == new.is_ipv4())
        {
            ck.error(
                field,
                "expected at most one IPv4 and one IPv6 cluster IP (dual-stack)",
            );
        }
    }
    vips
}

fn push_vip(vips: &mut Vec<Vip>, text: &str, field: String, ck: &mut Checker) {
    match parse_ip(text) {
        Ok(ip) => vips.push(Vip { ip, field }),
        Err(message) => ck.error(field, message),
    }
}

/// `spec.externalIPs` and `status.loadBalancer.ingress[].ip`. Ingress
/// entries with only a hostname, or with `ipMode: Proxy` (the load balancer
/// sends traffic to the node ports itself), are not VIPs, as in kube-proxy.
pub(super) fn external_vips(
    svc: &Service,
    spec: &ServiceSpec,
    internal: &[Vip],
    ck: &mut Checker,
) -> Vec<Vip> {
    let mut vips: Vec<Vip> = Vec::new();
    for (i, text) in spec.external_ips.iter().flatten().enumerate() {
        push_vip(&mut vips, text, format!("spec.externalIPs[{i}]"), ck);
    }
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for (i, entry) in ingress.into_iter().flatten().enumerate() {
        let Some(text) = entry.ip.as_deref().filter(|ip| !ip.is_empty()) else {
            continue;
        };
        let field = format!("status.loadBalancer.ingress[{i}].ip");
        match entry.ip_mode.as_deref() {
            None | Some("VIP") => push_vip(&mut vips, text, field, ck),
            Some("Proxy") => {}
            Some(other) => ck.error(
                format!("status.loadBalancer.ingress[{i}].ipMode"),
                format!("expected \"VIP\" or \"Proxy\", got {other:?}"),
            ),
        }
    }
    // The same address listed twice (say, an LB IP also in externalIPs) is
    // one frontend. An address that is also a cluster IP stays a cluster IP.
    let mut kept: Vec<Vip> = Vec::new();
    for vip in vips {
        if internal.iter().any(|v| v.ip == vip.ip) {
            ck.warning(
                vip.field,
                format!(
                    "{} is also a cluster IP of this Service; it is served as a cluster IP only",
                    vip.ip
                ),
            );
        } else if !kept.iter().any(|v| v.ip == vip.ip) {
            kept.push(vip);
        }
    }
    kept
}
