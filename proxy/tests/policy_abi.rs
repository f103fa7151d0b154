//! ABI v1 edge cases, driven with hand-written WAT modules: what the host
//! refuses at load time, and how a misbehaving module is contained.

use std::collections::BTreeMap;
use std::sync::Arc;

use switchyard::admin::Metrics;
use switchyard::catalog::{Endpoint, Protocol, Route, Scope, ServiceInfo, ServiceKey, ServicePort};
use switchyard::config::PolicyConfig;
use switchyard::policy::{
    BoundPolicy, DecidedBy, Decider, Fault, Locality, ModuleError, PickRequest, PolicyEngine,
    WasmInstance, load_module,
};

/// A well-behaved round robin; `$PICK` is replaced to make bad variants.
const GOOD: &str = r#"
(module
  (import "switchyard" "now_ns" (func $now (result i64)))
  (memory (export "memory") 1)
  (global $next (mut i32) (i32.const 0))
  (global $count (mut i32) (i32.const 0))
  (global $heap (mut i32) (i32.const 1024))
  (func (export "sy_abi_version") (result i32) (i32.const 1))
  (func (export "sy_alloc") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (local.get $p) (local.get $size)) (i32.const 7)) (i32.const -8)))
    (if (i32.gt_u (global.get $heap) (i32.const 65536)) (then (global.set $heap (i32.const 1024)) (return (i32.const 1024))))
    (local.get $p))
  (func (export "sy_init") (param i32 i32) (result i32) (i32.const 0))
  (func (export "sy_endpoints") (param $table i32) (param $count i32)
    (global.set $count (local.get $count)))
  (func (export "sy_pick") (param $ctx i32) (result i32)
    $PICK))
"#;

const ROUND_ROBIN: &str = "(local $i i32)
    (if (i32.eqz (global.get $count)) (then (return (i32.const -1))))
    (local.set $i (i32.rem_u (global.get $next) (global.get $count)))
    (global.set $next (i32.add (global.get $next) (i32.const 1)))
    (local.get $i)";

fn wat(pick: &str) -> Vec<u8> {
    wat_text(&GOOD.replace("$PICK", pick))
}

fn wat_text(text: &str) -> Vec<u8> {
    wat::parse_str(text).expect("test WAT parses")
}

fn engine() -> Arc<PolicyEngine> {
    PolicyEngine::new(&PolicyConfig::default()).expect("engine")
}

fn load_err(bytes: &[u8]) -> ModuleError {
    load_module(&engine(), "bad", bytes).expect_err("module must be refused")
}

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
            node_name: Some("node-a".into()),
            zone: None,
            hostname: None,
            target_name: Some(format!("web-{i}")),
            ready: true,
            serving: true,
            terminating: false,
        })
        .collect();
    let endpoints: Arc<[Endpoint]> = endpoints.into();
    let port = ServicePort {
        id: 7,
        service: service.clone(),
        name: String::new(),
        protocol: Protocol::Tcp,
        port: 80,
        node_port: None,
        app_protocol: None,
        l7: None,
        internal: endpoints.clone(),
        external: endpoints,
    };
    Route {
        port: Arc::new(port),
        scope: Scope::Internal,
    }
}

fn bound(engine: &PolicyEngine, id: u64, bytes: &[u8]) -> Arc<BoundPolicy> {
    let module = load_module(engine, "test", bytes).expect("module loads");
    Arc::new(BoundPolicy {
        id,
        service: ServiceKey {
            namespace: "demo".into(),
            name: "web".into(),
        },
        module: Arc::new(module),
        config: Arc::from("{}"),
    })
}

fn picks(
    decider: &mut Decider,
    route: &Route,
    binding: &Arc<BoundPolicy>,
    n: usize,
) -> Vec<(usize, DecidedBy)> {
    (0..n)
        .map(|_| {
            let req = PickRequest {
                route,
                binding: Some(binding),
                generation: 1,
                client: "10.244.1.100:40000".parse().expect("addr"),
                frontend: "10.96.0.10:80".parse().expect("addr"),
                tried: &[],
            };
            let d = decider.pick(&req).expect("a decision");
            (d.index, d.by)
        })
        .collect()
}

