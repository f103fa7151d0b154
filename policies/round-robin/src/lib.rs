//! `round-robin`: cycles over the endpoints, skipping those already tried
//! for the connection. Each instance (one per worker) starts at a random
//! position. Configuration: none (`{}`).

use switchyard_policy::{
    Context, Endpoints, Policy, TableKey, config, export_policy, select, table,
};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {}

pub struct RoundRobin {
    cursor: usize,
}

impl Policy for RoundRobin {
    fn new(config: &[u8]) -> Result<Self, String> {
        let Config {} = config::from_json(config)?;
        Ok(RoundRobin {
            cursor: switchyard_policy::random_u64() as usize,
        })
    }

    fn pick(&mut self, ctx: &Context, endpoints: &Endpoints<'_>) -> Option<usize> {
        select::round_robin(&mut self.cursor, endpoints.len(), ctx)
    }

    /// On the kernel datapath: the endpoints in turn, one slot each, taken
    /// in sequence (nftables `numgen inc`).
    fn table(&mut self, endpoints: &Endpoints<'_>, slots: &mut [u32]) -> Option<TableKey> {
        table::fill_even(slots, endpoints.len()).then_some(TableKey::Sequence)
    }
}

export_policy!(RoundRobin);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_policy::testing::{Call, EndpointSpec, Harness};

    fn harness(n: usize) -> Harness<RoundRobin> {
        Harness::with_endpoints("{}", &EndpointSpec::many(n))
    }

    #[test]
    fn cycles_evenly_in_order() {
        let mut h = harness(4);
        let first = h.pick(&Call::new()).unwrap_or(99);
        let next: Vec<_> = (1..8).filter_map(|_| h.pick(&Call::new())).collect();
        let want: Vec<_> = (1..8).map(|k| (first + k) % 4).collect();
        assert_eq!(next, want);
        assert_eq!(h.distribution(4000, |_| Call::new()).counts, [1000; 4]);
    }

    #[test]
    fn skips_tried_endpoints() {
        let mut h = harness(3);
        for _ in 0..10 {
            assert_eq!(h.pick(&Call::new().attempt(2).tried(&[0, 2])), Some(1));
        }
        assert_eq!(h.pick(&Call::new().tried(&[0, 1, 2])), None);
    }

    #[test]
    fn retries_reach_a_working_endpoint() {
        let mut h = harness(5);
        for _ in 0..20 {
            assert_eq!(h.connect(&Call::new(), |i| i == 3), Some(3));
        }
    }

    #[test]
    fn survives_set_changes_and_empty_sets() {
        let mut h = harness(10);
        h.distribution(7, |_| Call::new());
        h.set_endpoints(&EndpointSpec::many(2));
        assert_eq!(h.distribution(10, |_| Call::new()).counts, [5, 5]);
        h.set_endpoints(&[]);
        assert_eq!(h.pick(&Call::new()), None);
    }

    #[test]
    fn instances_start_at_different_positions() {
        let mut h = harness(1000);
        let starts: std::collections::HashSet<_> = (0..5)
            .map(|_| {
                h.policy_mut().cursor = switchyard_policy::random_u64() as usize;
                h.pick(&Call::new())
            })
            .collect();
        assert!(starts.len() > 1);
    }

    #[test]
    fn table_takes_endpoints_in_sequence() {
        let mut h = harness(3);
        let (key, slots) = h.table(257).expect("a table");
        assert_eq!(key, TableKey::Sequence);
        assert_eq!(&slots[..6], &[0, 1, 2, 0, 1, 2]);
        assert_eq!(table::counts(&slots, 3), [86, 86, 85]);
        h.set_endpoints(&[]);
        assert!(h.table(257).is_none());
    }

    #[test]
    fn rejects_any_setting() {
        assert!(Harness::<RoundRobin>::new(r#"{"x": 1}"#).is_err());
        assert!(Harness::<RoundRobin>::new("").is_ok());
    }
}
