//! `locality`: keep traffic close. Endpoints on this node first, then in
//! this node's zone, then anywhere (like a Service's `trafficDistribution:
//! PreferClose`, plus the node tier); round robin within the chosen tier,
//! endpoints already tried skipped, so a retry falls to the next tier only
//! when the closer one is exhausted.
//!
//! ```json
//! {"prefer": ["node", "zone"]}
//! ```
//!
//! `prefer` lists the tiers tried before "anywhere", in order: `node`
//! (the endpoint's `local` flag) and/or `zone` (its `same zone` flag).
//! Default: both. `{"prefer": ["zone"]}` ignores nodes; `{"prefer": []}` is
//! plain round robin. The flags come from the host, which compares each
//! endpoint's `nodeName` and zone with its own node's.

use serde::Deserialize;
use switchyard_policy::{
    Context, Endpoints, Policy, TableKey, config, export_policy, random_u64, select, table,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Node,
    Zone,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_prefer")]
    prefer: Vec<Tier>,
}

fn default_prefer() -> Vec<Tier> {
    vec![Tier::Node, Tier::Zone]
}

pub struct Locality {
    prefer: Vec<Tier>,
    /// Endpoint indices of each preferred tier.
    tiers: Vec<Vec<u32>>,
    cursors: Vec<usize>,
    anywhere: usize,
}

impl Locality {
    /// The endpoint indices in preferred tier `k`.
    pub fn tier(&self, k: usize) -> &[u32] {
        self.tiers.get(k).map_or(&[], Vec::as_slice)
    }
}

impl Policy for Locality {
    fn new(config: &[u8]) -> Result<Self, String> {
        let config: Config = config::from_json(config)?;
        let mut prefer = config.prefer;
        prefer.dedup();
        let start = random_u64() as usize;
        Ok(Locality {
            cursors: vec![start; prefer.len()],
            prefer,
            tiers: Vec::new(),
            anywhere: start,
        })
    }

    fn endpoints_changed(&mut self, endpoints: &Endpoints<'_>) {
        self.tiers = self
            .prefer
            .iter()
            .map(|tier| {
                endpoints
                    .iter()
                    .filter(|e| match tier {
                        Tier::Node => e.is_local(),
                        Tier::Zone => e.same_zone(),
                    })
                    .map(|e| e.index() as u32)
                    .collect()
            })
            .collect();
    }

    fn pick(&mut self, ctx: &Context, endpoints: &Endpoints<'_>) -> Option<usize> {
        for (tier, cursor) in self.tiers.iter().zip(&mut self.cursors) {
            if let Some(i) = select::round_robin_in(cursor, tier, ctx) {
                return Some(i);
            }
        }
        select::round_robin(&mut self.anywhere, endpoints.len(), ctx)
    }

    /// On the kernel datapath: the closest non-empty tier, its endpoints in
    /// turn (`numgen inc`). The kernel does not retry, so a closer tier's
    /// failing endpoint is not skipped: readiness takes it out of the set.
    fn table(&mut self, endpoints: &Endpoints<'_>, slots: &mut [u32]) -> Option<TableKey> {
        match self.tiers.iter().find(|t| !t.is_empty()) {
            Some(tier) => {
                for (s, slot) in slots.iter_mut().enumerate() {
                    *slot = tier[s % tier.len()];
                }
                Some(TableKey::Sequence)
            }
            None => table::fill_even(slots, endpoints.len()).then_some(TableKey::Sequence),
        }
    }
}

export_policy!(Locality);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_policy::testing::{Call, EndpointSpec, Harness};

    /// 0, 1: this node; 2, 3: this zone; 4, 5: elsewhere.
    fn fleet() -> Vec<EndpointSpec> {
        let e = EndpointSpec::many(6);
        vec![
            e[0].clone().node("node-a").zone("z1").local(),
            e[1].clone().node("node-a").zone("z1").local(),
            e[2].clone().node("node-b").zone("z1").same_zone(),
            e[3].clone().node("node-c").zone("z1").same_zone(),
            e[4].clone().node("node-d").zone("z2"),
            e[5].clone().node("node-e").zone("z2"),
        ]
    }

    #[test]
    fn table_holds_the_closest_tier_only() {
        let mut h = Harness::<Locality>::with_endpoints("{}", &fleet());
        let (key, slots) = h.table(64).expect("a table");
        assert_eq!(key, TableKey::Sequence);
        let local: Vec<u32> = h.policy().tier(0).to_vec();
        assert!(!local.is_empty());
        assert!(slots.iter().all(|s| local.contains(s)), "{slots:?}");
        let mut h = Harness::<Locality>::with_endpoints(r#"{"prefer": []}"#, &fleet());
        let (_, slots) = h.table(64).expect("a table");
        assert_eq!(
            table::counts(&slots, fleet().len())
                .iter()
                .filter(|&&c| c > 0)
                .count(),
            fleet().len()
        );
    }

    #[test]
    fn keeps_traffic_on_the_node() {
        let mut h = Harness::<Locality>::with_endpoints("{}", &fleet());
        assert_eq!(
            h.distribution(1_000, |_| Call::new()).counts,
            [500, 500, 0, 0, 0, 0]
        );
    }

    #[test]
    fn falls_back_to_the_zone_then_anywhere() {
        let mut h = Harness::<Locality>::with_endpoints("{}", &fleet());
        let d = h.distribution(1_000, |_| Call::new().attempt(2).tried(&[0, 1]));
        assert_eq!(d.counts, [0, 0, 500, 500, 0, 0]);
        let d = h.distribution(1_000, |_| Call::new().attempt(4).tried(&[0, 1, 2, 3]));
        assert_eq!(d.counts, [0, 0, 0, 0, 500, 500]);
        assert_eq!(h.pick(&Call::new().tried(&[0, 1, 2, 3, 4, 5])), None);
        assert_eq!(h.connect(&Call::new(), |i| i == 5), Some(5));
    }

    #[test]
    fn without_local_endpoints_the_zone_is_preferred() {
        let mut specs = fleet();
        specs.drain(..2);
        let mut h = Harness::<Locality>::with_endpoints("{}", &specs);
        assert_eq!(h.distribution(100, |_| Call::new()).counts, [50, 50, 0, 0]);
        specs.drain(..2);
        h.set_endpoints(&specs);
        assert_eq!(h.distribution(100, |_| Call::new()).counts, [50, 50]);
        h.set_endpoints(&[]);
        assert_eq!(h.pick(&Call::new()), None);
    }

    #[test]
    fn preferences_are_configurable() {
        let mut zone_only =
            Harness::<Locality>::with_endpoints(r#"{"prefer": ["zone"]}"#, &fleet());
        assert_eq!(
            zone_only.distribution(400, |_| Call::new()).counts,
            [100, 100, 100, 100, 0, 0]
        );
        let mut none = Harness::<Locality>::with_endpoints(r#"{"prefer": []}"#, &fleet());
        assert_eq!(none.distribution(600, |_| Call::new()).counts, [100; 6]);
        assert_eq!(none.policy().tier(0), &[] as &[u32]);
        assert!(Harness::<Locality>::new(r#"{"prefer": ["region"]}"#).is_err());
        assert!(Harness::<Locality>::new(r#"{"tiers": []}"#).is_err());
    }
}
