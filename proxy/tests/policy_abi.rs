//! ABI v1 edge cases, driven with hand-written WAT modules: what the host
//! refuses at load time, and how a misbehaving module is contained.

mod common;

use std::sync::Arc;

use common::{ROUND_ROBIN_PICK, bound, engine, expand, request, route};
use switchyard::admin::Metrics;
use switchyard::catalog::Route;
use switchyard::policy::{
    BoundPolicy, DecidedBy, Decider, Fault, Locality, ModuleError, PolicyEngine, WasmInstance,
    load_module,
};

/// A well-behaved round robin; `$PICK` is replaced to make bad variants.
const GOOD: &str = r#"
(module
  (import "switchyard" "now_ns" (func $now (result i64)))
  (memory (export "memory") 1)
  $ABI_EXPORTS
  $COUNTER
  (func (export "sy_pick") (param $ctx i32) (result i32)
    $PICK))
"#;

/// GOOD's text with `pick` as the body of `sy_pick`.
fn good(pick: &str) -> String {
    expand(GOOD).replace("$PICK", pick)
}

fn wat(pick: &str) -> Vec<u8> {
    wat_text(&good(pick))
}

fn wat_text(text: &str) -> Vec<u8> {
    wat::parse_str(text).expect("test WAT parses")
}

fn load_err(bytes: &[u8]) -> ModuleError {
    load_module(&engine(), "bad", bytes).expect_err("module must be refused")
}

fn picks(
    decider: &mut Decider,
    route: &Route,
    binding: &Arc<BoundPolicy>,
    n: usize,
) -> Vec<(usize, DecidedBy)> {
    (0..n)
        .map(|_| {
            let d = decider.pick(&request(route, binding)).expect("a decision");
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
    let binding = bound(&engine, 1, &wat(ROUND_ROBIN_PICK));
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
    let text = good("(i32.const 0)").replace("(export \"sy_pick\")", "");
    assert_eq!(
        load_err(&wat_text(&text)),
        ModuleError::MissingExport("sy_pick")
    );
}

#[test]
fn wrong_export_type_is_named() {
    let text = good("(i32.const 0)").replace(
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
    let text =
        good("(i32.const 0)").replace("(result i32) (i32.const 1))", "(result i32) (i32.const 2))");
    assert_eq!(
        load_err(&wat_text(&text)),
        ModuleError::Version { found: 2 }
    );
}

#[test]
fn foreign_import_is_refused() {
    let text = good("(i32.const 0)")
        .replace("(memory (export", "(import \"wasi_snapshot_preview1\" \"fd_write\" (func (param i32 i32 i32 i32) (result i32)))\n  (memory (export");
    assert!(
        matches!(load_err(&wat_text(&text)), ModuleError::ForeignImport { module, .. } if module == "wasi_snapshot_preview1")
    );
}

#[test]
fn mistyped_abi_import_is_refused() {
    let text =
        good("(i32.const 0)").replace("(func $now (result i64))", "(func $now (result i32))");
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
    let text = good("(i32.const 0)").replace(
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
    let good = bound(&engine, 1, &wat(ROUND_ROBIN_PICK));
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
    let text = good("(i32.const 0)")
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
    let module = load_module(&engine, "test", &wat(ROUND_ROBIN_PICK)).expect("loads");
    // 100 KiB fits the module's bump allocator window; 8 MiB does not and
    // must come back as an allocation fault, not a crash.
    let small = format!("{{\"pad\": \"{}\"}}", "x".repeat(50_000));
    assert!(WasmInstance::new(&engine, &module, &small).is_ok());
    let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(8 << 20));
    assert!(WasmInstance::new(&engine, &module, &huge).is_err());
}
