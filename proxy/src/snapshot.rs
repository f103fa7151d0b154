//! The state the hot path reads: one immutable snapshot behind an
//! `ArcSwap`, replaced whole by the control plane, read without locks.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::catalog::ServiceTable;
use crate::policy::Bindings;

#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases with every published snapshot; per-worker caches keyed by
    /// pointers into an older snapshot reset when it changes.
    pub generation: u64,
    pub table: Arc<ServiceTable>,
    /// Policy bound to each Service port (by `ServicePort::id`).
    pub bindings: Arc<Bindings>,
}

/// Shared handle to the current snapshot.
#[derive(Debug, Clone, Default)]
pub struct SharedSnapshot(Arc<ArcSwap<Snapshot>>);

impl SharedSnapshot {
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.0.load()
    }

    pub fn load_full(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }

    /// Publishes a new table and its bindings; returns its generation.
    pub fn publish(&self, table: Arc<ServiceTable>, bindings: Arc<Bindings>) -> u64 {
        let generation = self.0.load().generation + 1;
        self.0.store(Arc::new(Snapshot {
            generation,
            table,
            bindings,
        }));
        generation
    }
}
