//! What the watches have delivered so far, and which Services that changed.
//! Pure: the watch tasks feed it events, the sync pipeline reads it, so the
//! list/relist/delete rules are unit tested without a server.

use std::collections::{BTreeMap, BTreeSet};

use ::kube::core::DynamicObject;
use ::kube::runtime::watcher::Event;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::decode::{self, Incoming, Kind};
use super::raw::RawObject;
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
    /// Service → the slices that name it, so that a Service's slices are
    /// found without scanning every slice.
    slices_by_service: BTreeMap<Key, BTreeSet<Key>>,
    dirty: Dirty,
    /// Rejected objects and slice warnings, for the sync to log and count.
    problems: Vec<Problem>,
    /// `last-change-trigger-time` of slices changed by watch events (not
    /// lists), for `network_programming_duration_seconds`.
    triggers: Vec<std::time::SystemTime>,
}

/// The EndpointSlice annotation kube-proxy measures network programming
/// latency from.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The annotation's time, when it is there and an RFC 3339 timestamp.
pub fn trigger_time(slice: &EndpointSlice) -> Option<std::time::SystemTime> {
    let text = slice
        .metadata
        .annotations
        .as_ref()?
        .get(TRIGGER_TIME_ANNOTATION)?;
    let ts: k8s_openapi::jiff::Timestamp = text.parse().ok()?;
    let nanos = u64::try_from(ts.as_nanosecond()).ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(nanos))
}

impl Store {
    /// True once every kind finished its first list.
    pub fn synced(&self) -> bool {
        self.services.synced && self.slices.synced && self.nodes.synced
    }

    /// Applies one watch event of `DynamicObject`s (what tests build); true
    /// when something a sync reads changed.
    pub fn apply(&mut self, kind: Kind, event: Event<DynamicObject>) -> bool {
        self.apply_event(kind, event)
    }

    /// Applies one event of the watches, objects still undecoded.
    pub fn apply_raw(&mut self, kind: Kind, event: Event<RawObject>) -> bool {
        self.apply_event(kind, event)
    }

    fn apply_event<O: Incoming>(&mut self, kind: Kind, event: Event<O>) -> bool {
        let changed = match kind {
            Kind::Service => self.apply_services(event),
            Kind::EndpointSlice => self.apply_slices(event),
            Kind::Node => {
                !apply_generic(&mut self.nodes, &mut self.problems, Kind::Node, event).is_empty()
            }
        };
        changed || !self.problems.is_empty()
    }

    /// True when a Service changed.
    fn apply_services<O: Incoming>(&mut self, event: Event<O>) -> bool {
        let touched = apply_generic(&mut self.services, &mut self.problems, Kind::Service, event);
        let changed = !touched.is_empty();
        self.dirty
            .services
            .extend(touched.into_iter().map(|(k, _)| k));
        changed
    }

    /// True when a slice changed.
    fn apply_slices<O: Incoming>(&mut self, event: Event<O>) -> bool {
        let watched = matches!(event, Event::Apply(_));
        let touched = apply_generic(
            &mut self.slices,
            &mut self.problems,
            Kind::EndpointSlice,
            event,
        );
        let changed = !touched.is_empty();
        // A slice can move between Services (its label changed) or vanish:
        // its owner before and after both need a rebuild.
        for (key, old) in touched {
            if let Some(o) = old.as_ref().and_then(owner) {
                if let Some(set) = self.slices_by_service.get_mut(&o) {
                    set.remove(&key);
                    if set.is_empty() {
                        self.slices_by_service.remove(&o);
                    }
                }
                self.dirty.services.insert(o);
            }
            if watched && let Some(t) = self.slices.live.get(&key).and_then(trigger_time) {
                self.triggers.push(t);
            }
            if let Some(o) = self.slices.live.get(&key).and_then(owner) {
                self.slices_by_service
                    .entry(o.clone())
                    .or_default()
                    .insert(key);
                self.dirty.services.insert(o);
            }
        }
        changed
    }

    /// Takes what changed since the last call.
    pub fn take_dirty(&mut self) -> Dirty {
        std::mem::take(&mut self.dirty)
    }

    /// Trigger times of the slice changes since the last call.
    pub fn take_triggers(&mut self) -> Vec<std::time::SystemTime> {
        std::mem::take(&mut self.triggers)
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
        self.slices_by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.live.get(k))
            .collect()
    }

    /// This node's Node object, once listed.
    pub fn node(&self) -> Option<&k8s_openapi::api::core::v1::Node> {
        self.nodes.live.values().next()
    }

    /// This node's InternalIP and ExternalIP addresses.
    pub fn node_addresses(&self) -> Vec<std::net::IpAddr> {
        self.nodes
            .live
            .values()
            .next()
            .map(crate::catalog::node_addresses)
            .unwrap_or_default()
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
/// changed (added, modified, deleted, or gone in a relist), each with the
/// object it replaced.
fn apply_generic<T, O>(
    objects: &mut Objects<T>,
    problems: &mut Vec<Problem>,
    kind: Kind,
    event: Event<O>,
) -> Vec<(Key, Option<T>)>
where
    T: decode::Typed + PartialEq + Clone,
    O: Incoming,
{
    match event {
        Event::Init => {
            objects.relist = Some(BTreeMap::new());
            Vec::new()
        }
        Event::InitApply(obj) => {
            let key = obj.key();
            let decoded = obj.typed::<T>(kind, problems);
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
            let mut old = std::mem::replace(&mut objects.live, fresh);
            let keys: Vec<Key> = objects
                .live
                .iter()
                .filter(|(k, v)| old.get(*k) != Some(*v))
                .map(|(k, _)| k.clone())
                .collect();
            let mut changed: Vec<(Key, Option<T>)> = keys
                .into_iter()
                .map(|k| {
                    let before = old.remove(&k);
                    (k, before)
                })
                .collect();
            // What is left of the old set is gone or unchanged.
            changed.extend(
                old.into_iter()
                    .filter(|(k, _)| !objects.live.contains_key(k))
                    .map(|(k, v)| (k, Some(v))),
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
            let key = obj.key();
            match obj.typed::<T>(kind, problems) {
                Some(value) if objects.live.get(&key) != Some(&value) => {
                    let old = objects.live.insert(key.clone(), value);
                    vec![(key, old)]
                }
                _ => Vec::new(),
            }
        }
        Event::Delete(obj) => {
            let key = obj.key();
            match objects.live.remove(&key) {
                Some(old) => vec![(key, Some(old))],
                None => Vec::new(),
            }
        }
    }
}

#[cfg(test)]
mod tests;
