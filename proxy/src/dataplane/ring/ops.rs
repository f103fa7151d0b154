//! The ring and the memory its operations use: the only unsafe code of the
//! engine about buffer lifetimes.
//!
//! # Invariants
//!
//! 1. Every submission queue entry that points to memory (a buffer, a
//!    sockaddr, a timespec, an eventfd counter) is pushed together with an
//!    [`Owned`] that owns that memory on the heap, into a slot of the op
//!    slab. The slot, and so the memory, lives until the entry's completion
//!    has been reaped: never less, whatever happens to the future that
//!    asked for it.
//! 2. Heap memory does not move when its owner moves (`Vec` and `Box`
//!    contents), so the pointer in the entry stays valid while the slot
//!    holds the owner.
//! 3. A future dropped while its op is in flight ([`Op`], [`Multishot`])
//!    marks the slot *detached* and asks the kernel to cancel the op; the
//!    slot is freed (its memory dropped) only when the op's last
//!    completion arrives. Descriptors a detached multishot accept still
//!    delivers are closed.
//! 4. A completion names its slot by index and generation (`user_data`),
//!    so a late completion, or a cancel aimed at a slot since reused, can
//!    never be mistaken for another op's. Completions of entries that need
//!    no answer carry [`IGNORE`].
//! 5. The ring is dropped only after the loop ended and with it every
//!    future; the kernel cancels what is still in flight when the ring fd
//!    closes, and the slab (dropped after the ring, field order) outlives
//!    that.
//!
//! `tests::stress` runs many concurrent ops, drops futures mid-flight and
//! cancels, in a loop, and checks that every slot comes back. The provided
//! buffers (invariants 6-8) are in [`provided`].

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use io_uring::{IoUring, opcode, squeue, types};

/// `IORING_ENTER_GETEVENTS` (the crate keeps its `sys` module private):
/// wait for completions, and run the deferred task work that posts them.
const ENTER_GETEVENTS: u32 = 1;

/// Bytes per provided buffer.
pub const PROVIDED_SIZE: usize = provided::SIZE;

/// `user_data` of entries whose completion nobody waits for.
pub const IGNORE: u64 = u64::MAX;

/// What an op's memory is. Each variant's contents are on the heap.
pub enum Owned {
    Nothing,
    Buf(Vec<u8>),
    /// Held only for the kernel to read (invariant 1).
    Addr(
        #[expect(dead_code, reason = "read by the kernel")]
        Box<(libc::sockaddr_storage, libc::socklen_t)>,
    ),
    Time(#[expect(dead_code, reason = "read by the kernel")] Box<types::Timespec>),
    Counter(#[expect(dead_code, reason = "written by the kernel")] Box<u64>),
    /// A buffer of the provided group (invariants 6-8).
    Provided(provided::Provided),
}

impl Owned {
    /// The bytes of a buffer (empty for the other kinds).
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Owned::Buf(buf) => buf,
            Owned::Provided(p) => p.as_slice(),
            _ => &[],
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            Owned::Buf(buf) => buf,
            Owned::Provided(p) => p.as_mut_slice(),
            _ => &mut [],
        }
    }
}

enum State {
    /// In flight, a future waits for it.
    Waiting(Option<Waker>),
    /// Completed (result, flags), the future has not taken it yet.
    Done(i32, u32),
    /// In flight, nobody waits: freed at its (last) completion.
    Detached,
}

struct Slot {
    generation: u32,
    state: State,
    owned: Owned,
    /// Multishot ops: results not taken yet, and whether the op ended.
    multishot: Option<(VecDeque<i32>, bool)>,
}

/// The worker's ring and its op slab.
pub struct Ring {
    // Field order: the ring (and the kernel's references to slab memory)
    // goes before the slab.
    uring: RefCell<IoUring>,
    slots: RefCell<Vec<Option<Slot>>>,
    free: RefCell<Vec<usize>>,
    generation: Cell<u32>,
    in_flight: Cell<usize>,
    /// The provided buffers (after the ring: invariant 8); `None` where the
    /// kernel refused them.
    group: Option<Rc<provided::Group>>,
    /// Reused by `give_back`.
    returned: RefCell<Vec<u16>>,
    /// DEFER_TASKRUN (6.1+) rings only: a receive's completion then says
    /// reliably whether more data or a FIN waits (IORING_CQE_F_SOCK_NONEMPTY).
    nonempty_hint: bool,
    /// `IOSQE_CQE_SKIP_SUCCESS` (5.17+) for the entries nobody waits for:
    /// their completion would otherwise end the turn's wait for nothing.
    skip_success: squeue::Flags,
}

