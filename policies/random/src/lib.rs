//! `random`: a uniformly random endpoint among those not yet tried for the
//! connection. Configuration: none (`{}`).

use switchyard_policy::{
    Context, Endpoints, Policy, TableKey, config, export_policy, select, table,
};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {}

pub struct Random;

impl Policy for Random {
    fn new(config: &[u8]) -> Result<Self, String> {
        let Config {} = config::from_json(config)?;
        Ok(Random)
    }

    fn pick(&mut self, ctx: &Context, endpoints: &Endpoints<'_>) -> Option<usize> {
        select::random_untried(endpoints.len(), ctx)
    }

    /// On the kernel datapath: every endpoint on an equal share of the
    /// slots, one picked at random per new flow (nftables `numgen random`).
    fn table(&mut self, endpoints: &Endpoints<'_>, slots: &mut [u32]) -> Option<TableKey> {
        table::fill_even(slots, endpoints.len()).then_some(TableKey::Random)
    }
}

export_policy!(Random);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_policy::testing::{Call, EndpointSpec, Harness};

    #[test]
    fn spreads_uniformly() {
        let mut h = Harness::<Random>::with_endpoints("{}", &EndpointSpec::many(5));
        let d = h.distribution(50_000, |_| Call::new());
        assert_eq!(d.none, 0);
        assert!(
            d.counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{:?}",
            d.counts
        );
    }

    #[test]
    fn table_is_even_and_random() {
        let mut h = Harness::<Random>::with_endpoints("{}", &EndpointSpec::many(4));
        let (key, slots) = h.table(256).expect("a table");
        assert_eq!(key, TableKey::Random);
        assert_eq!(table::counts(&slots, 4), [64; 4]);
    }

    #[test]
    fn never_picks_a_tried_endpoint() {
        let mut h = Harness::<Random>::with_endpoints("{}", &EndpointSpec::many(4));
        let d = h.distribution(4_000, |_| Call::new().attempt(1).tried(&[1, 3]));
        assert_eq!((d.counts[1], d.counts[3]), (0, 0));
        assert!(d.counts[0] > 1_800 && d.counts[2] > 1_800, "{:?}", d.counts);
        assert_eq!(h.pick(&Call::new().tried(&[0, 1, 2, 3])), None);
    }

    #[test]
    fn large_sets_and_empty_sets() {
        let mut h = Harness::<Random>::with_endpoints("{}", &EndpointSpec::many(10_000));
        let d = h.distribution(20_000, |_| Call::new());
        assert!(d.counts.iter().filter(|&&c| c > 0).count() > 8_000);
        h.set_endpoints(&[]);
        assert_eq!(h.pick(&Call::new()), None);
    }

    #[test]
    fn rejects_any_setting() {
        assert!(Harness::<Random>::new(r#"{"seed": 1}"#).is_err());
    }
}
