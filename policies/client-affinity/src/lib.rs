//! `client-affinity`: session affinity by client IP with a timeout, the
//! Wasm version of a Service's `sessionAffinity: ClientIP`. A client keeps
//! reaching the endpoint it was first sent to while that endpoint is in the
//! set and not failing, until it has made no connection for
//! `timeoutSeconds` (a sliding timeout, as kube-proxy's).
//!
//! ```json
//! {"timeoutSeconds": 10800, "maxEntries": 65536, "fallback": "hash"}
//! ```
//!
//! * `timeoutSeconds`: 1..=86400, default 10800 (Kubernetes' default).
//! * `maxEntries`: clients remembered per instance (default 65536, about
//!   64 bytes each); past it, the least recently used of a sample of 16 is
//!   forgotten (expired ones first).
//! * `fallback`: how a client without a live entry is placed. `hash`
//!   (default) uses a Maglev table on the client IP. The host runs one
//!   instance per worker thread and a client's connections land on any
//!   worker, so the first choice must be the same on every worker: with
//!   `hash` it is, and the remembered entry then keeps the client where it
//!   is when the endpoint set changes (a plain hash would move some
//!   clients). `round-robin` spreads new clients in turn, as kube-proxy
//!   does, but then stickiness holds only per worker.
//!
//! Endpoints are remembered by address and port, so a reordered table
//! does not break affinity. When the remembered endpoint is gone or failed
//! for this connection, the client is placed again and the new endpoint is
//! remembered.

use std::net::IpAddr;

use serde::Deserialize;
use switchyard_policy::hash::{FastMap, fast_map, hash_endpoint, hash_ip};
use switchyard_policy::maglev::Maglev;
use switchyard_policy::{
    Context, EndpointKey, Endpoints, Policy, config, export_policy, random_u64, select,
};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fallback {
    #[default]
    Hash,
    RoundRobin,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    #[serde(default = "default_timeout")]
    timeout_seconds: u64,
    #[serde(default = "default_max_entries")]
    max_entries: usize,
    #[serde(default)]
    fallback: Fallback,
}

fn default_timeout() -> u64 {
    10_800
}

fn default_max_entries() -> usize {
    65_536
}

/// Entries examined to choose one to forget.
const EVICTION_SAMPLE: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Entry {
    client: u128,
    endpoint: EndpointKey,
    last_used_ns: u64,
}

pub struct ClientAffinity {
    timeout_ns: u64,
    max_entries: usize,
    fallback: Fallback,
    /// Client → its slot in `entries`.
    slots: FastMap<u128, u32>,
    entries: Vec<Entry>,
    evict_cursor: usize,
    /// The current set: key → index, index → key.
    index: FastMap<EndpointKey, u32>,
    keys: Vec<EndpointKey>,
    maglev: Maglev,
    cursor: usize,
}

/// IPv4 as IPv4-mapped IPv6, so both families share one key space.
fn client_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl ClientAffinity {
    /// Clients currently remembered (expired ones included until reused).
    pub fn remembered(&self) -> usize {
        self.slots.len()
    }

    fn expired(&self, entry: &Entry, now_ns: u64) -> bool {
        now_ns.saturating_sub(entry.last_used_ns) > self.timeout_ns
    }

    /// The endpoint remembered for `client`, if still valid for this call.
    fn remembered_for(&mut self, client: u128, ctx: &Context) -> Option<usize> {
        let slot = *self.slots.get(&client)? as usize;
        let entry = self.entries[slot];
        if self.expired(&entry, ctx.now_ns()) {
            return None;
        }
        let i = *self.index.get(&entry.endpoint)? as usize;
        if ctx.tried(i) {
            return None;
        }
        self.entries[slot].last_used_ns = ctx.now_ns();
        Some(i)
    }

    fn remember(&mut self, client: u128, endpoint: EndpointKey, now_ns: u64) {
        let entry = Entry {
            client,
            endpoint,
            last_used_ns: now_ns,
        };
        if let Some(&slot) = self.slots.get(&client) {
            self.entries[slot as usize] = entry;
            return;
        }
        let slot = if self.entries.len() < self.max_entries {
            self.entries.push(entry);
            self.entries.len() - 1
        } else {
            let slot = self.victim(now_ns);
            self.slots.remove(&self.entries[slot].client);
            self.entries[slot] = entry;
            slot
        };
        self.slots.insert(client, slot as u32);
    }

    /// An entry to forget: the first expired one, else the least recently
    /// used, among a few from a rotating position.
    fn victim(&mut self, now_ns: u64) -> usize {
        let n = self.entries.len();
        let start = self.evict_cursor % n;
        let mut best = start;
        for k in 0..EVICTION_SAMPLE.min(n) {
            let slot = (start + k) % n;
            if self.expired(&self.entries[slot], now_ns) {
                best = slot;
                break;
            }
            if self.entries[slot].last_used_ns < self.entries[best].last_used_ns {
                best = slot;
            }
        }
        self.evict_cursor = start + EVICTION_SAMPLE;
        best
    }
}

