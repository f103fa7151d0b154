//! Fast, dependency-free hashing for addresses and names: FNV-1a with a
//! 64-bit finaliser (FNV alone has weak low bits), and a seeded hasher for
//! `HashMap`s keyed by client addresses.
//!
//! ```
//! use std::net::{IpAddr, Ipv4Addr};
//! use switchyard_policy::hash::{fast_map, fnv1a, hash_ip};
//!
//! assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
//! let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7));
//! assert_eq!(hash_ip(ip), hash_ip(ip));
//! let mut seen = fast_map::<IpAddr, u32>();
//! *seen.entry(ip).or_default() += 1;
//! assert_eq!(seen[&ip], 1);
//! ```

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};

use crate::Endpoint;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// FNV-1a, 64 bits.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_from(FNV_OFFSET, bytes)
}

/// FNV-1a continued from `state` (chain calls to hash several parts).
pub fn fnv1a_from(state: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(state, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

/// A bijective 64-bit mixer (the murmur3 / splitmix64 finaliser): every
/// input bit affects every output bit.
pub fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// FNV-1a then [`mix64`]: well-spread bits for any use (modulo, masks).
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    mix64(fnv1a(bytes))
}

/// Hash of an IP address (IPv4 hashes its 4 bytes, IPv6 its 16).
pub fn hash_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => hash_bytes(&v6.octets()),
    }
}

/// Hash of an address and port.
pub fn hash_socket_addr(addr: SocketAddr) -> u64 {
    let h = match addr.ip() {
        IpAddr::V4(v4) => fnv1a(&v4.octets()),
        IpAddr::V6(v6) => fnv1a(&v6.octets()),
    };
    mix64(fnv1a_from(h, &addr.port().to_le_bytes()))
}

/// Hash identifying an endpoint across tables: its address and port (so a
/// reordered table keeps every endpoint's hash). Equals
/// `hash_socket_addr(endpoint.socket_addr())`.
pub fn hash_endpoint(endpoint: &Endpoint<'_>) -> u64 {
    hash_socket_addr(endpoint.socket_addr())
}

/// A fast `Hasher` for small keys (addresses, integers), seeded per map.
#[derive(Debug, Clone, Copy)]
pub struct FastHasher(u64);

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.write_u64(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 56));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = mix64(self.0 ^ n).wrapping_add(0x9e37_79b9_7f4a_7c15);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        mix64(self.0)
    }
}

/// Builds [`FastHasher`]s with a per-map random seed (from
/// [`crate::random_u64`]), so that clients cannot aim at one bucket.
#[derive(Debug, Clone, Copy)]
pub struct FastState(u64);

impl FastState {
    /// A state seeded from the host's [`crate::random_u64`].
    pub fn new() -> Self {
        Self(crate::random_u64())
    }

    /// A state with a fixed seed (reproducible tests).
    pub fn with_seed(seed: u64) -> Self {
        Self(seed)
    }
}

impl Default for FastState {
    fn default() -> Self {
        Self::new()
    }
}

impl BuildHasher for FastState {
    type Hasher = FastHasher;

    fn build_hasher(&self) -> FastHasher {
        FastHasher(self.0)
    }
}

/// A `HashMap` with [`FastState`] (std's SipHash is slow in wasm).
pub type FastMap<K, V> = HashMap<K, V, FastState>;

/// An empty [`FastMap`].
pub fn fast_map<K, V>() -> FastMap<K, V> {
    HashMap::with_hasher(FastState::new())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x85944171f73967e8);
        assert_eq!(fnv1a_from(fnv1a(b"foo"), b"bar"), fnv1a(b"foobar"));
    }

    #[test]
    fn address_hashes_differ_by_port_and_family() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.1:81".parse().unwrap();
        let c: SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        assert_ne!(hash_socket_addr(a), hash_socket_addr(b));
        assert_ne!(hash_socket_addr(a), hash_socket_addr(c));
        assert_ne!(hash_ip(a.ip()), hash_ip(c.ip()));
        assert_eq!(
            hash_socket_addr(a),
            hash_socket_addr("10.0.0.1:80".parse().unwrap())
        );
    }

    #[test]
    fn hashed_addresses_spread_evenly_over_buckets() {
        let mut buckets = [0u32; 16];
        for i in 0..16_000u32 {
            let ip = IpAddr::from([10, 1, (i >> 8) as u8, i as u8]);
            buckets[(hash_ip(ip) % 16) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&n| (850..1150).contains(&n)),
            "{buckets:?}"
        );
    }

    #[test]
    fn fast_map_works_as_a_map() {
        let mut m: FastMap<IpAddr, u32> = HashMap::with_hasher(FastState::with_seed(7));
        for i in 0..1000u32 {
            m.insert(IpAddr::from(i.to_be_bytes()), i);
        }
        assert_eq!(m.len(), 1000);
        assert_eq!(m.get(&IpAddr::from(7u32.to_be_bytes())), Some(&7));
        let mut h1 = FastState::with_seed(1).build_hasher();
        let mut h2 = FastState::with_seed(2).build_hasher();
        h1.write(b"abcdefghij");
        h2.write(b"abcdefghij");
        assert_ne!(h1.finish(), h2.finish());
    }
}
