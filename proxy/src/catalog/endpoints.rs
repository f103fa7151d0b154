//! Checks one `EndpointSlice`, and picks the endpoints of one Service port
//! from a Service's slices with kube-proxy's rules.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::{Endpoint as K8sEndpoint, EndpointSlice};

use super::SERVICE_NAME_LABEL;
use super::check::{Checker, parse_ip, parse_protocol, port_number};
use super::problem::Problem;
use super::table::{Endpoint, Protocol};

/// A usable EndpointSlice: IP addresses, owned by a Service.
#[derive(Debug, Clone)]
pub(crate) struct ParsedSlice {
    pub namespace: String,
    pub name: String,
    /// The `kubernetes.io/service-name` label.
    pub service: String,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<ParsedEndpoint>,
}

#[derive(Debug, Clone)]
pub(crate) struct SlicePort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// One endpoint with its conditions already defaulted.
#[derive(Debug, Clone)]
pub(crate) struct ParsedEndpoint {
    pub ip: IpAddr,
    pub node_name: Option<String>,
    pub zone: Option<String>,
    pub hostname: Option<String>,
    pub target_name: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

/// Every problem of one EndpointSlice, errors and warnings.
pub fn validate_endpoint_slice(slice: &EndpointSlice) -> Vec<Problem> {
    parse_slice(slice).1
}

/// The slice's usable content, or `None` when it cannot be used: an error
/// in the slice itself, no Service label, or `addressType: FQDN`. An
/// endpoint with a bad address is dropped alone (with an error); the rest
/// of the slice is kept.
pub(crate) fn parse_slice(slice: &EndpointSlice) -> (Option<ParsedSlice>, Vec<Problem>) {
    let mut ck = Checker::new("EndpointSlice", &slice.metadata);
    let family = match slice.address_type.as_str() {
        "IPv4" => Some(Family::V4),
        "IPv6" => Some(Family::V6),
        "FQDN" => {
            ck.warning(
                "addressType",
                "FQDN endpoints are not supported (kube-proxy ignores them too); this \
                 EndpointSlice is ignored",
            );
            return (None, ck.into_problems());
        }
        other => {
            ck.error(
                "addressType",
                format!("expected \"IPv4\", \"IPv6\" or \"FQDN\", got {other:?}"),
            );
            None
        }
    };
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(SERVICE_NAME_LABEL))
        .filter(|name| !name.is_empty());
    if service.is_none() {
        ck.warning(
            format!("metadata.labels[\"{SERVICE_NAME_LABEL}\"]"),
            "expected the name of the Service this EndpointSlice belongs to; without it the \
             slice is ignored",
        );
    }
    let ports = slice_ports(slice, &mut ck);
    let slice_errors = ck.error_count();
    let endpoints: Vec<ParsedEndpoint> = slice
        .endpoints
        .iter()
        .enumerate()
        .filter_map(|(i, ep)| parse_endpoint(i, ep, family, &mut ck))
        .collect();
    let (Some(service), Some(_), 0) = (service, family, slice_errors) else {
        return (None, ck.into_problems());
    };
    let parsed = ParsedSlice {
        namespace: ck.object().namespace.clone(),
        name: ck.object().name.clone(),
        service: service.clone(),
        ports,
        endpoints,
    };
    (Some(parsed), ck.into_problems())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// Slice ports are matched to Service ports by name and protocol, so an
/// absent name is the unnamed port "". SCTP ports never match a proxied
/// port and are left out.
fn slice_ports(slice: &EndpointSlice, ck: &mut Checker) -> Vec<SlicePort> {
    let mut ports: Vec<SlicePort> = Vec::new();
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let name = p.name.as_deref().unwrap_or_default();
        if let Some(first) = names.insert(name, i) {
            ck.error(
                format!("ports[{i}].name"),
                format!("expected a unique port name, got {name:?} again (also ports[{first}])"),
            );
        }
        let protocol = parse_protocol(p.protocol.as_deref())
            .map_err(|message| ck.error(format!("ports[{i}].protocol"), message))
            .ok()
            .flatten();
        let port = match p.port.map(port_number) {
            Some(Ok(port)) => Some(port),
            Some(Err(message)) => {
                ck.error(format!("ports[{i}].port"), message);
                None
            }
            None => {
                ck.warning(
                    format!("ports[{i}].port"),
                    "no port number; kube-proxy ignores such a port and so does Switchyard",
                );
                None
            }
        };
        if let (Some(protocol), Some(port)) = (protocol, port) {
            ports.push(SlicePort {
                name: name.to_owned(),
                protocol,
                port,
            });
        }
    }
    ports
}

