//! `PolicyRegistry::bind` across syncs: only the Services whose translation
//! changed are resolved again, unless the modules changed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::{Bindings, PolicyEngine, PolicyProblem, PolicyRegistry};
use crate::catalog::{Endpoint, Protocol, ServiceInfo, ServicePort, ServiceTable, fixtures};
use crate::config::PolicyConfig;

/// A minimal ABI v1 module that picks the first endpoint; `version` makes
/// the bytes (and so the hash) differ.
fn module(version: i32) -> Arc<[u8]> {
    let text = format!(
        r#"(module
  (memory (export "memory") 1)
  (func (export "sy_abi_version") (result i32) (i32.const 1))
  (func (export "sy_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "sy_init") (param i32 i32) (result i32) (i32.const 0))
  (func (export "sy_endpoints") (param i32 i32))
  (func (export "sy_pick") (param i32) (result i32) (i32.const 0))
  (func (export "version") (result i32) (i32.const {version})))"#
    );
    Arc::from(wat::parse_str(text).expect("WAT").as_slice())
}

fn registry(modules: &[(&str, Arc<[u8]>)]) -> PolicyRegistry {
    let engine = PolicyEngine::new(&PolicyConfig::default()).expect("engine");
    let mut r = PolicyRegistry::new(
        engine,
        Path::new("/nonexistent/switchyard-policies"),
        "round-robin",
        Default::default(),
    );
    load(&mut r, modules);
    r
}

fn load(r: &mut PolicyRegistry, modules: &[(&str, Arc<[u8]>)]) {
    let set: BTreeMap<String, Arc<[u8]>> = modules
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let (changed, problems) = r.apply_api_modules("configmap/test", Some(&set));
    assert!(changed && problems.is_empty(), "{problems:?}");
}

/// One Service with two ports, bound to `policy` with `config`.
fn service(name: &str, policy: &str, config: &str, endpoint: &str) -> Vec<Arc<ServicePort>> {
    let info = Arc::new(ServiceInfo {
        policy: Some(policy.into()),
        policy_config: Some(config.into()),
        ..fixtures::info(name)
    });
    let endpoints: Arc<[Endpoint]> = Arc::from(vec![fixtures::ready(endpoint)]);
    ["http", "metrics"]
        .into_iter()
        .map(|port_name| {
            Arc::new(ServicePort {
                id: ServicePort::stable_id(&fixtures::key(name), port_name, Protocol::Tcp),
                service: info.clone(),
                name: port_name.into(),
                internal: endpoints.clone(),
                external: endpoints.clone(),
                ..fixtures::port(name)
            })
        })
        .collect()
}

fn table(services: &[(&str, &Vec<Arc<ServicePort>>)]) -> Arc<ServiceTable> {
    let mut t = ServiceTable::default();
    for (name, ports) in services {
        t.services.insert(fixtures::key(name), (*ports).clone());
    }
    Arc::new(t)
}

fn bound_ids(bindings: &Bindings, ports: &[Arc<ServicePort>]) -> Vec<Option<u64>> {
    ports
        .iter()
        .map(|p| bindings.get(&p.id).map(|b| b.id))
        .collect()
}

#[test]
fn a_one_service_change_rebinds_that_service_only() {
    let mut r = registry(&[("m", module(0))]);
    let a = service("a", "m", r#"{"n": 1}"#, "10.0.0.1:80");
    let b = service("b", "m", r#"{"n": 2}"#, "10.0.0.2:80");
    let c = service("c", "m", r#"{"n": 3}"#, "10.0.0.3:80");
    let (first, problems) = r.bind_changed(&table(&[("a", &a), ("b", &b), ("c", &c)]), false);
    assert!(problems.is_empty(), "{problems:?}");
    let stats = r.last_bind();
    assert!(stats.full);
    // One dry run per (module, config): three configs.
    assert_eq!((stats.services, stats.dry_runs), (3, 3));
    assert_eq!(first.len(), 6);

    // c's endpoints change (a new translation, same policy and config):
    // c alone is looked at, nothing is validated again, no binding moves.
    let c2 = service("c", "m", r#"{"n": 3}"#, "10.0.0.9:80");
    let (second, _) = r.bind_changed(&table(&[("a", &a), ("b", &b), ("c", &c2)]), false);
    let stats = r.last_bind();
    assert!(!stats.full);
    assert_eq!((stats.services, stats.dry_runs), (1, 0));
    assert!(Arc::ptr_eq(&first, &second), "no binding moved");

    // c's config changes: one Service re-bound, one dry run.
    let c3 = service("c", "m", r#"{"n": 4}"#, "10.0.0.9:80");
    let (third, problems) = r.bind_changed(&table(&[("a", &a), ("b", &b), ("c", &c3)]), false);
    assert!(problems.is_empty(), "{problems:?}");
    let stats = r.last_bind();
    assert!(!stats.full);
    assert_eq!((stats.services, stats.dry_runs), (1, 1));
    for untouched in [&a, &b] {
        for port in untouched.iter() {
            assert!(Arc::ptr_eq(&first[&port.id], &third[&port.id]));
        }
    }
    assert_ne!(bound_ids(&first, &c), bound_ids(&third, &c3));
    assert_eq!(&*third[&c3[0].id].config, r#"{"n": 4}"#);

    // b leaves the table: its bindings go, the others stay.
    let (fourth, _) = r.bind_changed(&table(&[("a", &a), ("c", &c3)]), false);
    assert_eq!((r.last_bind().services, r.last_bind().dry_runs), (1, 0));
    assert_eq!(fourth.len(), 4);
    assert_eq!(bound_ids(&fourth, &b), vec![None, None]);
    assert_eq!(bound_ids(&fourth, &a), bound_ids(&first, &a));
}

#[test]
fn a_module_change_rebinds_every_service_using_it() {
    let mut r = registry(&[("m", module(0)), ("other", module(0))]);
    let a = service("a", "m", r#"{"n": 1}"#, "10.0.0.1:80");
    let b = service("b", "m", r#"{"n": 2}"#, "10.0.0.2:80");
    let c = service("c", "other", r#"{"n": 3}"#, "10.0.0.3:80");
    let t = table(&[("a", &a), ("b", &b), ("c", &c)]);
    let (first, _) = r.bind_changed(&t, false);
    assert_eq!(r.last_bind().dry_runs, 3);

    // A new version of m, the same table: every Service is resolved, the
    // two on m are validated against the new module and bound anew; c's
    // module did not change and its binding stays.
    load(&mut r, &[("m", module(1)), ("other", module(0))]);
    let (second, problems) = r.bind_changed(&t, false);
    assert!(problems.is_empty(), "{problems:?}");
    let stats = r.last_bind();
    assert!(stats.full);
    assert_eq!((stats.services, stats.dry_runs), (3, 2));
    for ports in [&a, &b] {
        for port in ports.iter() {
            assert_ne!(first[&port.id].id, second[&port.id].id);
            assert_ne!(first[&port.id].module.hash, second[&port.id].module.hash);
        }
    }
    for port in c.iter() {
        assert!(Arc::ptr_eq(&first[&port.id], &second[&port.id]));
    }

    // The next sync with nothing changed resolves nothing.
    let (third, _) = r.bind_changed(&t, false);
    assert_eq!((r.last_bind().full, r.last_bind().services), (false, 0));
    assert!(Arc::ptr_eq(&second, &third));
}

#[test]
fn standing_problems_are_reported_again_only_when_forced() {
    let mut r = registry(&[("m", module(0))]);
    let a = service("a", "m", "{}", "10.0.0.1:80");
    let lost = service("lost", "missing", "{}", "10.0.0.2:80");
    let t = table(&[("a", &a), ("lost", &lost)]);
    let (_, problems) = r.bind_changed(&t, false);
    assert!(
        matches!(&problems[..], [PolicyProblem::Unknown { service, .. }] if service.name == "lost"),
        "{problems:?}"
    );
    // a changes: only a is resolved, so lost's standing problem is not
    // logged and counted once more at every sync.
    let a2 = service("a", "m", "{}", "10.0.0.9:80");
    let t2 = table(&[("a", &a2), ("lost", &lost)]);
    let (_, problems) = r.bind_changed(&t2, false);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(r.last_bind().services, 1);
    // A forced bind (a reload) names it again.
    let (_, problems) = r.bind_changed(&t2, true);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(r.last_bind().full);
}
