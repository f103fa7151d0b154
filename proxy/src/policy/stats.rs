//! Live endpoint statistics the host keeps for every policy and mirrors
//! into the guest's endpoint table: active connections, consecutive
//! failures, and a peak-EWMA of connect latency (linkerd2-proxy's load
//! estimate, which reacts to a slow endpoint at once and forgives slowly).

use std::time::{Duration, Instant};

use super::layout::{LIVE_ACTIVE, LIVE_EWMA_NS, LIVE_FAILURES, LIVE_LAST_FAILURE_MS};

/// Decay time constant of the EWMA.
const TAU: Duration = Duration::from_secs(10);
/// What a failed connect counts as, so that fast failures never look fast.
pub const FAILURE_PENALTY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LiveStats {
    pub active: u32,
    pub failures: u32,
    pub last_failure_ms: u32,
    pub ewma_ns: u64,
    pub updated: Option<Instant>,
}

impl LiveStats {
    pub fn sample(&mut self, latency: Duration, now: Instant) {
        let sample = latency.as_nanos().min(u128::from(u64::MAX)) as u64;
        self.ewma_ns = match self.updated {
            Some(last) if sample <= self.ewma_ns => {
                let elapsed = now.saturating_duration_since(last).as_secs_f64();
                let w = (-elapsed / TAU.as_secs_f64()).exp();
                (self.ewma_ns as f64 * w + sample as f64 * (1.0 - w)) as u64
            }
            _ => sample,
        };
        self.updated = Some(now);
    }

    pub fn connected(&mut self, latency: Duration, now: Instant) {
        self.active = self.active.saturating_add(1);
        self.failures = 0;
        self.sample(latency, now);
    }

    pub fn failed(&mut self, now: Instant, now_ms: u32) {
        self.failures = self.failures.saturating_add(1);
        // 0 means "never" in the ABI.
        self.last_failure_ms = now_ms.max(1);
        self.sample(FAILURE_PENALTY, now);
    }

    pub fn closed(&mut self) {
        self.active = self.active.saturating_sub(1);
    }

    /// The live fields as (offset, bytes) pairs of the ABI record.
    pub fn fields(&self) -> [(usize, [u8; 8], usize); 4] {
        let mut active = [0u8; 8];
        active[..4].copy_from_slice(&self.active.to_le_bytes());
        let mut failures = [0u8; 8];
        failures[..4].copy_from_slice(&self.failures.to_le_bytes());
        let mut last = [0u8; 8];
        last[..4].copy_from_slice(&self.last_failure_ms.to_le_bytes());
        [
            (LIVE_ACTIVE, active, 4),
            (LIVE_FAILURES, failures, 4),
            (LIVE_LAST_FAILURE_MS, last, 4),
            (LIVE_EWMA_NS, self.ewma_ns.to_le_bytes(), 8),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let t0 = Instant::now();
        let mut s = LiveStats::default();
        s.sample(Duration::from_millis(1), t0);
        assert_eq!(s.ewma_ns, 1_000_000);
        s.sample(Duration::from_millis(50), t0 + Duration::from_millis(1));
        assert_eq!(s.ewma_ns, 50_000_000, "a slower sample is taken at once");
        s.sample(Duration::from_millis(1), t0 + Duration::from_secs(10));
        assert!(
            s.ewma_ns < 50_000_000 && s.ewma_ns > 1_000_000,
            "decays towards faster samples"
        );
    }

    #[test]
    fn failures_look_slow_and_reset_on_success() {
        let t0 = Instant::now();
        let mut s = LiveStats::default();
        s.failed(t0, 5);
        assert_eq!((s.failures, s.last_failure_ms), (1, 5));
        assert!(s.ewma_ns >= FAILURE_PENALTY.as_nanos() as u64);
        s.connected(Duration::from_millis(1), t0);
        assert_eq!((s.failures, s.active), (0, 1));
        s.closed();
        s.closed();
        assert_eq!(s.active, 0);
    }
}
