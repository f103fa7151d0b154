//! Exponentially weighted moving averages over irregular samples, with a
//! time constant instead of a fixed per-sample weight.
//!
//! ```
//! use switchyard_policy::ewma::PeakEwma;
//!
//! const S: u64 = 1_000_000_000;
//! let mut e = PeakEwma::new(10 * S);
//! e.observe(2_000_000.0, 0); // a slow connect counts at once
//! e.observe(1_000_000.0, S); // a faster one only pulls it down
//! assert!(e.value() > 1_000_000.0 && e.value() < 2_000_000.0);
//! assert!(e.decayed(100 * S) < e.value());
//! ```

/// `exp(-elapsed / tau)`: how much of an old value survives `elapsed_ns`.
pub fn decay(elapsed_ns: u64, tau_ns: u64) -> f64 {
    if tau_ns == 0 {
        return 0.0;
    }
    (-(elapsed_ns as f64) / tau_ns as f64).exp()
}

/// A plain EWMA: each sample pulls the value towards it, the more the
/// longer it has been since the previous one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ewma {
    value: f64,
    tau_ns: u64,
    last_ns: Option<u64>,
}

impl Ewma {
    /// An EWMA with time constant `tau_ns` (after `tau_ns`, an old value
    /// keeps 1/e of its weight).
    pub fn new(tau_ns: u64) -> Self {
        Self {
            value: 0.0,
            tau_ns,
            last_ns: None,
        }
    }

    /// Adds a sample taken at `now_ns` (the first sample is taken as is).
    pub fn observe(&mut self, sample: f64, now_ns: u64) {
        self.value = match self.last_ns {
            None => sample,
            Some(last) => {
                let w = decay(now_ns.saturating_sub(last), self.tau_ns);
                self.value * w + sample * (1.0 - w)
            }
        };
        self.last_ns = Some(now_ns);
    }

    /// The current average (0 before any sample).
    pub fn value(&self) -> f64 {
        self.value
    }

    /// When the last sample was taken.
    pub fn last_ns(&self) -> Option<u64> {
        self.last_ns
    }
}

/// Peak EWMA, as linkerd2-proxy (and the host's live `ewma_ns`) computes
/// it: a sample above the value replaces it at once; a lower one decays
/// it. Reacts to a slow endpoint immediately, forgives it slowly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakEwma {
    value: f64,
    tau_ns: u64,
    last_ns: Option<u64>,
}

impl PeakEwma {
    /// A zero estimate with time constant `tau_ns` (the host uses 10 s).
    pub fn new(tau_ns: u64) -> Self {
        Self {
            value: 0.0,
            tau_ns,
            last_ns: None,
        }
    }

    /// Adds a sample taken at `now_ns`: above the value it replaces it, below it decays it.
    pub fn observe(&mut self, sample: f64, now_ns: u64) {
        self.value = match self.last_ns {
            Some(last) if sample <= self.value => {
                let w = decay(now_ns.saturating_sub(last), self.tau_ns);
                self.value * w + sample * (1.0 - w)
            }
            _ => sample,
        };
        self.last_ns = Some(now_ns);
    }

    /// The estimate as of the last sample.
    pub fn value(&self) -> f64 {
        self.value
    }

    /// The value decayed towards 0 for the time since the last sample: the
    /// load estimate linkerd2-proxy reads, so that an endpoint that was slow
    /// once and then got no traffic is eventually tried again.
    pub fn decayed(&self, now_ns: u64) -> f64 {
        match self.last_ns {
            Some(last) => self.value * decay(now_ns.saturating_sub(last), self.tau_ns),
            None => self.value,
        }
    }

    /// When the last sample was taken, `None` before the first.
    pub fn last_ns(&self) -> Option<u64> {
        self.last_ns
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn ewma_moves_towards_samples_by_elapsed_time() {
        let mut e = Ewma::new(10 * S);
        e.observe(100.0, 0);
        assert_eq!(e.value(), 100.0);
        e.observe(0.0, 10 * S);
        assert!((e.value() - 100.0 / std::f64::consts::E).abs() < 1e-9);
        e.observe(50.0, 10 * S);
        assert!(
            (e.value() - 100.0 / std::f64::consts::E).abs() < 1e-9,
            "no time passed: no weight"
        );
        assert_eq!(e.last_ns(), Some(10 * S));
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let mut e = PeakEwma::new(10 * S);
        e.observe(1e6, 0);
        e.observe(50e6, 1_000_000);
        assert_eq!(e.value(), 50e6);
        e.observe(1e6, 10 * S);
        assert!(e.value() < 50e6 && e.value() > 1e6);
        let v = e.value();
        assert!((e.decayed(20 * S) - v / std::f64::consts::E).abs() < 1.0);
        assert_eq!(e.decayed(10 * S), v);
    }

    #[test]
    fn zero_tau_forgets_at_once() {
        assert_eq!(decay(5, 0), 0.0);
        assert_eq!(decay(0, 10), 1.0);
    }
}
