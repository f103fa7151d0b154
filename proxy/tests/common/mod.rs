//! What the policy integration tests share: the exports every hand-written
//! ABI v1 module carries, and a Service port with `n` endpoints to decide
//! for. Each test binary uses its own part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use switchyard::catalog::{
    Endpoint, L7Protocol, Protocol, Route, Scope, ServiceInfo, ServiceKey, ServicePort,
};
use switchyard::config::PolicyConfig;
use switchyard::policy::{BoundPolicy, PickRequest, PolicyEngine, load_module};

/// ABI v1's version, allocator and init exports, and the allocator's heap:
/// a bump allocator from 1 KiB that starts over when it passes 64 KiB (a
/// guest that only ever holds the last answer needs no more).
pub const ABI_EXPORTS: &str = r#"
  (global $heap (mut i32) (i32.const 1024))
  (func (export "sy_abi_version") (result i32) (i32.const 1))
  (func (export "sy_alloc") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (local.get $p) (local.get $size)) (i32.const 7)) (i32.const -8)))
    (if (i32.gt_u (global.get $heap) (i32.const 65536)) (then (global.set $heap (i32.const 1024)) (return (i32.const 1024))))
    (local.get $p))
  (func (export "sy_init") (param i32 i32) (result i32) (i32.const 0))"#;

/// A round robin's state: where it is, and the endpoint count that
/// `sy_endpoints` hands it.
pub const COUNTER: &str = r#"
  (global $next (mut i32) (i32.const 0))
  (global $count (mut i32) (i32.const 0))
  (func (export "sy_endpoints") (param $table i32) (param $count i32)
    (global.set $count (local.get $count)))"#;

/// The body of a round robin's `sy_pick` (with `$COUNTER`).
pub const ROUND_ROBIN_PICK: &str = "(local $i i32)
    (if (i32.eqz (global.get $count)) (then (return (i32.const -1))))
    (local.set $i (i32.rem_u (global.get $next) (global.get $count)))
    (global.set $next (i32.add (global.get $next) (i32.const 1)))
    (local.get $i)";

/// A module's text with `$ABI_EXPORTS` and `$COUNTER` put in.
pub fn expand(text: &str) -> String {
    text.replace("$ABI_EXPORTS", ABI_EXPORTS)
        .replace("$COUNTER", COUNTER)
}

/// The binary of a WAT text (expanded).
pub fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(expand(text)).expect("test WAT parses")
}

pub fn engine() -> Arc<PolicyEngine> {
    PolicyEngine::new(&PolicyConfig::default()).expect("engine")
}

pub fn service_key() -> ServiceKey {
    ServiceKey {
        namespace: "demo".into(),
        name: "web".into(),
    }
}

/// `n` ready endpoints 10.244.1.10:8080, .11, ... on node-a.
pub fn endpoints(n: usize) -> Vec<Endpoint> {
    (0..n)
        .map(|i| Endpoint {
            addr: format!("10.244.1.{}:8080", 10 + i).parse().expect("addr"),
            node_name: Some("node-a".into()),
            zone: None,
            hostname: None,
            target_name: Some(format!("web-{i}")),
            ready: true,
            serving: true,
            terminating: false,
        })
        .collect()
}

/// Port 80/TCP of Service demo/web with `n` endpoints, as seen from inside
/// the cluster.
pub fn route(n: usize) -> Route {
    port_route(n, None)
}

/// The same port with `appProtocol: http`, so that it runs the L7 path.
pub fn http_route(n: usize) -> Route {
    port_route(n, Some(L7Protocol::Http1))
}

fn port_route(n: usize, l7: Option<L7Protocol>) -> Route {
    let service = Arc::new(ServiceInfo {
        key: service_key(),
        policy: None,
        policy_config: None,
        affinity_timeout: None,
        external_local: false,
        proxy_protocol: false,
        annotations: BTreeMap::new(),
    });
    let endpoints: Arc<[Endpoint]> = endpoints(n).into();
    Route {
        port: Arc::new(ServicePort {
            id: 7,
            service,
            name: String::new(),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: None,
            app_protocol: l7.map(|_| "http".into()),
            l7,
            internal: endpoints.clone(),
            external: endpoints,
        }),
        scope: Scope::Internal,
    }
}

/// A module bound to demo/web with an empty config.
pub fn bound(engine: &PolicyEngine, id: u64, bytes: &[u8]) -> Arc<BoundPolicy> {
    let module = load_module(engine, "test", bytes).expect("module loads");
    Arc::new(BoundPolicy {
        id,
        service: service_key(),
        module: Arc::new(module),
        config: Arc::from("{}"),
    })
}

/// A new connection from a client Pod to the ClusterIP 10.96.0.10:80.
pub fn request<'a>(route: &'a Route, binding: &'a Arc<BoundPolicy>) -> PickRequest<'a> {
    PickRequest {
        route,
        binding: Some(binding),
        generation: 1,
        client: "10.244.1.100:40000".parse().expect("addr"),
        frontend: "10.96.0.10:80".parse().expect("addr"),
        tried: &[],
    }
}
