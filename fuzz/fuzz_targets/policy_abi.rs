//! The policy ABI boundary, host side. One scripted guest module is
//! compiled once; the fuzzer's configuration bytes are its script, so every
//! answer it gives (sy_alloc pointers, sy_init verdicts, sy_pick indices,
//! traps, endless loops, runaway recursion, memory growth, host calls with
//! wild pointers) is fuzzer-controlled. The endpoint sets and the sequence
//! of picks, outcomes, releases, endpoint changes and rebinds are too.
//!
//! Invariant: the host never panics, and every decision it returns indexes
//! the endpoint set it was asked about.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use switchyard::admin::Metrics;
use switchyard::catalog::{self, Endpoint, NodeContext, Route, Scope, ServiceKey, ServicePort};
use switchyard::config::{HumanDuration, PolicyConfig};
use switchyard::l7::attrs;
use switchyard::policy::{
    BoundPolicy, Decider, Locality, Outcome, PickRequest, PolicyEngine, PolicyModule, load_module,
};
use switchyard::sources::manifest;

/// Reads its behaviour from the configuration `sy_init` receives: one byte
/// per decision point, four for an arbitrary i32, wrapping around.
const SCRIPTED: &str = r#"
(module
  (import "switchyard" "log" (func $log (param i32 i32 i32)))
  (import "switchyard" "set_error" (func $set_error (param i32 i32)))
  (import "switchyard" "request_attr" (func $attr (param i32 i32 i32 i32 i32) (result i32)))
  (import "switchyard" "random_u64" (func $rand (result i64)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (global $sp (mut i32) (i32.const 0))
  (global $sl (mut i32) (i32.const 0))
  (global $pos (mut i32) (i32.const 0))
  (global $count (mut i32) (i32.const 0))
  (func $byte (result i32) (local $b i32)
    (if (i32.eqz (global.get $sl)) (then (return (i32.const 0))))
    (local.set $b (i32.load8_u (i32.add (global.get $sp) (global.get $pos))))
    (global.set $pos (i32.rem_u (i32.add (global.get $pos) (i32.const 1)) (global.get $sl)))
    (local.get $b))
  (func $word (result i32)
    (i32.or (i32.or (call $byte) (i32.shl (call $byte) (i32.const 8)))
            (i32.or (i32.shl (call $byte) (i32.const 16)) (i32.shl (call $byte) (i32.const 24)))))
  (func $spin (loop $l (br $l)))
  (func $recurse (param $n i32) (result i32)
    (i32.add (call $recurse (i32.add (local.get $n) (i32.const 1))) (i32.const 1)))
  (func $bump (param $size i32) (result i32) (local $p i32) (local $end i64) (local $have i64)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (local.set $end (i64.add (i64.extend_i32_u (local.get $p)) (i64.extend_i32_u (local.get $size))))
    (local.set $have (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)))
    (if (i64.gt_u (local.get $end) (local.get $have)) (then
      (if (i32.eq (i32.const -1) (memory.grow (i32.wrap_i64
            (i64.shr_u (i64.add (i64.sub (local.get $end) (local.get $have)) (i64.const 65535)) (i64.const 16)))))
        (then (return (i32.const 0))))))
    (global.set $heap (i32.wrap_i64 (local.get $end)))
    (local.get $p))
  (func (export "sy_abi_version") (result i32) (i32.const 1))
  (func (export "sy_alloc") (param $size i32) (result i32) (local $op i32)
    (if (global.get $sl) (then
      (local.set $op (call $byte))
      (if (i32.ge_u (local.get $op) (i32.const 0xf0)) (then (return (call $word))))
      (if (i32.eq (local.get $op) (i32.const 0xef)) (then (return (i32.const 0))))))
    (call $bump (local.get $size)))
  (func (export "sy_init") (param $ptr i32) (param $len i32) (result i32) (local $op i32)
    (global.set $sp (local.get $ptr))
    (global.set $sl (local.get $len))
    (local.set $op (call $byte))
    (if (i32.ge_u (local.get $op) (i32.const 0xf8)) (then
      (call $set_error (call $word) (call $word))
      (return (local.get $op))))
    (if (i32.eq (local.get $op) (i32.const 0xf7)) (then unreachable))
    (if (i32.eq (local.get $op) (i32.const 0xf6)) (then (call $spin)))
    (if (i32.eq (local.get $op) (i32.const 0xf5)) (then (drop (call $recurse (i32.const 0)))))
    (i32.const 0))
  (func (export "sy_endpoints") (param $table i32) (param $count i32) (local $op i32)
    (global.set $count (local.get $count))
    (local.set $op (call $byte))
    (if (i32.eq (local.get $op) (i32.const 0xff)) (then unreachable))
    (if (i32.eq (local.get $op) (i32.const 0xfe)) (then (drop (memory.grow (call $word)))))
    (if (i32.eq (local.get $op) (i32.const 0xfd)) (then (call $spin))))
  (func (export "sy_pick") (param $ctx i32) (result i32) (local $op i32)
    (local.set $op (call $byte))
    (if (i32.lt_u (local.get $op) (i32.const 0x80)) (then
      (if (i32.eqz (global.get $count)) (then (return (i32.const -1))))
      (return (i32.rem_u (local.get $op) (global.get $count)))))
    (if (i32.lt_u (local.get $op) (i32.const 0xf0)) (then (return (call $word))))
    (if (i32.eq (local.get $op) (i32.const 0xf8)) (then
      (call $log (call $word) (call $word) (call $word)) (return (call $word))))
    (if (i32.eq (local.get $op) (i32.const 0xf7)) (then
      ;; request_attr with pointers mostly inside the first page, so that
      ;; the host's copy paths run, not only its bounds checks.
      (return (call $attr (call $byte)
        (i32.and (call $word) (i32.const 0xffff)) (call $byte)
        (i32.and (call $word) (i32.const 0xffff)) (i32.shl (call $byte) (i32.const 2))))))
    (if (i32.eq (local.get $op) (i32.const 0xf9)) (then
      (return (call $attr (call $word) (call $word) (call $word) (call $word) (call $word)))))
    (if (i32.eq (local.get $op) (i32.const 0xfa)) (then
      (return (i32.wrap_i64 (call $rand)))))
    (if (i32.eq (local.get $op) (i32.const 0xfb)) (then
      (return (memory.grow (call $word)))))
    (if (i32.eq (local.get $op) (i32.const 0xfc)) (then
      (return (i32.load (call $word)))))
    (if (i32.eq (local.get $op) (i32.const 0xfd)) (then unreachable))
    (if (i32.eq (local.get $op) (i32.const 0xfe)) (then (call $spin)))
    (if (i32.eq (local.get $op) (i32.const 0xff)) (then (return (call $recurse (i32.const 0)))))
    (i32.const -1))
  (func (export "sy_outcome") (param i32 i32 i64)
    (if (i32.eq (call $byte) (i32.const 0xff)) (then unreachable))))
"#;

struct Fixture {
    engine: Arc<PolicyEngine>,
    module: Arc<PolicyModule>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        // Short deadlines and a small memory cap keep endless loops and
        // runaway growth cheap per execution.
        let cfg = PolicyConfig {
            deadline: HumanDuration::from_micros(50),
            setup_deadline: HumanDuration::from_millis(2),
            memory_limit: 4 << 20,
            ..PolicyConfig::default()
        };
        let engine = PolicyEngine::new(&cfg).expect("engine");
        let bytes = wat::parse_str(SCRIPTED).expect("scripted module parses");
        let module = Arc::new(load_module(&engine, "scripted", &bytes).expect("module loads"));
        Fixture { engine, module }
    })
}

