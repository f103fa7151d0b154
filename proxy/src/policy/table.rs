//! Slot tables for the kernel datapath (policy-sdk/ABI.md, "Slot table"):
//! a module's `sy_table` answer, checked, for one Service port and scope.
//! Computed on the control plane when the endpoint set or the binding
//! changes, never per connection. Any fault means "no table": the port
//! stays on (or falls back to) the proxy datapath.

use std::sync::Arc;

use super::engine::PolicyEngine;
use super::instance::{Fault, WasmInstance};
use super::layout::{Locality, encode_table};
use super::module::PolicyModule;
use crate::catalog::Endpoint;

/// What the kernel picks a slot by, for each new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlotKey {
    /// `numgen random`.
    Random,
    /// `numgen inc`: round robin.
    Sequence,
    /// `jhash` of the 5-tuple.
    FiveTuple,
    /// `jhash` of the client address.
    ClientAddress,
}

impl SlotKey {
    /// The key a `sy_table` result names; `None` for 0 and unknown values.
    pub fn from_abi(value: i32) -> Option<Self> {
        match value {
            1 => Some(SlotKey::Random),
            2 => Some(SlotKey::Sequence),
            3 => Some(SlotKey::FiveTuple),
            4 => Some(SlotKey::ClientAddress),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SlotKey::Random => "random",
            SlotKey::Sequence => "sequence",
            SlotKey::FiveTuple => "5-tuple",
            SlotKey::ClientAddress => "client-address",
        }
    }
}

/// A checked table: every slot holds an index into the endpoint set it was
/// computed for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SlotTable {
    pub key: SlotKey,
    pub slots: Vec<u32>,
}

impl SlotTable {
    /// How many slots each of `n` endpoints holds.
    pub fn counts(&self, n: usize) -> Vec<usize> {
        let mut out = vec![0; n];
        for &s in &self.slots {
            if let Some(c) = out.get_mut(s as usize) {
                *c += 1;
            }
        }
        out
    }

    /// The smallest `p` with `slots[i] == slots[i mod p]` for every slot:
    /// the table repeats its first `p` slots (round robin over `n`
    /// endpoints: `p = n`; a table with no repetition: its length).
    /// Linear (the failure function of the prefix matcher).
    pub fn period(&self) -> usize {
        let s = &self.slots;
        if s.is_empty() {
            return 0;
        }
        // border[i]: the longest proper prefix of s[..=i] that is also
        // its suffix.
        let mut border = vec![0usize; s.len()];
        let mut k = 0;
        for i in 1..s.len() {
            while k > 0 && s[i] != s[k] {
                k = border[k - 1];
            }
            if s[i] == s[k] {
                k += 1;
            }
            border[i] = k;
        }
        s.len() - border[s.len() - 1]
    }
}

/// Why a module's table was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableFault {
    #[error("sy_table {0}")]
    Call(#[from] Fault),
    #[error("sy_table returned {0}, which names no key (0 = no table, 1..=4)")]
    UnknownKey(i32),
    #[error("sy_table left slot {slot} unfilled")]
    Unfilled { slot: usize },
    #[error("sy_table put endpoint {index} in slot {slot}, but the set has {count}")]
    OutOfRange {
        slot: usize,
        index: u32,
        count: usize,
    },
}

/// The number of slots for `count` endpoints: the smallest prime at or above
/// the power of two that is ≥ 4 × `count` (at least 67). It changes only
/// when the set crosses a power of two, so a hash key keeps most flows on
/// their slots while endpoints come and go.
pub fn slot_count(count: usize) -> usize {
    let floor = count.saturating_mul(4).max(64).next_power_of_two();
    (floor..).find(|&n| is_prime(n)).unwrap_or(floor)
}

fn is_prime(n: usize) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// Checks a `sy_table` answer: `Ok(None)` for "no table" (result 0).
pub fn decode(key: i32, raw: &[u8], count: usize) -> Result<Option<SlotTable>, TableFault> {
    if key == 0 {
        return Ok(None);
    }
    let key = SlotKey::from_abi(key).ok_or(TableFault::UnknownKey(key))?;
    let mut slots = Vec::with_capacity(raw.len() / 4);
    for (slot, chunk) in raw.chunks_exact(4).enumerate() {
        let index = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        if index == u32::MAX {
            return Err(TableFault::Unfilled { slot });
        }
        if index as usize >= count {
            return Err(TableFault::OutOfRange { slot, index, count });
        }
        slots.push(index);
    }
    Ok(Some(SlotTable { key, slots }))
}

