//! The worker's loop: run the ready tasks, then one `io_uring_enter` that
//! submits everything they queued and waits for at least one completion
//! (or for none when tasks are still ready), then dispatch the
//! completions, which wake their tasks.

use std::future::Future;
use std::io;
use std::rc::Rc;

use super::executor::Executor;
use super::ops::Ring;

/// Ring entries: a turn rarely queues more; when it does, the queue is
/// submitted early (`Ring::push`).
const ENTRIES: u32 = 1024;

/// Ready passes per turn before the ring is entered (without waiting):
/// tasks that keep waking each other must not starve the completions.
const PASSES: usize = 4;

pub struct Runtime {
    pub ring: Rc<Ring>,
    exec: Executor,
}

impl Runtime {
    pub fn new() -> io::Result<Rc<Self>> {
        Self::with_ring(Ring::new(ENTRIES)?)
    }

    /// A runtime whose ring has `count` provided buffers.
    #[cfg(test)]
    pub fn with_buffers(count: u16) -> io::Result<Rc<Self>> {
        Self::with_ring(Ring::with_buffers(ENTRIES, count)?)
    }

    /// The same with a registered buffer ring (not the default: see
    /// `Ring::with_buffers`).
    #[cfg(test)]
    pub fn with_mapped_buffers(count: u16) -> io::Result<Rc<Self>> {
        Self::with_ring(Ring::with_mapped_buffers(ENTRIES, count)?)
    }

    fn with_ring(ring: Ring) -> io::Result<Rc<Self>> {
        let exec = Executor::new()?;
        let ring = Rc::new(ring);
        let rt = Rc::new(Self { ring, exec });
        rt.spawn(wakeups(rt.ring.clone(), rt.exec.eventfd()));
        Ok(rt)
    }

    pub fn spawn(&self, future: impl Future<Output = ()> + 'static) {
        self.exec.spawn(future);
    }

    /// Runs the loop until `done` says so after a turn (forever in the
    /// worker; tests stop it).
    pub fn run(&self, mut done: impl FnMut() -> bool) -> io::Result<()> {
        loop {
            let mut passes = 0;
            while passes < PASSES && self.exec.run_ready() > 0 {
                passes += 1;
            }
            if done() {
                return Ok(());
            }
            let want = u32::from(!self.exec.has_ready());
            self.ring.enter(want)?;
            self.ring.reap();
        }
    }
}

/// Keeps a read of the eventfd armed: a wake from another thread writes it,
/// which completes the read and ends the ring wait.
async fn wakeups(ring: Rc<Ring>, eventfd: std::os::fd::RawFd) {
    loop {
        let (res, _) = ring.read_counter(eventfd).await;
        if res < 0 && res != -libc::EINTR && res != -libc::EAGAIN {
            tracing::error!(
                error = %io::Error::from_raw_os_error(-res),
                "cannot read the worker's wake-up eventfd; wakes from other threads are lost"
            );
            return;
        }
    }
}
