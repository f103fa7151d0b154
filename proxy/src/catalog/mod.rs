//! Service + EndpointSlice objects in, an immutable [`ServiceTable`] out,
//! with kube-proxy's semantics. Pure: no I/O, no clocks, no globals, so that
//! every Service rule is written once and unit tested exhaustively.

mod app_protocol;
mod assembly;
mod build;
mod check;
pub mod datapath;
mod endpoints;
mod family;
#[cfg(test)]
pub mod fixtures;
mod load_balancer;
mod node;
mod problem;
mod service;
mod shard_map;
mod table;
#[cfg(test)]
mod tests;
mod topology;
mod vips;

pub use app_protocol::{L7Protocol, PROTOCOL_ANNOTATION, port_l7};
pub use assembly::{Assembly, Replaced};
pub use build::{
    BuildOutput, NodeContext, TranslatedService, Translation, assemble, build, node_addresses,
    translate_service,
};
pub use endpoints::validate_endpoint_slice;
pub use family::{family_range, is_v6};
pub use load_balancer::{Prefix, SOURCE_RANGES_ANNOTATION, ranges_for};
pub use node::{TO_BE_DELETED_TAINT, ZONE_LABEL, node_context};
pub use problem::{ObjectRef, Problem, Severity};
pub use service::validate_service;
pub use table::{
    Endpoint, Frontend, Protocol, Route, Scope, ServiceInfo, ServiceKey, ServicePort, ServiceTable,
    Services, ShardMap, TableChange,
};

/// Annotation that binds a Service to a policy module by name.
pub const POLICY_ANNOTATION: &str = "switchyard.dev/policy";
/// Annotation with the JSON configuration handed to the bound policy.
pub const POLICY_CONFIG_ANNOTATION: &str = "switchyard.dev/policy-config";
/// Annotation that makes Switchyard send a PROXY protocol header upstream.
pub const PROXY_PROTOCOL_ANNOTATION: &str = "switchyard.dev/proxy-protocol";
/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
