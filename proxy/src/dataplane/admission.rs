//! Admission of accepted TCP connections against
//! `dataplane.maxConnectionsPerWorker`, and the accounting of accepts that
//! failed for want of file descriptors.
//!
//! A worker is one thread, so a thread-local count is exactly the worker's
//! count, shared by its IPv4 and IPv6 listeners without a lock or a change
//! to `Worker`. A connection holds its slot from accept to close, through
//! the upstream connect, so that connects in flight count too.

use std::cell::Cell;
use std::io;
use std::marker::PhantomData;
use std::os::fd::AsRawFd;

use super::sockets;
use super::worker::Worker;

thread_local! {
    static OPEN: Cell<usize> = const { Cell::new(0) };
}

/// One admitted connection; frees its place when dropped. Not `Send`: it
/// must be dropped on the worker thread that counted it.
#[derive(Debug)]
pub struct Slot {
    _not_send: PhantomData<*const ()>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        OPEN.with(|open| open.set(open.get().saturating_sub(1)));
    }
}

/// Connections this worker thread holds now.
pub fn open() -> usize {
    OPEN.with(Cell::get)
}

/// A slot for a just-accepted connection, or `None` at the cap: the client
/// is reset (RST on close, not a FIN it could mistake for an answer), the
/// refusal counted and logged at a bounded rate.
pub fn admit(worker: &Worker, client: &impl AsRawFd) -> Option<Slot> {
    let limit = worker.cfg.max_connections_per_worker;
    let admitted = OPEN.with(|open| {
        let n = open.get();
        (n < limit).then(|| open.set(n + 1))
    });
    if admitted.is_some() {
        return Some(Slot {
            _not_send: PhantomData,
        });
    }
    sockets::reset_on_close(client);
    crate::logging::limit_reached(&worker.metrics, "connections", || {
        tracing::warn!(
            worker = worker.id,
            limit,
            "connection refused: dataplane.maxConnectionsPerWorker reached"
        );
    });
    None
}

/// Counts an accept that failed because the process or the system ran out
/// of file descriptors (the caller backs off; the connection waits in the
/// listen queue and is accepted once descriptors free up).
pub fn accept_error(worker: &Worker, e: &io::Error) {
    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
        crate::logging::limit_reached(&worker.metrics, "file_descriptors", || {
            tracing::warn!(
                worker = worker.id,
                open = open(),
                error = %e,
                "out of file descriptors: new connections wait in the listen queue"
            );
        });
    }
}
