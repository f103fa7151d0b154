//! `p2c-ewma`: power of two choices on peak-EWMA latency, as linkerd2-proxy
//! balances. Each pick draws two random endpoints not yet tried and takes
//! the one with the lower cost
//!
//! ```text
//! cost = (ewma_ns decayed since it last changed + 1) × (active + 1)
//! ```
//!
//! where `ewma_ns` is the host's live peak-EWMA of connect latency (a slow
//! connect raises it at once; a failure counts as a 1 s sample) and `active`
//! the connections this worker has open to the endpoint. As linkerd does,
//! the estimate decays towards zero while an endpoint gets no new samples
//! (time constant `decayMs`), so that an endpoint that was slow once is
//! tried again later instead of being starved for ever.
//!
//! Fast failures do not attract traffic: an endpoint whose last connect
//! failed (`failures > 0`) less than `failureWindowMs` ago loses against any
//! endpoint without a recent failure, whatever its latency; and its EWMA
//! carries the 1 s failure sample afterwards. An endpoint without samples
//! yet is assumed as fast as the one it is compared with (so new endpoints
//! are neither stampeded nor starved: load decides).
//!
//! ```json
//! {"decayMs": 10000, "failureWindowMs": 10000}
//! ```
//!
//! O(1) per pick whatever the number of endpoints.

use serde::Deserialize;
use switchyard_policy::ewma::decay;
use switchyard_policy::hash::{FastMap, fast_map, mix64};
use switchyard_policy::weighted::uniform;
use switchyard_policy::{
    Context, Endpoint, EndpointKey, Endpoints, Outcome, Policy, config, export_policy, random_u64,
    select,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    #[serde(default = "ten_seconds")]
    decay_ms: u64,
    #[serde(default = "ten_seconds_u32")]
    failure_window_ms: u32,
}

fn ten_seconds() -> u64 {
    10_000
}

fn ten_seconds_u32() -> u32 {
    10_000
}

/// What the policy remembers of an endpoint's EWMA: the value it last saw
/// and when it was last sampled: at the last outcome this instance saw for
/// it, or when the value was seen to change (the table does not say when
/// the host sampled).
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    ewma_ns: u64,
    since_ns: u64,
}

pub struct P2cEwma {
    tau_ns: u64,
    failure_window_ms: u32,
    seen: Vec<Seen>,
    keys: Vec<EndpointKey>,
}

impl P2cEwma {
    /// The decayed load estimate of endpoint `e`, `None` before any sample.
    fn latency(&mut self, e: &Endpoint<'_>, now_ns: u64) -> Option<f64> {
        let ewma = e.ewma_ns();
        let seen = self.seen.get_mut(e.index())?;
        if ewma != seen.ewma_ns {
            *seen = Seen {
                ewma_ns: ewma,
                since_ns: now_ns,
            };
        }
        (ewma > 0).then(|| ewma as f64 * decay(now_ns.saturating_sub(seen.since_ns), self.tau_ns))
    }

    /// Two distinct untried endpoints, or one if only one is left.
    fn candidates(n: usize, ctx: &Context) -> Option<(usize, Option<usize>)> {
        let mut r = random_u64();
        let first = uniform(r, n);
        let a = if ctx.tried(first) {
            select::random_untried(n, ctx)?
        } else {
            first
        };
        if n == 1 {
            return Some((a, None));
        }
        for _ in 0..8 {
            r = mix64(r);
            let j = uniform(r, n - 1);
            let j = if j >= a { j + 1 } else { j };
            if !ctx.tried(j) {
                return Some((a, Some(j)));
            }
        }
        let start = uniform(mix64(r ^ 1), n);
        Some((
            a,
            (0..n)
                .map(|k| (start + k) % n)
                .find(|&j| j != a && !ctx.tried(j)),
        ))
    }

    /// True when `a` should be preferred over `b`.
    fn better(&mut self, a: &Endpoint<'_>, b: &Endpoint<'_>, now_ns: u64) -> bool {
        let (fa, fb) = (
            a.failed_within_ms(self.failure_window_ms),
            b.failed_within_ms(self.failure_window_ms),
        );
        if fa != fb {
            return fb;
        }
        let (la, lb) = (self.latency(a, now_ns), self.latency(b, now_ns));
        let (la, lb) = match (la, lb) {
            (Some(x), Some(y)) => (x, y),
            (Some(x), None) => (x, x),
            (None, Some(y)) => (y, y),
            (None, None) => (0.0, 0.0),
        };
        let cost_a = (la + 1.0) * (f64::from(a.active()) + 1.0);
        let cost_b = (lb + 1.0) * (f64::from(b.active()) + 1.0);
        cost_a <= cost_b
    }
}