#[derive(Arbitrary, Debug)]
struct Ep {
    v6: bool,
    addr: u128,
    port: u16,
    node: Option<String>,
    zone: Option<String>,
    name: Option<String>,
    ready: bool,
    serving: bool,
    terminating: bool,
}

#[derive(Arbitrary, Debug)]
enum Step {
    Pick {
        tried: Vec<u8>,
        client_port: u16,
    },
    /// An L7 decision: the head is lent to the guest via `request_attr`.
    PickRequest {
        head: Vec<u8>,
    },
    Connected {
        latency_us: u32,
    },
    Failed {
        after_us: u32,
    },
    Release,
    Endpoints {
        keep: u8,
        add: Vec<Ep>,
    },
    Rebind {
        script: Vec<u8>,
    },
    Generation,
}

#[derive(Arbitrary, Debug)]
struct Input {
    script: Vec<u8>,
    endpoints: Vec<Ep>,
    external: bool,
    local_node: Option<String>,
    steps: Vec<Step>,
}

fn endpoint(e: &Ep) -> Endpoint {
    let ip = if e.v6 {
        IpAddr::V6(Ipv6Addr::from(e.addr))
    } else {
        IpAddr::V4(Ipv4Addr::from(e.addr as u32))
    };
    Endpoint {
        addr: SocketAddr::new(ip, e.port),
        node_name: e.node.clone(),
        zone: e.zone.clone(),
        hostname: None,
        target_name: e.name.clone(),
        ready: e.ready,
        serving: e.serving,
        terminating: e.terminating,
    }
}

