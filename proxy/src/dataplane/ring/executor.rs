//! The worker's task executor: a slab of boxed futures and a queue of the
//! ids that are ready to be polled.
//!
//! A waker is a task id and the queue. Wakes from the worker's own thread
//! (a completion dispatched by the loop, a channel between two tasks) only
//! push the id. A wake from another thread (the stop signal, sent by the
//! signal task on the main runtime) also writes the worker's eventfd, whose
//! read is always armed on the ring: the worker, asleep in
//! `io_uring_enter`, wakes up without any polling. A stale wake (a task id
//! that ended and was reused) only polls a task once more than needed,
//! which every future tolerates.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};

type BoxFuture = Pin<Box<dyn Future<Output = ()>>>;

thread_local! {
    /// The ready queue of the executor running on this thread, to tell a
    /// local wake from a remote one.
    static LOCAL_QUEUE: Cell<*const ReadyQueue> = const { Cell::new(std::ptr::null()) };
}

/// Task ids to poll, shared with the wakers.
pub struct ReadyQueue {
    ids: Mutex<Vec<usize>>,
    /// Written by remote wakes; read on the ring by the wake-up task.
    eventfd: OwnedFd,
}

impl ReadyQueue {
    fn new() -> std::io::Result<Self> {
        // Blocking: a ring read of a non-blocking file fails with EAGAIN
        // instead of waiting. A write blocks only at a counter of 2^64-2.
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            ids: Mutex::new(Vec::new()),
            // SAFETY: `fd` was just created and is owned by nothing else.
            eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn push(&self, id: usize) {
        // A poisoned lock only means a panic elsewhere; the ids are fine.
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        ids.push(id);
        drop(ids);
        let local = LOCAL_QUEUE.with(Cell::get) == std::ptr::from_ref(self);
        if !local {
            let one: u64 = 1;
            // SAFETY: a valid eventfd and a live 8-byte value.
            unsafe {
                libc::write(
                    self.eventfd.as_raw_fd(),
                    (&raw const one).cast(),
                    std::mem::size_of::<u64>(),
                );
            }
        }
    }

    fn take(&self, into: &mut Vec<usize>) {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *ids, into);
    }

    fn is_empty(&self) -> bool {
        self.ids.lock().map(|ids| ids.is_empty()).unwrap_or(false)
    }
}

struct TaskWaker {
    id: usize,
    queue: Arc<ReadyQueue>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.queue.push(self.id);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.queue.push(self.id);
    }
}

struct Task {
    future: Option<BoxFuture>,
    waker: Waker,
}

/// Runs the tasks of one worker thread.
pub struct Executor {
    tasks: RefCell<Vec<Option<Task>>>,
    free: RefCell<Vec<usize>>,
    queue: Arc<ReadyQueue>,
    /// Reused between passes: no allocation per loop turn.
    batch: RefCell<Vec<usize>>,
}

impl Executor {
    pub fn new() -> std::io::Result<Self> {
        let queue = Arc::new(ReadyQueue::new()?);
        LOCAL_QUEUE.with(|q| q.set(Arc::as_ptr(&queue)));
        Ok(Self {
            tasks: RefCell::default(),
            free: RefCell::default(),
            queue,
            batch: RefCell::default(),
        })
    }

    /// The eventfd that remote wakes write.
    pub fn eventfd(&self) -> std::os::fd::RawFd {
        self.queue.eventfd.as_raw_fd()
    }

    pub fn spawn(&self, future: impl Future<Output = ()> + 'static) {
        let future: BoxFuture = Box::pin(future);
        let id = self.free.borrow_mut().pop();
        let mut tasks = self.tasks.borrow_mut();
        let id = id.unwrap_or_else(|| {
            tasks.push(None);
            tasks.len() - 1
        });
        let waker = Waker::from(Arc::new(TaskWaker {
            id,
            queue: self.queue.clone(),
        }));
        tasks[id] = Some(Task {
            future: Some(future),
            waker,
        });
        drop(tasks);
        self.queue.push(id);
    }

    pub fn has_ready(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Polls every ready task once; tasks woken meanwhile wait for the
    /// next pass. Returns how many were polled.
    pub fn run_ready(&self) -> usize {
        let mut batch = std::mem::take(&mut *self.batch.borrow_mut());
        batch.clear();
        self.queue.take(&mut batch);
        let polled = batch.len();
        for &id in &batch {
            // Taken out while it runs: it may spawn, which borrows `tasks`.
            let taken = {
                let mut tasks = self.tasks.borrow_mut();
                match tasks.get_mut(id).and_then(Option::as_mut) {
                    Some(task) => task.future.take().map(|f| (f, task.waker.clone())),
                    None => None,
                }
            };
            // Already running further up (a nested wake) or gone.
            let Some((mut future, waker)) = taken else {
                continue;
            };
            let mut cx = Context::from_waker(&waker);
            if future.as_mut().poll(&mut cx).is_ready() {
                let mut tasks = self.tasks.borrow_mut();
                tasks[id] = None;
                self.free.borrow_mut().push(id);
                drop(tasks);
                // Dropped outside the borrow: a finished task's drop may
                // run code that spawns.
                drop(future);
            } else if let Some(task) = self.tasks.borrow_mut()[id].as_mut() {
                task.future = Some(future);
            }
        }
        *self.batch.borrow_mut() = batch;
        polled
    }

    /// Tasks alive (for tests).
    #[cfg(test)]
    pub fn live(&self) -> usize {
        self.tasks.borrow().iter().filter(|t| t.is_some()).count()
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        LOCAL_QUEUE.with(|q| {
            if q.get() == Arc::as_ptr(&self.queue) {
                q.set(std::ptr::null());
            }
        });
    }
}

/// Resolves after one poll: lets other ready tasks run first.
#[cfg(test)]
pub async fn yield_now() {
    use std::task::Poll;
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::task::Poll;

    #[test]
    fn runs_spawned_tasks_and_their_wakes() {
        let ex = Rc::new(Executor::new().expect("eventfd"));
        let hits = Rc::new(Cell::new(0));
        for _ in 0..3 {
            let hits = hits.clone();
            let ex2 = ex.clone();
            ex.spawn(async move {
                yield_now().await;
                hits.set(hits.get() + 1);
                let hits = hits.clone();
                ex2.spawn(async move { hits.set(hits.get() + 10) });
            });
        }
        let mut turns = 0;
        while ex.has_ready() && turns < 100 {
            ex.run_ready();
            turns += 1;
        }
        assert_eq!(hits.get(), 33);
        assert_eq!(ex.live(), 0);
    }

    #[test]
    fn a_wake_from_another_thread_writes_the_eventfd() {
        let ex = Executor::new().expect("eventfd");
        let (tx, rx) = std::sync::mpsc::channel::<Waker>();
        ex.spawn(async move {
            let mut sent = false;
            std::future::poll_fn(|cx| {
                if sent {
                    Poll::Ready(())
                } else {
                    sent = true;
                    let _ = tx.send(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
        });
        ex.run_ready();
        let waker = rx.recv().expect("waker");
        std::thread::spawn(move || waker.wake())
            .join()
            .expect("thread");
        let mut count = 0u64;
        // SAFETY: a valid eventfd and an 8-byte destination.
        let n = unsafe { libc::read(ex.eventfd(), (&raw mut count).cast(), 8) };
        assert_eq!((n, count), (8, 1));
        assert!(ex.has_ready());
        ex.run_ready();
        assert_eq!(ex.live(), 0);
    }
}
