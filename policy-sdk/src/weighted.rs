//! Weighted and uniform choice from a random `u64`.
//!
//! ```
//! use switchyard_policy::weighted::{WeightedIndex, uniform, weighted_pick};
//!
//! assert_eq!(uniform(u64::MAX, 10), 9);
//! assert_eq!(weighted_pick(&[0, 5, 0], 12345), Some(1));
//! assert_eq!(weighted_pick(&[0, 0], 12345), None);
//! let index = WeightedIndex::new([1, 3]);
//! assert_eq!(index.total(), 4);
//! assert_eq!(index.pick(0), Some(0));
//! assert_eq!(index.pick(u64::MAX), Some(1));
//! ```

/// A uniform index below `n` from 64 random bits (Lemire's multiply-shift:
/// no division, no modulo bias worth measuring). `0` when `n == 0`.
pub fn uniform(random: u64, n: usize) -> usize {
    ((u128::from(random) * n as u128) >> 64) as usize
}

/// `random` scaled to `[0, total)`.
fn scale(random: u64, total: u64) -> u64 {
    ((u128::from(random) * u128::from(total)) >> 64) as u64
}

/// Picks an index with probability proportional to its weight; `None` when
/// every weight is 0 (or `weights` is empty). O(n), no allocation.
pub fn weighted_pick(weights: &[u32], random: u64) -> Option<usize> {
    weighted_pick_by(weights.len(), |i| weights[i], random)
}

/// [`weighted_pick`] over indices `0..n` with weights from a function (for
/// example 0 for endpoints already tried). Calls `weight` twice per index.
pub fn weighted_pick_by(n: usize, weight: impl Fn(usize) -> u32, random: u64) -> Option<usize> {
    let total: u64 = (0..n).map(|i| u64::from(weight(i))).sum();
    if total == 0 {
        return None;
    }
    let mut target = scale(random, total);
    for i in 0..n {
        let w = u64::from(weight(i));
        if target < w {
            return Some(i);
        }
        target -= w;
    }
    None
}

/// Precomputed cumulative weights: O(log n) picks. Build it in
/// `endpoints_changed`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WeightedIndex {
    cumulative: Vec<u64>,
}

impl WeightedIndex {
    /// Indexes `weights` (entry `i` is chosen with probability `w_i / sum`).
    pub fn new(weights: impl IntoIterator<Item = u32>) -> Self {
        let mut sum = 0u64;
        let cumulative = weights
            .into_iter()
            .map(|w| {
                sum += u64::from(w);
                sum
            })
            .collect();
        Self { cumulative }
    }

    /// Number of entries (including weight-0 ones).
    pub fn len(&self) -> usize {
        self.cumulative.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.cumulative.is_empty()
    }

    /// Sum of all weights.
    pub fn total(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// The weight of entry `i` (0 out of range).
    pub fn weight(&self, i: usize) -> u64 {
        match i {
            0 => self.cumulative.first().copied().unwrap_or(0),
            _ => match (self.cumulative.get(i), self.cumulative.get(i - 1)) {
                (Some(c), Some(p)) => c - p,
                _ => 0,
            },
        }
    }

    /// An index with probability proportional to its weight; `None` when
    /// the total is 0. Weight-0 entries are never returned.
    pub fn pick(&self, random: u64) -> Option<usize> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let target = scale(random, total);
        Some(self.cumulative.partition_point(|&c| c <= target))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::hash::mix64;

    #[test]
    fn uniform_covers_the_range_evenly() {
        let mut counts = [0u32; 7];
        for i in 0..70_000u64 {
            counts[uniform(mix64(i), 7)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(uniform(u64::MAX, 7), 6);
        assert_eq!(uniform(0, 7), 0);
        assert_eq!(uniform(u64::MAX, 0), 0);
    }

    #[test]
    fn weighted_pick_follows_weights() {
        let weights = [9, 0, 1];
        let mut counts = [0u32; 3];
        for i in 0..100_000u64 {
            counts[weighted_pick(&weights, mix64(i)).unwrap_or(1)] += 1;
        }
        assert_eq!(counts[1], 0);
        assert!((88_500..91_500).contains(&counts[0]), "{counts:?}");
        assert_eq!(weighted_pick(&[0, 0], 5), None);
        assert_eq!(weighted_pick(&[], 5), None);
        assert_eq!(weighted_pick(&[0, 3], u64::MAX), Some(1));
    }

    #[test]
    fn weighted_index_agrees_with_the_linear_scan() {
        let weights = [3u32, 0, 5, 1, 0, 7];
        let index = WeightedIndex::new(weights);
        assert_eq!(index.total(), 16);
        assert_eq!(
            (
                index.weight(0),
                index.weight(1),
                index.weight(5),
                index.weight(9)
            ),
            (3, 0, 7, 0)
        );
        for i in 0..10_000u64 {
            let r = mix64(i);
            assert_eq!(index.pick(r), weighted_pick(&weights, r));
        }
        assert_eq!(index.pick(u64::MAX), Some(5));
        assert_eq!(index.pick(0), Some(0));
        assert_eq!(WeightedIndex::new([0, 0]).pick(1), None);
        assert!(WeightedIndex::default().is_empty());
    }
}
