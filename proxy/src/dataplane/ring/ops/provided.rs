//! The provided-buffer group: one allocation cut into buffers that the
//! kernel picks from when a receive with buffer select finds data, so that
//! a connection waiting for data holds no buffer of its own.
//!
//! The kernel takes the free ids from a ring-mapped list
//! (IORING_REGISTER_PBUF_RING, 5.19+): giving a buffer back is a write of
//! its entry and of the list's tail, no SQE, and the kernel's pick no list
//! surgery; per keep-alive request that was two IORING_OP_PROVIDE_BUFFERS
//! entries and their `io_provided_buffer_select` list work, the hottest
//! io_uring cost in the profile (bench/results/2026-12-06-ring-s6.md).
//! Older kernels get the buffers with IORING_OP_PROVIDE_BUFFERS, one entry
//! per returned buffer.
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
//!    kernel forget the buffers), and every `Provided` holds one. The
//!    mapped list is part of the group and lives as long.
//! 9. The mapped list holds at most every id once: an id is written into
//!    it only when it comes back (invariant 6) or at the start, and the
//!    list has room for all ids, so the tail never laps the kernel's head.
//!    An entry is written before the tail that covers it is published
//!    (a release store, which the kernel's acquire load of the tail pairs
//!    with).
//!
//! `tests::provided_buffers_all_come_back` checks 6 and 7 under dropped
//! futures and an exhausted group (ENOBUFS).

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::{Cell, RefCell};
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};

/// The group id of the worker's one group.
pub const GROUP: u16 = 0;
/// Bytes per buffer: a request or a response head fits; a longer read moves
/// the connection to the pool's growing buffers (see `tcp::pump`).
pub const SIZE: usize = 2048;
/// Buffers per worker: only connections with data in hand hold one, and
/// pages the kernel never wrote stay unbacked.
pub const COUNT: u16 = 512;

/// Bytes of one `struct io_uring_buf` (addr u64, len u32, bid u16, resv
/// u16); the list's tail is the first entry's `resv`.
const ENTRY: usize = 16;
const TAIL_OFFSET: usize = 14;

pub struct Group {
    mem: NonNull<u8>,
    layout: Layout,
    count: u16,
    /// The mapped list (`count` rounded up to a power of two entries,
    /// page-aligned), used once registered.
    list: NonNull<u8>,
    list_layout: Layout,
    list_entries: u16,
    /// Our copy of the list's tail (the kernel only reads it).
    tail: Cell<u16>,
    mapped: Cell<bool>,
    /// Ids dropped by their holder, to provide again at the next submit.
    returned: RefCell<Vec<u16>>,
    /// Ids held by a `Provided` (for tests and the stress check).
    held: Cell<usize>,
}

impl Group {
    /// `None` only when the allocation fails.
    pub fn new(count: u16) -> Option<Rc<Self>> {
        let count = count.clamp(1, 1 << 15);
        let layout = Layout::from_size_align(SIZE * usize::from(count), 4096).ok()?;
        let list_entries = count.next_power_of_two();
        let list_layout = Layout::from_size_align(ENTRY * usize::from(list_entries), 4096).ok()?;
        // SAFETY: the layouts' sizes are not zero.
        let mem = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        // SAFETY: as above.
        let Some(list) = NonNull::new(unsafe { alloc_zeroed(list_layout) }) else {
            // SAFETY: allocated just above with this layout.
            unsafe { dealloc(mem.as_ptr(), layout) };
            return None;
        };
        Some(Rc::new(Self {
            mem,
            layout,
            count,
            list,
            list_layout,
            list_entries,
            tail: Cell::new(0),
            mapped: Cell::new(false),
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

    /// The mapped list's address and entries, for IORING_REGISTER_PBUF_RING.
    pub fn list(&self) -> (u64, u16) {
        (self.list.as_ptr() as u64, self.list_entries)
    }

    /// Whether the kernel takes the ids from the mapped list.
    pub fn mapped(&self) -> bool {
        self.mapped.get()
    }

    /// Once the list is registered: every id into it, published.
    pub fn fill_list(&self) {
        self.mapped.set(true);
        for bid in 0..self.count {
            self.add(bid);
        }
        self.publish();
    }

    /// Writes `bid`'s entry at the tail (not published yet); invariant 9.
    pub fn add(&self, bid: u16) {
        debug_assert!(bid < self.count);
        let tail = self.tail.get();
        let index = usize::from(tail & (self.list_entries - 1));
        // SAFETY: `index` < `list_entries`, so the entry lies inside the
        // list, 16-byte aligned in a page-aligned allocation; the kernel
        // reads only entries below the published tail, and this one is
        // beyond it (invariant 9). The first entry's last two bytes are the
        // tail: not written here.
        unsafe {
            let entry = self.list.as_ptr().add(index * ENTRY);
            entry.cast::<u64>().write(self.ptr(bid) as u64);
            entry.add(8).cast::<u32>().write(SIZE as u32);
            entry.add(12).cast::<u16>().write(bid);
        }
        self.tail.set(tail.wrapping_add(1));
    }

    /// Makes the entries added so far the kernel's.
    pub fn publish(&self) {
        // SAFETY: the tail field of the list's first entry, 2-byte aligned,
        // inside the live allocation; the kernel reads it atomically.
        let tail = unsafe { AtomicU16::from_ptr(self.list.as_ptr().add(TAIL_OFFSET).cast()) };
        tail.store(self.tail.get(), Ordering::Release);
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
        // SAFETY: allocated in `new` with these layouts; invariant 8.
        unsafe {
            dealloc(self.mem.as_ptr(), self.layout);
            dealloc(self.list.as_ptr(), self.list_layout);
        }
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
