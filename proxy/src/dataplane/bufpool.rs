//! Per-worker pool of copy buffers: a connection borrows two while it
//! lives, so steady-state proxying allocates nothing.

use std::cell::RefCell;

#[derive(Debug)]
pub struct BufPool {
    size: usize,
    max_idle: usize,
    free: RefCell<Vec<Vec<u8>>>,
}

impl BufPool {
    pub fn new(size: usize, max_idle: usize) -> Self {
        Self {
            size,
            max_idle,
            free: RefCell::new(Vec::new()),
        }
    }

    /// A buffer of `size` initialised bytes.
    pub fn take(&self) -> Vec<u8> {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0; self.size])
    }

    pub fn give(&self, mut buf: Vec<u8>) {
        let mut free = self.free.borrow_mut();
        if free.len() < self.max_idle {
            // Restore the full length in case the owner truncated it.
            buf.resize(self.size, 0);
            free.push(buf);
        }
    }
}
