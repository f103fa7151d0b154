//! Checks one `Service` and reads it into the facts the translation needs.
//! Every problem names the field the way `kubectl explain` spells it.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::app_protocol::{L7Protocol, PROTOCOL_ANNOTATION, port_l7};
use super::check::{Checker, check_port_name, parse_protocol, port_number};
use super::problem::Problem;
use super::table::{Protocol, ServiceInfo, ServiceKey};
use super::vips::{cluster_vips, external_vips, is_headless};
use super::{POLICY_ANNOTATION, POLICY_CONFIG_ANNOTATION, PROXY_PROTOCOL_ANNOTATION};

/// kube-proxy's default `sessionAffinityConfig.clientIP.timeoutSeconds`.
const DEFAULT_AFFINITY_SECONDS: i32 = 10_800;
/// The API's upper bound for the affinity timeout (one day).
const MAX_AFFINITY_SECONDS: i32 = 86_400;

/// Which of two Services claiming the same frontend wins: the older one,
/// then namespace/name. A Service without `creationTimestamp` (a
/// hand-written manifest) was never persisted, so it sorts after any that was.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ServiceOrder {
    never_created: bool,
    created: Option<Time>,
    key: ServiceKey,
}

/// A Service address with the field it came from, for messages.
#[derive(Debug, Clone)]
pub(crate) struct Vip {
    pub ip: IpAddr,
    pub field: String,
}

#[derive(Debug, Clone)]
pub(crate) struct ParsedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
    pub app_protocol: Option<String>,
    /// Proxied per HTTP request (see `app_protocol.rs`).
    pub l7: Option<L7Protocol>,
    /// `spec.ports[i]`
    pub field: String,
}

