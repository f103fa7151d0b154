//! The provided-buffer group: one allocation cut into buffers that the
//! kernel picks from when a receive with buffer select finds data, so that
//! a connection waiting for data holds no buffer of its own
//! (IORING_OP_PROVIDE_BUFFERS: one SQE per returned buffer, no syscall of
//! its own, no mmap'd ring to manage).
//!
//! # Invariants (continuing those of `ops`)
//!
//! 6. Each buffer id is at any time either the kernel's (provided, not yet
//!    selected) or held by exactly one [`Provided`], never both: the kernel
//!    hands an id over in a completion (`IORING_CQE_F_BUFFER`), which the
//!    ring turns into a `Provided` at once, whatever the slot's state
//!    (waited for, detached, or gone); dropping that `Provided` queues the
//!    id, and the ring provides it again at its next submission, only then.
//! 7. A `Provided` owned by a slot (a send out of it) is dropped only with
//!    the slot, after the op's completion (invariant 1): the kernel never
//!    writes a buffer while it is being sent.
//! 8. The allocation is freed when the group's last `Rc` goes: the ring
//!    holds one in a field dropped after the ring fd (whose close makes the
//!    kernel forget the buffers), and every `Provided` holds one.
//!
//! `tests::provided_buffers_all_come_back` checks 6 and 7 under dropped
//! futures and an exhausted group (ENOBUFS).

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::{Cell, RefCell};
use std::ptr::NonNull;
use std::rc::Rc;

/// The group id of the worker's one group.
pub const GROUP: u16 = 0;
/// Bytes per buffer: a request or a response head fits; a longer read moves
/// the connection to the pool's growing buffers (see `tcp::pump`).
pub const SIZE: usize = 2048;
/// Buffers per worker: only connections with data in hand hold one, and
/// pages the kernel never wrote stay unbacked.
pub const COUNT: u16 = 512;

pub struct Group {
    mem: NonNull<u8>,
    layout: Layout,
    count: u16,
    /// Ids dropped by their holder, to provide again at the next submit.
    returned: RefCell<Vec<u16>>,
    /// Ids held by a `Provided` (for tests and the stress check).
    held: Cell<usize>,
}

impl Group {
    /// `None` only when the allocation fails.
    pub fn new(count: u16) -> Option<Rc<Self>> {
        let layout = Layout::from_size_align(SIZE * usize::from(count.max(1)), 4096).ok()?;
        // SAFETY: the layout's size is not zero.
        let mem = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        Some(Rc::new(Self {
            mem,
            layout,
            count: count.max(1),
            returned: RefCell::default(),
            held: Cell::new(0),
        }))
    }

    pub fn count(&self) -> u16 {
        self.count
    }

    /// The whole allocation, for the first IORING_OP_PROVIDE_BUFFERS.
    pub fn base(&self) -> *mut u8 {
        self.mem.as_ptr()
    }

    /// Buffer `bid`; `bid` < `count`.
    pub fn ptr(&self, bid: u16) -> *mut u8 {
        debug_assert!(bid < self.count);
        // SAFETY: `bid` < `count`, so the offset stays inside the allocation.
        unsafe { self.mem.as_ptr().add(usize::from(bid) * SIZE) }
    }

    /// Moves the returned ids into `into` (emptied first).
    pub fn take_returned(&self, into: &mut Vec<u16>) {
        into.clear();
        std::mem::swap(&mut *self.returned.borrow_mut(), into);
    }

    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held.get()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; invariant 8.
        unsafe { dealloc(self.mem.as_ptr(), self.layout) }
    }
}

/// One buffer of the group, handed over by the kernel with its data.
pub struct Provided {
    group: Rc<Group>,
    bid: u16,
}

impl Provided {
    /// The buffer the kernel named in a completion.
    ///
    /// # Safety
    ///
    /// `bid` must come from a completion's `IORING_CQE_F_BUFFER` on the
    /// ring `group` is provided to, and be adopted only once (invariant 6).
    pub unsafe fn adopt(group: &Rc<Group>, bid: u16) -> Option<Self> {
        if bid >= group.count {
            return None;
        }
        group.held.set(group.held.get() + 1);
        Some(Self {
            group: group.clone(),
            bid,
        })
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: this buffer is ours alone until dropped (invariant 6), and
        // lies inside the live allocation (invariant 8).
        unsafe { std::slice::from_raw_parts(self.group.ptr(self.bid), SIZE) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as `as_slice`; `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.group.ptr(self.bid), SIZE) }
    }
}

impl Drop for Provided {
    fn drop(&mut self) {
        self.group.held.set(self.group.held.get() - 1);
        self.group.returned.borrow_mut().push(self.bid);
    }
}
