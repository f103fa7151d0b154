//! Per-Service rebuilds: a change to one Service or one of its
//! EndpointSlices (a watch event, or an edited manifest file) re-translates
//! only that Service; the table is then re-assembled from the cached
//! translations (cheap: it moves `Arc`s and settles frontend conflicts), so
//! untouched Services keep their `ServicePort` `Arc`s and every rule stays
//! written once in the catalog.

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

#[derive(Debug, Default)]
pub struct Translations {
    by_service: BTreeMap<Key, TranslatedService>,
}

impl Translations {
    /// Re-translates the Services in `dirty` (all of them when `dirty.all`)
    /// from the source's objects; returns the translations' own problems.
    pub fn refresh(
        &mut self,
        objects: &impl ServiceObjects,
        dirty: &Dirty,
        node: &NodeContext,
    ) -> Vec<Problem> {
        let mut problems = Vec::new();
        let keys: Vec<Key> = if dirty.all {
            self.by_service.clear();
            objects.service_keys()
        } else {
            dirty.services.iter().cloned().collect()
        };
        for key in keys {
            let Some(svc) = objects.service(&key) else {
                self.by_service.remove(&key);
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
            match translation.service {
                Some(t) => self.by_service.insert(key, t),
                None => self.by_service.remove(&key),
            };
        }
        problems
    }

    /// Re-translates what `dirty` names and assembles the table, with this
    /// node's addresses and every problem met.
    pub fn rebuild(
        &mut self,
        objects: &impl ServiceObjects,
        dirty: &Dirty,
        node: &NodeContext,
    ) -> BuildOutput {
        let problems = self.refresh(objects, dirty, node);
        tracing::debug!(
            all = dirty.all,
            services = dirty.services.len(),
            proxied = self.len(),
            "re-translated changed Services"
        );
        let mut built = self.assemble();
        built.table.node_addresses = node.addresses.clone();
        built.problems.splice(0..0, problems);
        built
    }

    pub fn assemble(&self) -> BuildOutput {
        catalog::assemble(self.by_service.values())
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
        assert!(cache.refresh(&store, &dirty, &node).is_empty());
        let before = cache.assemble().table;
        store.apply(
            Kind::EndpointSlice,
            Event::Apply(slice("a-1", "a", "10.0.0.9")),
        );
        let dirty = store.take_dirty();
        assert_eq!(
            dirty.services.iter().cloned().collect::<Vec<_>>(),
            vec![("demo".to_owned(), "a".to_owned())]
        );
        cache.refresh(&store, &dirty, &node);
        let after = cache.assemble().table;
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
        cache.refresh(&store, &dirty, &node);
        assert_eq!(cache.assemble().table.services.len(), 1);
        store.apply(Kind::Service, Event::Delete(svc("a", "10.96.0.1")));
        let dirty = store.take_dirty();
        cache.refresh(&store, &dirty, &node);
        assert!(cache.assemble().table.services.is_empty());
    }
}
