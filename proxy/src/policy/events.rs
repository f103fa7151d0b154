//! Status records about policies, for the people who own the Services:
//! a module bound, a binding rejected, a module disabled after faults, a
//! datapath fallback. Anything on the node may record one (a worker thread
//! included: `record` never blocks); the control plane aggregates them the
//! way kubelet and kube-scheduler aggregate Events — one entry per reason,
//! Service and note, with a count — and writes each entry at most once per
//! `MIN_WRITE_INTERVAL` and within a node-wide token bucket. The writes go
//! to the log and `/debug/policies` always, and to the API as
//! events.k8s.io/v1 Events with the kubernetes source
//! (sources/kube/events.rs).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::catalog::ServiceKey;

/// Why a record was made; the Event's `reason`. README.md lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Reason {
    PolicyBound,
    PolicyRejected,
    PolicyDisabled,
    DatapathFallback,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PolicyBound => "PolicyBound",
            Self::PolicyRejected => "PolicyRejected",
            Self::PolicyDisabled => "PolicyDisabled",
            Self::DatapathFallback => "DatapathFallback",
        }
    }

    /// `Normal` or `Warning`, the Event's `type`.
    pub fn kind(self) -> &'static str {
        match self {
            Self::PolicyBound => "Normal",
            _ => "Warning",
        }
    }

    /// The Event's `action`: what the proxy was doing.
    pub fn action(self) -> &'static str {
        match self {
            Self::PolicyBound | Self::PolicyRejected => "Bind",
            Self::PolicyDisabled => "Decide",
            Self::DatapathFallback => "Program",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Record {
    pub service: ServiceKey,
    /// The module concerned (for `/debug/policies`).
    pub policy: String,
    pub reason: Reason,
    pub note: String,
}

/// Records waiting for the control plane; past this, new ones are dropped
/// (the aggregate would have folded them into a count anyway).
const QUEUE: usize = 1024;
/// Entries kept; a record for a new (Service, reason, note) past this is
/// dropped.
const MAX_ENTRIES: usize = 4096;
/// Writes of one entry at most this often; occurrences in between are
/// folded into its count.
pub const MIN_WRITE_INTERVAL: Duration = Duration::from_secs(10);
/// Node-wide writes: a burst of this many, then one a second.
const BUCKET_BURST: u32 = 25;
const BUCKET_REFILL: Duration = Duration::from_secs(1);
/// Longest note kept (the API allows 1 kB).
const MAX_NOTE: usize = 1000;

static HUB: OnceLock<mpsc::Sender<Record>> = OnceLock::new();
static RECENT: OnceLock<ArcSwap<Vec<EntryView>>> = OnceLock::new();

/// Installs the node's queue; the receiver goes to the control plane's
/// events task. `None` when already installed (one per process).
pub fn install() -> Option<mpsc::Receiver<Record>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    HUB.set(tx).ok().map(|()| rx)
}

/// Queues a record; never blocks. Without an installed queue (the `policy`
/// subcommands, unit tests) the record goes nowhere.
pub fn record(record: Record) {
    if let Some(tx) = HUB.get() {
        let _ = tx.try_send(record);
    }
}

pub fn policy_bound(service: &ServiceKey, policy: &str, sha256: &str) {
    record(Record {
        service: service.clone(),
        policy: policy.to_owned(),
        reason: Reason::PolicyBound,
        note: format!("policy {policy} bound (module sha256 {sha256})"),
    });
}

pub fn policy_rejected(service: &ServiceKey, policy: &str, error: &str) {
    record(Record {
        service: service.clone(),
        policy: policy.to_owned(),
        reason: Reason::PolicyRejected,
        note: format!("policy {policy} not bound: {error}; the previous policy stays"),
    });
}

/// Called by a data-plane worker when it turns a module off for a port.
pub fn policy_disabled(service: &ServiceKey, policy: &str, faults: u32) {
    record(Record {
        service: service.clone(),
        policy: policy.to_owned(),
        reason: Reason::PolicyDisabled,
        note: format!(
            "policy {policy} disabled after {faults} faults in its last decisions; the built-in round robin decides until the module or the binding changes"
        ),
    });
}

/// For the kernel datapath: a Service port whose policy should run in
/// nftables runs in the proxy datapath instead, and why.
pub fn datapath_fallback(service: &ServiceKey, policy: &str, why: &str) {
    record(Record {
        service: service.clone(),
        policy: policy.to_owned(),
        reason: Reason::DatapathFallback,
        note: format!(
            "policy {policy}: kernel datapath not used ({why}); the proxy datapath serves the Service"
        ),
    });
}

