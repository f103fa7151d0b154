//! One decision through the same `Decider` the workers use: the built-in
//! round robin and every Wasm policy in target/policies (built by
//! policies/build), at 100 and 10,000 endpoints. The goal of the policy
//! issue: p2c-ewma ≤ 150 ns at 100 endpoints, ≤ 1 µs at 10,000.
//!
//! `cargo bench -p switchyard --bench decision`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use switchyard::admin::Metrics;
use switchyard::catalog::{Endpoint, Protocol, Route, Scope, ServiceInfo, ServiceKey, ServicePort};
use switchyard::config::PolicyConfig;
use switchyard::policy::{
    BoundPolicy, Decider, Locality, Outcome, PickRequest, PolicyEngine, load_module,
};

fn route(n: usize) -> Route {
    let service = Arc::new(ServiceInfo {
        key: ServiceKey {
            namespace: "bench".into(),
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
            addr: std::net::SocketAddr::from(([10, 244, (i >> 8) as u8, i as u8], 8080)),
            node_name: Some(if i % 2 == 0 { "node-a" } else { "node-b" }.into()),
            zone: Some("zone-1".into()),
            hostname: None,
            target_name: Some(format!("web-{i}")),
            ready: true,
            serving: true,
            terminating: false,
        })
        .collect();
    let endpoints: Arc<[Endpoint]> = endpoints.into();
    let port = ServicePort {
        id: 1,
        service,
        name: "http".into(),
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

fn modules_dir() -> PathBuf {
    std::env::var_os("SWITCHYARD_POLICIES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/policies"))
}

fn config_for(name: &str) -> &'static str {
    match name {
        "canary" => r#"{"canary": "web-1*", "percent": 10}"#,
        _ => "{}",
    }
}

/// A new connection from a distinct client to the benchmark Service.
fn request<'a>(
    route: &'a Route,
    binding: Option<&'a Arc<BoundPolicy>>,
    client: u32,
) -> PickRequest<'a> {
    PickRequest {
        route,
        binding,
        generation: 1,
        client: std::net::SocketAddr::from((client.to_be_bytes(), 40000)),
        frontend: std::net::SocketAddr::from(([10, 96, 0, 10], 80)),
        tried: &[],
    }
}

fn bench(c: &mut Criterion) {
    let engine = PolicyEngine::new(&PolicyConfig::default()).expect("engine");
    let mut candidates: Vec<(String, Option<Arc<BoundPolicy>>)> =
        vec![("builtin-round-robin".into(), None)];
    let mut files: Vec<PathBuf> = std::fs::read_dir(modules_dir())
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    if files.is_empty() {
        eprintln!(
            "no modules in {}: run policies/build first; benchmarking the built-in round robin only",
            modules_dir().display()
        );
    }
    for file in files {
        let name = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("?")
            .to_owned();
        let bytes = std::fs::read(&file).expect("read module");
        let module = load_module(&engine, &name, &bytes).expect("module loads");
        let bound = BoundPolicy {
            id: 1,
            service: ServiceKey {
                namespace: "bench".into(),
                name: "web".into(),
            },
            module: Arc::new(module),
            config: Arc::from(config_for(&name)),
        };
        candidates.push((name, Some(Arc::new(bound))));
    }
    let mut group = c.benchmark_group("decision");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for n in [100usize, 10_000] {
        let route = route(n);
        for (name, binding) in &candidates {
            let metrics = Arc::new(Metrics::new("bench"));
            let mut decider = Decider::new(
                Some(engine.clone()),
                Locality {
                    node: Some("node-a".into()),
                    zone: Some("zone-1".into()),
                },
                metrics,
            );
            let mut client = 0u32;
            group.bench_with_input(BenchmarkId::new(name.as_str(), n), &n, |b, _| {
                b.iter(|| {
                    client = client.wrapping_add(1);
                    let req = request(&route, binding.as_ref(), client);
                    decider.pick(&req).map(|d| d.index)
                })
            });
            // A decision followed by its outcome and close: what one
            // connection costs the policy layer.
            group.bench_with_input(
                BenchmarkId::new(format!("{name}+outcome"), n),
                &n,
                |b, _| {
                    b.iter(|| {
                        client = client.wrapping_add(1);
                        let req = request(&route, binding.as_ref(), client);
                        if let Some(d) = decider.pick(&req) {
                            let addr = route.endpoints()[d.index].addr;
                            decider.outcome(
                                &req,
                                d,
                                addr,
                                Outcome::Connected {
                                    latency: Duration::from_micros(150),
                                },
                            );
                            decider.release(&route, d, addr);
                        }
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
