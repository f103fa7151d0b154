//! `canary`: split traffic between canary and stable endpoints by a name
//! pattern; in L7 mode a request header can force the canary.
//!
//! ```json
//! {"canary": "web-canary-*", "percent": 10,
//!  "header": "x-canary", "headerValue": "1"}
//! ```
//!
//! * `canary` (required): a glob (`*`, `?`) matched against each endpoint's
//!   `field`: `name` (the Pod name, default), `node` or `zone`. Matching
//!   endpoints are the canary group, the others the stable group.
//! * `percent`: the share of picks sent to the canary group, 0..=100,
//!   fractions allowed (default 0: header-only canaries).
//! * `header` / `headerValue` (optional, L7 mode only): a request carrying
//!   the header (with exactly that value, when `headerValue` is given) goes
//!   to the canary group whatever the percentage; other requests are split
//!   by `percent`. In L4 mode there are no headers and only `percent`
//!   counts.
//!
//! Within a group, endpoints are used in turn (round robin), skipping those
//! already tried. If the chosen group is empty or entirely tried, the other
//! group is used, so a canary rollout never refuses traffic.

use serde::Deserialize;
use switchyard_policy::glob::Glob;
use switchyard_policy::{
    Attr, Context, Endpoint, Endpoints, Policy, TableKey, config, export_policy, random_u64,
    select, table,
};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Field {
    #[default]
    Name,
    Node,
    Zone,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    canary: String,
    #[serde(default)]
    field: Field,
    #[serde(default)]
    percent: f64,
    header: Option<String>,
    header_value: Option<String>,
}

pub struct Canary {
    glob: Glob,
    field: Field,
    /// A random u64 below this goes to the canary (`None`: always).
    threshold: Option<u64>,
    header: Option<String>,
    header_value: Option<String>,
    canary: Vec<u32>,
    stable: Vec<u32>,
    cursors: [usize; 2],
}

impl Canary {
    fn is_canary(&self, e: &Endpoint<'_>) -> bool {
        self.glob.matches(match self.field {
            Field::Name => e.name(),
            Field::Node => e.node(),
            Field::Zone => e.zone(),
        })
    }

    /// The request asks for the canary.
    fn forced(&self, ctx: &Context) -> bool {
        let Some(header) = &self.header else {
            return false;
        };
        match &self.header_value {
            Some(value) => ctx.attr_is(Attr::Header(header), value),
            None => ctx.has_header(header),
        }
    }

    /// The canary and stable groups (endpoint indices).
    pub fn groups(&self) -> (&[u32], &[u32]) {
        (&self.canary, &self.stable)
    }
}

impl Policy for Canary {
    fn new(config: &[u8]) -> Result<Self, String> {
        let config: Config = config::from_json(config)?;
        if !(0.0..=100.0).contains(&config.percent) {
            return Err(format!(
                "invalid policy config: percent must be between 0 and 100, not {}",
                config.percent
            ));
        }
        if config.header.as_deref() == Some("") {
            return Err("invalid policy config: header must not be empty".into());
        }
        if config.header_value.is_some() && config.header.is_none() {
            return Err("invalid policy config: headerValue needs header".into());
        }
        let threshold =
            (config.percent < 100.0).then(|| (config.percent / 100.0 * 2f64.powi(64)) as u64);
        Ok(Canary {
            glob: Glob::new(&config.canary),
            field: config.field,
            threshold,
            header: config.header.map(|h| h.to_ascii_lowercase()),
            header_value: config.header_value,
            canary: Vec::new(),
            stable: Vec::new(),
            cursors: [random_u64() as usize; 2],
        })
    }

    fn endpoints_changed(&mut self, endpoints: &Endpoints<'_>) {
        let (canary, stable): (Vec<_>, Vec<_>) = endpoints.iter().partition(|e| self.is_canary(e));
        self.canary = canary.iter().map(|e| e.index() as u32).collect();
        self.stable = stable.iter().map(|e| e.index() as u32).collect();
    }