impl Policy for P2cEwma {
    fn new(config: &[u8]) -> Result<Self, String> {
        let config: Config = config::from_json(config)?;
        Ok(P2cEwma {
            tau_ns: config.decay_ms.saturating_mul(1_000_000),
            failure_window_ms: config.failure_window_ms,
            seen: Vec::new(),
            keys: Vec::new(),
        })
    }

    fn endpoints_changed(&mut self, endpoints: &Endpoints<'_>) {
        // Keep what was seen of endpoints that stay, whatever their index.
        let mut old: FastMap<EndpointKey, Seen> = fast_map();
        old.extend(self.keys.drain(..).zip(self.seen.drain(..)));
        let now = endpoints.now_ns();
        for e in endpoints.iter() {
            let key = e.key();
            let fresh = Seen {
                ewma_ns: e.ewma_ns(),
                since_ns: now,
            };
            self.seen.push(old.get(&key).copied().unwrap_or(fresh));
            self.keys.push(key);
        }
    }

    fn pick(&mut self, ctx: &Context, endpoints: &Endpoints<'_>) -> Option<usize> {
        let n = endpoints.len().min(self.seen.len());
        if n == 0 {
            return None;
        }
        let (a, b) = Self::candidates(n, ctx)?;
        let Some(b) = b else { return Some(a) };
        let (ea, eb) = (endpoints.get(a), endpoints.get(b));
        Some(if self.better(&ea, &eb, ctx.now_ns()) {
            a
        } else {
            b
        })
    }

    /// A sample was just taken (the host updated the EWMA): its decay
    /// starts now, even if the value did not change.
    fn outcome(&mut self, endpoint: usize, _outcome: Outcome) {
        if let Some(seen) = self.seen.get_mut(endpoint) {
            seen.since_ns = switchyard_policy::now_ns();
        }
    }
}