fn decider(engine: &Arc<PolicyEngine>) -> (Decider, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new("test"));
    (
        Decider::new(Some(engine.clone()), Locality::default(), metrics.clone()),
        metrics,
    )
}

#[test]
fn a_good_module_decides() {
    let engine = engine();
    let binding = bound(&engine, 1, &wat(ROUND_ROBIN));
    let (mut d, _) = decider(&engine);
    let route = route(3);
    let got = picks(&mut d, &route, &binding, 6);
    assert_eq!(
        got.iter().map(|p| p.0).collect::<Vec<_>>(),
        vec![0, 1, 2, 0, 1, 2]
    );
    assert!(got.iter().all(|p| p.1 == DecidedBy::Current));
}

#[test]
fn missing_export_is_named() {
    let text = GOOD
        .replace("$PICK", "(i32.const 0)")
        .replace("(export \"sy_pick\")", "");
    assert_eq!(
        load_err(&wat_text(&text)),
        ModuleError::MissingExport("sy_pick")
    );
}

#[test]
fn wrong_export_type_is_named() {
    let text = GOOD.replace("$PICK", "(i32.const 0)").replace(
        "(func (export \"sy_abi_version\") (result i32) (i32.const 1))",
        "(func (export \"sy_abi_version\") (result i64) (i64.const 1))",
    );
    assert!(matches!(
        load_err(&wat_text(&text)),
        ModuleError::ExportType {
            name: "sy_abi_version",
            ..
        }
    ));
}

#[test]
fn wrong_version_is_refused() {
    let text = GOOD
        .replace("$PICK", "(i32.const 0)")
        .replace("(result i32) (i32.const 1))", "(result i32) (i32.const 2))");
    assert_eq!(
        load_err(&wat_text(&text)),
        ModuleError::Version { found: 2 }
    );
}

#[test]
fn foreign_import_is_refused() {
    let text = GOOD
        .replace("$PICK", "(i32.const 0)")
        .replace("(memory (export", "(import \"wasi_snapshot_preview1\" \"fd_write\" (func (param i32 i32 i32 i32) (result i32)))\n  (memory (export");
    assert!(
        matches!(load_err(&wat_text(&text)), ModuleError::ForeignImport { module, .. } if module == "wasi_snapshot_preview1")
    );
}

#[test]
fn mistyped_abi_import_is_refused() {
    let text = GOOD
        .replace("$PICK", "(i32.const 0)")
        .replace("(func $now (result i64))", "(func $now (result i32))");
    assert!(matches!(
        load_err(&wat_text(&text)),
        ModuleError::ImportType { .. }
    ));
}

#[test]
fn garbage_is_refused() {
    assert!(matches!(
        load_err(b"\0asm\x01\0\0\0garbage"),
        ModuleError::Invalid(_)
    ));
    assert!(matches!(
        load_err(b"not wasm at all"),
        ModuleError::Invalid(_)
    ));
}

#[test]
fn oversized_initial_memory_is_refused() {
    let text = GOOD.replace("$PICK", "(i32.const 0)").replace(
        "(memory (export \"memory\") 1)",
        "(memory (export \"memory\") 1024)",
    );
    assert!(matches!(
        load_err(&wat_text(&text)),
        ModuleError::MemoryTooLarge { .. }
    ));
}

#[test]
fn memory_growth_past_the_cap_fails_inside_the_guest() {
    let engine = engine();
    // Grows by 512 pages (32 MiB) > 16 MiB cap: memory.grow must return -1,
    // and the module reports that as its answer.
    let binding = bound(
        &engine,
        1,
        &wat(
            "(drop (memory.grow (i32.const 512))) (if (i32.eq (memory.grow (i32.const 512)) (i32.const -1)) (then (return (i32.const 0)))) (i32.const 1)",
        ),
    );
    let (mut d, _) = decider(&engine);
    let got = picks(&mut d, &route(3), &binding, 1);
    assert_eq!(got, vec![(0, DecidedBy::Current)]);
}