/// kube-proxy uses the first address of an endpoint (all of them are the
/// same Pod); every address must still be valid for the endpoint to be used.
fn parse_endpoint(
    i: usize,
    ep: &K8sEndpoint,
    family: Option<Family>,
    ck: &mut Checker,
) -> Option<ParsedEndpoint> {
    if ep.addresses.is_empty() {
        ck.error(
            format!("endpoints[{i}].addresses"),
            "expected at least one address; this endpoint is not used",
        );
        return None;
    }
    let mut first = None;
    let mut valid = true;
    for (j, text) in ep.addresses.iter().enumerate() {
        let field = format!("endpoints[{i}].addresses[{j}]");
        match (parse_ip(text), family) {
            (Err(message), _) => ck.error(field, format!("{message}; this endpoint is not used")),
            (Ok(IpAddr::V6(_)), Some(Family::V4)) | (Ok(IpAddr::V4(_)), Some(Family::V6)) => ck
                .error(
                    field,
                    format!(
                        "expected an address of the slice's addressType {:?}, got {text:?}; this \
                         endpoint is not used",
                        family_name(family)
                    ),
                ),
            (Ok(ip), _) => {
                first.get_or_insert(ip);
                continue;
            }
        }
        valid = false;
    }
    let ip = first.filter(|_| valid)?;
    let conditions = ep.conditions.as_ref();
    // API defaults: ready unknown means ready; serving unknown follows
    // ready; terminating unknown means not terminating.
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    Some(ParsedEndpoint {
        ip,
        node_name: ep.node_name.clone(),
        zone: ep.zone.clone(),
        hostname: ep.hostname.clone(),
        target_name: ep.target_ref.as_ref().and_then(|r| r.name.clone()),
        ready,
        serving,
        terminating,
    })
}

fn family_name(family: Option<Family>) -> &'static str {
    match family {
        Some(Family::V4) => "IPv4",
        Some(Family::V6) => "IPv6",
        None => "",
    }
}

/// All endpoints of one Service port across the Service's slices (which
/// the caller passes sorted by name), de-duplicated by address, sorted.
///
/// The slice port whose name and protocol equal the Service port's gives
/// the target port, as in kube-proxy; that is how a named `targetPort` is
/// resolved per Pod. When an address appears twice, a ready copy wins over
/// a not-ready one, otherwise the first slice wins.
///
/// IPv4 and IPv6 endpoints share one list, whatever the frontend's family.
/// A user-space proxy opens its own connection to the endpoint, so unlike
/// kube-proxy's kernel DNAT nothing at L4 ties the two families together.
/// The outbound leg is transparent, though (it connects from the client's
/// own address), and that needs one family on both sides: the data plane
/// picks among the endpoints whose `addr` has the client's family.
pub(crate) fn port_endpoints(
    name: &str,
    protocol: Protocol,
    slices: &[&ParsedSlice],
) -> Vec<Endpoint> {
    let mut merged: BTreeMap<SocketAddr, Endpoint> = BTreeMap::new();
    for slice in slices {
        let Some(port) = slice
            .ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let addr = SocketAddr::new(ep.ip, port.port);
            let endpoint = Endpoint {
                addr,
                node_name: ep.node_name.clone(),
                zone: ep.zone.clone(),
                hostname: ep.hostname.clone(),
                target_name: ep.target_name.clone(),
                ready: ep.ready,
                serving: ep.serving,
                terminating: ep.terminating,
            };
            match merged.entry(addr) {
                Entry::Vacant(slot) => {
                    slot.insert(endpoint);
                }
                Entry::Occupied(mut slot) => {
                    if endpoint.ready && !slot.get().ready {
                        slot.insert(endpoint);
                    }
                }
            }
        }
    }
    merged.into_values().collect()
}

/// The endpoints one scope may use (kube-proxy's `CategorizeEndpoints`):
/// the ready ones (on this node only, under a `Local` policy); when there
/// are none, those that are serving and terminating, so that connections
/// drain gracefully during a rollout; otherwise none, and the data plane
/// rejects. With no node name no endpoint is local.
pub(crate) fn select(
    all: &[Endpoint],
    local_only: bool,
    node_name: Option<&str>,
) -> Arc<[Endpoint]> {
    let eligible = |ep: &&Endpoint| {
        !local_only || node_name.is_some_and(|node| ep.node_name.as_deref() == Some(node))
    };
    let ready: Vec<Endpoint> = all
        .iter()
        .filter(eligible)
        .filter(|ep| ep.ready)
        .cloned()
        .collect();
    if !ready.is_empty() {
        return ready.into();
    }
    all.iter()
        .filter(eligible)
        .filter(|ep| ep.serving && ep.terminating)
        .cloned()
        .collect::<Vec<_>>()
        .into()
}