    fn pick(&mut self, ctx: &Context, _endpoints: &Endpoints<'_>) -> Option<usize> {
        let to_canary = self.forced(ctx) || self.threshold.is_none_or(|t| random_u64() < t);
        let [canary_cursor, stable_cursor] = &mut self.cursors;
        let canary = |c: &mut usize| select::round_robin_in(c, &self.canary, ctx);
        let stable = |c: &mut usize| select::round_robin_in(c, &self.stable, ctx);
        if to_canary {
            canary(canary_cursor).or_else(|| stable(stable_cursor))
        } else {
            stable(stable_cursor).or_else(|| canary(canary_cursor))
        }
    }

    /// On the kernel datapath (L4: no header to force the canary): the
    /// canary group gets `percent` of the slots, the stable group the rest,
    /// even within each group, one slot picked at random per new flow. An
    /// empty group yields its share to the other.
    fn table(&mut self, endpoints: &Endpoints<'_>, slots: &mut [u32]) -> Option<TableKey> {
        let n = endpoints.len();
        if self.canary.len() + self.stable.len() != n {
            return None;
        }
        // Shares in parts per 2^20 of the whole, split within each group.
        let canary_share = self.threshold.map_or(1u64 << 20, |t| t >> 44);
        let stable_share = (1u64 << 20) - canary_share.min(1 << 20);
        let mut weights = vec![0u32; n];
        for (group, share) in [(&self.canary, canary_share), (&self.stable, stable_share)] {
            let other_empty = group.len() == n;
            let share = if other_empty { 1 << 20 } else { share };
            for &i in group.iter() {
                let each = share / group.len() as u64;
                weights[i as usize] = u32::try_from(each).unwrap_or(u32::MAX);
            }
        }
        table::fill_weighted(slots, &weights).then_some(TableKey::Random)
    }
}

