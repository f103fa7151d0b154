//! Writes the policy status aggregates (policy/events.rs) as
//! events.k8s.io/v1 Events on the Service. One Event per (Service, reason,
//! note), named the same on every node: the first node creates it, every
//! later write (from any node) reads it and patches `series` alone (the API
//! keeps every other field of an Event immutable) up by what it saw, with
//! the read's resourceVersion as a precondition, so that two nodes adding
//! at once both count (a conflict is read again and retried).

use std::time::SystemTime;

use ::kube::Api;
use ::kube::api::{Patch, PatchParams, PostParams};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

use crate::policy::events::Entry;

/// What the writer does to Events: the ClusterRole in
/// conf/k8s/events-clusterrole.yaml grants exactly these (a test checks).
pub const VERBS: [&str; 3] = ["create", "patch", "get"];

/// The Events' `reportingController`.
pub const CONTROLLER: &str = "switchyard.dev/proxy";
/// Conflicting writes retried before the occurrences are left for the next
/// write of the entry (they are not lost: the next delta is counted from
/// what was written).
const ATTEMPTS: usize = 4;

pub struct EventWriter {
    client: kube::Client,
    /// `switchyard-<node>`: the node that created an Event.
    instance: String,
}

fn micro(t: SystemTime) -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::try_from(t).unwrap_or_default())
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == code)
}

impl EventWriter {
    pub fn new(client: kube::Client, node: &str) -> Self {
        let mut instance = format!("switchyard-{node}");
        instance.truncate(128);
        Self { client, instance }
    }

    /// The Event as this node would create it, `count` occurrences.
    pub fn event(&self, entry: &Entry, count: u64) -> Event {
        let name = entry.event_name();
        Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(entry.service.namespace.clone()),
                ..Default::default()
            },
            event_time: Some(micro(entry.first_seen)),
            reporting_controller: Some(CONTROLLER.into()),
            reporting_instance: Some(self.instance.clone()),
            action: Some(entry.reason.action().into()),
            reason: Some(entry.reason.as_str().into()),
            type_: Some(entry.reason.kind().into()),
            note: Some(entry.note.clone()),
            regarding: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Service".into()),
                namespace: Some(entry.service.namespace.clone()),
                name: Some(entry.service.name.clone()),
                ..Default::default()
            }),
            // The API wants a series only from the second occurrence on.
            series: (count >= 2).then(|| EventSeries {
                count: i32::try_from(count).unwrap_or(i32::MAX),
                last_observed_time: micro(entry.last_seen),
            }),
            ..Default::default()
        }
    }

    /// Adds `delta` occurrences of `entry` to its Event.
    pub async fn write(&self, entry: &Entry, delta: u64) -> Result<(), kube::Error> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &entry.service.namespace);
        let name = entry.event_name();
        let mut last = None;
        for _ in 0..ATTEMPTS {
            let current = match api.get(&name).await {
                Ok(event) => event,
                Err(e) if is_status(&e, 404) => {
                    match api
                        .create(&PostParams::default(), &self.event(entry, delta))
                        .await
                    {
                        Ok(_) => return Ok(()),
                        // Another node created it meanwhile: add to it.
                        Err(e) if is_status(&e, 409) => {
                            last = Some(e);
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            };
            let before = current.series.as_ref().map_or(1, |s| i64::from(s.count));
            let count = before.saturating_add(i64::try_from(delta).unwrap_or(i64::MAX));
            let patch = serde_json::json!({
                "metadata": { "resourceVersion": current.metadata.resource_version },
                "series": {
                    "count": i32::try_from(count).unwrap_or(i32::MAX),
                    "lastObservedTime": micro(entry.last_seen),
                },
            });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if is_status(&e, 409) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            kube::Error::Api(
                kube::core::Status::failure("conflicting writes", "Conflict")
                    .with_code(409)
                    .boxed(),
            )
        }))
    }
}