impl Ring {
    /// A ring with one submitter (this thread) whose completions wait for
    /// the next `io_uring_enter` instead of interrupting the thread
    /// (DEFER_TASKRUN, 6.1+; COOP_TASKRUN, 5.19+, else none).
    pub fn new(entries: u32) -> io::Result<Self> {
        Self::with_buffers(entries, provided::COUNT)
    }

    /// A ring whose provided group has `count` buffers, given with
    /// IORING_OP_PROVIDE_BUFFERS. The registered buffer ring saved ~1 µs
    /// of io_uring work per keep-alive request, but with it 9,000 idle
    /// connections held 39.3 MiB instead of 29.9 (~1 KiB more each, as if
    /// idle directions held pool buffers; not explained yet), and total
    /// CPU did not show the saving (bench/results/2026-12-06-s6-goals.md).
    pub fn with_buffers(entries: u32, count: u16) -> io::Result<Self> {
        Self::build(entries, count, false)
    }

    /// A ring whose group is a registered buffer ring (the mapped list).
    #[cfg(test)]
    pub fn with_mapped_buffers(entries: u32, count: u16) -> io::Result<Self> {
        Self::build(entries, count, true)
    }

    fn build(entries: u32, count: u16, mapped: bool) -> io::Result<Self> {
        let deferred = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(entries);
        let nonempty_hint = deferred.is_ok();
        let mut uring = deferred
            .or_else(|e| {
                tracing::debug!(error = %e, "io_uring without deferred task running");
                IoUring::builder()
                    .setup_single_issuer()
                    .setup_coop_taskrun()
                    .build(entries)
            })
            .or_else(|e| {
                tracing::debug!(error = %e, "io_uring without cooperative task running");
                IoUring::new(entries)
            })?;
        let group = provide_all(&mut uring, count, mapped);
        let skip_success = if uring.params().is_feature_skip_cqe_on_success() {
            squeue::Flags::SKIP_SUCCESS
        } else {
            squeue::Flags::empty()
        };
        Ok(Self {
            uring: RefCell::new(uring),
            slots: RefCell::default(),
            free: RefCell::default(),
            generation: Cell::new(0),
            in_flight: Cell::new(0),
            group,
            returned: RefCell::default(),
            nonempty_hint,
            skip_success,
        })
    }

    /// Whether receives can select a provided buffer.
    pub fn has_buffers(&self) -> bool {
        self.group.is_some()
    }

    /// Whether a receive completion without IORING_CQE_F_SOCK_NONEMPTY
    /// means that nothing (no data, no FIN) waits in the socket.
    pub fn nonempty_hint(&self) -> bool {
        self.nonempty_hint
    }

    #[cfg(test)]
    pub fn buffers_held(&self) -> usize {
        self.group.as_ref().map_or(0, |g| g.held())
    }

    /// Whether the kernel picks provided buffers from the mapped list.
    #[cfg(test)]
    pub fn buffers_mapped(&self) -> bool {
        self.group.as_ref().is_some_and(|g| g.mapped())
    }

    /// Provides the buffers dropped since the last submit again: into the
    /// mapped list, or one SQE each in this submit (no syscall of their
    /// own) where the kernel has no mapped lists.
    fn give_back(&self) {
        let Some(group) = &self.group else { return };
        let mut ids = std::mem::take(&mut *self.returned.borrow_mut());
        group.take_returned(&mut ids);
        if group.mapped() {
            if !ids.is_empty() {
                for &bid in &ids {
                    group.add(bid);
                }
                group.publish();
            }
            *self.returned.borrow_mut() = ids;
            return;
        }
        for &bid in &ids {
            let entry = opcode::ProvideBuffers::new(
                group.ptr(bid),
                provided::SIZE as i32,
                1,
                provided::GROUP,
                bid,
            )
            .build()
            .flags(self.skip_success)
            .user_data(IGNORE);
            // The entry points into the group, which outlives the ring
            // (invariant 8); the id is no one's now (invariant 6).
            self.push(&[entry]);
        }
        *self.returned.borrow_mut() = ids;
    }

