//! Per-Service rebuilds: a change to one Service or one of its
//! EndpointSlices (a watch event, or an edited manifest file) re-translates
//! only that Service, and `catalog::Assembly` patches the table with it
//! (whole again only when the Service shares a frontend with another), so
//! untouched Services keep their `ServicePort` `Arc`s and the table its
//! shared entries, and every rule stays written once in the catalog.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::catalog::{self, BuildOutput, NodeContext, ObjectRef, Problem, TranslatedService};
use crate::sources::file_index::FileIndex;
use crate::sources::kube::{Dirty, Key, Store};

/// The objects of one source, by Service.
pub trait ServiceObjects {
    fn service_keys(&self) -> Vec<Key>;
    fn service(&self, key: &Key) -> Option<&Service>;
    fn slices_of(&self, key: &Key) -> Vec<&EndpointSlice>;
    /// Definitions of this Service beyond the first (files can repeat one;
    /// the API cannot).
    fn duplicates(&self, _key: &Key) -> usize {
        0
    }
}

impl ServiceObjects for Store {
    fn service_keys(&self) -> Vec<Key> {
        self.services().map(|(k, _)| k.clone()).collect()
    }
    fn service(&self, key: &Key) -> Option<&Service> {
        Store::service(self, key)
    }
    fn slices_of(&self, key: &Key) -> Vec<&EndpointSlice> {
        Store::slices_of(self, key)
    }
}

impl ServiceObjects for FileIndex {
    fn service_keys(&self) -> Vec<Key> {
        FileIndex::service_keys(self).cloned().collect()
    }
    fn service(&self, key: &Key) -> Option<&Service> {
        FileIndex::service(self, key)
    }
    fn slices_of(&self, key: &Key) -> Vec<&EndpointSlice> {
        FileIndex::slices_of(self, key)
    }
    fn duplicates(&self, key: &Key) -> usize {
        self.definitions(key).saturating_sub(1)
    }
}

#[derive(Debug)]
pub struct Translations {
    by_service: BTreeMap<Key, TranslatedService>,
    /// The table of these translations, patched per change.
    assembly: catalog::Assembly,
}

impl Default for Translations {
    fn default() -> Self {
        // Tables of different assemblies must not share a revision: a
        // reader would take one's change record for the other's.
        Self {
            by_service: BTreeMap::new(),
            assembly: catalog::Assembly::new(fastrand::u64(1..u64::MAX / 2)),
        }
    }
}

impl Translations {
    /// Re-translates the Services in `dirty` (all of them when `dirty.all`)
    /// from the source's objects; returns the translations' own problems
    /// and, for each Service looked at, its translation before.
    fn refresh(
        &mut self,
        objects: &impl ServiceObjects,
        dirty: &Dirty,
        node: &NodeContext,
    ) -> (Vec<Problem>, Vec<(Key, Option<TranslatedService>)>) {
        let mut problems = Vec::new();
        let mut before = Vec::new();
        let keys: Vec<Key> = if dirty.all {
            self.by_service.clear();
            objects.service_keys()
        } else {
            dirty.services.iter().cloned().collect()
        };
        for key in keys {
            let Some(svc) = objects.service(&key) else {
                before.push((key.clone(), self.by_service.remove(&key)));
                continue;
            };
            if objects.duplicates(&key) > 0 {
                problems.push(Problem::error(
                    &ObjectRef::new("Service", &key.0, &key.1),
                    "metadata.name",
                    "expected one Service of this name; it is defined twice and the first is used"
                        .to_owned(),
                ));
            }
            let slices = objects.slices_of(&key);
            let translation = catalog::translate_service(svc, &slices, node);
            problems.extend(translation.problems);
            let old = match translation.service {
                Some(t) => self.by_service.insert(key.clone(), t),
                None => self.by_service.remove(&key),
            };
            before.push((key, old));
        }
        (problems, before)
    }

