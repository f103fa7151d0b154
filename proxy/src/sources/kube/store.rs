//! What the watches have delivered so far, and which Services that changed.
//! Pure: the watch tasks feed it events, the sync pipeline reads it, so the
//! list/relist/delete rules are unit tested without a server.

use std::collections::{BTreeMap, BTreeSet};

use ::kube::core::DynamicObject;
use ::kube::runtime::watcher::Event;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::decode::{self, Kind};
use crate::catalog::{Problem, SERVICE_NAME_LABEL};

/// `(namespace, name)`.
pub type Key = (String, String);

/// Which translations a sync must redo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Everything (the first sync, a forced reload).
    pub all: bool,
    /// Services (by namespace/name) whose Service or slices changed.
    pub services: BTreeSet<Key>,
}

impl Dirty {
    pub fn is_empty(&self) -> bool {
        !self.all && self.services.is_empty()
    }
}

/// Objects of one kind, plus the buffer of a list in progress: a relist
/// replaces the whole set at `InitDone`, so that objects deleted while the
/// watch was down disappear.
#[derive(Debug)]
struct Objects<T> {
    live: BTreeMap<Key, T>,
    relist: Option<BTreeMap<Key, T>>,
    synced: bool,
}

impl<T> Default for Objects<T> {
    fn default() -> Self {
        Self {
            live: BTreeMap::new(),
            relist: None,
            synced: false,
        }
    }
}

#[derive(Debug, Default)]
pub struct Store {
    services: Objects<Service>,
    slices: Objects<EndpointSlice>,
    nodes: Objects<Node>,
    dirty: Dirty,
    /// Rejected objects and slice warnings, for the sync to log and count.
    problems: Vec<Problem>,
}

impl Store {
    /// True once every kind finished its first list.
    pub fn synced(&self) -> bool {
        self.services.synced && self.slices.synced && self.nodes.synced
    }

    /// Applies one watch event; true when something a sync reads changed.
    pub fn apply(&mut self, kind: Kind, event: Event<DynamicObject>) -> bool {
        let before = self.dirty.clone();
        let node_before = self.node_zone();
        match kind {
            Kind::Service => self.apply_services(event),
            Kind::EndpointSlice => self.apply_slices(event),
            Kind::Node => {
                apply_generic(&mut self.nodes, &mut self.problems, Kind::Node, &event);
            }
        }
        let node_changed = kind == Kind::Node && self.node_zone() != node_before;
        node_changed || self.dirty != before || !self.problems.is_empty()
    }

    fn apply_services(&mut self, event: Event<DynamicObject>) {
        let touched = apply_generic(
            &mut self.services,
            &mut self.problems,
            Kind::Service,
            &event,
        );
        self.dirty.services.extend(touched);
    }

    fn apply_slices(&mut self, event: Event<DynamicObject>) {
        // A slice can move between Services (its label changed) or vanish in
        // a relist: mark its owner before and after.
        let owners_before: BTreeMap<Key, Key> = self
            .slices
            .live
            .iter()
            .filter_map(|(k, s)| Some((k.clone(), owner(s)?)))
            .collect();
        let touched = apply_generic(
            &mut self.slices,
            &mut self.problems,
            Kind::EndpointSlice,
            &event,
        );
        for key in touched {
            if let Some(o) = owners_before.get(&key) {
                self.dirty.services.insert(o.clone());
            }
            if let Some(o) = self.slices.live.get(&key).and_then(owner) {
                self.dirty.services.insert(o);
            }
        }
    }

    /// Takes what changed since the last call.
    pub fn take_dirty(&mut self) -> Dirty {
        std::mem::take(&mut self.dirty)
    }

    pub fn take_problems(&mut self) -> Vec<Problem> {
        std::mem::take(&mut self.problems)
    }

    pub fn service(&self, key: &Key) -> Option<&Service> {
        self.services.live.get(key)
    }

    pub fn services(&self) -> impl Iterator<Item = (&Key, &Service)> {
        self.services.live.iter()
    }

    pub fn all_slices(&self) -> impl Iterator<Item = &EndpointSlice> {
        self.slices.live.values()
    }

    /// The slices that name `service` in their `kubernetes.io/service-name`.
    pub fn slices_of(&self, service: &Key) -> Vec<&EndpointSlice> {
        let (namespace, _) = service;
        let from = (namespace.clone(), String::new());
        self.slices
            .live
            .range(from..)
            .take_while(|((ns, _), _)| ns == namespace)
            .map(|(_, s)| s)
            .filter(|s| owner(s).as_ref() == Some(service))
            .collect()
    }

    /// This node's `topology.kubernetes.io/zone` label.
    pub fn node_zone(&self) -> Option<String> {
        let node = self.nodes.live.values().next()?;
        node.metadata
            .labels
            .as_ref()?
            .get("topology.kubernetes.io/zone")
            .cloned()
    }
}

/// The Service a slice belongs to.
fn owner(slice: &EndpointSlice) -> Option<Key> {
    let namespace = slice.metadata.namespace.clone().unwrap_or_default();
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((namespace, service.clone()))
}

/// Applies an event to one kind's objects; returns the keys whose object
/// changed (added, modified, deleted, or gone in a relist).
fn apply_generic<T>(
    objects: &mut Objects<T>,
    problems: &mut Vec<Problem>,
    kind: Kind,
    event: &Event<DynamicObject>,
) -> Vec<Key>
where
    T: decode::Typed + PartialEq + Clone,
{
    match event {
        Event::Init => {
            objects.relist = Some(BTreeMap::new());
            Vec::new()
        }
        Event::InitApply(obj) => {
            let key = decode::key(obj);
            let decoded = decode::typed::<T>(kind, obj, problems);
            // A bad object keeps its last good version, as a bad file edit
            // keeps the file's last good contents.
            let value = decoded.or_else(|| objects.live.get(&key).cloned());
            if let (Some(relist), Some(value)) = (objects.relist.as_mut(), value) {
                relist.insert(key, value);
            }
            Vec::new()
        }
        Event::InitDone => {
            objects.synced = true;
            let Some(fresh) = objects.relist.take() else {
                return Vec::new();
            };
            let old = std::mem::replace(&mut objects.live, fresh);
            let mut changed: Vec<Key> = old
                .iter()
                .filter(|(k, v)| objects.live.get(*k) != Some(*v))
                .map(|(k, _)| k.clone())
                .collect();
            changed.extend(
                objects
                    .live
                    .keys()
                    .filter(|k| !old.contains_key(*k))
                    .cloned(),
            );
            if !changed.is_empty() {
                tracing::info!(
                    kind = kind.name(),
                    changed = changed.len(),
                    objects = objects.live.len(),
                    "list complete"
                );
            }
            changed
        }
        Event::Apply(obj) => {
            let key = decode::key(obj);
            match decode::typed::<T>(kind, obj, problems) {
                Some(value) if objects.live.get(&key) != Some(&value) => {
                    objects.live.insert(key.clone(), value);
                    vec![key]
                }
                _ => Vec::new(),
            }
        }
        Event::Delete(obj) => {
            let key = decode::key(obj);
            match objects.live.remove(&key) {
                Some(_) => vec![key],
                None => Vec::new(),
            }
        }
    }
}

#[cfg(test)]
mod tests;
