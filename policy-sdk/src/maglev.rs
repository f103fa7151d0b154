//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table
//! of `M` slots (M prime) where each backend owns about `M / N` slots, each
//! backend's slots follow its own permutation of the table, and removing a
//! backend hands its slots to the others while nearly every other slot
//! keeps its owner. Lookups are one modulo and one load.
//!
//! Table size `M`: the paper recommends `M > 100 N` for an even spread
//! (each backend within a few percent of its share). The size must not
//! depend on the number of backends: a table of another size maps almost
//! every key elsewhere, so a Service crossing a size threshold while it
//! scales would reshuffle all its clients, and instances (one per worker)
//! must all agree. [`Maglev::new`] therefore always uses
//! [`DEFAULT_TABLE_SIZE`] = 65537 (the paper's production size: 100 slots
//! each up to 655 backends; at 10,000 backends 6.5 slots each, so shares
//! differ by tens of percent, but consistency holds). [`Maglev::with_size`]
//! takes another prime, for example 4099 for sets that stay small.
//!
//! Building costs about `M ln M` probes whatever the number of backends:
//! about 1 ms for 65537 slots (native; wasm is slower), 30 µs for 4099.
//! Build in `endpoints_changed`, never per pick. The table holds `M` u32s
//! (256 KiB at the default size).
//!
//! ```
//! use switchyard_policy::hash::fnv1a;
//! use switchyard_policy::maglev::Maglev;
//!
//! let keys: Vec<u64> = ["web-a", "web-b", "web-c"].iter().map(|n| fnv1a(n.as_bytes())).collect();
//! let table = Maglev::with_size(&keys, 4099);
//! let client = fnv1a(b"10.0.0.7");
//! let owner = table.lookup(client).unwrap();
//! assert!(owner < 3);
//! // Same key, same backend: on every worker and after a restart.
//! assert_eq!(Maglev::with_size(&keys, 4099).lookup(client), Some(owner));
//! ```

/// The table size [`Maglev::new`] uses (prime).
pub const DEFAULT_TABLE_SIZE: usize = 65537;

/// Trial division; for validating a configured table size.
pub fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    (2..)
        .take_while(|d| d * d <= n)
        .all(|d| !n.is_multiple_of(d))
}

/// A Maglev lookup table over backends `0..n`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maglev {
    table: Vec<u32>,
    backends: usize,
}

impl Maglev {
    /// Builds the table for backends identified by `keys` (stable hashes of
    /// each backend, for example [`crate::hash::hash_endpoint`]: not their
    /// index, or reordering would move everyone), with
    /// [`DEFAULT_TABLE_SIZE`] slots.
    pub fn new(keys: &[u64]) -> Self {
        Self::with_size(keys, DEFAULT_TABLE_SIZE)
    }