/// The built-in round robin as a table: the endpoints in turn, in sequence.
pub fn builtin_round_robin(count: usize) -> Option<SlotTable> {
    let n = u32::try_from(count).ok().filter(|&n| n > 0)?;
    let slots = (0..slot_count(count) as u32).map(|s| s % n).collect();
    Some(SlotTable {
        key: SlotKey::Sequence,
        slots,
    })
}

/// Asks `module` (with `config`) for its table over `endpoints`, in a fresh
/// instance of its own. `Ok(None)`: the module has no `sy_table`, answered
/// "no table", or the set is empty.
pub fn compute(
    engine: &PolicyEngine,
    module: &PolicyModule,
    config: &str,
    endpoints: &[Endpoint],
    here: &Locality,
) -> Result<Option<Arc<SlotTable>>, TableFault> {
    if endpoints.is_empty() {
        return Ok(None);
    }
    let mut instance = WasmInstance::new(engine, module, config)?;
    instance.set_endpoints(&encode_table(endpoints, here), endpoints.len())?;
    let Some((key, raw)) = instance.table(slot_count(endpoints.len()))? else {
        return Ok(None);
    };
    Ok(decode(key, &raw, endpoints.len())?.map(Arc::new))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(slots: &[u32]) -> Vec<u8> {
        slots.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    #[test]
    fn slot_counts_are_primes_stable_within_a_power_of_two() {
        assert_eq!(slot_count(0), 67);
        assert_eq!(slot_count(1), 67);
        assert_eq!(slot_count(16), 67);
        assert_eq!(slot_count(17), 131);
        assert_eq!(slot_count(64), 257);
        assert_eq!(slot_count(65), 521);
        assert_eq!(slot_count(128), 521);
        assert_eq!(slot_count(1000), 4099);
        assert!(is_prime(slot_count(5000)));
    }

    #[test]
    fn decode_checks_every_slot() {
        assert_eq!(decode(0, &raw(&[7]), 1), Ok(None));
        assert_eq!(
            decode(2, &raw(&[0, 1, 0]), 2),
            Ok(Some(SlotTable {
                key: SlotKey::Sequence,
                slots: vec![0, 1, 0]
            }))
        );
        assert_eq!(
            decode(1, &raw(&[0, u32::MAX]), 2),
            Err(TableFault::Unfilled { slot: 1 })
        );
        assert_eq!(
            decode(3, &raw(&[2]), 2),
            Err(TableFault::OutOfRange {
                slot: 0,
                index: 2,
                count: 2
            })
        );
        assert_eq!(decode(9, &raw(&[0]), 1), Err(TableFault::UnknownKey(9)));
        assert_eq!(decode(-1, &raw(&[0]), 1), Err(TableFault::UnknownKey(-1)));
    }

    fn table(slots: &[u32]) -> SlotTable {
        SlotTable {
            key: SlotKey::Random,
            slots: slots.to_vec(),
        }
    }

    #[test]
    fn the_period_is_the_shortest_prefix_the_table_repeats() {
        for n in 1..=40 {
            let t = builtin_round_robin(n).expect("table");
            assert_eq!(t.period(), n.min(t.slots.len()), "{n} endpoints");
        }
        assert_eq!(table(&[3, 3, 3]).period(), 1);
        assert_eq!(table(&[0, 1, 0, 1, 0]).period(), 2);
        // A partial last cycle still repeats the prefix.
        assert_eq!(table(&[0, 1, 2, 0, 1]).period(), 3);
        // One slot off: no repetition shorter than the table.
        assert_eq!(table(&[0, 1, 0, 1, 1]).period(), 5);
        assert_eq!(table(&[0, 0, 1]).period(), 3);
        assert_eq!(table(&[]).period(), 0);
        let mut weighted: Vec<u32> = (0..67).map(|s| s % 3).collect();
        weighted[1] = 0;
        // Its shortest repetition is nearly the whole table.
        assert_eq!(table(&weighted).period(), 66);
    }

    #[test]
    fn builtin_round_robin_is_even() {
        let t = builtin_round_robin(3).expect("table");
        assert_eq!(t.key, SlotKey::Sequence);
        assert_eq!(t.counts(3), [23, 22, 22]);
        assert!(builtin_round_robin(0).is_none());
    }
}
