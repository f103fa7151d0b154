//! `least-request`: the endpoint with the fewest active connections (the
//! host's live `active` count for this worker), ties broken at random,
//! endpoints already tried skipped.
//!
//! Up to `scanLimit` endpoints (default 256) every pick scans them all: the
//! answer is exact. Above that, a pick compares `choices` random endpoints
//! (default 8) and takes the least loaded of them, so that a pick costs the
//! same at 10,000 endpoints as at 300; with 8 choices the winner is in the
//! least-loaded ~12% on average.
//!
//! ```json
//! {"scanLimit": 256, "choices": 8}
//! ```

use serde::Deserialize;
use switchyard_policy::hash::mix64;
use switchyard_policy::weighted::uniform;
use switchyard_policy::{Context, Endpoints, Policy, config, export_policy, random_u64, select};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    #[serde(default = "default_scan_limit")]
    scan_limit: usize,
    #[serde(default = "default_choices")]
    choices: usize,
}

fn default_scan_limit() -> usize {
    256
}

fn default_choices() -> usize {
    8
}

pub struct LeastRequest {
    scan_limit: usize,
    choices: usize,
}

impl LeastRequest {
    /// Exact: every untried endpoint, reservoir sampling among ties.
    fn scan(ctx: &Context, endpoints: &Endpoints<'_>) -> Option<usize> {
        let mut rng = random_u64();
        let (mut best, mut best_active, mut ties) = (None, u32::MAX, 0u64);
        for e in endpoints.iter() {
            if ctx.tried(e.index()) {
                continue;
            }
            let active = e.active();
            if active < best_active || best.is_none() {
                (best, best_active, ties) = (Some(e.index()), active, 1);
            } else if active == best_active {
                ties += 1;
                rng = mix64(rng);
                if rng.is_multiple_of(ties) {
                    best = Some(e.index());
                }
            }
        }
        best
    }

    /// Approximate: the least loaded of `choices` random untried endpoints.
    fn sample(&self, ctx: &Context, endpoints: &Endpoints<'_>) -> Option<usize> {
        let n = endpoints.len();
        let mut rng = random_u64();
        let mut best: Option<(u32, usize)> = None;
        for _ in 0..self.choices {
            rng = mix64(rng);
            let i = uniform(rng, n);
            if ctx.tried(i) {
                continue;
            }
            let active = endpoints.get(i).active();
            if best.is_none_or(|(a, _)| active < a) {
                best = Some((active, i));
            }
        }
        best.map(|(_, i)| i)
            .or_else(|| select::random_untried(n, ctx))
    }
}

impl Policy for LeastRequest {
    fn new(config: &[u8]) -> Result<Self, String> {
        let config: Config = config::from_json(config)?;
        if config.choices < 2 {
            return Err("invalid policy config: choices must be at least 2".into());
        }
        Ok(LeastRequest {
            scan_limit: config.scan_limit,
            choices: config.choices,
        })
    }

    fn pick(&mut self, ctx: &Context, endpoints: &Endpoints<'_>) -> Option<usize> {
        if endpoints.len() <= self.scan_limit {
            Self::scan(ctx, endpoints)
        } else {
            self.sample(ctx, endpoints)
        }
    }
}

export_policy!(LeastRequest);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use switchyard_policy::testing::{Call, EndpointSpec, Harness};

    fn harness(actives: &[u32]) -> Harness<LeastRequest> {
        let specs: Vec<_> = EndpointSpec::many(actives.len())
            .into_iter()
            .zip(actives)
            .map(|(s, &a)| s.active(a))
            .collect();
        Harness::with_endpoints("{}", &specs)
    }

    #[test]
    fn picks_the_least_loaded() {
        let mut h = harness(&[5, 2, 9, 3]);
        assert_eq!(h.distribution(100, |_| Call::new()).counts, [0, 100, 0, 0]);
        h.set_active(3, 0);
        assert_eq!(
            h.pick(&Call::new()),
            Some(3),
            "live fields are read at each pick"
        );
    }

    #[test]
    fn ties_are_broken_at_random() {
        let mut h = harness(&[1, 0, 0, 0, 4]);
        let d = h.distribution(30_000, |_| Call::new());
        assert_eq!((d.counts[0], d.counts[4]), (0, 0));
        assert!(
            d.counts[1..4].iter().all(|&c| (9_400..10_600).contains(&c)),
            "{:?}",
            d.counts
        );
    }

    #[test]
    fn avoids_an_endpoint_holding_long_connections() {
        let mut h = harness(&[0, 0, 0]);
        for _ in 0..50 {
            h.connected(0, Duration::from_millis(1));
        }
        // New connections that stay open: spread over 1 and 2 only.
        for _ in 0..40 {
            let i = h.pick(&Call::new()).unwrap_or(0);
            assert_ne!(i, 0);
            h.connected(i, Duration::from_millis(1));
        }
        let e = h.endpoints();
        assert_eq!((e.get(1).active(), e.get(2).active()), (20, 20));
    }

    #[test]
    fn skips_tried() {
        let mut h = harness(&[0, 7, 3]);
        assert_eq!(h.pick(&Call::new().attempt(1).tried(&[0])), Some(2));
        assert_eq!(h.pick(&Call::new().tried(&[0, 1, 2])), None);
        h.set_endpoints(&[]);
        assert_eq!(h.pick(&Call::new()), None);
    }

    #[test]
    fn large_sets_sample_and_still_avoid_loaded_endpoints() {
        let actives: Vec<u32> = (0..1_000)
            .map(|i| if i % 2 == 0 { 1_000 } else { 1 })
            .collect();
        let mut h = harness(&actives);
        let d = h.distribution(10_000, |_| Call::new());
        let loaded: usize = d.counts.iter().step_by(2).sum();
        assert!(loaded < 50, "{loaded} picks of loaded endpoints");
        assert_eq!(d.none, 0);
        let mut tried = Harness::<LeastRequest>::with_endpoints(
            r#"{"scanLimit": 2, "choices": 2}"#,
            &EndpointSpec::many(3),
        );
        assert_eq!(tried.pick(&Call::new().tried(&[0, 1])), Some(2));
    }

    #[test]
    fn rejects_bad_configs() {
        assert!(Harness::<LeastRequest>::new(r#"{"choices": 1}"#).is_err());
        assert!(Harness::<LeastRequest>::new(r#"{"choices": "many"}"#).is_err());
        assert!(Harness::<LeastRequest>::new(r#"{"scan": 1}"#).is_err());
    }
}