    /// Slots in use (ops in flight or results not taken).
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    fn alloc(&self, owned: Owned, multishot: bool) -> u64 {
        let generation = self.generation.get().wrapping_add(1);
        self.generation.set(generation);
        let slot = Slot {
            generation,
            state: State::Waiting(None),
            owned,
            multishot: multishot.then(|| (VecDeque::new(), false)),
        };
        let mut slots = self.slots.borrow_mut();
        let index = match self.free.borrow_mut().pop() {
            Some(i) => {
                slots[i] = Some(slot);
                i
            }
            None => {
                slots.push(Some(slot));
                slots.len() - 1
            }
        };
        self.in_flight.set(self.in_flight.get() + 1);
        (u64::from(generation) << 32) | index as u64
    }

    fn release(&self, index: usize) {
        let slot = self.slots.borrow_mut()[index].take();
        self.free.borrow_mut().push(index);
        self.in_flight.set(self.in_flight.get() - 1);
        // The memory is dropped here, outside the borrow.
        drop(slot);
    }

    /// Queues entries (a linked chain when more than one), submitting what
    /// is queued first when they do not fit.
    fn push(&self, entries: &[squeue::Entry]) {
        // A full queue is submitted early; a kernel that cannot take it
        // (EBUSY: completions to reap first) gets its completions reaped.
        // Bounded: a ring that takes nothing must not hang the worker.
        for _ in 0..64 {
            let mut uring = self.uring.borrow_mut();
            let mut sq = uring.submission();
            if sq.capacity() - sq.len() >= entries.len() {
                for entry in entries {
                    // SAFETY: room was checked above; the memory each entry
                    // points to is owned by its slot (invariant 1).
                    let pushed = unsafe { sq.push(entry) };
                    debug_assert!(pushed.is_ok());
                }
                return;
            }
            drop(sq);
            let submitted = uring.submit();
            drop(uring);
            match submitted {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR)) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN)) => {
                    self.reap();
                }
                Err(e) => {
                    tracing::error!(error = %e, "io_uring submit failed with a full queue");
                    break;
                }
            }
        }
        // The op's future then waits until its connection is swept or the
        // process stops: logged, as nothing else can be done.
        tracing::error!("io_uring submission queue stays full; an operation is lost");
    }

    /// Submits `entry`, whose pointers lead only into `owned`, and returns
    /// the future of its completion.
    ///
    /// # Safety
    ///
    /// Every pointer in `entry` must point into the heap memory of `owned`
    /// (or be null), and be valid for the op's access.
    pub unsafe fn submit(self: &Rc<Self>, entry: squeue::Entry, owned: Owned) -> Op {
        let user_data = self.alloc(owned, false);
        self.push(&[entry.user_data(user_data)]);
        Op {
            ring: self.clone(),
            user_data,
            taken: false,
            flags: 0,
        }
    }

    /// Submits `entry` with no future: its memory is freed at completion.
    ///
    /// # Safety
    ///
    /// As [`Ring::submit`].
    pub unsafe fn submit_detached(&self, entry: squeue::Entry, owned: Owned) {
        let user_data = match owned {
            Owned::Nothing => IGNORE,
            owned => {
                let user_data = self.alloc(owned, false);
                self.detach(user_data);
                user_data
            }
        };
        self.push(&[entry.user_data(user_data)]);
    }

    /// Submits a multishot op; its results queue up in its slot.
    ///
    /// # Safety
    ///
    /// As [`Ring::submit`].
    pub unsafe fn submit_multishot(self: &Rc<Self>, entry: squeue::Entry) -> Multishot {
        let user_data = self.alloc(Owned::Nothing, true);
        self.push(&[entry.user_data(user_data)]);
        Multishot {
            ring: self.clone(),
            user_data,
        }
    }

    fn detach(&self, user_data: u64) {
        let index = (user_data & 0xffff_ffff) as usize;
        if let Some(Some(slot)) = self.slots.borrow_mut().get_mut(index) {
            slot.state = State::Detached;
        }
    }

    /// Cancels the op of `user_data` (its completion then comes soon,
    /// with `-ECANCELED` unless it had completed already).
    fn cancel(&self, user_data: u64) {
        let entry = opcode::AsyncCancel::new(user_data)
            .build()
            .user_data(IGNORE);
        self.push(&[entry]);
    }

    /// Submits what is queued and waits for `want` completions (0: just
    /// submits and picks up what is done): the loop's one syscall per turn.
    pub fn enter(&self, want: u32) -> io::Result<()> {
        self.give_back();
        let mut uring = self.uring.borrow_mut();
        let to_submit = u32::try_from(uring.submission().len()).unwrap_or(u32::MAX);
        // SAFETY: no argument struct; the ring's own fd.
        let res = unsafe {
            uring
                .submitter()
                .enter::<libc::sigset_t>(to_submit, want, ENTER_GETEVENTS, None)
        };
        match res {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN | libc::ETIME)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Dispatches every completion in the queue to its slot.
    pub fn reap(&self) -> usize {
        let mut n = 0;
        loop {
            // One at a time: dispatch may push entries (a detached close).
            let cqe = {
                let mut uring = self.uring.borrow_mut();
                uring.completion().next()
            };
            let Some(cqe) = cqe else { return n };
            n += 1;
            self.complete(cqe.user_data(), cqe.result(), cqe.flags());
        }
    }

    fn complete(&self, user_data: u64, result: i32, flags: u32) {
        // Adopted first, whatever happens to the slot: dropped unused, it
        // goes back to the kernel (invariant 6).
        let provided = io_uring::cqueue::buffer_select(flags).and_then(|bid| {
            let group = self.group.as_ref()?;
            // SAFETY: the kernel just handed `bid` over in this completion.
            unsafe { provided::Provided::adopt(group, bid) }
        });
        if user_data == IGNORE {
            return;
        }
        let index = (user_data & 0xffff_ffff) as usize;
        let generation = (user_data >> 32) as u32;
        let more = io_uring::cqueue::more(flags);
        let mut slots = self.slots.borrow_mut();
        let Some(Some(slot)) = slots.get_mut(index) else {
            return;
        };
        if slot.generation != generation {
            return;
        }
        if let Some(provided) = provided {
            slot.owned = Owned::Provided(provided);
        }
        let waker = match &mut slot.state {
            State::Detached => {
                let last = slot.multishot.is_none() || !more;
                if slot.multishot.is_some() && result >= 0 {
                    close_fd(result);
                }
                drop(slots);
                if last {
                    self.release(index);
                }
                return;
            }
            State::Waiting(waker) => {
                let waker = waker.take();
                match &mut slot.multishot {
                    Some((results, ended)) => {
                        results.push_back(result);
                        *ended = !more;
                    }
                    None => slot.state = State::Done(result, flags),
                }
                waker
            }
            State::Done(..) => None,
        };
        drop(slots);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// A receive into `buf` (all of it).
    pub fn recv(self: &Rc<Self>, fd: RawFd, mut buf: Vec<u8>) -> Op {
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let entry = opcode::Recv::new(types::Fd(fd), buf.as_mut_ptr(), len).build();
        // SAFETY: the entry points into `buf`, owned by the slot.
        unsafe { self.submit(entry, Owned::Buf(buf)) }
    }

    /// A receive into a buffer of the provided group, which the kernel
    /// picks only once data (or the FIN) is there; `None` without a group.
    /// Fails with `ENOBUFS` when every buffer is held.
    pub fn recv_select(self: &Rc<Self>, fd: RawFd) -> Option<Op> {
        self.group.as_ref()?;
        let entry = opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), provided::SIZE as u32)
            .buf_group(provided::GROUP)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT);
        // SAFETY: no pointer of ours; the buffer comes from the group
        // (invariants 6-8) and is handed over in the completion.
        Some(unsafe { self.submit(entry, Owned::Nothing) })
    }

    /// A send of `buf[start..end]`; never raises SIGPIPE.
    pub fn send(self: &Rc<Self>, fd: RawFd, buf: Vec<u8>, start: usize, end: usize) -> Op {
        self.send_owned(fd, Owned::Buf(buf), start, end)
    }

    /// A send of `buf[start..end]` out of a pool or a provided buffer.
    pub fn send_owned(self: &Rc<Self>, fd: RawFd, buf: Owned, start: usize, end: usize) -> Op {
        let bytes = buf.as_slice();
        let end = end.min(bytes.len());
        let start = start.min(end);
        let len = u32::try_from(end - start).unwrap_or(u32::MAX);
        let ptr = bytes[start..].as_ptr();
        let entry = opcode::Send::new(types::Fd(fd), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        // SAFETY: the entry points into `buf`'s heap memory (a Vec's, or
        // the group's: invariants 2, 7), owned by the slot.
        unsafe { self.submit(entry, buf) }
    }

    /// A connect of `fd` to `to`, cancelled after `timeout` by a linked
    /// timeout (the op then fails with `ECANCELED`).
    pub fn connect(self: &Rc<Self>, fd: RawFd, to: SocketAddr, timeout: Duration) -> Op {
        let addr = socket2::SockAddr::from(to);
        // SAFETY: an all-zero sockaddr_storage is valid.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = addr.len();
        // SAFETY: `addr` holds `len` ≤ sizeof(sockaddr_storage) bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                addr.as_ptr().cast::<u8>(),
                (&raw mut storage).cast::<u8>(),
                len as usize,
            );
        }
        let addr = Box::new((storage, len));
        let time = Box::new(
            types::Timespec::new()
                .sec(timeout.as_secs())
                .nsec(timeout.subsec_nanos()),
        );
        let connect = opcode::Connect::new(types::Fd(fd), (&raw const addr.0).cast(), len)
            .build()
            .flags(squeue::Flags::IO_LINK);
        let link = opcode::LinkTimeout::new(&raw const *time).build();
        let connect_data = self.alloc(Owned::Addr(addr), false);
        let link_data = self.alloc(Owned::Time(time), false);
        self.detach(link_data);
        self.push(&[connect.user_data(connect_data), link.user_data(link_data)]);
        Op {
            ring: self.clone(),
            user_data: connect_data,
            taken: false,
            flags: 0,
        }
    }

    /// Resolves after `after`.
    pub fn sleep(self: &Rc<Self>, after: Duration) -> Op {
        let time = Box::new(
            types::Timespec::new()
                .sec(after.as_secs())
                .nsec(after.subsec_nanos()),
        );
        let entry = opcode::Timeout::new(&raw const *time).build();
        // SAFETY: the entry points into `time`, owned by the slot.
        unsafe { self.submit(entry, Owned::Time(time)) }
    }

    /// An 8-byte read (an eventfd's counter).
    pub fn read_counter(self: &Rc<Self>, fd: RawFd) -> Op {
        let mut counter = Box::new(0u64);
        let entry = opcode::Read::new(types::Fd(fd), (&raw mut *counter).cast(), 8).build();
        // SAFETY: the entry points into `counter`, owned by the slot.
        unsafe { self.submit(entry, Owned::Counter(counter)) }
    }

    /// Accepts on `listener` until cancelled or failed.
    pub fn accept_multishot(self: &Rc<Self>, listener: RawFd) -> Multishot {
        let entry = opcode::AcceptMulti::new(types::Fd(listener))
            .flags(libc::SOCK_CLOEXEC)
            .build();
        // SAFETY: no pointers.
        unsafe { self.submit_multishot(entry) }
    }

    /// Closes `fd`, which the caller gives up, at the next submission. The
    /// kernel runs a socket's close inline, in submission order. (Not so
    /// IORING_OP_SHUTDOWN, always sent to an io-wq thread: a later ring
    /// close, and a new socket with the same number, can overtake it.)
    pub fn close(&self, fd: std::os::fd::OwnedFd) {
        use std::os::fd::IntoRawFd;
        let entry = opcode::Close::new(types::Fd(fd.into_raw_fd()))
            .build()
            .flags(self.skip_success);
        // SAFETY: no pointers.
        unsafe { self.submit_detached(entry, Owned::Nothing) }
    }
}