/// A valid, proxied Service.
#[derive(Debug, Clone)]
pub(crate) struct ParsedService {
    pub order: ServiceOrder,
    pub info: Arc<ServiceInfo>,
    pub ports: Vec<ParsedPort>,
    /// Cluster IPs (`Scope::Internal`).
    pub internal_vips: Vec<Vip>,
    /// externalIPs and LoadBalancer ingress IPs (`Scope::External`).
    pub external_vips: Vec<Vip>,
    pub internal_local: bool,
    pub external_local: bool,
    /// Health-check node port and source ranges (LoadBalancer only).
    pub load_balancer: super::load_balancer::LoadBalancerExtras,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

/// Every problem of one Service, errors and warnings.
pub fn validate_service(svc: &Service) -> Vec<Problem> {
    parse_service(svc).1
}

/// The Service's facts, or `None` when it is not proxied: headless,
/// ExternalName, or with any error.
pub(crate) fn parse_service(svc: &Service) -> (Option<ParsedService>, Vec<Problem>) {
    let mut ck = Checker::new("Service", &svc.metadata);
    let default_spec = ServiceSpec::default();
    let spec = svc.spec.as_ref().unwrap_or(&default_spec);
    let Some(kind) = service_kind(spec, &mut ck) else {
        return (None, ck.into_problems());
    };
    if is_headless(spec) {
        return (None, ck.into_problems());
    }
    let internal_vips = cluster_vips(spec, &mut ck);
    let external_vips = external_vips(svc, spec, &internal_vips, &mut ck);
    let mut ports = ports(spec, kind, &mut ck);
    let internal_local = local_policy(
        spec.internal_traffic_policy.as_deref(),
        "spec.internalTrafficPolicy",
        &mut ck,
    );
    let external_local = local_policy(
        spec.external_traffic_policy.as_deref(),
        "spec.externalTrafficPolicy",
        &mut ck,
    );
    let affinity_timeout = affinity(spec, &mut ck);
    let load_balancer = super::load_balancer::load_balancer_extras(
        svc,
        spec,
        kind == Kind::LoadBalancer,
        external_local,
        &mut ck,
    );
    if ck.error_count() > 0 {
        return (None, ck.into_problems());
    }
    let key = ServiceKey {
        namespace: ck.object().namespace.clone(),
        name: ck.object().name.clone(),
    };
    let created = svc.metadata.creation_timestamp.clone();
    let order = ServiceOrder {
        never_created: created.is_none(),
        created,
        key: key.clone(),
    };
    let annotations: BTreeMap<String, String> =
        svc.metadata.annotations.clone().unwrap_or_default();
    let proxy_protocol = match annotations
        .get(PROXY_PROTOCOL_ANNOTATION)
        .map(String::as_str)
    {
        None => false,
        Some("v2") => true,
        Some(other) => {
            ck.warning(
                format!("metadata.annotations[\"{PROXY_PROTOCOL_ANNOTATION}\"]"),
                format!("{other:?} is not supported; expected \"v2\" (ignored)"),
            );
            false
        }
    };
    let l7 = l7_annotation(&annotations, &mut ck);
    super::datapath::datapath_annotation(&annotations, &mut ck);
    for p in &mut ports {
        p.l7 = port_l7(p.protocol, p.app_protocol.as_deref(), l7);
    }
    let info = Arc::new(ServiceInfo {
        key,
        policy: annotations.get(POLICY_ANNOTATION).cloned(),
        policy_config: annotations.get(POLICY_CONFIG_ANNOTATION).cloned(),
        affinity_timeout,
        external_local,
        proxy_protocol,
        annotations,
    });
    let parsed = ParsedService {
        order,
        info,
        ports,
        internal_vips,
        external_vips,
        internal_local,
        external_local,
        load_balancer,
    };
    (Some(parsed), ck.into_problems())
}

/// The Service-wide `switchyard.dev/protocol` annotation; an unknown value
/// is a warning and leaves the ports L4 (never a guess).
fn l7_annotation(annotations: &BTreeMap<String, String>, ck: &mut Checker) -> Option<L7Protocol> {
    let value = annotations.get(PROTOCOL_ANNOTATION)?;
    let l7 = L7Protocol::from_annotation(value);
    if l7.is_none() {
        ck.warning(
            format!("metadata.annotations[\"{PROTOCOL_ANNOTATION}\"]"),
            format!("{value:?} is not supported; expected \"http\" or \"h2c\" (ports stay L4)"),
        );
    }
    l7
}

/// `None` for ExternalName Services (no proxying) and unknown types.
fn service_kind(spec: &ServiceSpec, ck: &mut Checker) -> Option<Kind> {
    match spec.type_.as_deref() {
        None | Some("ClusterIP") => Some(Kind::ClusterIp),
        Some("NodePort") => Some(Kind::NodePort),
        Some("LoadBalancer") => Some(Kind::LoadBalancer),
        Some("ExternalName") => None,
        Some(other) => {
            ck.error(
                "spec.type",
                format!(
                    "expected \"ClusterIP\", \"NodePort\", \"LoadBalancer\" or \"ExternalName\", \
                     got {other:?}"
                ),
            );
            None
        }
    }
}

fn ports(spec: &ServiceSpec, kind: Kind, ck: &mut Checker) -> Vec<ParsedPort> {
    let list = spec.ports.as_deref().unwrap_or_default();
    if list.is_empty() {
        ck.error("spec.ports", "expected at least one port");
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut numbers: HashMap<(Option<Protocol>, i32), usize> = HashMap::new();
    let mut node_ports: HashMap<(Option<Protocol>, i32), usize> = HashMap::new();
    let mut parsed = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let errors = ck.error_count();
        let name = p.name.as_deref().unwrap_or_default();
        if let Some(first) = names.insert(name, i) {
            ck.error(
                format!("{field}.name"),
                format!(
                    "expected a unique port name, got {name:?} again (also spec.ports[{first}]); \
                     a Service with several ports must name each"
                ),
            );
        }
        let protocol = match parse_protocol(p.protocol.as_deref()) {
            Ok(protocol) => protocol,
            Err(message) => {
                ck.error(format!("{field}.protocol"), message);
                None
            }
        };
        let port = checked(ck, format!("{field}.port"), p.port);
        if let Some(first) = numbers.insert((protocol, p.port), i) {
            ck.error(
                format!("{field}.port"),
                format!(
                    "expected a unique protocol and port, got {}/{} again (also spec.ports[{first}])",
                    p.port,
                    p.protocol.as_deref().unwrap_or("TCP")
                ),
            );
        }
        let node_port = p.node_port.and_then(|n| {
            if let Some(first) = node_ports.insert((protocol, n), i) {
                ck.error(
                    format!("{field}.nodePort"),
                    format!("expected a unique nodePort, got {n} again (also spec.ports[{first}])"),
                );
            }
            checked(ck, format!("{field}.nodePort"), n)
        });
        match &p.target_port {
            Some(IntOrString::Int(n)) => {
                checked(ck, format!("{field}.targetPort"), *n);
            }
            Some(IntOrString::String(s)) => {
                if let Err(message) = check_port_name(s) {
                    ck.error(format!("{field}.targetPort"), message);
                }
            }
            None => {}
        }
        let (Some(port), Some(protocol)) = (port, protocol) else {
            if ck.error_count() == errors {
                ck.warning(
                    format!("{field}.protocol"),
                    "SCTP is not supported by Switchyard; this port is not proxied",
                );
            }
            continue;
        };
        let node_port = node_port_for(kind, node_port, &field, ck);
        parsed.push(ParsedPort {
            name: name.to_owned(),
            protocol,
            port,
            node_port,
            app_protocol: p.app_protocol.clone(),
            l7: None,
            field,
        });
    }
    parsed
}

fn checked(ck: &mut Checker, field: String, value: i32) -> Option<u16> {
    match port_number(value) {
        Ok(port) => Some(port),
        Err(message) => {
            ck.error(field, message);
            None
        }
    }
}

/// NodePorts are opened for NodePort and LoadBalancer Services only (a
/// LoadBalancer may have none with `allocateLoadBalancerNodePorts: false`).
fn node_port_for(kind: Kind, node_port: Option<u16>, field: &str, ck: &mut Checker) -> Option<u16> {
    match (kind, node_port) {
        (Kind::ClusterIp, Some(n)) => {
            ck.warning(
                format!("{field}.nodePort"),
                format!("nodePort {n} is ignored: the Service's type is ClusterIP"),
            );
            None
        }
        (Kind::NodePort, None) => {
            ck.warning(
                format!("{field}.nodePort"),
                "no nodePort set on a NodePort Service; this port is reachable on its cluster IP \
                 only",
            );
            None
        }
        (_, node_port) => node_port,
    }
}

/// `true` for `Local`, `false` for `Cluster` (the default).
fn local_policy(value: Option<&str>, field: &str, ck: &mut Checker) -> bool {
    match value {
        None | Some("Cluster") => false,
        Some("Local") => true,
        Some(other) => {
            ck.error(
                field,
                format!("expected \"Cluster\" or \"Local\", got {other:?}"),
            );
            false
        }
    }
}

fn affinity(spec: &ServiceSpec, ck: &mut Checker) -> Option<Duration> {
    match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let seconds = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(DEFAULT_AFFINITY_SECONDS);
            match u64::try_from(seconds) {
                Ok(s) if (1..=MAX_AFFINITY_SECONDS as u64).contains(&s) => {
                    Some(Duration::from_secs(s))
                }
                _ => {
                    ck.error(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        format!("expected 1 to {MAX_AFFINITY_SECONDS} seconds, got {seconds}"),
                    );
                    None
                }
            }
        }
        Some(other) => {
            ck.error(
                "spec.sessionAffinity",
                format!("expected \"None\" or \"ClientIP\", got {other:?}"),
            );
            None
        }
    }
}
