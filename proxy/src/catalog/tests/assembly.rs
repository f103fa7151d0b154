//! The table patched change by change (`Assembly`) must equal the table
//! assembled whole from the same translations, whatever the changes: new,
//! edited and deleted Services, endpoints coming and going, and frontends,
//! NodePorts and health-check ports that Services fight over.

use std::collections::BTreeMap;

use super::*;
use crate::catalog::{Assembly, Replaced, TranslatedService, assemble, translate_service};

/// A Service drawn from small pools, so that conflicts are frequent.
fn random_service(rng: &mut fastrand::Rng, name: &str, age: u32) -> (Service, EndpointSlice) {
    let ip = format!("10.96.0.{}", rng.u8(1..12));
    let lb = format!("192.0.2.{}", rng.u8(1..6));
    let node_port = 30000 + u32::from(rng.u8(0..8));
    let health = 32000 + u32::from(rng.u8(0..4));
    let port = [80, 443][rng.usize(0..2)];
    let local = rng.bool();
    let ranges = if rng.bool() {
        "loadBalancerSourceRanges: [\"10.0.0.0/8\"]"
    } else {
        ""
    };
    let svc = service(&format!(
        r#"
apiVersion: v1
kind: Service
metadata:
  creationTimestamp: "2025-03-01T10:00:{:02}Z"
  name: {name}
  namespace: t
spec:
  type: LoadBalancer
  clusterIP: {ip}
  externalTrafficPolicy: {}
  {}
  {ranges}
  ports:
  - name: http
    port: {port}
    nodePort: {node_port}
    protocol: TCP
status:
  loadBalancer:
    ingress: [{{ip: {lb}}}]
"#,
        age % 60,
        if local { "Local" } else { "Cluster" },
        if local {
            format!("healthCheckNodePort: {health}")
        } else {
            String::new()
        },
    ));
    let endpoints: Vec<String> = (0..rng.usize(0..3))
        .map(|_| {
            format!(
                "{{addresses: [10.244.0.{}], nodeName: node-a, conditions: {{ready: true}}}}",
                rng.u8(1..8)
            )
        })
        .collect();
    let slice = slice(&format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-1, namespace: t, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nendpoints: [{}]\nports: [{{name: http, port: 8080}}]\n",
        endpoints.join(", ")
    ));
    (svc, slice)
}

#[test]
fn patched_table_equals_the_table_assembled_whole() {
    let node = node("node-a");
    let mut patched_at_least_once = false;
    let mut whole_at_least_once = false;
    for seed in 0..30 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut assembly = Assembly::new(1);
        let mut current: BTreeMap<String, TranslatedService> = BTreeMap::new();
        assembly.whole(current.values());
        let mut previous = assembly.table().clone();
        for step in 0..150 {
            // One to three Services change at once, as in one sync.
            let mut names: Vec<String> = (0..rng.usize(1..4))
                .map(|_| format!("s{}", rng.u8(0..12)))
                .collect();
            names.sort();
            names.dedup();
            let mut before = Vec::new();
            for name in &names {
                let next = if rng.u8(0..5) == 0 {
                    None
                } else {
                    let (svc, slice) = random_service(&mut rng, name, step);
                    translate_service(&svc, &[&slice], &node).service
                };
                let old = match next {
                    Some(t) => current.insert(name.clone(), t),
                    None => current.remove(name),
                };
                before.push((name.clone(), old));
            }
            let changes: Vec<Replaced<'_>> = before
                .iter()
                .map(|(name, old)| (old.as_ref(), current.get(name)))
                .collect();
            assembly.update(&changes, || current.values().collect());
            let got = assembly.table();
            let want = assemble(current.values()).table;
            assert_eq!(got, &want, "seed {seed} step {step}: changed {names:?}");
            match got.changed_since(&previous) {
                Some(change) => {
                    patched_at_least_once = true;
                    // The record names every frontend that differs.
                    for (f, route) in &previous.frontends {
                        if got.frontends.get(f) != Some(route) {
                            assert!(change.frontends.contains(f), "seed {seed} step {step}");
                        }
                    }
                    for (f, route) in &got.frontends {
                        if previous.frontends.get(f) != Some(route) {
                            assert!(change.frontends.contains(f), "seed {seed} step {step}");
                        }
                    }
                    for (k, ports) in &got.services {
                        if previous.services.get(k) != Some(ports) {
                            assert!(change.services.contains(k), "seed {seed} step {step}");
                        }
                    }
                }
                None => whole_at_least_once = true,
            }
            previous = got.clone();
        }
    }
    assert!(patched_at_least_once && whole_at_least_once);
}
