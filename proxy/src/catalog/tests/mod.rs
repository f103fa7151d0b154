//! Unit tests of the catalog translation. Every input is YAML the way
//! `kubectl get svc,endpointslices -o yaml` prints it, read into the
//! k8s-openapi types exactly as the sources read it.

mod assembly;
mod conflicts;
mod dual_stack;
mod endpoints;
mod external;
mod frontends;
mod incremental;
mod l7;
mod slices;
mod topology;
mod traffic;
mod validation;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;

use super::{
    BuildOutput, Endpoint, Frontend, NodeContext, Problem, Protocol, Route, Scope, ServiceKey,
    ServicePort, Severity, build,
};

/// The objects of a multi-document YAML stream; a `kind: List` (what
/// kubectl prints for several objects) is opened.
pub(super) struct Objects {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
}

pub(super) fn objects(yaml: &str) -> Objects {
    let mut out = Objects {
        services: Vec::new(),
        slices: Vec::new(),
    };
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_yaml::Value::deserialize(doc).expect("well-formed YAML document");
        push_object(&mut out, value);
    }
    out
}

fn push_object(out: &mut Objects, value: serde_yaml::Value) {
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .map(str::to_owned);
    match kind.as_deref() {
        Some("List") => {
            let items = value.get("items").and_then(|i| i.as_sequence()).cloned();
            for item in items.expect("a List has items") {
                push_object(out, item);
            }
        }
        Some("Service") => out
            .services
            .push(serde_yaml::from_value(value).expect("a Service")),
        Some("EndpointSlice") => out
            .slices
            .push(serde_yaml::from_value(value).expect("an EndpointSlice")),
        other => panic!("unexpected kind {other:?} in test YAML"),
    }
}

pub(super) fn service(yaml: &str) -> Service {
    serde_yaml::from_str(yaml).expect("a Service")
}

pub(super) fn slice(yaml: &str) -> EndpointSlice {
    serde_yaml::from_str(yaml).expect("an EndpointSlice")
}

pub(super) fn node(name: &str) -> NodeContext {
    NodeContext {
        node_name: Some(name.to_owned()),
        ..NodeContext::default()
    }
}

/// Builds the table from a YAML stream on node `node-a`.
pub(super) fn build_yaml(yaml: &str) -> BuildOutput {
    build_yaml_on(yaml, &node("node-a"))
}

pub(super) fn build_yaml_on(yaml: &str, node: &NodeContext) -> BuildOutput {
    let objects = objects(yaml);
    build(&objects.services, &objects.slices, node)
}

pub(super) fn ip(text: &str) -> IpAddr {
    text.parse().expect("an IP address in the test")
}

pub(super) fn key(namespace: &str, name: &str) -> ServiceKey {
    ServiceKey {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

/// The route of a VIP frontend, which must exist.
pub(super) fn vip<'a>(out: &'a BuildOutput, addr: &str, protocol: Protocol) -> &'a Route {
    let addr: SocketAddr = addr.parse().expect("ip:port in the test");
    out.table
        .frontends
        .get(&Frontend {
            ip: addr.ip(),
            protocol,
            port: addr.port(),
        })
        .unwrap_or_else(|| {
            panic!(
                "no frontend {addr}/{protocol} in {:#?}",
                out.table.frontends
            )
        })
}

pub(super) fn node_port(out: &BuildOutput, protocol: Protocol, port: u16) -> &Route {
    out.table
        .node_ports
        .get(&(protocol, port))
        .unwrap_or_else(|| panic!("no nodePort {port}/{protocol}"))
}

/// The ports of one Service in the table, which must be there.
pub(super) fn ports<'a>(
    out: &'a BuildOutput,
    namespace: &str,
    name: &str,
) -> &'a [Arc<ServicePort>] {
    out.table
        .services
        .get(&key(namespace, name))
        .unwrap_or_else(|| panic!("Service {namespace}/{name} not in the table"))
}

/// `ip:port` of each endpoint, in table order.
pub(super) fn addrs(endpoints: &[Endpoint]) -> Vec<String> {
    endpoints.iter().map(|e| e.addr.to_string()).collect()
}

/// `(severity, "Kind ns/name", field)` of each problem, in order.
pub(super) fn summary(problems: &[Problem]) -> Vec<(Severity, String, String)> {
    problems
        .iter()
        .map(|p| (p.severity, p.object.to_string(), p.field.clone()))
        .collect()
}

pub(super) fn assert_no_problems(out: &BuildOutput) {
    assert!(
        out.problems.is_empty(),
        "unexpected problems: {:#?}",
        out.problems
    );
}
