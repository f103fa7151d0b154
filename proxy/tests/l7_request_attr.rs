//! `request_attr` (ABI v1, L7 mode) from the guest's side: a hand-written
//! module reads a request header through the host, in a per-request pick,
//! and the request head comes back to the caller intact.

use std::collections::BTreeMap;
use std::sync::Arc;

use switchyard::admin::Metrics;
use switchyard::catalog::{Endpoint, Protocol, Route, Scope, ServiceInfo, ServiceKey, ServicePort};
use switchyard::config::PolicyConfig;
use switchyard::l7::attrs::parse_head;
use switchyard::policy::{
    BoundPolicy, DecidedBy, Decider, Locality, PickRequest, PolicyEngine, load_module,
};

/// Picks the endpoint whose index is the digit in header `x-pick`, after
/// checking the context's mode, a length query and a wild name pointer.
const HEADER_PICK: &str = r#"
(module
  (import "switchyard" "request_attr" (func $attr (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "x-pick")
  (global $heap (mut i32) (i32.const 1024))
  (func (export "sy_abi_version") (result i32) (i32.const 1))
  (func (export "sy_alloc") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (local.get $p) (local.get $size)) (i32.const 7)) (i32.const -8)))
    (local.get $p))
  (func (export "sy_init") (param i32 i32) (result i32) (i32.const 0))
  (func (export "sy_endpoints") (param i32 i32))
  (func (export "sy_pick") (param $ctx i32) (result i32)
    (if (i32.ne (i32.load8_u offset=1 (local.get $ctx)) (i32.const 1))
      (then (return (i32.const -1))))
    (if (i32.ne (call $attr (i32.const 3) (i32.const 16) (i32.const 6) (i32.const 0) (i32.const 0)) (i32.const 1))
      (then (return (i32.const -1))))
    (if (i32.ne (call $attr (i32.const 3) (i32.const 70000) (i32.const 6) (i32.const 32) (i32.const 8)) (i32.const -1))
      (then (unreachable)))
    (if (i32.ne (call $attr (i32.const 3) (i32.const 16) (i32.const 6) (i32.const 70000) (i32.const 8)) (i32.const -1))
      (then (unreachable)))
    (drop (call $attr (i32.const 3) (i32.const 16) (i32.const 6) (i32.const 32) (i32.const 8)))
    (i32.sub (i32.load8_u (i32.const 32)) (i32.const 48))))
"#;

fn route(n: usize) -> Route {
    let service = Arc::new(ServiceInfo {
        key: ServiceKey {
            namespace: "demo".into(),
            name: "web".into(),
        },
        policy: None,
        policy_config: None,
        affinity_timeout: None,
        external_local: false,
        proxy_protocol: false,
        annotations: BTreeMap::new(),
    });
    let endpoints: Vec<Endpoint> = (0..n)
        .map(|i| Endpoint {
            addr: format!("10.244.1.{}:8080", 10 + i).parse().expect("addr"),
            node_name: None,
            zone: None,
            hostname: None,
            target_name: Some(format!("web-{i}")),
            ready: true,
            serving: true,
            terminating: false,
        })
        .collect();
    let endpoints: Arc<[Endpoint]> = endpoints.into();
    Route {
        port: Arc::new(ServicePort {
            id: 9,
            service,
            name: String::new(),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: None,
            app_protocol: Some("http".into()),
            l7: Some(switchyard::catalog::L7Protocol::Http1),
            internal: endpoints.clone(),
            external: endpoints,
        }),
        scope: Scope::Internal,
    }
}

#[test]
fn a_policy_routes_by_a_header_it_reads_through_the_host() {
    let engine = PolicyEngine::new(&PolicyConfig::default()).expect("engine");
    let bytes = wat::parse_str(HEADER_PICK).expect("WAT parses");
    let module = load_module(&engine, "header-pick", &bytes).expect("module loads");
    let binding = Arc::new(BoundPolicy {
        id: 1,
        service: ServiceKey {
            namespace: "demo".into(),
            name: "web".into(),
        },
        module: Arc::new(module),
        config: Arc::from("{}"),
    });
    let metrics = Arc::new(Metrics::new("test"));
    let mut decider = Decider::new(Some(engine), Locality::default(), metrics);
    let route = route(4);
    let req = PickRequest {
        route: &route,
        binding: Some(&binding),
        generation: 1,
        client: "10.244.1.100:40000".parse().expect("addr"),
        frontend: "10.96.0.10:80".parse().expect("addr"),
        tried: &[],
    };
    for want in [2usize, 3, 0, 2] {
        let head = format!("GET /x HTTP/1.1\r\nHost: web\r\nX-Pick: {want}\r\n\r\n");
        let mut parts = parse_head(head.as_bytes());
        let d = decider.pick_request(&req, &mut parts).expect("a decision");
        assert_eq!((d.index, d.by), (want, DecidedBy::Current));
        let parts = parts.expect("the request head is handed back");
        assert_eq!(parts.headers["x-pick"], want.to_string().as_str());
        assert_eq!(parts.uri.path(), "/x");
    }
    // L4 mode: no request, the module declines, the round robin answers.
    let d = decider.pick(&req).expect("a decision");
    assert_eq!(d.by, DecidedBy::Builtin);
    // A request without the header: declined too, nothing trapped.
    let mut parts = parse_head(b"GET / HTTP/1.1\r\n\r\n");
    let d = decider.pick_request(&req, &mut parts).expect("a decision");
    assert_eq!(d.by, DecidedBy::Builtin);
    assert!(parts.is_some());
}
