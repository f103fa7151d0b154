//! Issue 10: the limits, the module trust list and the sandbox claims of
//! SECURITY.md, each driven through the public API.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{ROUND_ROBIN_PICK, engine};
use switchyard::admin::Metrics;
use switchyard::catalog::{self, NodeContext, Route, Scope, ServiceTable};
use switchyard::config::{Config, ConfigError, PolicyConfig};
use switchyard::policy::{
    DecidedBy, Decider, Fault, Locality, ModuleError, PolicyEngine, PolicyProblem, PolicyRegistry,
    WasmInstance, content_hash, load_module,
};
use switchyard::sources::{FileSource, manifest};

/// A round robin whose `sy_pick` body is `$PICK`.
const MODULE: &str = r#"
(module
  (memory (export "memory") 1)
  $ABI_EXPORTS
  $COUNTER
  (func $deeper (param $n i32) (result i32)
    (i32.add (call $deeper (i32.add (local.get $n) (i32.const 1))) (i32.const 1)))
  (func (export "sy_pick") (param $ctx i32) (result i32)
    $PICK))
"#;

/// MODULE's text with `pick` as the body of `sy_pick`.
fn module_text(pick: &str) -> String {
    common::expand(MODULE).replace("$PICK", pick)
}

fn module(pick: &str) -> Vec<u8> {
    wat::parse_str(module_text(pick)).expect("test WAT parses")
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sy-hardening-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A Service `demo/web` on 10.96.0.10:80 with `n` ready endpoints.
fn table(n: usize, policy: Option<&str>) -> ServiceTable {
    let annotation = policy
        .map(|p| format!("  annotations:\n    switchyard.dev/policy: {p}\n"))
        .unwrap_or_default();
    let mut text = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: demo\n{annotation}spec:\n  clusterIP: 10.96.0.10\n  ports:\n  - port: 80\n    protocol: TCP\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: demo\n  labels:\n    kubernetes.io/service-name: web\naddressType: IPv4\nports:\n- port: 8080\n  protocol: TCP\nendpoints:\n"
    );
    for i in 0..n {
        text.push_str(&format!(
            "- addresses: [\"10.244.{}.{}\"]\n  conditions: {{ready: true}}\n",
            i / 250,
            i % 250 + 1
        ));
    }
    let (objects, problems) = manifest::parse(&text, Path::new("t.yaml"));
    assert!(problems.is_empty(), "{problems:?}");
    let built = catalog::build(&objects.services, &objects.slices, &NodeContext::default());
    assert!(built.problems.is_empty(), "{:?}", built.problems);
    built.table
}

fn route(table: &ServiceTable) -> Route {
    let dst = "10.96.0.10:80".parse().expect("addr");
    table
        .lookup(catalog::Protocol::Tcp, dst)
        .expect("frontend")
        .clone()
}

fn registry(dir: &Path, cfg: &PolicyConfig) -> PolicyRegistry {
    let engine = PolicyEngine::new(cfg).expect("engine");
    let mut registry = PolicyRegistry::new(engine, dir, "builtin-round-robin", Locality::default());
    registry.set_limits(&cfg.allowed_sha256, cfg.max_endpoints);
    registry
}

fn decide(
    engine: &Arc<PolicyEngine>,
    bytes: &[u8],
    n: usize,
) -> (Vec<(usize, DecidedBy)>, Arc<Metrics>) {
    let table = table(3, None);
    let route = route(&table);
    let binding = common::bound(engine, 1, bytes);
    let metrics = Arc::new(Metrics::new("test"));
    let mut decider = Decider::new(Some(engine.clone()), Locality::default(), metrics.clone());
    let got = (0..n)
        .map(|_| {
            let req = common::request(&route, &binding);
            let d = decider.pick(&req).expect("a decision");
            assert!(d.index < 3);
            (d.index, d.by)
        })
        .collect();
    (got, metrics)
}

// ---- config fields of the limits ----

