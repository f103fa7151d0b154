//! `weighted`: weighted random choice, the weights assigned by matching
//! endpoint names (or nodes, or zones) against patterns.
//!
//! ```json
//! {"weights": [{"match": "web-v2-*", "weight": 9},
//!              {"match": "zone-b", "field": "zone", "weight": 0},
//!              {"match": "*", "weight": 1}],
//!  "defaultWeight": 1}
//! ```
//!
//! Each endpoint takes the weight of the first rule whose `match` (a glob:
//! `*`, `?`) matches its `field` (`name`, the default; `node`; `zone`), else
//! `defaultWeight` (default 1), times the host-provided weight (1 today).
//! Weight 0 drains an endpoint; if every endpoint has weight 0 the choice is
//! uniform, so traffic still flows. Endpoints already tried are skipped.
//! Weights are computed when the endpoint set changes; a pick is a binary
//! search over the cumulative weights.

use serde::Deserialize;
use switchyard_policy::glob::Glob;
use switchyard_policy::weighted::{WeightedIndex, weighted_pick_by};
use switchyard_policy::{
    Context, Endpoint, Endpoints, Policy, TableKey, config, export_policy, random_u64, select,
    table,
};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Field {
    #[default]
    Name,
    Node,
    Zone,
}

impl Field {
    pub fn of<'a>(self, endpoint: &Endpoint<'a>) -> &'a str {
        match self {
            Field::Name => endpoint.name(),
            Field::Node => endpoint.node(),
            Field::Zone => endpoint.zone(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleConfig {
    #[serde(rename = "match")]
    pattern: String,
    weight: u32,
    #[serde(default)]
    field: Field,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    #[serde(default)]
    weights: Vec<RuleConfig>,
    #[serde(default = "one")]
    default_weight: u32,
}

fn one() -> u32 {
    1
}

struct Rule {
    glob: Glob,
    field: Field,
    weight: u32,
}

pub struct Weighted {
    rules: Vec<Rule>,
    default_weight: u32,
    /// Per endpoint, after rules and host weight (saturated to u32).
    weights: Vec<u32>,
    index: WeightedIndex,
}

impl Weighted {
    /// The weight the rules give an endpoint.
    fn weight_of(&self, endpoint: &Endpoint<'_>) -> u32 {
        let rule = self
            .rules
            .iter()
            .find(|r| r.glob.matches(r.field.of(endpoint)));
        let weight = rule.map_or(self.default_weight, |r| r.weight);
        weight.saturating_mul(endpoint.weight())
    }

    /// The computed weight of endpoint `i` of the current set.
    pub fn weight(&self, i: usize) -> u32 {
        self.weights.get(i).copied().unwrap_or(0)
    }
}

impl Policy for Weighted {
    fn new(config: &[u8]) -> Result<Self, String> {
        let config: Config = config::from_json(config)?;
        let rules = config
            .weights
            .into_iter()
            .map(|r| Rule {
                glob: Glob::new(&r.pattern),
                field: r.field,
                weight: r.weight,
            })
            .collect();
        Ok(Weighted {
            rules,
            default_weight: config.default_weight,
            weights: Vec::new(),
            index: WeightedIndex::default(),
        })
    }

    fn endpoints_changed(&mut self, endpoints: &Endpoints<'_>) {
        self.weights = endpoints.iter().map(|e| self.weight_of(&e)).collect();
        self.index = WeightedIndex::new(self.weights.iter().copied());
    }

    fn pick(&mut self, ctx: &Context, endpoints: &Endpoints<'_>) -> Option<usize> {
        let n = endpoints.len().min(self.weights.len());
        if self.index.total() == 0 {
            return select::random_untried(n, ctx);
        }
        for _ in 0..4 {
            let i = self.index.pick(random_u64())?;
            if !ctx.tried(i) {
                return Some(i);
            }
        }
        // Several draws hit tried endpoints: weigh the untried ones only.
        let weight = |i: usize| if ctx.tried(i) { 0 } else { self.weights[i] };
        weighted_pick_by(n, weight, random_u64()).or_else(|| select::random_untried(n, ctx))
    }

    /// On the kernel datapath: slots in proportion to the weights (weight 0
    /// gets none; all 0 is uniform), one picked at random per new flow.
    fn table(&mut self, endpoints: &Endpoints<'_>, slots: &mut [u32]) -> Option<TableKey> {
        if self.weights.len() != endpoints.len() {
            return None;
        }
        table::fill_weighted(slots, &self.weights).then_some(TableKey::Random)
    }
}

export_policy!(Weighted);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_policy::testing::{Call, EndpointSpec, Harness};

    fn fleet() -> Vec<EndpointSpec> {
        vec![
            EndpointSpec::new("10.0.0.1")
                .name("web-v1-a")
                .node("node-a")
                .zone("zone-a"),
            EndpointSpec::new("10.0.0.2")
                .name("web-v2-a")
                .node("node-b")
                .zone("zone-a"),
            EndpointSpec::new("10.0.0.3")
                .name("web-v1-b")
                .node("node-c")
                .zone("zone-b"),
        ]
    }

    #[test]
    fn table_follows_the_weights() {
        let config = r#"{"weights": [{"match": "web-v2-*", "weight": 8}, {"match": "zone-b", "field": "zone", "weight": 0}]}"#;
        let mut h = Harness::<Weighted>::with_endpoints(config, &fleet());
        let (key, slots) = h.table(900).expect("a table");
        assert_eq!(key, TableKey::Random);
        assert_eq!(table::counts(&slots, 3), [100, 800, 0]);
    }

    #[test]
    fn splits_by_name_pattern() {
        let config =
            r#"{"weights": [{"match": "web-v2-*", "weight": 8}, {"match": "*", "weight": 1}]}"#;
        let mut h = Harness::<Weighted>::with_endpoints(config, &fleet());
        assert_eq!(
            (0..3).map(|i| h.policy().weight(i)).collect::<Vec<_>>(),
            [1, 8, 1]
        );
        let d = h.distribution(100_000, |_| Call::new());
        assert!((0.79..0.81).contains(&d.share(1)), "{:?}", d.counts);
        assert!(
            (0.09..0.11).contains(&d.share(0)) && (0.09..0.11).contains(&d.share(2)),
            "{:?}",
            d.counts
        );
    }

    #[test]
    fn first_matching_rule_wins_and_fields_can_be_node_or_zone() {
        let config = r#"{"weights": [
            {"match": "zone-b", "field": "zone", "weight": 0},
            {"match": "node-b", "field": "node", "weight": 3},
            {"match": "web-*", "weight": 2}]}"#;
        let h = Harness::<Weighted>::with_endpoints(config, &fleet());
        assert_eq!(
            (0..3).map(|i| h.policy().weight(i)).collect::<Vec<_>>(),
            [2, 3, 0]
        );
    }

    #[test]
    fn unmatched_endpoints_take_the_default_weight() {
        let config = r#"{"weights": [{"match": "web-v2-*", "weight": 5}], "defaultWeight": 0}"#;
        let mut h = Harness::<Weighted>::with_endpoints(config, &fleet());
        let d = h.distribution(1_000, |_| Call::new());
        assert_eq!(d.counts, [0, 1_000, 0]);
        let mut plain = Harness::<Weighted>::with_endpoints("{}", &fleet());
        let d = plain.distribution(30_000, |_| Call::new());
        assert!(
            d.counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{:?}",
            d.counts
        );
    }

    #[test]
    fn host_weights_multiply() {
        let specs = [
            EndpointSpec::new("10.0.0.1").weight(3),
            EndpointSpec::new("10.0.0.2").weight(1),
        ];
        let h = Harness::<Weighted>::with_endpoints("{}", &specs);
        assert_eq!((h.policy().weight(0), h.policy().weight(1)), (3, 1));
    }

    #[test]
    fn tried_endpoints_are_skipped_even_when_heavy() {
        let config = r#"{"weights": [{"match": "web-v2-*", "weight": 1000000}]}"#;
        let mut h = Harness::<Weighted>::with_endpoints(config, &fleet());
        let d = h.distribution(2_000, |_| Call::new().attempt(1).tried(&[1]));
        assert_eq!(d.counts[1], 0);
        assert!(d.counts[0] > 800 && d.counts[2] > 800, "{:?}", d.counts);
        assert_eq!(h.pick(&Call::new().tried(&[0, 1, 2])), None);
    }

    #[test]
    fn all_zero_weights_fall_back_to_uniform() {
        let mut h = Harness::<Weighted>::with_endpoints(r#"{"defaultWeight": 0}"#, &fleet());
        let d = h.distribution(3_000, |_| Call::new());
        assert!(d.counts.iter().all(|&c| c > 800), "{:?}", d.counts);
        // Drained endpoints are used when every weighted one was tried.
        let config = r#"{"weights": [{"match": "web-v2-*", "weight": 1}], "defaultWeight": 0}"#;
        let mut h = Harness::<Weighted>::with_endpoints(config, &fleet());
        assert!(h.pick(&Call::new().tried(&[1])).is_some_and(|i| i != 1));
    }

    #[test]
    fn follows_endpoint_set_changes() {
        let config = r#"{"weights": [{"match": "web-v2-*", "weight": 9}]}"#;
        let mut h = Harness::<Weighted>::with_endpoints(config, &fleet());
        h.set_endpoints(&fleet()[..1]);
        assert_eq!(h.distribution(100, |_| Call::new()).counts, [100]);
        h.set_endpoints(&[]);
        assert_eq!(h.pick(&Call::new()), None);
    }

    #[test]
    fn rejects_bad_configs() {
        for bad in [
            r#"{"weights": [{"match": "a", "weight": -1}]}"#,
            r#"{"weights": [{"match": "a", "weight": 1, "field": "pod"}]}"#,
            r#"{"weights": [{"pattern": "a", "weight": 1}]}"#,
            r#"{"weight": []}"#,
            r#"[1]"#,
        ] {
            assert!(Harness::<Weighted>::new(bad).is_err(), "{bad}");
        }
    }
}
