//! hyper's HTTP/2 machinery spawns a task per stream; on a worker those
//! tasks stay on the worker's thread (its policy instances and pools are
//! not Sync), so futures need not be Send.

use std::future::Future;

#[derive(Debug, Clone, Copy, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}