#[test]
fn out_of_range_answer_falls_back_and_is_counted() {
    let engine = engine();
    let binding = bound(&engine, 1, &wat("(i32.const 99)"));
    let (mut d, metrics) = decider(&engine);
    let got = picks(&mut d, &route(3), &binding, 3);
    assert!(got.iter().all(|p| p.1 == DecidedBy::Builtin && p.0 < 3));
    assert!(
        metrics
            .encode()
            .contains("switchyard_policy_faults_total{policy=\"test\",kind=\"out_of_range\"} 3")
    );
}

#[test]
fn a_trap_falls_back_and_repeated_faults_disable_the_module() {
    let engine = engine();
    let binding = bound(&engine, 1, &wat("unreachable"));
    let (mut d, metrics) = decider(&engine);
    let route = route(2);
    let got = picks(&mut d, &route, &binding, 10);
    assert!(got.iter().all(|p| p.1 == DecidedBy::Builtin));
    let text = metrics.encode();
    assert!(
        text.contains("switchyard_policy_faults_total{policy=\"test\",kind=\"trap\"} 5"),
        "{text}"
    );
    assert!(
        text.contains("switchyard_policy_disabled_total{policy=\"test\"} 1"),
        "{text}"
    );
}

#[test]
fn an_endless_loop_hits_the_deadline() {
    let engine = engine();
    let binding = bound(
        &engine,
        1,
        &wat("(loop $forever (br $forever)) (i32.const 0)"),
    );
    let (mut d, metrics) = decider(&engine);
    let got = picks(&mut d, &route(2), &binding, 2);
    assert!(got.iter().all(|p| p.1 == DecidedBy::Builtin));
    assert!(metrics.encode().contains("kind=\"deadline\"} 2"));
}

#[test]
fn a_swap_falls_back_to_the_previous_module_first() {
    let engine = engine();
    let good = bound(&engine, 1, &wat(ROUND_ROBIN));
    let bad = bound(&engine, 2, &wat("unreachable"));
    let (mut d, _) = decider(&engine);
    let route = route(3);
    picks(&mut d, &route, &good, 1);
    let got = picks(&mut d, &route, &bad, 3);
    assert!(got.iter().all(|p| p.1 == DecidedBy::Previous), "{got:?}");
}

#[test]
fn a_rejected_config_carries_the_module_message() {
    let engine = engine();
    let text = GOOD
        .replace("$PICK", "(i32.const 0)")
        .replace("(import \"switchyard\" \"now_ns\" (func $now (result i64)))", "(import \"switchyard\" \"set_error\" (func $err (param i32 i32)))\n  (data (i32.const 16) \"weights must be positive\")")
        .replace("(func (export \"sy_init\") (param i32 i32) (result i32) (i32.const 0))", "(func (export \"sy_init\") (param i32 i32) (result i32) (call $err (i32.const 16) (i32.const 24)) (i32.const 1))");
    let module = load_module(&engine, "picky", &wat_text(&text)).expect("loads");
    let err = WasmInstance::new(&engine, &module, "{\"weights\": -1}")
        .err()
        .expect("config rejected");
    assert_eq!(err, Fault::Config("weights must be positive".into()));
}

#[test]
fn a_huge_config_is_handed_over_or_refused_cleanly() {
    let engine = engine();
    let module = load_module(&engine, "test", &wat(ROUND_ROBIN)).expect("loads");
    // 100 KiB fits the module's bump allocator window; 8 MiB does not and
    // must come back as an allocation fault, not a crash.
    let small = format!("{{\"pad\": \"{}\"}}", "x".repeat(50_000));
    assert!(WasmInstance::new(&engine, &module, &small).is_ok());
    let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(8 << 20));
    assert!(WasmInstance::new(&engine, &module, &huge).is_err());
}
