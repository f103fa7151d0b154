//! Everyday choices over endpoint indices, skipping endpoints already tried
//! for the connection ([`Context::tried`]). O(1) in the common case (nothing
//! tried); never more than one pass over the candidates.
//!
//! ```
//! use switchyard_policy::select;
//! use switchyard_policy::testing::Call;
//!
//! let mut cursor = 0;
//! let ctx = Call::new().tried(&[1]).context(3, 0);
//! assert_eq!(select::round_robin(&mut cursor, 3, &ctx), Some(0));
//! assert_eq!(select::round_robin(&mut cursor, 3, &ctx), Some(2)); // 1 already failed
//! assert_eq!(select::round_robin_in(&mut cursor, &[1], &ctx), None);
//! ```

use crate::Context;
use crate::weighted::uniform;

/// Round robin over `0..n`: the first untried index at or after `*cursor`
/// (mod `n`); moves the cursor past it. Start the cursor at a random value
/// so that instances (one per worker) do not move in lockstep.
pub fn round_robin(cursor: &mut usize, n: usize, ctx: &Context) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let start = *cursor % n;
    let i = (0..n).map(|k| (start + k) % n).find(|&i| !ctx.tried(i))?;
    *cursor = (i + 1) % n;
    Some(i)
}

/// Round robin over a subset of the table (`subset` holds endpoint
/// indices); returns an endpoint index.
pub fn round_robin_in(cursor: &mut usize, subset: &[u32], ctx: &Context) -> Option<usize> {
    let n = subset.len();
    if n == 0 {
        return None;
    }
    let start = *cursor % n;
    let k = (0..n)
        .map(|k| (start + k) % n)
        .find(|&k| !ctx.tried(subset[k] as usize))?;
    *cursor = (k + 1) % n;
    Some(subset[k] as usize)
}

/// A uniformly random untried index below `n`: a few random draws, then (if
/// most are tried) a scan from a random start.
pub fn random_untried(n: usize, ctx: &Context) -> Option<usize> {
    if n == 0 {
        return None;
    }
    for _ in 0..8 {
        let i = uniform(crate::random_u64(), n);
        if !ctx.tried(i) {
            return Some(i);
        }
    }
    let start = uniform(crate::random_u64(), n);
    (0..n).map(|k| (start + k) % n).find(|&i| !ctx.tried(i))
}

/// [`random_untried`] over a subset of endpoint indices; returns an
/// endpoint index.
pub fn random_untried_in(subset: &[u32], ctx: &Context) -> Option<usize> {
    let k = random_untried_by(subset.len(), |k| ctx.tried(subset[k] as usize))?;
    Some(subset[k] as usize)
}

fn random_untried_by(n: usize, tried: impl Fn(usize) -> bool) -> Option<usize> {
    if n == 0 {
        return None;
    }
    for _ in 0..8 {
        let k = uniform(crate::random_u64(), n);
        if !tried(k) {
            return Some(k);
        }
    }
    let start = uniform(crate::random_u64(), n);
    (0..n).map(|k| (start + k) % n).find(|&k| !tried(k))
}

#[cfg(all(test, not(target_arch = "wasm32")))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::Call;

    #[test]
    fn round_robin_cycles_and_skips_tried() {
        let ctx = Call::new().tried(&[1]).context(4, 0);
        let mut cursor = 0;
        let picks: Vec<_> = (0..6)
            .map(|_| round_robin(&mut cursor, 4, &ctx).unwrap())
            .collect();
        assert_eq!(picks, [0, 2, 3, 0, 2, 3]);
        let all = Call::new().tried(&[0, 1, 2, 3]).context(4, 0);
        assert_eq!(round_robin(&mut cursor, 4, &all), None);
        assert_eq!(round_robin(&mut cursor, 0, &ctx), None);
        let mut huge = usize::MAX;
        assert_eq!(round_robin(&mut huge, 4, &ctx), Some(3));
    }

    #[test]
    fn round_robin_in_a_subset() {
        let ctx = Call::new().tried(&[5]).context(10, 0);
        let mut cursor = 0;
        let picks: Vec<_> = (0..4)
            .map(|_| round_robin_in(&mut cursor, &[2, 5, 7], &ctx).unwrap())
            .collect();
        assert_eq!(picks, [2, 7, 2, 7]);
        assert_eq!(round_robin_in(&mut cursor, &[], &ctx), None);
        assert_eq!(round_robin_in(&mut cursor, &[5], &ctx), None);
    }

    #[test]
    fn random_untried_is_uniform_over_the_untried() {
        let ctx = Call::new().tried(&[0, 2]).context(5, 0);
        let mut counts = [0u32; 5];
        for _ in 0..30_000 {
            counts[random_untried(5, &ctx).unwrap()] += 1;
        }
        assert_eq!((counts[0], counts[2]), (0, 0));
        assert!(
            [1, 3, 4]
                .iter()
                .all(|&i| (9_400..10_600).contains(&counts[i])),
            "{counts:?}"
        );
        let all: Vec<usize> = (0..64).collect();
        let full = Call::new().tried(&all).context(64, 0);
        assert_eq!(random_untried(64, &full), None);
        assert_eq!(
            random_untried(65, &full),
            Some(64),
            "beyond 64 nothing is marked tried"
        );
        assert_eq!(
            random_untried_in(&[3, 9], &Call::new().tried(&[3]).context(10, 0)),
            Some(9)
        );
        assert_eq!(random_untried_in(&[], &ctx), None);
    }
}
