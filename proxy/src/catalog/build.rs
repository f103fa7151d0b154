//! Service + EndpointSlice objects in, one [`ServiceTable`] out.
//!
//! Two steps, so that a watch source can redo only what changed:
//! [`translate_service`] turns one Service and its slices into a
//! [`TranslatedService`]; [`assemble`] joins translations into a table and
//! settles frontends that two Services claim. [`build`] does both for a
//! whole set of objects.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::check::{Checker, identity};
use super::endpoints::{ParsedSlice, parse_slice, port_endpoints};
use super::problem::{ObjectRef, Problem};
use super::service::{ParsedService, ServiceOrder, parse_service};
use super::table::{Frontend, Protocol, Route, Scope, ServiceKey, ServicePort, ServiceTable};
use super::topology::categorize;

/// What the translation needs to know about this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeContext {
    /// This node's name, which `Local` traffic policies compare with each
    /// endpoint's `nodeName`. Without it no endpoint is local.
    pub node_name: Option<String>,
    /// This node's InternalIP and ExternalIP addresses (`node_addresses`).
    pub addresses: Vec<IpAddr>,
    /// The Node's `topology.kubernetes.io/zone` label (topology hints).
    pub zone: Option<String>,
    /// Why load balancers should not send this node traffic (being
    /// deleted, autoscaler taint); `None` when eligible. See `node.rs`.
    pub ineligible: Option<String>,
}

/// A Node object's InternalIP and ExternalIP addresses, sorted, without
/// duplicates; entries that are not addresses (a misconfigured kubelet) are
/// skipped.
pub fn node_addresses(node: &k8s_openapi::api::core::v1::Node) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = node
        .status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// A table and every problem met while building it.
#[derive(Debug, Clone, Default)]
pub struct BuildOutput {
    pub table: ServiceTable,
    pub problems: Vec<Problem>,
}

/// One Service, translated: its ports and what it would add to the table.
#[derive(Debug, Clone)]
pub struct TranslatedService {
    order: ServiceOrder,
    pub(super) key: ServiceKey,
    pub(super) ports: Vec<Arc<ServicePort>>,
    pub(super) vips: Vec<Claim<Frontend>>,
    pub(super) node_ports: Vec<Claim<(Protocol, u16)>>,
    pub(super) health_check: Option<u16>,
    pub(super) source_ranges: Vec<(Frontend, Arc<[super::load_balancer::Prefix]>)>,
}

impl TranslatedService {
    pub fn key(&self) -> &ServiceKey {
        &self.key
    }

    /// The proxied ports, in `spec.ports` order.
    pub fn ports(&self) -> &[Arc<ServicePort>] {
        &self.ports
    }
}

/// A table entry a Service asks for, with the field that asked.
#[derive(Debug, Clone)]
pub(super) struct Claim<K> {
    pub(super) key: K,
    pub(super) route: Route,
    field: String,
}

/// The result of translating one Service.
#[derive(Debug, Clone, Default)]
pub struct Translation {
    /// `None` when the Service is not proxied: headless, ExternalName, or
    /// with an error.
    pub service: Option<TranslatedService>,
    /// The Service's own problems. The slices' problems come from
    /// [`super::validate_endpoint_slice`]; conflicts between Services from
    /// [`assemble`].
    pub problems: Vec<Problem>,
}

/// Translates every Service with its EndpointSlices into a table. The
/// output does not depend on the order of the input, except which of two
/// objects with the same namespace/name is kept (the older Service, else
/// the first given).
pub fn build<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node: &NodeContext,
) -> BuildOutput {
    let mut problems = Vec::new();
    let by_service = group_slices(slices, &mut problems);
    let mut services: Vec<&Service> = services.into_iter().collect();
    services.sort_by_cached_key(|s| sort_key(&s.metadata));
    let mut parsed: Vec<ParsedService> = Vec::new();
    for svc in services {
        let (service, found) = parse_service(svc);
        problems.extend(found);
        parsed.extend(service);
    }
    parsed.sort_by(|a, b| a.order.cmp(&b.order));
    let translated: Vec<TranslatedService> = parsed
        .iter()
        .map(|svc| {
            let key = &svc.info.key;
            let slices = by_service
                .get(&(key.namespace.clone(), key.name.clone()))
                .map(|s| s.iter().collect::<Vec<_>>())
                .unwrap_or_default();
            translate_parsed(svc, &slices, node)
        })
        .collect();
    let mut assembled = assemble(&translated);
    assembled.table.node_addresses = node.addresses.clone();
    problems.extend(assembled.problems);
    BuildOutput {
        table: assembled.table,
        problems,
    }
}

