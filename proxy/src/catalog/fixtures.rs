//! Test fixtures: the Service ports that unit tests across the crate build
//! by hand, with every field a test does not care about at its default.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Endpoint, Protocol, ServiceInfo, ServiceKey, ServicePort};

/// `demo/<name>`.
pub fn key(name: &str) -> ServiceKey {
    ServiceKey {
        namespace: "demo".into(),
        name: name.into(),
    }
}

/// A Service `demo/<name>` with no policy, affinity or annotation.
pub fn info(name: &str) -> ServiceInfo {
    ServiceInfo {
        key: key(name),
        policy: None,
        policy_config: None,
        affinity_timeout: None,
        external_local: false,
        proxy_protocol: false,
        annotations: BTreeMap::new(),
    }
}

/// Its unnamed TCP port 80, without endpoints.
pub fn port(name: &str) -> ServicePort {
    ServicePort {
        id: ServicePort::stable_id(&key(name), "", Protocol::Tcp),
        service: Arc::new(info(name)),
        name: String::new(),
        protocol: Protocol::Tcp,
        port: 80,
        node_port: None,
        app_protocol: None,
        l7: None,
        internal: Arc::new([]),
        external: Arc::new([]),
    }
}

/// A ready endpoint with no topology.
pub fn ready(addr: &str) -> Endpoint {
    Endpoint {
        addr: addr.parse().expect("test address"),
        node_name: None,
        zone: None,
        hostname: None,
        target_name: None,
        ready: true,
        serving: true,
        terminating: false,
    }
}