    /// Re-translates what `dirty` names and brings the table in step (a
    /// patch of the changed Services, or whole), with this node's
    /// addresses and every problem met.
    pub fn rebuild(
        &mut self,
        objects: &impl ServiceObjects,
        dirty: &Dirty,
        node: &NodeContext,
    ) -> BuildOutput {
        let start = std::time::Instant::now();
        let (mut problems, before) = self.refresh(objects, dirty, node);
        let translated = start.elapsed();
        let by_service = &self.by_service;
        let conflicts = if dirty.all {
            self.assembly.whole(by_service.values())
        } else {
            let changes: Vec<catalog::Replaced<'_>> = before
                .iter()
                .map(|(key, old)| (old.as_ref(), by_service.get(key)))
                .collect();
            self.assembly
                .update(&changes, || by_service.values().collect())
        };
        problems.extend(conflicts);
        let mut table = self.assembly.table().clone();
        table.node_addresses = node.addresses.clone();
        tracing::debug!(
            all = dirty.all,
            services = dirty.services.len(),
            proxied = self.len(),
            translated_us = translated.as_micros() as u64,
            assembled_us = (start.elapsed() - translated).as_micros() as u64,
            "re-translated changed Services"
        );
        BuildOutput { table, problems }
    }

    /// The table as last brought in step.
    #[cfg(test)]
    pub fn table(&self) -> &catalog::ServiceTable {
        self.assembly.table()
    }

    pub fn len(&self) -> usize {
        self.by_service.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::kube::core::DynamicObject;
    use ::kube::runtime::watcher::Event;

    use crate::sources::kube::Kind;

    fn obj(value: serde_json::Value) -> DynamicObject {
        serde_json::from_value(value).expect("dynamic object")
    }

    fn svc(name: &str, ip: &str) -> DynamicObject {
        obj(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "demo"},
            "spec": {"clusterIP": ip, "ports": [{"port": 80, "protocol": "TCP"}]}
        }))
    }

    fn slice(name: &str, service: &str, ip: &str) -> DynamicObject {
        obj(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "demo",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
            "ports": [{"port": 8080, "protocol": "TCP"}]
        }))
    }

    fn synced_store() -> Store {
        let mut store = Store::default();
        for kind in Kind::ALL {
            store.apply(kind, Event::Init);
            store.apply(kind, Event::InitDone);
        }
        store.take_dirty();
        store
    }

    #[test]
    fn one_slice_change_rebuilds_only_its_service() {
        let mut store = synced_store();
        store.apply(Kind::Service, Event::Apply(svc("a", "10.96.0.1")));
        store.apply(Kind::Service, Event::Apply(svc("b", "10.96.0.2")));
        store.apply(
            Kind::EndpointSlice,
            Event::Apply(slice("a-1", "a", "10.0.0.1")),
        );
        let node = NodeContext::default();
        let mut cache = Translations::default();
        let dirty = Dirty {
            all: true,
            ..Dirty::default()
        };
        store.take_dirty();
        assert!(cache.rebuild(&store, &dirty, &node).problems.is_empty());
        let before = cache.table().clone();
        store.apply(
            Kind::EndpointSlice,
            Event::Apply(slice("a-1", "a", "10.0.0.9")),
        );
        let dirty = store.take_dirty();
        assert_eq!(
            dirty.services.iter().cloned().collect::<Vec<_>>(),
            vec![("demo".to_owned(), "a".to_owned())]
        );
        cache.rebuild(&store, &dirty, &node);
        let after = cache.table().clone();
        let key_b = before.services.keys().find(|k| k.name == "b").expect("b");
        assert!(
            std::sync::Arc::ptr_eq(&before.services[key_b][0], &after.services[key_b][0]),
            "an untouched Service keeps its translation"
        );
        let key_a = after.services.keys().find(|k| k.name == "a").expect("a");
        assert!(!std::sync::Arc::ptr_eq(
            &before.services[key_a][0],
            &after.services[key_a][0]
        ));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn deleted_service_leaves_the_table() {
        let mut store = synced_store();
        store.apply(Kind::Service, Event::Apply(svc("a", "10.96.0.1")));
        let node = NodeContext::default();
        let mut cache = Translations::default();
        let dirty = store.take_dirty();
        cache.rebuild(&store, &dirty, &node);
        assert_eq!(cache.table().clone().services.len(), 1);
        store.apply(Kind::Service, Event::Delete(svc("a", "10.96.0.1")));
        let dirty = store.take_dirty();
        cache.rebuild(&store, &dirty, &node);
        assert!(cache.table().clone().services.is_empty());
    }
}