fn field_error(text: &str) -> String {
    match Config::parse(text, Path::new("t.yaml")) {
        Err(ConfigError::Field { field, .. }) => field,
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn limit_fields_have_defaults_and_ranges() {
    let c = Config::default();
    assert_eq!(c.dataplane.max_connections_per_worker, 16384);
    assert_eq!(c.dataplane.listen_backlog, 4096);
    assert_eq!(c.source.max_manifest_bytes, 64 << 20);
    assert_eq!(c.policy.max_endpoints, 16384);
    assert!(c.policy.allowed_sha256.is_empty());
    for (text, field) in [
        (
            "dataplane:\n  maxConnectionsPerWorker: 0\n",
            "dataplane.maxConnectionsPerWorker",
        ),
        (
            "dataplane:\n  listenBacklog: 0\n",
            "dataplane.listenBacklog",
        ),
        (
            "dataplane:\n  listenBacklog: 70000\n",
            "dataplane.listenBacklog",
        ),
        (
            "source:\n  maxManifestBytes: 10\n",
            "source.maxManifestBytes",
        ),
        ("policy:\n  maxEndpoints: 0\n", "policy.maxEndpoints"),
        ("policy:\n  allowedSha256: [abc]\n", "policy.allowedSha256"),
        ("dataplane:\n  maxUdpFlows: 0\n", "dataplane.maxUdpFlows"),
        ("policy:\n  maxModuleBytes: 1\n", "policy.maxModuleBytes"),
    ] {
        assert_eq!(field_error(text), field, "{text}");
    }
    let ok = format!(
        "dataplane:\n  maxConnectionsPerWorker: 10\n  listenBacklog: 16\npolicy:\n  allowedSha256: [\"{}\"]\n",
        "A".repeat(64)
    );
    Config::parse(&ok, Path::new("t.yaml")).expect("valid limits");
}

#[test]
fn shipped_config_documents_every_limit() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/switchyard.yaml");
    let text = std::fs::read_to_string(path).expect("conf/switchyard.yaml");
    for field in [
        "maxConnectionsPerWorker:",
        "listenBacklog:",
        "maxUdpFlows:",
        "maxManifestBytes:",
        "maxModuleBytes:",
        "maxEndpoints:",
        "allowedSha256:",
    ] {
        assert!(text.contains(field), "conf/switchyard.yaml lacks {field}");
    }
}

#[test]
fn an_oversized_config_file_is_refused_before_it_is_read() {
    let dir = tempdir("config");
    let path = dir.join("big.yaml");
    std::fs::write(&path, "#".repeat((1 << 20) + 1)).expect("write");
    assert!(matches!(
        Config::load(&path),
        Err(ConfigError::TooLarge { .. })
    ));
}

// ---- manifest size ----

#[test]
fn an_oversized_manifest_is_refused_and_counted() {
    let dir = tempdir("manifest");
    std::fs::write(dir.join("big.yaml"), format!("# {}\n", "x".repeat(4096))).expect("write");
    std::fs::write(dir.join("small.yaml"), "# nothing\n").expect("write");
    let mut source = FileSource::new(&dir).with_max_bytes(1024);
    let scan = source.rescan().expect("scan");
    assert_eq!(scan.too_large, 1);
    assert_eq!(scan.problems.len(), 1, "{:?}", scan.problems);
    assert!(scan.problems[0].message.contains("maxManifestBytes"));
}

// ---- policy module size, trust list, endpoint cap ----

#[test]
fn only_modules_on_the_allow_list_load() {
    let dir = tempdir("trust");
    let bytes = module(ROUND_ROBIN_PICK);
    std::fs::write(dir.join("rr.wasm"), &bytes).expect("write");
    let hash = content_hash(&bytes);

    let other = PolicyConfig {
        allowed_sha256: vec!["0".repeat(64)],
        ..PolicyConfig::default()
    };
    let mut refusing = registry(&dir, &other);
    let (changed, problems) = refusing.rescan();
    assert!(!changed);
    assert!(
        matches!(&problems[..], [PolicyProblem::Untrusted { hash: h, .. }] if *h == hash),
        "{problems:?}"
    );
    assert_eq!(refusing.modules().count(), 0);

    // Listed (case does not matter): loads.
    let listed = PolicyConfig {
        allowed_sha256: vec![hash.to_ascii_uppercase()],
        ..PolicyConfig::default()
    };
    let mut trusting = registry(&dir, &listed);
    let (changed, problems) = trusting.rescan();
    assert!(changed && problems.is_empty(), "{problems:?}");
    assert_eq!(trusting.modules().count(), 1);

    // The list tightened at run time: the loaded module goes.
    trusting.set_limits(&other.allowed_sha256, other.max_endpoints);
    assert_eq!(trusting.modules().count(), 0);
}

#[test]
fn an_oversized_module_file_is_refused_before_it_is_read() {
    let dir = tempdir("module-size");
    std::fs::write(dir.join("big.wasm"), vec![0u8; 4096]).expect("write");
    let cfg = PolicyConfig {
        max_module_bytes: 1024,
        ..PolicyConfig::default()
    };
    let (_, problems) = registry(&dir, &cfg).rescan();
    assert!(
        matches!(
            &problems[..],
            [PolicyProblem::Module {
                error: ModuleError::TooLarge {
                    size: 4096,
                    max: 1024
                },
                ..
            }]
        ),
        "{problems:?}"
    );
}

#[test]
fn a_service_past_max_endpoints_gets_the_builtin_round_robin() {
    let dir = tempdir("endpoints");
    std::fs::write(dir.join("rr.wasm"), module(ROUND_ROBIN_PICK)).expect("write");
    let cfg = PolicyConfig {
        max_endpoints: 4,
        ..PolicyConfig::default()
    };
    let mut registry = registry(&dir, &cfg);
    registry.rescan();
    let (bindings, problems) = registry.bind(&table(4, Some("rr")));
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(bindings.len(), 1);
    let (bindings, problems) = registry.bind(&table(5, Some("rr")));
    assert!(bindings.is_empty(), "no module binding past the cap");
    assert!(
        matches!(
            &problems[..],
            [PolicyProblem::TooManyEndpoints {
                count: 5,
                max: 4,
                ..
            }]
        ),
        "{problems:?}"
    );
}

#[test]
fn a_reached_limit_is_exported() {
    let metrics = Metrics::new("test");
    switchyard::logging::limit_reached(&metrics, "connections", || {});
    switchyard::logging::limit_reached(&metrics, "connections", || {});
    let text = metrics.encode();
    assert!(
        text.contains("switchyard_limits_reached_total{limit=\"connections\"} 2"),
        "{text}"
    );
}

// ---- the sandbox (SECURITY.md, "what a module can reach") ----

#[test]
fn unbounded_recursion_traps_and_falls_back() {
    let engine = engine();
    let (got, metrics) = decide(&engine, &module("(call $deeper (i32.const 0))"), 3);
    assert!(got.iter().all(|p| p.1 == DecidedBy::Builtin), "{got:?}");
    let text = metrics.encode();
    assert!(text.contains("kind=\"trap\"} 3"), "{text}");
}

#[test]
fn growing_memory_past_the_cap_in_a_decision_fails_inside_the_guest() {
    let engine = engine();
    // 16 MiB cap = 256 pages: growing by 300 must give -1 and no trap; the
    // module answers 2 when refused, an out-of-range 99 otherwise.
    let pick = "(if (result i32) (i32.eq (memory.grow (i32.const 300)) (i32.const -1)) (then (i32.const 2)) (else (i32.const 99)))";
    let (got, _) = decide(&engine, &module(pick), 2);
    assert_eq!(got, vec![(2, DecidedBy::Current), (2, DecidedBy::Current)]);
}

#[test]
fn imports_outside_the_abi_are_refused() {
    let engine = engine();
    let good = module_text("(i32.const 0)");
    for import in [
        "(import \"wasi_snapshot_preview1\" \"fd_write\" (func (param i32 i32 i32 i32) (result i32)))",
        "(import \"wasi_snapshot_preview1\" \"proc_exit\" (func (param i32)))",
        "(import \"env\" \"system\" (func (param i32) (result i32)))",
        "(import \"switchyard\" \"open_file\" (func (param i32 i32) (result i32)))",
        "(import \"env\" \"table\" (table 1 funcref))",
        "(import \"env\" \"g\" (global i32))",
    ] {
        let text = good.replace("(memory (export", &format!("{import}\n  (memory (export"));
        let bytes = wat::parse_str(&text).expect("test WAT parses");
        let err = load_module(&engine, "bad", &bytes).expect_err("refused");
        assert!(
            matches!(err, ModuleError::ForeignImport { .. }),
            "{import}: {err:?}"
        );
    }
    // An imported memory would be host memory shared with the module.
    let text = good.replace(
        "(memory (export \"memory\") 1)",
        "(import \"env\" \"memory\" (memory 1))\n  (export \"memory\" (memory 0))",
    );
    let bytes = wat::parse_str(&text).expect("test WAT parses");
    assert!(load_module(&engine, "bad", &bytes).is_err());
}

#[test]
fn a_guest_pointer_outside_its_memory_is_a_fault_not_a_host_access() {
    let engine = engine();
    // sy_alloc hands back an address past the end of its own memory: the
    // host must refuse to write there (it only ever indexes guest memory).
    let text = module_text("(i32.const 0)").replace(
        "(local.get $p))\n  (func (export \"sy_init\")",
        "(drop (local.get $p)) (i32.const 0x7fff0000))\n  (func (export \"sy_init\")",
    );
    let bytes = wat::parse_str(&text).expect("test WAT parses");
    let module = load_module(&engine, "wild", &bytes).expect("loads");
    let err = WasmInstance::new(&engine, &module, "{}")
        .err()
        .expect("refused");
    assert_eq!(err, Fault::BadPointer);
}

#[test]
fn scope_of_the_test_table_is_internal() {
    // Guards the helpers above: the frontend is a ClusterIP.
    assert_eq!(route(&table(1, None)).scope, Scope::Internal);
}