/// Checks every slice and groups the usable ones by `(namespace, Service
/// name)`, each group sorted by slice name. A slice whose Service does not
/// exist simply finds no reader.
fn group_slices<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    problems: &mut Vec<Problem>,
) -> BTreeMap<(String, String), Vec<ParsedSlice>> {
    let mut sorted: Vec<&EndpointSlice> = slices.into_iter().collect();
    sorted.sort_by_cached_key(|s| sort_key(&s.metadata));
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    let mut groups: BTreeMap<(String, String), Vec<ParsedSlice>> = BTreeMap::new();
    for slice in sorted {
        let (parsed, found) = parse_slice(slice);
        problems.extend(found);
        let Some(parsed) = parsed else { continue };
        if !seen.insert((parsed.namespace.clone(), parsed.name.clone())) {
            let object = ObjectRef::new("EndpointSlice", &parsed.namespace, &parsed.name);
            problems.push(duplicate_object(&object));
            continue;
        }
        let group = (parsed.namespace.clone(), parsed.service.clone());
        groups.entry(group).or_default().push(parsed);
    }
    groups
}

/// Objects are read in namespace/name order, so that problems come out
/// in the same order whatever order the source delivered them in.
fn sort_key(meta: &ObjectMeta) -> (String, Option<String>) {
    let (namespace, name) = identity(meta);
    (namespace, name.map(str::to_owned))
}

fn duplicate_object(object: &ObjectRef) -> Problem {
    Problem::error(
        object,
        "metadata.name",
        format!(
            "expected one {} of this name; it is defined twice and the first is used",
            object.kind
        ),
    )
}

/// Translates one Service alone, with the EndpointSlices that may belong
/// to it; slices of other Services or namespaces, and unusable slices, are
/// skipped silently (their problems come from validating them).
pub fn translate_service(
    svc: &Service,
    slices: &[&EndpointSlice],
    node: &NodeContext,
) -> Translation {
    let (parsed, problems) = parse_service(svc);
    let Some(parsed) = parsed else {
        return Translation {
            service: None,
            problems,
        };
    };
    let key = &parsed.info.key;
    let mut own: Vec<ParsedSlice> = slices
        .iter()
        .filter_map(|s| parse_slice(s).0)
        .filter(|s| s.namespace == key.namespace && s.service == key.name)
        .collect();
    own.sort_by(|a, b| a.name.cmp(&b.name));
    own.dedup_by(|later, first| later.name == first.name);
    let own: Vec<&ParsedSlice> = own.iter().collect();
    Translation {
        service: Some(translate_parsed(&parsed, &own, node)),
        problems,
    }
}

