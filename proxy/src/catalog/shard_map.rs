//! A hash map split into shards behind `Arc`s, for the service table's
//! frontend maps. Cloning it copies 256 pointers and changing one entry
//! copies only that entry's shard (about n/256 entries), so a table
//! published at every change shares all else with its predecessor. A
//! lookup hashes once, as `std`'s `HashMap` does, and follows one more
//! pointer: the data plane's `lookup` stays as fast and lock-free.

use std::fmt;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Arc;

use hashbrown::HashTable;

const SHARD_BITS: u32 = 8;
const SHARDS: usize = 1 << SHARD_BITS;

type Shard<K, V> = Arc<HashTable<(K, V)>>;

#[derive(Clone)]
pub struct ShardMap<K, V> {
    hasher: RandomState,
    /// Empty until the first insert, so an empty map allocates nothing.
    shards: Vec<Shard<K, V>>,
    len: usize,
}

impl<K, V> Default for ShardMap<K, V> {
    fn default() -> Self {
        Self {
            hasher: RandomState::new(),
            shards: Vec::new(),
            len: 0,
        }
    }
}

/// The shard comes from the hash's middle bits: hashbrown places an entry
/// by the low bits and tags it with the top seven, which must still differ
/// between the entries of one shard.
fn shard_of(hash: u64) -> usize {
    (hash >> 32) as usize & (SHARDS - 1)
}

impl<K: Hash + Eq, V> ShardMap<K, V> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        if self.len == 0 {
            return None;
        }
        let hash = self.hasher.hash_one(key);
        self.shards[shard_of(hash)]
            .find(hash, |(k, _)| k == key)
            .map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    pub fn iter(&self) -> Iter<'_, K, V> {
        Iter {
            shards: self.shards.iter(),
            current: None,
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

impl<K: Hash + Eq + Clone, V: Clone> ShardMap<K, V> {
    /// The shard of `hash`, copied first when another map shares it.
    fn shard_mut(&mut self, hash: u64) -> &mut HashTable<(K, V)> {
        if self.shards.is_empty() {
            self.shards = (0..SHARDS).map(|_| Arc::new(HashTable::new())).collect();
        }
        Arc::make_mut(&mut self.shards[shard_of(hash)])
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let hash = self.hasher.hash_one(&key);
        let hasher = self.hasher.clone();
        let shard = self.shard_mut(hash);
        if let Some((_, v)) = shard.find_mut(hash, |(k, _)| *k == key) {
            return Some(std::mem::replace(v, value));
        }
        shard.insert_unique(hash, (key, value), |(k, _)| hasher.hash_one(k));
        self.len += 1;
        None
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        if self.len == 0 {
            return None;
        }
        let hash = self.hasher.hash_one(key);
        // Looked up before `make_mut`: a missing key copies no shard.
        self.shards[shard_of(hash)].find(hash, |(k, _)| k == key)?;
        let entry = self
            .shard_mut(hash)
            .find_entry(hash, |(k, _)| k == key)
            .ok()?;
        let ((_, value), _) = entry.remove();
        self.len -= 1;
        Some(value)
    }
}

/// Every entry of every shard.
pub struct Iter<'a, K, V> {
    shards: std::slice::Iter<'a, Shard<K, V>>,
    current: Option<hashbrown::hash_table::Iter<'a, (K, V)>>,
}

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((k, v)) = self.current.as_mut().and_then(Iterator::next) {
                return Some((k, v));
            }
            self.current = Some(self.shards.next()?.iter());
        }
    }
}

impl<'a, K: Hash + Eq, V> IntoIterator for &'a ShardMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Iter<'a, K, V>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<K: Hash + Eq + Clone, V: Clone> FromIterator<(K, V)> for ShardMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut map = Self::default();
        map.extend(iter);
        map
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Extend<(K, V)> for ShardMap<K, V> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl<K: Hash + Eq, V> std::ops::Index<&K> for ShardMap<K, V> {
    type Output = V;

    fn index(&self, key: &K) -> &V {
        self.get(key)
            .expect("no entry for this key in the ShardMap")
    }
}

/// Equal entries, whatever the shard layout (two maps hash differently).
impl<K: Hash + Eq, V: PartialEq> PartialEq for ShardMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl<K: Hash + Eq, V: Eq> Eq for ShardMap<K, V> {}

impl<K: Hash + Eq + fmt::Debug, V: fmt::Debug> fmt::Debug for ShardMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Random inserts and removes, on a map and on its clones taken along
    /// the way: each equals a `std` map given the same operations, and a
    /// clone does not see what was done after it was taken.
    #[test]
    fn behaves_like_a_hash_map_and_clones_are_snapshots() {
        let mut rng = fastrand::Rng::with_seed(16);
        for _ in 0..20 {
            let mut map: ShardMap<u32, u32> = ShardMap::default();
            let mut model: HashMap<u32, u32> = HashMap::new();
            let mut snapshots = Vec::new();
            for step in 0..2_000 {
                let key = rng.u32(0..600);
                if rng.bool() {
                    assert_eq!(map.insert(key, step), model.insert(key, step));
                } else {
                    assert_eq!(map.remove(&key), model.remove(&key));
                }
                if step % 250 == 0 {
                    snapshots.push((map.clone(), model.clone()));
                }
            }
            assert_eq!(map.len(), model.len());
            assert_eq!(map.iter().count(), model.len());
            for (k, v) in &model {
                assert_eq!(map.get(k), Some(v));
            }
            for (snapshot, model) in &snapshots {
                assert_eq!(snapshot.len(), model.len());
                for (k, v) in snapshot {
                    assert_eq!(model.get(k), Some(v));
                }
            }
            let rebuilt: ShardMap<u32, u32> = model.into_iter().collect();
            assert_eq!(rebuilt, map);
        }
    }
}