    /// Builds a table of `size` slots; `size` should be a prime larger than
    /// `keys.len()` (if it is smaller, some backends get no slot).
    pub fn with_size(keys: &[u64], size: usize) -> Self {
        let n = keys.len();
        if n == 0 || size == 0 {
            return Self::default();
        }
        let m = size as u64;
        // Each backend's permutation: offset, offset + skip, offset + 2 skip...
        let mut next: Vec<u64> = Vec::with_capacity(n);
        let mut skip: Vec<u64> = Vec::with_capacity(n);
        for &key in keys {
            let h1 = crate::hash::mix64(key ^ 0x6d61_676c_6576_0001);
            let h2 = crate::hash::mix64(key ^ 0x6d61_676c_6576_0002);
            next.push(h1 % m);
            skip.push(if m > 1 { h2 % (m - 1) + 1 } else { 1 });
        }
        // Backends take turns in key order, not index order: the table
        // depends only on the set of keys, so a reordered set maps every
        // key hash to the same backend key.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| (keys[i], i));
        let mut table = vec![u32::MAX; size];
        let mut filled = 0;
        'fill: loop {
            for &i in &order {
                // With m prime and skip in [1, m), a permutation visits every
                // slot within m steps, so this finds a free one; for a size
                // that is not prime, fall back to the next free slot.
                let step = |s: u64| {
                    if s + skip[i] >= m {
                        s + skip[i] - m
                    } else {
                        s + skip[i]
                    }
                };
                let mut slot = next[i];
                let mut probes = 0;
                while table[slot as usize] != u32::MAX {
                    slot = step(slot);
                    probes += 1;
                    if probes >= size {
                        slot = (0..m)
                            .map(|k| (slot + k) % m)
                            .find(|&s| table[s as usize] == u32::MAX)
                            .unwrap_or(slot);
                        break;
                    }
                }
                table[slot as usize] = i as u32;
                next[i] = step(slot);
                filled += 1;
                if filled == size {
                    break 'fill;
                }
            }
        }
        Self { table, backends: n }
    }

    /// The number of slots.
    pub fn size(&self) -> usize {
        self.table.len()
    }

    /// The number of backends it was built for.
    pub fn backends(&self) -> usize {
        self.backends
    }

    /// Whether the table has no backends (every lookup is `None`).
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The slot a key hash falls in.
    pub fn slot(&self, hash: u64) -> usize {
        if self.table.is_empty() {
            0
        } else {
            (hash % self.table.len() as u64) as usize
        }
    }

    /// The backend owning slot `slot` (taken modulo the size).
    pub fn at(&self, slot: usize) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        self.table.get(slot % self.table.len()).map(|&b| b as usize)
    }

    /// The backend for a key hash; `None` with no backends.
    pub fn lookup(&self, hash: u64) -> Option<usize> {
        self.at(self.slot(hash))
    }

    /// The first backend, walking the table from the key's slot, that
    /// `accept` takes: the key's own backend first, then the owners of the
    /// following slots (a stable, per-key order of fallbacks, for retries).
    /// `None` when no backend is accepted.
    pub fn lookup_with(&self, hash: u64, accept: impl Fn(usize) -> bool) -> Option<usize> {
        let start = self.slot(hash);
        let size = self.table.len();
        let mut seen_rejected = 0usize;
        let mut last = usize::MAX;
        for step in 0..size {
            let backend = self.table[(start + step) % size] as usize;
            if backend == last {
                continue;
            }
            last = backend;
            if accept(backend) {
                return Some(backend);
            }
            seen_rejected += 1;
            // Past a few rejections, stop walking slots and scan backends:
            // bounded work even when most backends are rejected.
            if seen_rejected >= 32 {
                let n = self.backends;
                let first = backend;
                return (1..n).map(|k| (first + k) % n).find(|&b| accept(b));
            }
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::hash::{hash_bytes, mix64};

    fn keys(n: usize) -> Vec<u64> {
        (0..n)
            .map(|i| hash_bytes(format!("10.0.{}.{}:8080", i / 256, i % 256).as_bytes()))
            .collect()
    }

    #[test]
    fn primes() {
        assert!(is_prime(DEFAULT_TABLE_SIZE) && is_prime(4099) && is_prime(2));
        assert!(!is_prime(4097) && !is_prime(1) && !is_prime(0) && !is_prime(65535));
    }

    #[test]
    fn every_backend_gets_an_even_share() {
        let m = Maglev::new(&keys(10));
        assert_eq!((m.size(), m.backends()), (65537, 10));
        let mut owned = [0usize; 10];
        for slot in 0..m.size() {
            owned[m.at(slot).unwrap()] += 1;
        }
        assert!(
            owned.iter().all(|&c| (6553..=6554).contains(&c)),
            "{owned:?}"
        );
        let small = Maglev::with_size(&keys(10), 4099);
        let mut owned = [0usize; 10];
        for slot in 0..small.size() {
            owned[small.at(slot).unwrap()] += 1;
        }
        assert!(owned.iter().all(|&c| (409..=410).contains(&c)), "{owned:?}");
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth() {
        let all = keys(10);
        let before = Maglev::new(&all);
        let removed = 3;
        let rest: Vec<u64> = all
            .iter()
            .copied()
            .enumerate()
            .filter(|&(i, _)| i != removed)
            .map(|(_, k)| k)
            .collect();
        let after = Maglev::new(&rest);
        // Index of a backend in `rest` back to its index in `all`.
        let original = |i: usize| if i >= removed { i + 1 } else { i };
        let (mut moved, mut moved_innocent) = (0, 0);
        let clients = 10_000u64;
        for c in 0..clients {
            let h = mix64(c);
            let was = before.lookup(h).unwrap();
            let now = original(after.lookup(h).unwrap());
            if was != now {
                moved += 1;
                if was != removed {
                    moved_innocent += 1;
                }
            }
        }
        let fraction = moved as f64 / clients as f64;
        assert!(fraction < 2.0 / 10.0, "moved {fraction}");
        assert!(
            fraction > 0.05,
            "the removed backend's clients must move: {fraction}"
        );
        assert!(
            (moved_innocent as f64) < clients as f64 * 0.03,
            "{moved_innocent} clients of other backends moved"
        );
    }

    #[test]
    fn the_table_depends_on_the_keys_not_their_order() {
        let k = keys(7);
        let mut shuffled = k.clone();
        shuffled.reverse();
        shuffled.rotate_left(2);
        let (a, b) = (Maglev::new(&k), Maglev::new(&shuffled));
        for slot in 0..a.size() {
            assert_eq!(k[a.at(slot).unwrap()], shuffled[b.at(slot).unwrap()]);
        }
    }

    #[test]
    fn a_size_that_is_not_prime_still_fills_every_slot() {
        let m = Maglev::with_size(&keys(3), 8);
        assert!((0..8).all(|s| m.at(s).is_some_and(|b| b < 3)));
    }

    #[test]
    fn empty_and_single_backend() {
        let m = Maglev::new(&[]);
        assert!(m.is_empty());
        assert_eq!(m.lookup(42), None);
        assert_eq!(m.lookup_with(42, |_| true), None);
        let one = Maglev::new(&[7]);
        assert_eq!(one.lookup(42), Some(0));
        assert_eq!(one.lookup_with(42, |_| false), None);
    }

    #[test]
    fn lookup_with_walks_to_the_next_accepted_backend() {
        let m = Maglev::new(&keys(5));
        for c in 0..200u64 {
            let h = mix64(c);
            let first = m.lookup(h).unwrap();
            assert_eq!(m.lookup_with(h, |_| true), Some(first));
            let second = m.lookup_with(h, |b| b != first).unwrap();
            assert_ne!(second, first);
            // Stable: the same key gets the same fallback.
            assert_eq!(m.lookup_with(h, |b| b != first), Some(second));
            assert_eq!(m.lookup_with(h, |_| false), None);
        }
        // Many rejected backends: still finds the one accepted.
        let big = Maglev::new(&keys(300));
        assert_eq!(big.lookup_with(12345, |b| b == 299), Some(299));
    }
}