impl Policy for ClientAffinity {
    fn new(config: &[u8]) -> Result<Self, String> {
        let config: Config = config::from_json(config)?;
        if !(1..=86_400).contains(&config.timeout_seconds) {
            return Err(format!(
                "invalid policy config: timeoutSeconds must be between 1 and 86400, not {}",
                config.timeout_seconds
            ));
        }
        if config.max_entries == 0 || config.max_entries > u32::MAX as usize {
            return Err("invalid policy config: maxEntries must be at least 1".into());
        }
        Ok(ClientAffinity {
            timeout_ns: config.timeout_seconds * 1_000_000_000,
            max_entries: config.max_entries,
            fallback: config.fallback,
            slots: fast_map(),
            entries: Vec::new(),
            evict_cursor: 0,
            index: fast_map(),
            keys: Vec::new(),
            maglev: Maglev::default(),
            cursor: random_u64() as usize,
        })
    }

    fn endpoints_changed(&mut self, endpoints: &Endpoints<'_>) {
        self.keys = endpoints.iter().map(|e| e.key()).collect();
        self.index = fast_map();
        self.index
            .extend(self.keys.iter().enumerate().map(|(i, k)| (*k, i as u32)));
        if self.fallback == Fallback::Hash {
            let hashes: Vec<u64> = endpoints.iter().map(|e| hash_endpoint(&e)).collect();
            self.maglev = Maglev::new(&hashes);
        }
    }

    fn pick(&mut self, ctx: &Context, endpoints: &Endpoints<'_>) -> Option<usize> {
        let n = endpoints.len().min(self.keys.len());
        if n == 0 {
            return None;
        }
        let client = client_key(ctx.client_ip());
        if let Some(i) = self.remembered_for(client, ctx).filter(|&i| i < n) {
            return Some(i);
        }
        let i = match self.fallback {
            Fallback::Hash => self
                .maglev
                .lookup_with(hash_ip(ctx.client_ip()), |i| !ctx.tried(i)),
            Fallback::RoundRobin => select::round_robin(&mut self.cursor, n, ctx),
        }?;
        self.remember(client, self.keys[i], ctx.now_ns());
        Some(i)
    }
}

