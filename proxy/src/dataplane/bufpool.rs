//! Per-worker pool of copy buffers, in three sizes. A direction of a
//! connection reads into a small buffer until a read fills it, then into a
//! middle one, and once a read fills that, into a full-size one
//! (`bufferSize`); when its reads turn small again it goes back to the
//! small one. So an idle or chatty connection (keep-alive pools, long
//! polls, the request/response of a short HTTP exchange) pins a few
//! hundred bytes per direction, a moderate transfer a middle buffer, and
//! only a connection that streams bulk data holds full-size buffers, while
//! it streams. Large buffers are what makes bulk fast: each copy is one
//! read and one write of up to `bufferSize` bytes. Steady-state proxying
//! allocates nothing.

use std::cell::RefCell;

/// Bytes of the small buffers: a short request or response header fits.
pub const SMALL: usize = 512;
/// Bytes of the middle buffers (or `bufferSize` when that is smaller).
pub const MIDDLE: usize = 64 * 1024;
/// Idle bytes kept per tier beyond the buffers in use; the rest is freed.
const MAX_IDLE_BYTES: usize = 16 << 20;

#[derive(Debug)]
struct Tier {
    len: usize,
    max_idle: usize,
    free: RefCell<Vec<Vec<u8>>>,
}

impl Tier {
    fn new(len: usize, max_idle: usize) -> Self {
        Self {
            len,
            max_idle: max_idle.min(MAX_IDLE_BYTES / len).max(1),
            free: RefCell::new(Vec::new()),
        }
    }

    fn take(&self) -> Vec<u8> {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0; self.len])
    }
}

#[derive(Debug)]
pub struct BufPool {
    /// Small, middle, full: ascending lengths (equal ones when `bufferSize`
    /// is small).
    tiers: [Tier; 3],
}

impl BufPool {
    pub fn new(size: usize, max_idle: usize) -> Self {
        let small = SMALL.min(size);
        let middle = MIDDLE.min(size);
        Self {
            tiers: [
                Tier::new(small, max_idle),
                Tier::new(middle, max_idle),
                Tier::new(size, max_idle),
            ],
        }
    }

    /// A small buffer, what every direction starts with.
    pub fn take_small(&self) -> Vec<u8> {
        self.tiers[0].take()
    }

    /// The smallest buffer longer than `len` (else a full one): where a
    /// read that filled a `len`-byte buffer goes next.
    pub fn take_longer_than(&self, len: usize) -> Vec<u8> {
        let tier = self.tiers.iter().position(|t| t.len > len).unwrap_or(2);
        self.tiers[tier].take()
    }

    /// Whether `buf` is a small buffer (worth nothing to hold while idle).
    pub fn is_small(&self, buf: &[u8]) -> bool {
        self.tier_of(buf) == 0
    }

    /// The tier a buffer came from: the largest whose length it reaches.
    fn tier_of(&self, buf: &[u8]) -> usize {
        let cap = buf.len().max(1);
        self.tiers.iter().rposition(|t| cap >= t.len).unwrap_or(0)
    }

    /// The buffer the next read should get, after a read of `n` bytes into
    /// `buf`: the next size up after a read that filled it, a small one
    /// after a short read into a larger one, else the same.
    pub fn next(&self, buf: Vec<u8>, n: usize) -> Vec<u8> {
        let tier = self.tier_of(&buf);
        let grow = n == buf.len() && tier + 1 < self.tiers.len();
        if grow {
            self.give(buf);
            // Skip a tier of the same length (`bufferSize` ≤ MIDDLE).
            let up = (tier + 1..self.tiers.len())
                .find(|&t| self.tiers[t].len > self.tiers[tier].len)
                .unwrap_or(tier);
            self.tiers[up].take()
        } else if tier > 0 && n < SMALL {
            self.give(buf);
            self.take_small()
        } else {
            buf
        }
    }

    pub fn give(&self, mut buf: Vec<u8>) {
        let tier = &self.tiers[self.tier_of(&buf)];
        let mut free = tier.free.borrow_mut();
        if free.len() < tier.max_idle {
            // Restore the full length in case the owner truncated it.
            buf.resize(tier.len, 0);
            free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_a_size_per_full_read_and_shrinks_on_a_short_one() {
        let pool = BufPool::new(256 * 1024, 4);
        let buf = pool.take_small();
        assert_eq!(buf.len(), SMALL);
        let buf = pool.next(buf, 100);
        assert_eq!(buf.len(), SMALL, "a short read keeps the small buffer");
        let buf = pool.next(buf, SMALL);
        assert_eq!(
            buf.len(),
            MIDDLE,
            "a full small read moves to a middle buffer"
        );
        let buf = pool.next(buf, 4000);
        assert_eq!(buf.len(), MIDDLE, "a partial read keeps the middle buffer");
        let buf = pool.next(buf, MIDDLE);
        assert_eq!(
            buf.len(),
            256 * 1024,
            "a full middle read moves to a full one"
        );
        let buf = pool.next(buf, 256 * 1024);
        assert_eq!(buf.len(), 256 * 1024, "the full size is the largest");
        let buf = pool.next(buf, 10);
        assert_eq!(buf.len(), SMALL, "a short read gives the full buffer back");
        assert!(pool.is_small(&buf));
        pool.give(buf);
        let idle: Vec<usize> = pool.tiers.iter().map(|t| t.free.borrow().len()).collect();
        assert_eq!(idle, [1, 1, 1]);
    }

    #[test]
    fn a_buffer_size_below_the_middle_skips_it() {
        let pool = BufPool::new(8192, 4);
        let buf = pool.next(pool.take_small(), SMALL);
        assert_eq!(buf.len(), 8192);
        let buf = pool.next(buf, 8192);
        assert_eq!(buf.len(), 8192);
        pool.give(buf);
        assert_eq!(pool.tiers[2].free.borrow().len(), 1);
    }

    #[test]
    fn idle_full_buffers_are_capped_by_bytes() {
        let pool = BufPool::new(16 << 20, 256);
        assert_eq!(pool.tiers[2].max_idle, 1);
        assert_eq!(pool.tiers[1].max_idle, 256);
    }
}
