//! Serves one client connection of an L7 Service port: HTTP/1.1 or h2c
//! (prior knowledge), told apart by the first bytes, each request handed
//! to `forward`. Every wait is bounded: the request head by
//! `headerReadTimeout`, a connection without requests by `idleTimeout`.

use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;

use super::conn::{Conn, Target};
use super::exec::LocalExec;
use super::forward;
use super::metrics::ErrorReason;
use crate::dataplane::session::{self, Accepted};
use crate::dataplane::sockets;
use crate::dataplane::worker::Worker;

/// Streams one HTTP/2 client may have open at once.
const MAX_CONCURRENT_STREAMS: u32 = 256;

/// Takes an accepted io_uring socket over for hyper, which needs readiness
/// based io: a duplicate of the descriptor goes to the tokio reactor that
/// tokio-uring runs on (see ARCHITECTURE.md, "L7"), and the ring's handle
/// is closed by the caller.
pub fn adopt(socket: &impl AsRawFd) -> io::Result<tokio::net::TcpStream> {
    tokio::net::TcpStream::from_std(adopt_std(socket)?)
}

/// The duplicate as a non-blocking std socket, to hand to another thread.
pub fn adopt_std(socket: &impl AsRawFd) -> io::Result<std::net::TcpStream> {
    let owned = sockets::borrow(socket).try_clone_to_owned()?;
    let std = std::net::TcpStream::from(owned);
    std.set_nonblocking(true)?;
    Ok(std)
}

pub async fn serve(worker: Rc<Worker>, stream: tokio::net::TcpStream, accepted: Accepted) {
    let _ = stream.set_nodelay(true);
    // Counted with the worker's connections: a stop waits for it (up to
    // the drain timeout) after asking it to close gracefully below.
    let _open = Open::new(worker.active.clone());
    let mut stop = worker.stop.clone();
    let target = Target::new(&worker, accepted.target);
    target.metrics.connections.inc();
    let l7 = worker.cfg.l7.clone();
    let conn = Rc::new(Conn::new(
        worker,
        accepted.client,
        accepted.frontend,
        target,
    ));
    let service = {
        let conn = conn.clone();
        hyper::service::service_fn(move |req| forward::handle(conn.clone(), req))
    };
    let mut builder = auto::Builder::new(LocalExec);
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(l7.header_read_timeout.0)
        .max_buf_size(l7.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(l7.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .adaptive_window(true)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let served = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(served);
    let opened = Instant::now();
    let mut closing = false;
    let tick =
        (l7.header_read_timeout.0.min(l7.idle_timeout.0) / 4).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Err(e) = result {
                    if let Some(t) = conn.target() {
                        t.metrics.error(ErrorReason::Client);
                    }
                    tracing::debug!(client = %conn.client, error = %e, "L7 client connection ended with an error");
                }
                break;
            }
            () = session::stopped(&mut stop), if !closing => {
                closing = true;
                served.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep(tick), if !closing => {
                // Before its first request a connection gets the header
                // timeout (hyper's auto detection has none of its own);
                // later, the idle timeout between requests.
                let (limit, since) = if conn.requests.get() == 0 {
                    (l7.header_read_timeout.0, opened)
                } else {
                    (l7.idle_timeout.0, conn.last_active.get())
                };
                if conn.in_flight.get() == 0 && since.elapsed() >= limit {
                    closing = true;
                    served.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// One open L7 client connection in the worker's count of open
/// connections and flows (what a stop waits for).
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(active: Arc<AtomicUsize>) -> Self {
        active.fetch_add(1, Ordering::Relaxed);
        Self(active)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