export_policy!(ClientAffinity);

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use super::*;
    use switchyard_policy::testing::{Call, EndpointSpec, Harness};

    fn addr_of(h: &mut Harness<ClientAffinity>, call: &Call) -> Option<std::net::SocketAddr> {
        let i = h.pick(call)?;
        Some(h.endpoints().get(i).socket_addr())
    }

    #[test]
    fn a_client_sticks_to_its_endpoint() {
        for config in [r#"{}"#, r#"{"fallback": "round-robin"}"#] {
            let mut h = Harness::<ClientAffinity>::with_endpoints(config, &EndpointSpec::many(5));
            for c in 0..50 {
                let first = h.pick(&Call::nth_client(c));
                for port in 1..20 {
                    assert_eq!(
                        h.pick(&Call::nth_client(c).client_port(port)),
                        first,
                        "{config}"
                    );
                }
            }
            let d = h.distribution(5_000, Call::nth_client);
            assert!(
                d.counts.iter().all(|&c| c > 700),
                "{config}: {:?}",
                d.counts
            );
        }
    }

    #[test]
    fn affinity_survives_reorders_and_additions() {
        let mut specs = EndpointSpec::many(6);
        let mut h = Harness::<ClientAffinity>::with_endpoints("{}", &specs);
        let before: Vec<_> = (0..1_000)
            .map(|c| addr_of(&mut h, &Call::nth_client(c)))
            .collect();
        specs.reverse();
        specs.extend(EndpointSpec::many(12).into_iter().skip(6));
        h.set_endpoints(&specs);
        let after: Vec<_> = (0..1_000)
            .map(|c| addr_of(&mut h, &Call::nth_client(c)))
            .collect();
        assert!(before == after, "remembered clients keep their endpoint");
        let newcomers: HashSet<_> = (1_000..3_000)
            .filter_map(|c| addr_of(&mut h, &Call::nth_client(c)))
            .collect();
        assert_eq!(newcomers.len(), 12, "new clients use the new endpoints too");
    }

    #[test]
    fn every_worker_places_a_new_client_alike() {
        let specs = EndpointSpec::many(7);
        let mut worker_a = Harness::<ClientAffinity>::with_endpoints("{}", &specs);
        let a: Vec<_> = (0..500)
            .map(|c| worker_a.pick(&Call::nth_client(c)))
            .collect();
        let mut worker_b = Harness::<ClientAffinity>::with_endpoints("{}", &specs);
        worker_b.seed(99);
        let b: Vec<_> = (0..500)
            .map(|c| worker_b.pick(&Call::nth_client(c)))
            .collect();
        assert!(a == b);
    }

    #[test]
    fn the_timeout_slides_and_expires() {
        let config = r#"{"timeoutSeconds": 60, "fallback": "round-robin"}"#;
        let mut h = Harness::<ClientAffinity>::with_endpoints(config, &EndpointSpec::many(3));
        let client = Call::nth_client(1);
        let first = h.pick(&client);
        h.pick(&Call::nth_client(2)); // moves the round robin on
        for _ in 0..5 {
            h.advance(Duration::from_secs(50));
            assert_eq!(h.pick(&client), first, "used within the timeout: kept");
        }
        h.advance(Duration::from_secs(61));
        let next = h.pick(&client);
        assert_ne!(next, first, "expired: placed again by round robin");
        h.advance(Duration::from_secs(30));
        assert_eq!(h.pick(&client), next, "and remembered again");
    }

    #[test]
    fn gone_or_failing_endpoints_release_their_clients() {
        let specs = EndpointSpec::many(4);
        let mut h = Harness::<ClientAffinity>::with_endpoints("{}", &specs);
        let client = Call::nth_client(7);
        let first = h.pick(&client).unwrap_or(9);
        let retry = h
            .pick(&client.clone().attempt(1).tried(&[first]))
            .unwrap_or(9);
        assert_ne!(retry, first);
        assert_eq!(
            h.pick(&client),
            Some(retry),
            "the retry's endpoint is remembered"
        );
        let gone = h.endpoints().get(retry).socket_addr();
        let rest: Vec<_> = specs.iter().filter(|s| s.addr != gone).cloned().collect();
        h.set_endpoints(&rest);
        let moved = h.pick(&client).unwrap_or(9);
        assert!(moved < 3);
        assert_eq!(h.pick(&client), Some(moved));
        assert_eq!(h.pick(&client.clone().tried(&[0, 1, 2])), None);
        h.set_endpoints(&[]);
        assert_eq!(h.pick(&client), None);
    }

    #[test]
    fn memory_is_bounded() {
        let mut h = Harness::<ClientAffinity>::with_endpoints(
            r#"{"maxEntries": 100}"#,
            &EndpointSpec::many(3),
        );
        for c in 0..5_000 {
            h.pick(&Call::nth_client(c));
            h.advance(Duration::from_millis(1));
        }
        assert_eq!(h.policy().remembered(), 100);
        // Recent clients are the ones kept, mostly.
        let recent = (4_900..5_000)
            .filter(|&c| {
                h.policy()
                    .slots
                    .contains_key(&client_key(Call::nth_client(c).client.ip()))
            })
            .count();
        assert!(recent > 50, "{recent}");
    }

    #[test]
    fn ipv4_and_ipv6_clients_do_not_collide() {
        let v4 = client_key("10.0.0.1".parse().unwrap_or(IpAddr::from([0u8; 4])));
        let v6 = client_key("a00:1::".parse().unwrap_or(IpAddr::from([0u8; 4])));
        assert_ne!(v4, v6);
    }

    #[test]
    fn config_is_checked() {
        assert!(Harness::<ClientAffinity>::new(r#"{"timeoutSeconds": 0}"#).is_err());
        assert!(Harness::<ClientAffinity>::new(r#"{"timeoutSeconds": 86401}"#).is_err());
        assert!(Harness::<ClientAffinity>::new(r#"{"maxEntries": 0}"#).is_err());
        assert!(Harness::<ClientAffinity>::new(r#"{"fallback": "random"}"#).is_err());
        assert!(Harness::<ClientAffinity>::new(r#"{"timeout": 5}"#).is_err());
        assert!(Harness::<ClientAffinity>::new(r#"{"timeoutSeconds": 86400}"#).is_ok());
    }
}