/// The entries as `/debug/policies` shows them.
pub fn recent() -> Arc<Vec<EntryView>> {
    RECENT.get().map(|r| r.load_full()).unwrap_or_default()
}

#[derive(Debug, Clone, Serialize)]
pub struct EntryView {
    pub service: String,
    pub policy: String,
    pub reason: Reason,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub note: String,
    pub count: u64,
}

/// One (Service, reason, note) aggregate.
#[derive(Debug, Clone)]
pub struct Entry {
    pub service: ServiceKey,
    pub reason: Reason,
    pub policy: String,
    pub note: String,
    /// Occurrences seen on this node.
    pub count: u64,
    /// Occurrences already written.
    pub written: u64,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    last_write: Option<Instant>,
}

impl Entry {
    /// The Event's name: one per (Service, reason, note) in the Service's
    /// namespace, the same on every node, so that nodes add to one count.
    /// The note is part of it because the API keeps an Event's note
    /// immutable (client-go's recorder keys its series by note as well).
    pub fn event_name(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(self.note.as_bytes());
        let tag: String = digest[..5].iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{}.switchyard.{}.{tag}",
            self.service.name,
            self.reason.as_str().to_ascii_lowercase()
        )
    }
}

/// The aggregation and the rate limits; pure (time is passed in).
#[derive(Debug)]
pub struct Aggregator {
    entries: BTreeMap<(ServiceKey, Reason, String), Entry>,
    tokens: u32,
    refilled: Instant,
    pub dropped: u64,
}

impl Aggregator {
    pub fn new(now: Instant) -> Self {
        Self {
            entries: BTreeMap::new(),
            tokens: BUCKET_BURST,
            refilled: now,
            dropped: 0,
        }
    }

