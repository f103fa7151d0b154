//! Slot tables for the kernel datapath (`sy_table`, ABI.md "Slot table").
//!
//! A policy whose decision does not depend on live statistics or request
//! attributes can be written as a table: the host asks for `N` slots, the
//! policy fills each slot with an endpoint index, and the kernel (nftables)
//! picks a slot for each new flow from the [`TableKey`] the policy names.
//! The table is filled once per endpoint-set change, off the data path.
//!
//! The helpers here fill a table evenly ([`fill_even`]) or in proportion to
//! weights ([`fill_weighted`]), interleaving endpoints so that a sequence
//! key (round robin) alternates between them.

/// What the kernel hashes (or counts) to choose a slot for a new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum TableKey {
    /// A random slot per new flow (`numgen random`).
    Random = 1,
    /// Slots in sequence, one per new flow (`numgen inc`): round robin.
    Sequence = 2,
    /// A hash of the flow's 5-tuple: the same flow always lands on the same
    /// slot; different flows of one client spread.
    FiveTuple = 3,
    /// A hash of the client address: every flow of one client lands on the
    /// same slot while the table is unchanged (affinity without timeout).
    ClientAddress = 4,
}

impl TableKey {
    /// The value `sy_table` returns for this key.
    pub fn to_abi(self) -> i32 {
        self as i32
    }

    /// Decodes a `sy_table` result; `None` for 0 ("no table") and for
    /// values this version does not know.
    pub fn from_abi(value: i32) -> Option<Self> {
        match value {
            1 => Some(TableKey::Random),
            2 => Some(TableKey::Sequence),
            3 => Some(TableKey::FiveTuple),
            4 => Some(TableKey::ClientAddress),
            _ => None,
        }
    }

    /// A short lower-case name, for logs and tools.
    pub fn name(self) -> &'static str {
        match self {
            TableKey::Random => "random",
            TableKey::Sequence => "sequence",
            TableKey::FiveTuple => "5-tuple",
            TableKey::ClientAddress => "client-address",
        }
    }
}

/// Fills `slots` with `0..n` in turn (`0, 1, .., n-1, 0, 1, ..`); each
/// endpoint gets `len / n` or one more slot. `false` (slots untouched) when
/// `n` is 0 or does not fit an index.
pub fn fill_even(slots: &mut [u32], n: usize) -> bool {
    if n == 0 || u32::try_from(n).is_err() {
        return false;
    }
    for (s, slot) in slots.iter_mut().enumerate() {
        *slot = (s % n) as u32;
    }
    true
}

/// Fills `slots` with endpoint indices in proportion to `weights`, spread
/// out: slot `s` goes to the endpoint whose share of the first `s + 1`
/// slots is furthest behind its weight (smooth weighted round robin, as
/// nginx does it), so a sequence key interleaves endpoints. An endpoint of
/// weight 0 gets no slot. When every weight is 0 the fill is even. `false`
/// (slots untouched) when `weights` is empty.
pub fn fill_weighted(slots: &mut [u32], weights: &[u32]) -> bool {
    if weights.is_empty() || u32::try_from(weights.len()).is_err() {
        return false;
    }
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    if total == 0 {
        return fill_even(slots, weights.len());
    }
    let mut current = vec![0i64; weights.len()];
    for slot in slots.iter_mut() {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += i64::from(w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        *slot = best as u32;
    }
    true
}

/// How many slots each of `n` endpoints got (indices `>= n` are ignored).
pub fn counts(slots: &[u32], n: usize) -> Vec<usize> {
    let mut out = vec![0; n];
    for &s in slots {
        if let Some(c) = out.get_mut(s as usize) {
            *c += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_the_abi() {
        for key in [
            TableKey::Random,
            TableKey::Sequence,
            TableKey::FiveTuple,
            TableKey::ClientAddress,
        ] {
            assert_eq!(TableKey::from_abi(key.to_abi()), Some(key));
        }
        assert_eq!(TableKey::from_abi(0), None);
        assert_eq!(TableKey::from_abi(5), None);
        assert_eq!(TableKey::from_abi(-1), None);
    }

    #[test]
    fn even_fill_cycles() {
        let mut slots = [9u32; 7];
        assert!(fill_even(&mut slots, 3));
        assert_eq!(slots, [0, 1, 2, 0, 1, 2, 0]);
        assert!(!fill_even(&mut slots, 0));
    }

    #[test]
    fn weighted_fill_is_proportional_and_interleaved() {
        let mut slots = vec![u32::MAX; 257];
        assert!(fill_weighted(&mut slots, &[9, 1, 0]));
        let c = counts(&slots, 3);
        assert_eq!(c[2], 0);
        assert!((230..=232).contains(&c[0]), "{c:?}");
        assert_eq!(c[0] + c[1], 257);
        // The light endpoint's slots are spread out, not one run.
        let ones: Vec<usize> = (0..slots.len()).filter(|&s| slots[s] == 1).collect();
        assert!(ones.windows(2).all(|w| w[1] - w[0] >= 9), "{ones:?}");
    }

    #[test]
    fn all_zero_weights_fill_evenly() {
        let mut slots = [9u32; 4];
        assert!(fill_weighted(&mut slots, &[0, 0]));
        assert_eq!(slots, [0, 1, 0, 1]);
        assert!(!fill_weighted(&mut slots, &[]));
    }
}