/// Provides the whole group at once on the new ring: the mapped list, or
/// one IORING_OP_PROVIDE_BUFFERS waited for; `None` (receives then use
/// pool buffers) if the kernel refuses both.
fn provide_all(uring: &mut IoUring, count: u16, mapped: bool) -> Option<Rc<provided::Group>> {
    let group = provided::Group::new(count)?;
    if mapped {
        let (addr, entries) = group.list();
        // SAFETY: the list is page-aligned memory of `entries` entries,
        // kept by the ring after the ring fd (invariant 8).
        match unsafe {
            uring
                .submitter()
                .register_buf_ring_with_flags(addr, entries, provided::GROUP, 0)
        } {
            Ok(()) => {
                group.fill_list();
                return Some(group);
            }
            Err(e) => tracing::debug!(error = %e, "io_uring: no mapped buffer list"),
        }
    }
    let entry = opcode::ProvideBuffers::new(
        group.base(),
        provided::SIZE as i32,
        group.count(),
        provided::GROUP,
        0,
    )
    .build()
    .user_data(0);
    // SAFETY: the entry points into the group, kept by the ring after the
    // ring fd (invariant 8).
    if unsafe { uring.submission().push(&entry) }.is_err() {
        return None;
    }
    if let Err(e) = uring.submit_and_wait(1) {
        tracing::debug!(error = %e, "io_uring: cannot provide buffers");
        return None;
    }
    let res = uring.completion().next().map_or(-libc::EIO, |c| c.result());
    if res < 0 {
        tracing::debug!(
            error = %io::Error::from_raw_os_error(-res),
            "io_uring: no provided buffers; idle connections hold a pool buffer"
        );
        return None;
    }
    Some(group)
}

