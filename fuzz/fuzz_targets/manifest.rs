//! Manifest YAML → `sources::manifest::parse` → `catalog::build`, the path
//! every file-source reload takes, and the incremental path the Kubernetes
//! source takes (`translate_service` + `assemble`). Neither may panic, and
//! for a set of Services with distinct names both must give the same table.

#![no_main]

use std::collections::BTreeSet;
use std::path::Path;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use libfuzzer_sys::fuzz_target;
use switchyard::catalog::{self, NodeContext};
use switchyard::sources::manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (objects, problems) = manifest::parse(text, Path::new("fuzz.yaml"));
    // The fast path (our block reader, else that document as a Value) must
    // take what the general path takes, or give the file back: a value read
    // differently would be served. Error texts may differ (a file the
    // general path stops reading at a YAML error) but not which documents
    // have errors.
    if let Some((fast, fast_problems)) = manifest::parse_direct(text, Path::new("fuzz.yaml")) {
        let (slow, slow_problems) = manifest::parse_values(text, Path::new("fuzz.yaml"));
        assert_eq!(
            fast.services, slow.services,
            "fast and general paths disagree on Services"
        );
        assert_eq!(
            fast.slices, slow.slices,
            "fast and general paths disagree on EndpointSlices"
        );
        assert_eq!(
            fast.nodes, slow.nodes,
            "fast and general paths disagree on Nodes"
        );
        let failed = |problems: &[manifest::ManifestProblem]| -> BTreeSet<usize> {
            problems
                .iter()
                .filter(|p| p.severity == catalog::Severity::Error)
                .map(|p| p.document)
                .collect()
        };
        assert_eq!(
            failed(&fast_problems),
            failed(&slow_problems),
            "fast and general paths disagree on which documents fail"
        );
    }
    let node = NodeContext {
        node_name: Some("node-a".into()),
        ..NodeContext::default()
    };
    let built = catalog::build(&objects.services, &objects.slices, &node);
    for p in &built.problems {
        let _ = p.to_string();
    }
    // The config dump (/debug/services) serialises the table.
    let _ = serde_json::to_string(&built.table);
    for (frontend, route) in &built.table.frontends {
        let dst = std::net::SocketAddr::new(frontend.ip, frontend.port);
        let found = built.table.lookup(frontend.protocol, dst);
        assert_eq!(found, Some(route), "a frontend must find its own route");
    }

    // Incremental translation, as the Kubernetes source does it. Services
    // with the same namespace/name are settled by `build` (older first), which
    // one-at-a-time translation cannot know about: skip those inputs.
    let mut names = BTreeSet::new();
    let distinct = objects.services.iter().all(|s| {
        names.insert((
            s.metadata.namespace.clone().unwrap_or_default(),
            s.metadata.name.clone().unwrap_or_default(),
        ))
    });
    let usable: Vec<&EndpointSlice> = objects
        .slices
        .iter()
        .filter(|s| {
            catalog::validate_endpoint_slice(s)
                .iter()
                .all(|p| p.severity != catalog::Severity::Error)
        })
        .collect();
    let translated: Vec<_> = objects
        .services
        .iter()
        .filter_map(|s| catalog::translate_service(s, &usable, &node).service)
        .collect();
    let assembled = catalog::assemble(&translated);
    if distinct {
        assert_eq!(
            assembled.table.frontends.len(),
            built.table.frontends.len(),
            "incremental and full builds disagree on frontends"
        );
        assert_eq!(
            assembled.table.node_ports.len(),
            built.table.node_ports.len(),
            "incremental and full builds disagree on node ports"
        );
    }
});