    pub fn observe(&mut self, record: Record, at: SystemTime) {
        let mut note = record.note;
        if note.len() > MAX_NOTE {
            let mut cut = MAX_NOTE;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        let key = (record.service, record.reason, note);
        if !self.entries.contains_key(&key) && self.entries.len() >= MAX_ENTRIES {
            self.dropped += 1;
            return;
        }
        let entry = self.entries.entry(key.clone()).or_insert_with(|| Entry {
            service: key.0,
            reason: key.1,
            policy: String::new(),
            note: key.2,
            count: 0,
            written: 0,
            first_seen: at,
            last_seen: at,
            last_write: None,
        });
        entry.policy = record.policy;
        entry.count += 1;
        entry.last_seen = at;
    }

    /// Entries with occurrences not yet written whose interval has passed,
    /// as many as the bucket allows; each is marked written.
    pub fn due(&mut self, now: Instant) -> Vec<(Entry, u64)> {
        let refills = now.saturating_duration_since(self.refilled).as_secs() as u32
            / BUCKET_REFILL.as_secs().max(1) as u32;
        if refills > 0 {
            self.tokens = (self.tokens + refills).min(BUCKET_BURST);
            self.refilled = now;
        }
        let mut out = Vec::new();
        for entry in self.entries.values_mut() {
            if entry.count == entry.written {
                continue;
            }
            if entry
                .last_write
                .is_some_and(|t| now.saturating_duration_since(t) < MIN_WRITE_INTERVAL)
            {
                continue;
            }
            if self.tokens == 0 {
                break;
            }
            self.tokens -= 1;
            let delta = entry.count - entry.written;
            entry.written = entry.count;
            entry.last_write = Some(now);
            out.push((entry.clone(), delta));
        }
        out
    }

    pub fn publish(&self) {
        let views = self
            .entries
            .values()
            .map(|e| EntryView {
                service: e.service.to_string(),
                policy: e.policy.clone(),
                reason: e.reason,
                kind: e.reason.kind(),
                note: e.note.clone(),
                count: e.count,
            })
            .collect();
        RECENT
            .get_or_init(|| ArcSwap::from_pointee(Vec::new()))
            .store(Arc::new(views));
    }
}

/// The control plane's events task: folds records into the aggregate,
/// and writes what is due to the log, `/debug/policies` and, with a
/// writer, the API. Runs until the queue closes.
pub async fn run(
    mut records: mpsc::Receiver<Record>,
    writer: Option<crate::sources::kube::events::EventWriter>,
) {
    let mut agg = Aggregator::new(Instant::now());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            record = records.recv() => {
                let Some(record) = record else { return };
                agg.observe(record, SystemTime::now());
                while let Ok(record) = records.try_recv() {
                    agg.observe(record, SystemTime::now());
                }
                agg.publish();
            }
            _ = tick.tick() => {}
        }
        for (entry, delta) in agg.due(Instant::now()) {
            let service = entry.service.to_string();
            let reason = entry.reason.as_str();
            match entry.reason.kind() {
                "Normal" => tracing::info!(%service, reason, count = entry.count, "{}", entry.note),
                _ => tracing::warn!(%service, reason, count = entry.count, "{}", entry.note),
            }
            if let Some(writer) = &writer
                && let Err(e) = writer.write(&entry, delta).await
            {
                crate::logging::rate_limited_warn("policy-event-write", || {
                    tracing::warn!(%service, reason, error = %e, "cannot write the Event; the log and /debug/policies have it");
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str) -> ServiceKey {
        ServiceKey {
            namespace: "e2e".into(),
            name: name.into(),
        }
    }

    fn rec(name: &str, reason: Reason, note: &str) -> Record {
        Record {
            service: svc(name),
            policy: "maglev".into(),
            reason,
            note: note.into(),
        }
    }

    #[test]
    fn one_entry_per_reason_service_and_note_with_a_count() {
        let t0 = Instant::now();
        let mut agg = Aggregator::new(t0);
        for _ in 0..100 {
            agg.observe(rec("web", Reason::PolicyDisabled, "off"), SystemTime::now());
        }
        agg.observe(rec("web", Reason::PolicyBound, "b"), SystemTime::now());
        agg.observe(rec("web", Reason::PolicyBound, "b2"), SystemTime::now());
        let due = agg.due(t0);
        assert_eq!(due.len(), 3);
        let disabled = due
            .iter()
            .find(|(e, _)| e.reason == Reason::PolicyDisabled)
            .expect("disabled");
        assert_eq!((disabled.0.count, disabled.1), (100, 100));
        let name = disabled.0.event_name();
        assert!(name.starts_with("web.switchyard.policydisabled."), "{name}");
        assert_eq!(name.len(), "web.switchyard.policydisabled.".len() + 10);
        let bound: Vec<String> = due
            .iter()
            .filter(|(e, _)| e.reason == Reason::PolicyBound)
            .map(|(e, _)| e.event_name())
            .collect();
        assert_ne!(bound[0], bound[1], "another note is another Event");
    }

    #[test]
    fn an_entry_is_written_at_most_once_per_interval() {
        let t0 = Instant::now();
        let mut agg = Aggregator::new(t0);
        agg.observe(rec("web", Reason::PolicyRejected, "x"), SystemTime::now());
        assert_eq!(agg.due(t0).len(), 1);
        agg.observe(rec("web", Reason::PolicyRejected, "x"), SystemTime::now());
        agg.observe(rec("web", Reason::PolicyRejected, "x"), SystemTime::now());
        assert!(agg.due(t0 + Duration::from_secs(1)).is_empty());
        let later = agg.due(t0 + MIN_WRITE_INTERVAL);
        assert_eq!(later.len(), 1);
        assert_eq!((later[0].0.count, later[0].1), (3, 2));
        assert!(
            agg.due(t0 + MIN_WRITE_INTERVAL * 3).is_empty(),
            "nothing new"
        );
    }

    #[test]
    fn the_node_wide_bucket_limits_a_burst_of_services() {
        let t0 = Instant::now();
        let mut agg = Aggregator::new(t0);
        for i in 0..40 {
            agg.observe(
                rec(&format!("s{i}"), Reason::PolicyBound, "b"),
                SystemTime::now(),
            );
        }
        assert_eq!(agg.due(t0).len(), BUCKET_BURST as usize);
        assert!(agg.due(t0).is_empty());
        assert_eq!(agg.due(t0 + Duration::from_secs(3)).len(), 3);
    }

    #[test]
    fn long_notes_are_cut_on_a_character_boundary() {
        let t0 = Instant::now();
        let mut agg = Aggregator::new(t0);
        agg.observe(
            rec("web", Reason::PolicyRejected, &"é".repeat(2000)),
            SystemTime::now(),
        );
        let due = agg.due(t0);
        assert!(due[0].0.note.len() <= MAX_NOTE);
    }
}
