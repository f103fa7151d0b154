//! Checks one `EndpointSlice`, and picks the endpoints of one Service port
//! from a Service's slices with kube-proxy's rules.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::discovery::v1::{Endpoint as K8sEndpoint, EndpointSlice};

use super::SERVICE_NAME_LABEL;
use super::check::{Checker, parse_ip, parse_protocol, port_number};
use super::problem::Problem;
use super::table::{Endpoint, Protocol};
use super::topology::Candidate;

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
    /// `hints.forZones[].name` and `hints.forNodes[].name`.
    pub zone_hints: Vec<String>,
    pub node_hints: Vec<String>,
}

/// Every problem of one EndpointSlice, errors and warnings.
pub fn validate_endpoint_slice(slice: &EndpointSlice) -> Vec<Problem> {
    // The same checks, without copying what they accept: both sources
    // validate every slice as it is read, and the copies (four strings
    // and a field name per endpoint) were thrown away.
    read_slice(slice, false).1
}

/// The slice's usable content, or `None` when it cannot be used: an error
/// in the slice itself, no Service label, or `addressType: FQDN`. An
/// endpoint with a bad address is dropped alone (with an error); the rest
/// of the slice is kept.
pub(crate) fn parse_slice(slice: &EndpointSlice) -> (Option<ParsedSlice>, Vec<Problem>) {
    read_slice(slice, true)
}

/// `parse_slice`; `keep`: false to check only (no content, the same
/// problems).
fn read_slice(slice: &EndpointSlice, keep: bool) -> (Option<ParsedSlice>, Vec<Problem>) {
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
        .filter_map(|(i, ep)| {
            let ip = endpoint_ip(i, ep, family, &mut ck)?;
            keep.then(|| parse_endpoint(ip, ep))
        })
        .collect();
    let (Some(service), Some(_), 0, true) = (service, family, slice_errors, keep) else {
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
/// An endpoint's address, checked (errors named in `ck`); `None` when the
/// endpoint is not used.
fn endpoint_ip(
    i: usize,
    ep: &K8sEndpoint,
    family: Option<Family>,
    ck: &mut Checker,
) -> Option<IpAddr> {
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
        // Named only for an error: 100k endpoints at scale.
        let field = || format!("endpoints[{i}].addresses[{j}]");
        match (parse_ip(text), family) {
            (Err(message), _) => ck.error(field(), format!("{message}; this endpoint is not used")),
            (Ok(IpAddr::V6(_)), Some(Family::V4)) | (Ok(IpAddr::V4(_)), Some(Family::V6)) => ck
                .error(
                    field(),
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
    first.filter(|_| valid)
}

/// What translation keeps of a checked endpoint.
fn parse_endpoint(ip: IpAddr, ep: &K8sEndpoint) -> ParsedEndpoint {
    let conditions = ep.conditions.as_ref();
    // API defaults: ready unknown means ready; serving unknown follows
    // ready; terminating unknown means not terminating.
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    ParsedEndpoint {
        ip,
        node_name: ep.node_name.clone(),
        zone: ep.zone.clone(),
        hostname: ep.hostname.clone(),
        target_name: ep.target_ref.as_ref().and_then(|r| r.name.clone()),
        ready,
        serving,
        terminating,
        zone_hints: ep
            .hints
            .iter()
            .flat_map(|h| h.for_zones.iter().flatten())
            .map(|z| z.name.clone())
            .collect(),
        node_hints: ep
            .hints
            .iter()
            .flat_map(|h| h.for_nodes.iter().flatten())
            .map(|n| n.name.clone())
            .collect(),
    }
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
/// Both families are in the list, IPv4 first (the order of `SocketAddr`);
/// `topology::categorize` decides each family's set on its own, and the
/// data plane balances a frontend's connections only over its own family
/// (`catalog::family`), as kube-proxy's per-family proxiers do.
pub(crate) fn port_endpoints(
    name: &str,
    protocol: Protocol,
    slices: &[&ParsedSlice],
) -> Vec<Candidate> {
    let mut merged: BTreeMap<SocketAddr, Candidate> = BTreeMap::new();
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
            let endpoint = Candidate {
                endpoint: Endpoint {
                    addr,
                    node_name: ep.node_name.clone(),
                    zone: ep.zone.clone(),
                    hostname: ep.hostname.clone(),
                    target_name: ep.target_name.clone(),
                    ready: ep.ready,
                    serving: ep.serving,
                    terminating: ep.terminating,
                },
                zones: ep.zone_hints.clone(),
                nodes: ep.node_hints.clone(),
            };
            match merged.entry(addr) {
                Entry::Vacant(slot) => {
                    slot.insert(endpoint);
                }
                Entry::Occupied(mut slot) => {
                    if endpoint.endpoint.ready && !slot.get().endpoint.ready {
                        slot.insert(endpoint);
                    }
                }
            }
        }
    }
    merged.into_values().collect()
}
