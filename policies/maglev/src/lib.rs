//! `maglev`: consistent hashing of the client address onto the endpoints
//! with a Maglev table. The same client always reaches the same endpoint
//! while the set is unchanged; when an endpoint goes away only its own
//! clients move (about 1/N of them), and an added endpoint takes about 1/N
//! of the clients from the others. Endpoints are identified by address and
//! port, so a reordered table moves nobody.
//!
//! ```json
//! {"key": "client-ip"}
//! ```
//!
//! `key`: `client-ip` (default) hashes the client's IP address;
//! `client-ip-port` hashes address and port (per-connection spreading that
//! is still stable for one connection's retries). `tableSize` (optional, a
//! prime, default 65537) sets the number of slots: fewer makes rebuilding
//! cheaper (4099 slots: ~30 µs instead of ~1 ms) but spreads unevenly
//! beyond `tableSize / 100` endpoints. Keep it fixed: changing it moves
//! almost every client. See the SDK's `maglev` module.
//!
//! A retry (endpoints already tried) walks the table onwards from the
//! client's slot to the first endpoint not tried: the fallback is stable per
//! client too. The table is built when the set changes; a pick is a hash and
//! a lookup.

use serde::Deserialize;
use switchyard_policy::hash::{hash_endpoint, hash_ip, hash_socket_addr};
use switchyard_policy::maglev::{Maglev, is_prime};
use switchyard_policy::{Context, Endpoints, Policy, TableKey, config, export_policy};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Key {
    #[default]
    ClientIp,
    ClientIpPort,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    #[serde(default)]
    key: Key,
    table_size: Option<usize>,
}

pub struct MaglevPolicy {
    key: Key,
    table_size: Option<usize>,
    table: Maglev,
}

impl MaglevPolicy {
    pub fn table(&self) -> &Maglev {
        &self.table
    }
}

impl Policy for MaglevPolicy {
    fn new(config: &[u8]) -> Result<Self, String> {
        let config: Config = config::from_json(config)?;
        if let Some(size) = config.table_size
            && !(is_prime(size) && (3..=1_048_583).contains(&size))
        {
            return Err(format!(
                "invalid policy config: tableSize {size} must be a prime between 3 and 1048583"
            ));
        }
        Ok(MaglevPolicy {
            key: config.key,
            table_size: config.table_size,
            table: Maglev::default(),
        })
    }

    fn endpoints_changed(&mut self, endpoints: &Endpoints<'_>) {
        let keys: Vec<u64> = endpoints.iter().map(|e| hash_endpoint(&e)).collect();
        self.table = match self.table_size {
            Some(size) => Maglev::with_size(&keys, size),
            None => Maglev::new(&keys),
        };
    }

    fn pick(&mut self, ctx: &Context, endpoints: &Endpoints<'_>) -> Option<usize> {
        if self.table.backends() != endpoints.len() {
            return None;
        }
        let hash = match self.key {
            Key::ClientIp => hash_ip(ctx.client_ip()),
            Key::ClientIpPort => hash_socket_addr(ctx.client()),
        };
        if ctx.tried_mask() == 0 {
            return self.table.lookup(hash);
        }
        self.table.lookup_with(hash, |i| !ctx.tried(i))
    }

    /// On the kernel datapath: slot `s` of `n` takes the Maglev entry at
    /// `s * size / n`, so a slot keeps its endpoint across set changes as
    /// a Maglev entry does; the kernel hashes the client address
    /// (`client-ip`) or the 5-tuple (`client-ip-port`) onto the slots.
    fn table(&mut self, endpoints: &Endpoints<'_>, slots: &mut [u32]) -> Option<TableKey> {
        if self.table.backends() != endpoints.len() || self.table.is_empty() {
            return None;
        }
        let (n, size) = (slots.len() as u128, self.table.size() as u128);
        for (s, slot) in slots.iter_mut().enumerate() {
            let entry = (s as u128 * size / n) as usize;
            *slot = u32::try_from(self.table.at(entry)?).ok()?;
        }
        Some(match self.key {
            Key::ClientIp => TableKey::ClientAddress,
            Key::ClientIpPort => TableKey::FiveTuple,
        })
    }
}

