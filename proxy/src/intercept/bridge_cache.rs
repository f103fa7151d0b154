//! The node's bridges as last read from /sys, re-read at most every few
//! seconds: reading them (a directory walk and an address dump) at every
//! sync cost more than the rest of a one-endpoint change. Bridges come
//! with the node's network setup, not with Services, so a bridge that
//! appears is steered at the first sync after the refresh period.

use std::time::{Duration, Instant};

use super::steer::{self, Bridge};

/// How long a reading of the bridges stands.
const REFRESH: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
pub struct BridgeCache {
    read: Option<(Instant, Vec<Bridge>)>,
}

impl BridgeCache {
    /// The bridges, read again when the last reading is older than
    /// `REFRESH` (or was forgotten).
    pub fn get(&mut self) -> Vec<Bridge> {
        match &self.read {
            Some((at, bridges)) if at.elapsed() < REFRESH => bridges.clone(),
            _ => {
                let bridges = steer::bridges();
                self.read = Some((Instant::now(), bridges.clone()));
                bridges
            }
        }
    }

    /// The next `get` reads them again (after a failed batch, the state
    /// of the kernel is unknown: start from the facts).
    pub fn forget(&mut self) {
        self.read = None;
    }
}
