//! Per-worker pool of copy buffers, in two sizes. A direction of a
//! connection reads into a small buffer until a read fills it, and then
//! into a full-size one; when its reads turn small again it goes back.
//! So an idle or chatty connection (keep-alive pools, long polls, the
//! request/response of a short HTTP exchange) pins a few hundred bytes per
//! direction, and only a connection that moves bulk data holds full-size
//! buffers, while it moves it. Steady-state proxying allocates nothing.

use std::cell::RefCell;

/// Bytes of the small buffers: a short request or response header fits.
pub const SMALL: usize = 512;

#[derive(Debug)]
pub struct BufPool {
    size: usize,
    max_idle: usize,
    free: RefCell<Vec<Vec<u8>>>,
    free_small: RefCell<Vec<Vec<u8>>>,
}

impl BufPool {
    pub fn new(size: usize, max_idle: usize) -> Self {
        Self {
            size,
            max_idle,
            free: RefCell::new(Vec::new()),
            free_small: RefCell::new(Vec::new()),
        }
    }

    /// A full-size buffer of initialised bytes.
    pub fn take(&self) -> Vec<u8> {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0; self.size])
    }

    /// A small buffer, what every direction starts with.
    pub fn take_small(&self) -> Vec<u8> {
        self.free_small
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0; SMALL.min(self.size)])
    }

    /// The buffer the next read should get, after a read of `n` bytes into
    /// `buf`: a full one after a read that filled a small buffer, a small
    /// one after a short read into a full one, else the same.
    pub fn next(&self, buf: Vec<u8>, n: usize) -> Vec<u8> {
        let small = buf.capacity() < self.size;
        if small && n == buf.len() {
            self.give(buf);
            self.take()
        } else if !small && n < SMALL {
            self.give(buf);
            self.take_small()
        } else {
            buf
        }
    }

    pub fn give(&self, mut buf: Vec<u8>) {
        let (free, len) = if buf.capacity() < self.size {
            (&self.free_small, SMALL.min(self.size))
        } else {
            (&self.free, self.size)
        };
        let mut free = free.borrow_mut();
        if free.len() < self.max_idle {
            // Restore the full length in case the owner truncated it.
            buf.resize(len, 0);
            free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_on_a_full_read_and_shrinks_on_a_short_one() {
        let pool = BufPool::new(65536, 4);
        let buf = pool.take_small();
        assert_eq!(buf.len(), SMALL);
        let buf = pool.next(buf, 100);
        assert_eq!(buf.len(), SMALL, "a short read keeps the small buffer");
        let buf = pool.next(buf, SMALL);
        assert_eq!(buf.len(), 65536, "a full small read moves to a full buffer");
        let buf = pool.next(buf, 65536);
        assert_eq!(buf.len(), 65536);
        let buf = pool.next(buf, 10);
        assert_eq!(buf.len(), SMALL, "a short read gives the full buffer back");
        pool.give(buf);
        assert_eq!(pool.free.borrow().len(), 1);
        assert_eq!(pool.free_small.borrow().len(), 1);
    }
}