export_policy!(MaglevPolicy);

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;

    use super::*;
    use switchyard_policy::testing::{Call, EndpointSpec, Harness};

    fn harness(n: usize) -> Harness<MaglevPolicy> {
        Harness::with_endpoints("{}", &EndpointSpec::many(n))
    }

    /// Client number → the address of the endpoint it reaches.
    fn assignment(h: &mut Harness<MaglevPolicy>, clients: usize) -> Vec<SocketAddr> {
        (0..clients)
            .map(|c| {
                let i = h.pick(&Call::nth_client(c)).unwrap_or(usize::MAX);
                h.endpoints().get(i).socket_addr()
            })
            .collect()
    }

    #[test]
    fn table_is_even_and_moves_only_a_removed_endpoints_slots() {
        let mut h = harness(10);
        let (key, before) = h.table(1009).expect("a table");
        assert_eq!(key, TableKey::ClientAddress);
        let counts = switchyard_policy::table::counts(&before, 10);
        assert!(
            counts.iter().all(|&c| (50..=200).contains(&c)),
            "{counts:?}"
        );
        let addrs: Vec<_> = h.endpoints().iter().map(|e| e.socket_addr()).collect();
        let mut fewer = EndpointSpec::many(10);
        fewer.remove(3);
        h.set_endpoints(&fewer);
        let (_, after) = h.table(1009).expect("a table");
        let now: Vec<_> = h.endpoints().iter().map(|e| e.socket_addr()).collect();
        // Maglev moves a few other slots too (as for clients, above).
        let innocent = before
            .iter()
            .zip(&after)
            .filter(|&(&b, &a)| b != 3 && addrs[b as usize] != now[a as usize])
            .count();
        assert!(innocent < 31, "{innocent} slots of other endpoints moved");
        let mut h = Harness::<MaglevPolicy>::with_endpoints(
            r#"{"key": "client-ip-port"}"#,
            &EndpointSpec::many(2),
        );
        assert_eq!(h.table(7).map(|t| t.0), Some(TableKey::FiveTuple));
    }

    #[test]
    fn the_same_client_always_reaches_the_same_endpoint() {
        let mut h = harness(10);
        for c in 0..200 {
            let first = h.pick(&Call::nth_client(c));
            for port in [1, 2000, 65535] {
                assert_eq!(h.pick(&Call::nth_client(c).client_port(port)), first);
            }
        }
    }

    #[test]
    fn clients_spread_evenly() {
        let mut h = harness(10);
        let d = h.distribution(10_000, Call::nth_client);
        assert!(
            d.counts.iter().all(|&c| (850..1_150).contains(&c)),
            "{:?}",
            d.counts
        );
    }

    #[test]
    fn removing_one_of_ten_moves_only_its_clients() {
        let specs = EndpointSpec::many(10);
        let mut h = Harness::<MaglevPolicy>::with_endpoints("{}", &specs);
        let before = assignment(&mut h, 10_000);
        let removed = specs[4].addr;
        let rest: Vec<_> = specs
            .iter()
            .filter(|s| s.addr != removed)
            .cloned()
            .collect();
        h.set_endpoints(&rest);
        let after = assignment(&mut h, 10_000);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        let innocent = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| b != a && **b != removed)
            .count();
        let fraction = moved as f64 / 10_000.0;
        assert!(fraction < 2.0 / 10.0, "moved {fraction}");
        assert!(
            innocent < 300,
            "{innocent} clients of other endpoints moved"
        );
        assert!(after.iter().all(|a| *a != removed));
    }

    #[test]
    fn adding_an_endpoint_takes_about_one_nth() {
        let specs = EndpointSpec::many(11);
        let mut h = Harness::<MaglevPolicy>::with_endpoints("{}", &specs[..10]);
        let before = assignment(&mut h, 10_000);
        h.set_endpoints(&specs);
        let after = assignment(&mut h, 10_000);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        let to_new = after.iter().filter(|a| **a == specs[10].addr).count();
        assert!(moved < 2 * 10_000 / 11, "{moved}");
        assert!(
            moved - to_new < 300,
            "{} moved between old endpoints",
            moved - to_new
        );
    }

    #[test]
    fn reordering_the_table_moves_nobody() {
        let mut specs = EndpointSpec::many(8);
        let mut h = Harness::<MaglevPolicy>::with_endpoints("{}", &specs);
        let before = assignment(&mut h, 2_000);
        specs.reverse();
        specs.rotate_left(3);
        h.set_endpoints(&specs);
        let after = assignment(&mut h, 2_000);
        assert_eq!(before.iter().zip(&after).filter(|(b, a)| b != a).count(), 0);
    }

    #[test]
    fn client_ip_port_key_spreads_one_client() {
        let mut h = Harness::<MaglevPolicy>::with_endpoints(
            r#"{"key": "client-ip-port"}"#,
            &EndpointSpec::many(4),
        );
        let d = h.distribution(4_000, |i| {
            Call::nth_client(0).client_port(10_000 + i as u16)
        });
        assert!(d.counts.iter().all(|&c| c > 800), "{:?}", d.counts);
        let call = Call::nth_client(0).client_port(777);
        assert_eq!(h.pick(&call), h.pick(&call));
    }

    #[test]
    fn retries_walk_to_the_next_untried_endpoint_stably() {
        let mut h = harness(6);
        let mut seen = HashMap::new();
        for c in 0..500 {
            let call = Call::nth_client(c);
            let first = h.pick(&call).unwrap_or(99);
            let retry = call.clone().attempt(1).tried(&[first]);
            let second = h.pick(&retry).unwrap_or(99);
            assert_ne!(second, first);
            assert_eq!(h.pick(&retry), Some(second));
            *seen.entry(second).or_insert(0) += 1;
            let third = h
                .pick(&call.clone().attempt(2).tried(&[first, second]))
                .unwrap_or(99);
            assert!(third != first && third != second && third < 6);
        }
        assert_eq!(seen.len(), 6, "fallbacks spread over all endpoints");
        assert_eq!(h.pick(&Call::new().tried(&[0, 1, 2, 3, 4, 5])), None);
        assert_eq!(h.connect(&Call::nth_client(3), |i| i == 5), Some(5));
    }

    #[test]
    fn big_sets_and_empty_sets() {
        let mut h = harness(1_000);
        assert_eq!(h.policy().table().size(), 65_537);
        let d = h.distribution(20_000, Call::nth_client);
        assert!(d.counts.iter().filter(|&&c| c > 0).count() > 990);
        let small = Harness::<MaglevPolicy>::with_endpoints(
            r#"{"tableSize": 4099}"#,
            &EndpointSpec::many(3),
        );
        assert_eq!(small.policy().table().size(), 4099);
        h.set_endpoints(&[]);
        assert_eq!(h.pick(&Call::new()), None);
    }

    #[test]
    fn ipv6_clients_hash_too() {
        let mut h = harness(5);
        let call = Call::from_client("[fd00::1234]:5000");
        let first = h.pick(&call);
        assert!(first.is_some());
        assert_eq!(h.pick(&Call::from_client("[fd00::1234]:6000")), first);
    }

    #[test]
    fn config_is_checked() {
        assert!(Harness::<MaglevPolicy>::new(r#"{"key": "source"}"#).is_err());
        assert!(Harness::<MaglevPolicy>::new(r#"{"tableSize": 4096}"#).is_err());
        let mut h = Harness::<MaglevPolicy>::with_endpoints(
            r#"{"tableSize": 251}"#,
            &EndpointSpec::many(3),
        );
        assert_eq!(h.policy().table().size(), 251);
        assert!(h.pick(&Call::new()).is_some());
    }
}
