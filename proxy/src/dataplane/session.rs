//! The parts of a proxied TCP connection that do not depend on the io back
//! end: where it was going, and the metrics of its life.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::catalog::Protocol;
use crate::policy::Decision;

use super::sockets;
use super::worker::{ConnectDeadline, Resolved, TokioTimer, Upstream, Worker};

/// Turns true when the process stops: listeners close, open connections
/// go on until the drain timeout.
pub type Stop = tokio::sync::watch::Receiver<bool>;

/// Resolves once `stop` says so (or its sender is gone).
pub async fn stopped(stop: &mut Stop) {
    let _ = stop.wait_for(|&s| s).await;
}

/// An accepted connection resolved to a Service port.
pub struct Accepted {
    pub client: SocketAddr,
    /// The original destination (TPROXY keeps it as the local address).
    pub frontend: SocketAddr,
    pub target: Resolved,
}

/// Resolves an accepted socket; resets it when its destination is in no
/// Service (it raced a snapshot change, or was sent to the listener port).
pub fn accept(worker: &Worker, client: &impl AsRawFd, peer: SocketAddr) -> Option<Accepted> {
    let frontend = socket2::SockRef::from(&sockets::borrow(client))
        .local_addr()
        .ok()?
        .as_socket()?;
    let frontend = sockets::canonical(frontend);
    let client_addr = sockets::canonical(peer);
    match worker.resolve(Protocol::Tcp, frontend) {
        Some(target) => Some(Accepted {
            client: client_addr,
            frontend,
            target,
        }),
        None => {
            worker.metrics.unroutable.inc();
            tracing::debug!(client = %client_addr, %frontend, "connection to no Service; reset");
            sockets::reset_on_close(client);
            None
        }
    }
}

/// The PROXY v2 header for a Service that asked for one.
pub fn proxy_header(accepted: &Accepted) -> Option<Vec<u8>> {
    accepted
        .target
        .route
        .port
        .service
        .proxy_protocol
        .then(|| super::proxy_protocol::v2_header(accepted.client, accepted.frontend, false))
}

/// Picks and connects the upstream of an accepted connection; each attempt
/// is `connect(endpoint, bypass mark, source, PROXY header)`, the source
/// being the client's address when the connection is transparent. Boxed: a
/// future's state is reserved in the connection's task for its whole life,
/// and the connect phase's would be most of an idle connection's task.
pub fn connect_upstream<'a, S, Fut>(
    worker: &'a Worker,
    accepted: &'a Accepted,
    connect: impl Fn(SocketAddr, u32, Option<SocketAddr>, Option<Vec<u8>>) -> Fut + 'a,
) -> Pin<Box<impl Future<Output = Option<Upstream<S>>> + 'a>>
where
    Fut: Future<Output = io::Result<S>> + 'a,
{
    connect_upstream_within(worker, accepted, TokioTimer, connect)
}

/// [`connect_upstream`] with `connectTimeout` enforced by `deadline`.
pub fn connect_upstream_within<'a, S, Fut, D>(
    worker: &'a Worker,
    accepted: &'a Accepted,
    deadline: D,
    connect: impl Fn(SocketAddr, u32, Option<SocketAddr>, Option<Vec<u8>>) -> Fut + 'a,
) -> Pin<Box<impl Future<Output = Option<Upstream<S>>> + 'a>>
where
    Fut: Future<Output = io::Result<S>> + 'a,
    D: ConnectDeadline + 'a,
{
    let header = proxy_header(accepted);
    let mark = worker.bypass_mark;
    Box::pin(async move {
        let attempt = |addr| {
            let from = worker.upstream_source(&accepted.target, accepted.client, addr);
            connect(addr, mark, from, header.clone())
        };
        worker
            .connect_upstream_within(
                &accepted.target,
                accepted.client,
                accepted.frontend,
                &deadline,
                attempt,
            )
            .await
    })
}

/// Counts a connection while it is open.
pub struct Active<'a> {
    worker: &'a Worker,
    target: &'a Resolved,
    endpoint: SocketAddr,
    decision: Decision,
    id: u64,
}

impl<'a> Active<'a> {
    pub fn new(
        worker: &'a Worker,
        accepted: &'a Accepted,
        endpoint: SocketAddr,
        decision: Decision,
        fds: [RawFd; 2],
    ) -> Self {
        let stats = &accepted.target.stats;
        tracing::trace!(client = %accepted.client, service = %stats.labels.service, %endpoint, "proxying");
        stats.connections.inc();
        stats.active.inc();
        worker.active.fetch_add(1, Ordering::Relaxed);
        let id = worker.conns.register(&accepted.target.route, endpoint, fds);
        Self {
            worker,
            target: &accepted.target,
            endpoint,
            decision,
            id,
        }
    }

    pub fn finish(self, to_backend: u64, to_client: u64) {
        self.target.stats.tx.inc_by(to_backend);
        self.target.stats.rx.inc_by(to_client);
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.target.stats.active.dec();
        self.worker
            .release(self.target, self.decision, self.endpoint);
        self.worker.conns.unregister(self.id);
        self.worker.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts an accept error and backs off briefly when the process is out of
/// file descriptors, instead of spinning on the error.
pub async fn accept_failed(worker: &Worker, e: &io::Error) {
    if count_accept_failure(worker, e) {
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }
}

/// How long a worker out of descriptors waits before it accepts again.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// Counts and logs an accept error; `true` when the caller should back off
/// for [`ACCEPT_BACKOFF`] (the process is out of file descriptors).
pub fn count_accept_failure(worker: &Worker, e: &io::Error) -> bool {
    worker.metrics.accept_errors.inc();
    crate::logging::rate_limited_warn(&format!("accept:{}", worker.id), || {
        tracing::warn!(worker = worker.id, error = %e, "accept failed");
    });
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