fn close_fd(fd: i32) {
    // SAFETY: a descriptor the kernel just gave us that nobody else owns.
    unsafe {
        libc::close(fd);
    }
}

/// The completion of one op: its result (`-errno` on failure) and its
/// memory back.
pub struct Op {
    ring: Rc<Ring>,
    user_data: u64,
    taken: bool,
    /// The completion's flags, once taken.
    flags: u32,
}

impl Op {
    /// The same completion with its CQE flags.
    pub fn with_flags(self) -> WithFlags {
        WithFlags(self)
    }
}

/// An [`Op`] whose output also carries the CQE flags.
pub struct WithFlags(Op);

impl Future for WithFlags {
    type Output = (i32, u32, Owned);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.0).poll(cx) {
            Poll::Ready((res, owned)) => Poll::Ready((res, self.0.flags, owned)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Future for Op {
    type Output = (i32, Owned);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let index = (self.user_data & 0xffff_ffff) as usize;
        let mut slots = self.ring.slots.borrow_mut();
        let Some(Some(slot)) = slots.get_mut(index) else {
            return Poll::Ready((-libc::ECANCELED, Owned::Nothing));
        };
        match &mut slot.state {
            State::Done(result, flags) => {
                let (result, flags) = (*result, *flags);
                let owned = std::mem::replace(&mut slot.owned, Owned::Nothing);
                drop(slots);
                self.taken = true;
                self.flags = flags;
                self.ring.release(index);
                Poll::Ready((result, owned))
            }
            State::Waiting(waker) => {
                match waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            State::Detached => Poll::Ready((-libc::ECANCELED, Owned::Nothing)),
        }
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        let index = (self.user_data & 0xffff_ffff) as usize;
        let done = matches!(
            self.ring.slots.borrow().get(index),
            Some(Some(Slot {
                state: State::Done(..),
                ..
            }))
        );
        if done {
            self.ring.release(index);
        } else {
            // Invariant 3: the kernel may still write into the memory.
            self.ring.detach(self.user_data);
            self.ring.cancel(self.user_data);
        }
    }
}

/// The results of a multishot op, in order; `None` once it ended.
pub struct Multishot {
    ring: Rc<Ring>,
    user_data: u64,
}

impl Multishot {
    pub fn next(&mut self) -> impl Future<Output = Option<i32>> + '_ {
        std::future::poll_fn(move |cx| {
            let index = (self.user_data & 0xffff_ffff) as usize;
            let mut slots = self.ring.slots.borrow_mut();
            let Some(Some(slot)) = slots.get_mut(index) else {
                return Poll::Ready(None);
            };
            let Some((results, ended)) = &mut slot.multishot else {
                return Poll::Ready(None);
            };
            if let Some(result) = results.pop_front() {
                return Poll::Ready(Some(result));
            }
            if *ended {
                return Poll::Ready(None);
            }
            if let State::Waiting(waker) = &mut slot.state {
                *waker = Some(cx.waker().clone());
            }
            Poll::Pending
        })
    }
}

impl Drop for Multishot {
    fn drop(&mut self) {
        let index = (self.user_data & 0xffff_ffff) as usize;
        let ended = {
            let mut slots = self.ring.slots.borrow_mut();
            match slots.get_mut(index) {
                Some(Some(Slot {
                    multishot: Some((results, ended)),
                    ..
                })) => {
                    // Accepted but not taken: ours to close.
                    for fd in results.drain(..) {
                        if fd >= 0 {
                            close_fd(fd);
                        }
                    }
                    *ended
                }
                _ => return,
            }
        };
        if ended {
            self.ring.release(index);
        } else {
            self.ring.detach(self.user_data);
            self.ring.cancel(self.user_data);
        }
    }
}

/// `-errno` → an io::Error, else the count.
pub fn result(res: i32) -> io::Result<usize> {
    usize::try_from(res).map_err(|_| io::Error::from_raw_os_error(-res))
}

mod provided;

#[cfg(test)]
mod tests;