/// `slices` are the Service's own, sorted by name.
fn translate_parsed(
    svc: &ParsedService,
    slices: &[&ParsedSlice],
    node: &NodeContext,
) -> TranslatedService {
    let mut out = TranslatedService {
        order: svc.order.clone(),
        key: svc.info.key.clone(),
        ports: Vec::with_capacity(svc.ports.len()),
        vips: Vec::new(),
        node_ports: Vec::new(),
        health_check: svc.load_balancer.health_check_node_port,
        source_ranges: Vec::new(),
    };
    for p in &svc.ports {
        let all = port_endpoints(&p.name, p.protocol, slices);
        let internal = categorize(&all, svc.internal_local, node);
        let external = if svc.internal_local == svc.external_local {
            Arc::clone(&internal)
        } else {
            categorize(&all, svc.external_local, node)
        };
        let port = Arc::new(ServicePort {
            id: ServicePort::stable_id(&svc.info.key, &p.name, p.protocol),
            service: Arc::clone(&svc.info),
            name: p.name.clone(),
            protocol: p.protocol,
            port: p.port,
            node_port: p.node_port,
            app_protocol: p.app_protocol.clone(),
            l7: p.l7,
            internal,
            external,
        });
        let route = |scope| Route {
            port: Arc::clone(&port),
            scope,
        };
        let scoped = [
            (&svc.internal_vips, Scope::Internal),
            (&svc.external_vips, Scope::External),
        ];
        if let Some(ranges) = &svc.load_balancer.source_ranges {
            // Only the load balancer's ingress IPs, as kube-proxy does.
            for vip in svc
                .external_vips
                .iter()
                .filter(|v| v.field.starts_with("status.loadBalancer"))
            {
                let frontend = Frontend {
                    ip: vip.ip,
                    protocol: p.protocol,
                    port: p.port,
                };
                out.source_ranges.push((
                    frontend,
                    super::load_balancer::ranges_for(vip.ip, ranges).into(),
                ));
            }
        }
        for (vips, scope) in scoped {
            for vip in vips {
                out.vips.push(Claim {
                    key: Frontend {
                        ip: vip.ip,
                        protocol: p.protocol,
                        port: p.port,
                    },
                    route: route(scope),
                    field: vip.field.clone(),
                });
            }
        }
        if let Some(node_port) = p.node_port {
            out.node_ports.push(Claim {
                key: (p.protocol, node_port),
                route: route(Scope::External),
                field: format!("{}.nodePort", p.field),
            });
        }
        out.ports.push(port);
    }
    out
}

/// Joins translated Services into a table. Where two Services claim the
/// same frontend (address, protocol, port) or NodePort, the older one
/// (`creationTimestamp`, then namespace/name) keeps it and the other is
/// left out whole, with an error naming both. The problems returned are
/// only these conflicts (and a Service given twice).
pub fn assemble<'a>(services: impl IntoIterator<Item = &'a TranslatedService>) -> BuildOutput {
    let mut sorted: Vec<&TranslatedService> = services.into_iter().collect();
    sorted.sort_by(|a, b| a.order.cmp(&b.order));
    let mut out = BuildOutput::default();
    let mut vip_owner: HashMap<Frontend, &ServiceKey> = HashMap::new();
    let mut node_port_owner: HashMap<(Protocol, u16), &ServiceKey> = HashMap::new();
    for svc in sorted {
        let object = ObjectRef::new("Service", &svc.key.namespace, &svc.key.name);
        if out.table.services.contains_key(&svc.key) {
            out.problems.push(duplicate_object(&object));
            continue;
        }
        let mut ck = Checker::for_object(object);
        for claim in &svc.vips {
            if let Some(owner) = vip_owner.get(&claim.key) {
                let f = claim.key;
                let what = format!("{} port {}/{}", f.ip, f.port, f.protocol);
                ck.error(claim.field.clone(), conflict(&what, owner));
            }
        }
        for claim in &svc.node_ports {
            if let Some(owner) = node_port_owner.get(&claim.key) {
                let (protocol, port) = claim.key;
                ck.error(
                    claim.field.clone(),
                    conflict(&format!("nodePort {port}/{protocol}"), owner),
                );
            }
        }
        let problems = ck.into_problems();
        if !problems.is_empty() {
            out.problems.extend(problems);
            continue;
        }
        for claim in &svc.vips {
            vip_owner.insert(claim.key, &svc.key);
            out.table.frontends.insert(claim.key, claim.route.clone());
        }
        for claim in &svc.node_ports {
            node_port_owner.insert(claim.key, &svc.key);
            out.table.node_ports.insert(claim.key, claim.route.clone());
        }
        if let Some(port) = svc.health_check
            && !out.table.health_checks.contains_key(&port)
        {
            out.table.health_checks.insert(port, svc.key.clone());
        }
        for (frontend, ranges) in &svc.source_ranges {
            out.table
                .source_ranges
                .insert(*frontend, Arc::clone(ranges));
        }
        out.table
            .services
            .insert(svc.key.clone(), svc.ports.clone());
    }
    out
}

fn conflict(what: &str, owner: &ServiceKey) -> String {
    format!(
        "expected an address and port no other Service uses; {what} belongs to Service {owner}, \
         which is older (or sorts first by namespace/name), so this Service is not proxied"
    )
}
