//! The control plane's translation and the hot path's lookup:
//! `catalog::build` over generated Services and EndpointSlices, and
//! `ServiceTable::lookup` of one frontend.
//!
//! `cargo bench -p switchyard --bench catalog`

use std::collections::BTreeMap;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use switchyard::catalog::{self, NodeContext, Protocol};

/// `services` Services of one port, each with `per` endpoints in one slice.
fn objects(services: usize, per: usize) -> (Vec<Service>, Vec<EndpointSlice>) {
    let mut svcs = Vec::with_capacity(services);
    let mut slices = Vec::with_capacity(services);
    for i in 0..services {
        let name = format!("svc-{i}");
        let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        svcs.push(Service {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some("bench".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip.clone()),
                cluster_ips: Some(vec![ip]),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    protocol: Some("TCP".into()),
                    target_port: Some(IntOrString::Int(8080)),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        let endpoints = (0..per)
            .map(|j| {
                let n = i * per + j;
                Endpoint {
                    addresses: vec![format!(
                        "10.{}.{}.{}",
                        128 + n / 65536 % 64,
                        n / 256 % 256,
                        n % 256
                    )],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        ..Default::default()
                    }),
                    node_name: Some("node-a".into()),
                    ..Default::default()
                }
            })
            .collect();
        slices.push(EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{name}-abc")),
                namespace: Some("bench".into()),
                labels: Some(BTreeMap::from([(
                    "kubernetes.io/service-name".to_owned(),
                    name,
                )])),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints,
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
        });
    }
    (svcs, slices)
}

fn bench(c: &mut Criterion) {
    let node = NodeContext {
        node_name: Some("node-a".into()),
        ..NodeContext::default()
    };
    let mut group = c.benchmark_group("catalog_build");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for (services, per) in [(100usize, 10usize), (1000, 10), (10_000, 10)] {
        let (svcs, slices) = objects(services, per);
        group.bench_with_input(
            BenchmarkId::new("services_x10_endpoints", services),
            &services,
            |b, _| b.iter(|| catalog::build(&svcs, &slices, &node).table.frontends.len()),
        );
    }
    group.finish();

    let (svcs, slices) = objects(10_000, 10);
    let table = catalog::build(&svcs, &slices, &node).table;
    let hit = std::net::SocketAddr::from(([10, 96, 20, 1], 80));
    let miss = std::net::SocketAddr::from(([10, 96, 200, 1], 80));
    let mut group = c.benchmark_group("snapshot_lookup");
    group.measurement_time(Duration::from_secs(2));
    group.bench_function("hit_10k_services", |b| {
        b.iter(|| {
            table
                .lookup(Protocol::Tcp, std::hint::black_box(hit))
                .is_some()
        })
    });
    group.bench_function("miss_10k_services", |b| {
        b.iter(|| {
            table
                .lookup(Protocol::Tcp, std::hint::black_box(miss))
                .is_some()
        })
    });
    // The same frontends in a `std` HashMap, what the table held before
    // its maps became persistent (sharded): the lookup's baseline.
    let std_map: std::collections::HashMap<catalog::Frontend, catalog::Route> = table
        .frontends
        .iter()
        .map(|(f, r)| (*f, r.clone()))
        .collect();
    let frontend = |dst: std::net::SocketAddr| catalog::Frontend {
        ip: dst.ip(),
        protocol: Protocol::Tcp,
        port: dst.port(),
    };
    group.bench_function("hit_10k_services_std_hashmap", |b| {
        b.iter(|| std_map.contains_key(&frontend(std::hint::black_box(hit))))
    });
    group.bench_function("miss_10k_services_std_hashmap", |b| {
        b.iter(|| std_map.contains_key(&frontend(std::hint::black_box(miss))))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
