//! `PolicyRegistry::apply_api_modules`: the policy ConfigMap's modules
//! against the registry, with hand-written WAT modules.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{ModuleError, PolicyEngine, PolicyProblem, PolicyRegistry};
use crate::config::PolicyConfig;

const ORIGIN: &str = "configmap/kube-system/switchyard-policies";

/// A minimal ABI v1 module whose `sy_pick` answers `pick`.
fn module(pick: i32) -> Arc<[u8]> {
    let text = format!(
        r#"(module
  (memory (export "memory") 1)
  (func (export "sy_abi_version") (result i32) (i32.const 1))
  (func (export "sy_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "sy_init") (param i32 i32) (result i32) (i32.const 0))
  (func (export "sy_endpoints") (param i32 i32))
  (func (export "sy_pick") (param i32) (result i32) (i32.const {pick})))"#
    );
    Arc::from(wat::parse_str(text).expect("WAT").as_slice())
}

fn set(entries: &[(&str, Arc<[u8]>)]) -> BTreeMap<String, Arc<[u8]>> {
    entries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn registry(dir: &Path) -> PolicyRegistry {
    let engine = PolicyEngine::new(&PolicyConfig::default()).expect("engine");
    let mut r = PolicyRegistry::new(engine, dir, "round-robin", Default::default());
    r.set_max_modules(2);
    r
}

fn hash_of(r: &PolicyRegistry, name: &str) -> Option<String> {
    r.modules()
        .find(|m| &*m.name == name)
        .map(|m| m.hash.clone())
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_bad_module_is_named_and_the_previous_keeps_serving() {
    let mut r = registry(Path::new("/nonexistent/switchyard-policies"));
    let good = module(0);
    let (changed, problems) = r.apply_api_modules(ORIGIN, Some(&set(&[("live", good.clone())])));
    assert!(changed && problems.is_empty(), "{problems:?}");
    let before = hash_of(&r, "live").expect("loaded");

    let garbage: Arc<[u8]> = Arc::from(&b"\0asm not really"[..]);
    let (changed, problems) = r.apply_api_modules(ORIGIN, Some(&set(&[("live", garbage)])));
    assert!(!changed);
    match &problems[..] {
        [PolicyProblem::Module { file, error }] => {
            assert_eq!(file, Path::new(&format!("{ORIGIN}/live.wasm")));
            assert!(matches!(error, ModuleError::Invalid(_)), "{error}");
        }
        other => panic!("expected one module problem, got {other:?}"),
    }
    assert_eq!(hash_of(&r, "live"), Some(before.clone()));

    // More than policy.maxModules: refused whole, nothing swapped.
    let (changed, problems) = r.apply_api_modules(
        ORIGIN,
        Some(&set(&[
            ("live", module(1)),
            ("b", good.clone()),
            ("c", good),
        ])),
    );
    assert!(!changed);
    assert!(
        matches!(
            &problems[..],
            [PolicyProblem::TooManyModules {
                count: 3,
                max: 2,
                ..
            }]
        ),
        "{problems:?}"
    );
    assert_eq!(hash_of(&r, "live"), Some(before));
    assert!(hash_of(&r, "b").is_none());
}

#[test]
fn the_configmap_wins_over_the_directory_until_it_is_gone() {
    let dir = TempDir(std::env::temp_dir().join(format!("sy-api-modules-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("mkdir");
    let from_dir = module(0);
    std::fs::write(dir.0.join("live.wasm"), &*from_dir).expect("write");
    let mut r = registry(&dir.0);
    let from_api = module(1);
    r.apply_api_modules(ORIGIN, Some(&set(&[("live", from_api.clone())])));
    let api_hash = hash_of(&r, "live").expect("loaded");
    assert_eq!(api_hash, super::content_hash(&from_api));
    // The directory (a volume that lags behind the API) does not override.
    r.invalidate();
    let (changed, problems) = r.rescan();
    assert!(!changed && problems.is_empty(), "{problems:?}");
    assert_eq!(hash_of(&r, "live"), Some(api_hash));
    // The ConfigMap deleted: the directory's copy is read again.
    r.apply_api_modules(ORIGIN, None);
    let (changed, _) = r.rescan();
    assert!(changed);
    assert_eq!(hash_of(&r, "live"), Some(super::content_hash(&from_dir)));
}

#[test]
fn the_allow_list_applies_to_configmap_modules() {
    let mut r = registry(Path::new("/nonexistent/switchyard-policies"));
    let allowed = module(0);
    r.set_limits(&[super::content_hash(&allowed)], 16384);
    let other = module(1);
    let (_, problems) =
        r.apply_api_modules(ORIGIN, Some(&set(&[("a", allowed), ("b", other.clone())])));
    assert!(hash_of(&r, "a").is_some());
    assert!(hash_of(&r, "b").is_none());
    match &problems[..] {
        [PolicyProblem::Untrusted { file, hash }] => {
            assert_eq!(file, Path::new(&format!("{ORIGIN}/b.wasm")));
            assert_eq!(*hash, super::content_hash(&other));
        }
        other => panic!("expected one untrusted module, got {other:?}"),
    }
}