export_policy!(Canary);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_policy::testing::{Call, EndpointSpec, Harness, Request};

    /// 0, 1: stable; 2: canary.
    fn fleet() -> Vec<EndpointSpec> {
        vec![
            EndpointSpec::new("10.0.0.1")
                .name("web-7d9f-a")
                .node("node-a"),
            EndpointSpec::new("10.0.0.2")
                .name("web-7d9f-b")
                .node("node-b"),
            EndpointSpec::new("10.0.0.3")
                .name("web-canary-x")
                .node("node-c"),
        ]
    }

    #[test]
    fn table_splits_by_percent() {
        let mut h = Harness::<Canary>::with_endpoints(
            r#"{"canary": "web-canary-*", "percent": 10}"#,
            &fleet(),
        );
        let (key, slots) = h.table(1000).expect("a table");
        assert_eq!(key, TableKey::Random);
        let (canary, _) = h.policy().groups();
        let canary: Vec<u32> = canary.to_vec();
        let to_canary = slots.iter().filter(|s| canary.contains(s)).count();
        assert!((99..=101).contains(&to_canary), "{to_canary}");
        let mut h = Harness::<Canary>::with_endpoints(
            r#"{"canary": "nothing-*", "percent": 50}"#,
            &fleet(),
        );
        let (_, slots) = h.table(100).expect("a table");
        assert_eq!(
            table::counts(&slots, fleet().len()).iter().sum::<usize>(),
            100
        );
        assert!(table::counts(&slots, fleet().len()).iter().all(|&c| c > 0));
    }

    #[test]
    fn splits_by_percent() {
        let mut h = Harness::<Canary>::with_endpoints(
            r#"{"canary": "web-canary-*", "percent": 10}"#,
            &fleet(),
        );
        assert_eq!(h.policy().groups(), (&[2u32][..], &[0u32, 1][..]));
        let d = h.distribution(100_000, |_| Call::new());
        assert!((0.095..0.105).contains(&d.share(2)), "{:?}", d.counts);
        assert!(
            d.counts[0].abs_diff(d.counts[1]) <= 1,
            "round robin within stable: {:?}",
            d.counts
        );
        // A 90/10 split over 1000 connections stays within a few percent.
        let d = h.distribution(1_000, |_| Call::new());
        assert!((60..=140).contains(&d.counts[2]), "{:?}", d.counts);
    }

    #[test]
    fn zero_and_hundred_percent() {
        let mut none = Harness::<Canary>::with_endpoints(r#"{"canary": "web-canary-*"}"#, &fleet());
        assert_eq!(none.distribution(1_000, |_| Call::new()).counts[2], 0);
        let mut all = Harness::<Canary>::with_endpoints(
            r#"{"canary": "web-canary-*", "percent": 100}"#,
            &fleet(),
        );
        assert_eq!(
            all.distribution(1_000, |_| Call::new()).counts,
            [0, 0, 1_000]
        );
        let mut fraction = Harness::<Canary>::with_endpoints(
            r#"{"canary": "web-canary-*", "percent": 0.5}"#,
            &fleet(),
        );
        let d = fraction.distribution(100_000, |_| Call::new());
        assert!((0.004..0.006).contains(&d.share(2)), "{:?}", d.counts);
    }

    #[test]
    fn a_header_forces_the_canary_in_l7_mode() {
        let config =
            r#"{"canary": "web-canary-*", "percent": 0, "header": "X-Canary", "headerValue": "1"}"#;
        let mut h = Harness::<Canary>::with_endpoints(config, &fleet());
        let forced = Call::new().l7(Request::get("/").header("x-canary", "1"));
        assert_eq!(h.distribution(100, |_| forced.clone()).counts, [0, 0, 100]);
        let other_value = Call::new().l7(Request::get("/").header("x-canary", "0"));
        assert_eq!(h.distribution(100, |_| other_value.clone()).counts[2], 0);
        let no_header = Call::new().l7(Request::get("/"));
        assert_eq!(h.distribution(100, |_| no_header.clone()).counts[2], 0);
        assert_eq!(
            h.distribution(100, |_| Call::new()).counts[2],
            0,
            "L4: no headers"
        );
        let presence = r#"{"canary": "web-canary-*", "header": "x-canary"}"#;
        let mut h = Harness::<Canary>::with_endpoints(presence, &fleet());
        assert_eq!(
            h.distribution(10, |_| other_value.clone()).counts,
            [0, 0, 10]
        );
    }

    #[test]
    fn an_empty_or_exhausted_group_yields_to_the_other() {
        let config = r#"{"canary": "web-canary-*", "percent": 50}"#;
        let mut h = Harness::<Canary>::with_endpoints(config, &fleet()[..2]);
        assert_eq!(h.distribution(100, |_| Call::new()).counts, [50, 50]);
        let mut h = Harness::<Canary>::with_endpoints(config, &fleet()[2..]);
        assert_eq!(h.distribution(100, |_| Call::new()).counts, [100]);
        let mut h = Harness::<Canary>::with_endpoints(
            r#"{"canary": "web-canary-*", "percent": 100}"#,
            &fleet(),
        );
        assert_eq!(
            h.distribution(100, |_| Call::new().attempt(1).tried(&[2]))
                .counts,
            [50, 50, 0]
        );
        assert_eq!(h.pick(&Call::new().tried(&[0, 1, 2])), None);
        h.set_endpoints(&[]);
        assert_eq!(h.pick(&Call::new()), None);
    }

    #[test]
    fn matches_nodes_or_zones_too() {
        let config = r#"{"canary": "node-c", "field": "node", "percent": 100}"#;
        let mut h = Harness::<Canary>::with_endpoints(config, &fleet());
        assert_eq!(h.distribution(10, |_| Call::new()).counts, [0, 0, 10]);
    }

    #[test]
    fn config_is_checked() {
        for bad in [
            r#"{}"#,
            r#"{"canary": "x", "percent": 101}"#,
            r#"{"canary": "x", "percent": -1}"#,
            r#"{"canary": "x", "header": ""}"#,
            r#"{"canary": "x", "headerValue": "1"}"#,
            r#"{"canary": "x", "field": "label"}"#,
            r#"{"canary": "x", "weight": 5}"#,
        ] {
            assert!(Harness::<Canary>::new(bad).is_err(), "{bad}");
        }
    }
}