export_policy!(P2cEwma);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use switchyard_policy::testing::{Call, EndpointSpec, Harness};

    const MS: u64 = 1_000_000;

    fn harness(ewmas_ms: &[u64]) -> Harness<P2cEwma> {
        let specs: Vec<_> = EndpointSpec::many(ewmas_ms.len())
            .into_iter()
            .zip(ewmas_ms)
            .map(|(s, &e)| s.ewma_ns(e * MS))
            .collect();
        Harness::with_endpoints("{}", &specs)
    }

    #[test]
    fn prefers_the_faster_endpoint() {
        let mut h = harness(&[10, 1]);
        assert_eq!(h.distribution(100, |_| Call::new()).counts, [0, 100]);
    }

    #[test]
    fn a_slow_endpoint_gets_nothing_while_others_are_fast() {
        let mut h = harness(&[1, 1, 50, 1, 1]);
        let d = h.distribution(10_000, |_| Call::new());
        assert_eq!(d.counts[2], 0);
        assert!(
            d.counts
                .iter()
                .enumerate()
                .all(|(i, &c)| i == 2 || (2_200..2_800).contains(&c)),
            "{:?}",
            d.counts
        );
    }

    #[test]
    fn load_counts_against_latency() {
        let mut h = harness(&[1, 5]);
        h.set_active(0, 20);
        assert_eq!(
            h.pick(&Call::new()),
            Some(1),
            "1 ms × 21 costs more than 5 ms × 1"
        );
        h.set_active(0, 2);
        assert_eq!(h.pick(&Call::new()), Some(0));
    }

    #[test]
    fn fast_failures_do_not_attract_traffic() {
        // Endpoint 0 looks very fast but its last connect failed just now.
        let mut h = harness(&[0, 5, 5]);
        h.set_ewma_ns(0, 1_000);
        h.set_failures(0, 3);
        h.set_last_failure_ms(0, (h.now_ns() / MS) as u32);
        let d = h.distribution(3_000, |_| Call::new());
        assert_eq!(d.counts[0], 0, "{:?}", d.counts);
        // Unless nothing else is left.
        assert_eq!(h.pick(&Call::new().attempt(2).tried(&[1, 2])), Some(0));
    }

    #[test]
    fn failing_endpoint_is_avoided_in_a_live_run_and_probed_later() {
        let mut h = harness(&[0, 0, 0]);
        let mut first_picks = [0usize; 3];
        let connect = |h: &mut Harness<P2cEwma>| {
            let i = h.pick(&Call::new()).unwrap_or(9);
            if i == 2 {
                h.failed(2, Duration::from_micros(50));
                // The retry goes elsewhere.
                let j = h.pick(&Call::new().attempt(1).tried(&[2])).unwrap_or(9);
                h.connected(j, Duration::from_millis(1));
                h.closed(j);
            } else {
                h.connected(i, Duration::from_millis(1));
                h.closed(i);
            }
            i
        };
        for _ in 0..3_000 {
            first_picks[connect(&mut h)] += 1;
        }
        assert!(first_picks[2] <= 2, "{first_picks:?}");
        // With traffic going on, once the failure is out of the window and
        // its estimate has decayed below the others', it is probed again
        // (about every 80 s with the defaults), never more.
        let mut probes = 0;
        for _ in 0..3_000 {
            h.advance(Duration::from_millis(100));
            probes += usize::from(connect(&mut h) == 2);
        }
        assert!((1..=8).contains(&probes), "{probes} probes in 300 s");
    }

    #[test]
    fn slow_endpoint_is_avoided_in_a_live_run() {
        let latency = [1u64, 1, 30];
        let mut h = harness(&[0, 0, 0]);
        let mut counts = [0usize; 3];
        for _ in 0..3_000 {
            let i = h.pick(&Call::new()).unwrap_or(9);
            counts[i] += 1;
            h.connected(i, Duration::from_millis(latency[i]));
            h.closed(i);
            h.advance(Duration::from_micros(100));
        }
        assert!(counts[2] < 30, "{counts:?}");
    }

    #[test]
    fn unsampled_endpoints_compete_on_load() {
        let mut h = harness(&[0, 2]);
        h.set_active(1, 3);
        assert_eq!(
            h.pick(&Call::new()),
            Some(0),
            "new endpoint, idle: as fast as its rival, less loaded"
        );
        h.set_active(0, 5);
        assert_eq!(h.pick(&Call::new()), Some(1));
    }

    #[test]
    fn state_follows_endpoints_across_reorders() {
        let mut h = harness(&[1, 20]);
        h.advance(Duration::from_secs(5));
        let specs = EndpointSpec::many(2);
        let reordered = [
            specs[1].clone().ewma_ns(20 * MS),
            specs[0].clone().ewma_ns(MS),
        ];
        h.set_endpoints(&reordered);
        assert_eq!(
            h.policy().seen[0].since_ns,
            switchyard_policy::testing::START_NS
        );
        assert_eq!(h.pick(&Call::new()), Some(1));
    }

    #[test]
    fn skips_tried_and_handles_small_sets() {
        let mut h = harness(&[1, 1, 1]);
        let d = h.distribution(600, |_| Call::new().attempt(1).tried(&[0]));
        assert_eq!(d.counts[0], 0);
        assert_eq!(h.pick(&Call::new().tried(&[0, 1, 2])), None);
        h.set_endpoints(&EndpointSpec::many(1));
        assert_eq!(h.pick(&Call::new()), Some(0));
        h.set_endpoints(&[]);
        assert_eq!(h.pick(&Call::new()), None);
        let mut big = harness(&vec![1; 200]);
        let all_but_last: Vec<usize> = (0..63).collect();
        assert!(
            big.pick(&Call::new().tried(&all_but_last))
                .is_some_and(|i| i >= 63)
        );
    }

    #[test]
    fn rejects_bad_configs() {
        assert!(Harness::<P2cEwma>::new(r#"{"decay": 1}"#).is_err());
        assert!(Harness::<P2cEwma>::new(r#"{"failureWindowMs": -1}"#).is_err());
        assert!(Harness::<P2cEwma>::new(r#"{"decayMs": 5000, "failureWindowMs": 0}"#).is_ok());
    }
}