/// A Service port as the catalog makes it (so that fields added to
/// `ServicePort` later need no change here), with the fuzzer's endpoints.
/// A route as the catalog makes it: each scope's list IPv4 first, so that
/// each family is one contiguous range (`catalog::family_range`).
fn route(mut endpoints: Vec<Endpoint>, scope: Scope) -> Route {
    endpoints.sort_by_key(|e| e.addr.is_ipv6());
    static TEMPLATE: OnceLock<ServicePort> = OnceLock::new();
    let template = TEMPLATE.get_or_init(|| {
        let (objects, _) = manifest::parse(SERVICE, Path::new("fuzz.yaml"));
        let built = catalog::build(&objects.services, &objects.slices, &NodeContext::default());
        let ports = built
            .table
            .services
            .values()
            .next()
            .expect("template Service builds");
        (*ports[0]).clone()
    });
    let endpoints: Arc<[Endpoint]> = endpoints.into();
    let mut port = template.clone();
    port.internal = endpoints.clone();
    port.external = endpoints;
    Route {
        port: Arc::new(port),
        scope,
    }
}

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc\n  namespace: fuzz\n  annotations:\n    switchyard.dev/policy: scripted\nspec:\n  clusterIP: 10.96.0.10\n  ports:\n  - port: 80\n    protocol: TCP\n";

fn bind(f: &Fixture, id: u64, script: &[u8]) -> Arc<BoundPolicy> {
    Arc::new(BoundPolicy {
        id,
        service: ServiceKey {
            namespace: "fuzz".into(),
            name: "svc".into(),
        },
        module: f.module.clone(),
        config: Arc::from(String::from_utf8_lossy(script).as_ref()),
    })
}

const MAX_ENDPOINTS: usize = 512;
const MAX_STEPS: usize = 64;

fuzz_target!(|input: Input| {
    let f = fixture();
    let metrics = Arc::new(Metrics::new("fuzz"));
    let here = Locality {
        node: input.local_node.clone(),
        zone: None,
    };
    let mut decider = Decider::new(Some(f.engine.clone()), here, metrics);
    let scope = if input.external {
        Scope::External
    } else {
        Scope::Internal
    };
    let mut endpoints: Vec<Endpoint> = input
        .endpoints
        .iter()
        .take(MAX_ENDPOINTS)
        .map(endpoint)
        .collect();
    let mut current = route(endpoints.clone(), scope);
    let mut binding = bind(f, 1, &input.script);
    let mut generation = 1;
    let mut last = None;
    let client: SocketAddr = "10.244.1.100:40000".parse().expect("literal");
    let frontend: SocketAddr = "10.96.0.10:80".parse().expect("literal");
    for step in input.steps.iter().take(MAX_STEPS) {
        match step {
            Step::Pick { tried, client_port } => {
                let tried: Vec<usize> = tried.iter().map(|&t| usize::from(t)).collect();
                let req = PickRequest {
                    route: &current,
                    binding: Some(&binding),
                    generation,
                    client: SocketAddr::new(client.ip(), *client_port),
                    frontend,
                    tried: &tried,
                };
                last = decider.pick(&req);
                // One family per connection: only the frontend's family.
                let family = catalog::family_range(current.endpoints(), frontend.ip());
                match last {
                    Some(d) => assert!(
                        family.contains(&d.index),
                        "decision {} outside the frontend family's endpoints {family:?}",
                        d.index,
                    ),
                    None => assert!(family.is_empty() || !tried.is_empty()),
                }
            }
            Step::PickRequest { head } => {
                let Some(parts) = attrs::parse_head(head) else {
                    continue;
                };
                let mut request = Some(parts);
                let req = PickRequest {
                    route: &current,
                    binding: Some(&binding),
                    generation,
                    client,
                    frontend,
                    tried: &[],
                };
                last = decider.pick_request(&req, &mut request);
                assert!(
                    request.is_some(),
                    "the request head comes back after the call"
                );
                if let Some(d) = last {
                    let family = catalog::family_range(current.endpoints(), frontend.ip());
                    assert!(family.contains(&d.index));
                }
            }
            Step::Connected { latency_us }
            | Step::Failed {
                after_us: latency_us,
            } => {
                let Some(d) = last else { continue };
                let Some(ep) = current.endpoints().get(d.index) else {
                    continue;
                };
                let req = PickRequest {
                    route: &current,
                    binding: Some(&binding),
                    generation,
                    client,
                    frontend,
                    tried: &[],
                };
                let took = Duration::from_micros(u64::from(*latency_us));
                let outcome = if matches!(step, Step::Connected { .. }) {
                    Outcome::Connected { latency: took }
                } else {
                    Outcome::Failed { after: took }
                };
                decider.outcome(&req, d, ep.addr, outcome);
            }
            Step::Release => {
                if let Some(d) = last
                    && let Some(ep) = current.endpoints().get(d.index)
                {
                    decider.release(&current, d, ep.addr);
                }
            }
            Step::Endpoints { keep, add } => {
                endpoints.truncate(usize::from(*keep));
                endpoints.extend(add.iter().map(endpoint));
                endpoints.truncate(MAX_ENDPOINTS);
                current = route(endpoints.clone(), scope);
                generation += 1;
            }
            Step::Rebind { script } => {
                binding = bind(f, binding.id + 1, script);
                generation += 1;
            }
            Step::Generation => generation += 20,
        }
    }
});
