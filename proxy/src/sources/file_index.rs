//! Which file defines each Service and each Service's EndpointSlices, kept
//! up to date file by file, so that a changed file re-translates only the
//! Services it touches (see `daemon/incremental.rs`) instead of the whole
//! directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::manifest::Manifests;
use crate::catalog::SERVICE_NAME_LABEL;

/// `(namespace, name)` of a Service.
pub type Key = (String, String);

/// One object: the file's contents it lives in, and its position there.
#[derive(Debug, Clone)]
struct At {
    file: PathBuf,
    contents: Arc<Manifests>,
    index: usize,
}

#[derive(Debug, Default)]
pub struct FileIndex {
    /// Every definition of a Service, in file then document order (the
    /// order a full build sees them in, so the same one wins).
    services: BTreeMap<Key, Vec<At>>,
    /// Slices by the Service they name (`kubernetes.io/service-name`).
    slices: BTreeMap<Key, Vec<At>>,
}

impl FileIndex {
    /// Replaces what `file` contributed (`old`) with `new`; returns the
    /// Services whose definition or slices that touched.
    pub fn replace(
        &mut self,
        file: &Path,
        old: Option<&Arc<Manifests>>,
        new: Option<&Arc<Manifests>>,
    ) -> BTreeSet<Key> {
        let mut touched = BTreeSet::new();
        if let Some(old) = old {
            for key in old.services.iter().filter_map(service_key) {
                remove(&mut self.services, &key, file);
                touched.insert(key);
            }
            for key in old.slices.iter().filter_map(slice_owner) {
                remove(&mut self.slices, &key, file);
                touched.insert(key);
            }
        }
        if let Some(new) = new {
            for (index, svc) in new.services.iter().enumerate() {
                if let Some(key) = service_key(svc) {
                    insert(&mut self.services, key.clone(), at(file, new, index));
                    touched.insert(key);
                }
            }
            for (index, slice) in new.slices.iter().enumerate() {
                if let Some(key) = slice_owner(slice) {
                    insert(&mut self.slices, key.clone(), at(file, new, index));
                    touched.insert(key);
                }
            }
        }
        touched
    }

    pub fn service_keys(&self) -> impl Iterator<Item = &Key> {
        self.services.keys()
    }

    /// The definition a full build would keep (the first given).
    pub fn service(&self, key: &Key) -> Option<&Service> {
        let at = self.services.get(key)?.first()?;
        at.contents.services.get(at.index)
    }

    /// How many files or documents define this Service.
    pub fn definitions(&self, key: &Key) -> usize {
        self.services.get(key).map_or(0, Vec::len)
    }

    pub fn slices_of(&self, key: &Key) -> Vec<&EndpointSlice> {
        self.slices
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|at| at.contents.slices.get(at.index))
            .collect()
    }
}

fn at(file: &Path, contents: &Arc<Manifests>, index: usize) -> At {
    At {
        file: file.to_owned(),
        contents: contents.clone(),
        index,
    }
}

fn insert(map: &mut BTreeMap<Key, Vec<At>>, key: Key, at: At) {
    let list = map.entry(key).or_default();
    let pos = list.partition_point(|a| (&a.file, a.index) <= (&at.file, at.index));
    list.insert(pos, at);
}

fn remove(map: &mut BTreeMap<Key, Vec<At>>, key: &Key, file: &Path) {
    if let Some(list) = map.get_mut(key) {
        list.retain(|a| a.file != file);
        if list.is_empty() {
            map.remove(key);
        }
    }
}

fn service_key(svc: &Service) -> Option<Key> {
    let name = svc.metadata.name.clone()?;
    Some((namespace(svc.metadata.namespace.as_deref()), name))
}

fn slice_owner(slice: &EndpointSlice) -> Option<Key> {
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((
        namespace(slice.metadata.namespace.as_deref()),
        service.clone(),
    ))
}

/// A manifest without a namespace is in `default`, as kubectl applies it.
fn namespace(ns: Option<&str>) -> String {
    match ns {
        Some(ns) if !ns.is_empty() => ns.to_owned(),
        _ => "default".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifests(text: &str) -> Arc<Manifests> {
        let (m, problems) = super::super::manifest::parse(text, Path::new("t.yaml"));
        assert!(problems.is_empty(), "{problems:?}");
        Arc::new(m)
    }

    const WEB: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.244.1.11]}]
ports: [{port: 8080}]
";

    fn key(ns: &str, name: &str) -> Key {
        (ns.to_owned(), name.to_owned())
    }

    #[test]
    fn a_changed_file_touches_only_its_services() {
        let mut index = FileIndex::default();
        let web = manifests(WEB);
        let db = manifests(&WEB.replace("web", "db").replace("10.96.0.10", "10.96.0.11"));
        index.replace(Path::new("a.yaml"), None, Some(&web));
        index.replace(Path::new("b.yaml"), None, Some(&db));
        assert_eq!(index.slices_of(&key("demo", "web")).len(), 1);

        // b.yaml loses its slice: only db is touched.
        let db2 = manifests(
            WEB.split("---")
                .next()
                .expect("doc")
                .replace("web", "db")
                .as_str(),
        );
        let touched = index.replace(Path::new("b.yaml"), Some(&db), Some(&db2));
        assert_eq!(
            touched.into_iter().collect::<Vec<_>>(),
            vec![key("demo", "db")]
        );
        assert!(index.slices_of(&key("demo", "db")).is_empty());
        assert_eq!(index.slices_of(&key("demo", "web")).len(), 1);

        // a.yaml removed: web is gone.
        let touched = index.replace(Path::new("a.yaml"), Some(&web), None);
        assert!(touched.contains(&key("demo", "web")));
        assert!(index.service(&key("demo", "web")).is_none());
    }

    #[test]
    fn the_first_file_keeps_a_service_defined_twice() {
        let mut index = FileIndex::default();
        let first = manifests(WEB);
        let second = manifests(&WEB.replace("10.96.0.10", "10.96.0.99"));
        index.replace(Path::new("b.yaml"), None, Some(&second));
        index.replace(Path::new("a.yaml"), None, Some(&first));
        let k = key("demo", "web");
        assert_eq!(index.definitions(&k), 2);
        let ip = index
            .service(&k)
            .and_then(|s| s.spec.as_ref()?.cluster_ip.clone());
        assert_eq!(ip.as_deref(), Some("10.96.0.10"), "a.yaml sorts first");
    }
}
