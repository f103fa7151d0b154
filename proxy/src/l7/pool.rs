//! Upstream connections of one worker, per backend: idle HTTP/1.1
//! connections kept alive for reuse, and one multiplexed HTTP/2 connection
//! per backend for h2c/gRPC ports. Thread-local, because a worker is one
//! thread and nothing here is Sync; no lock on the request path.
//!
//! Pooled connections leave from the node's address (not the client's):
//! one connection carries many clients' requests.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper::http::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};

use super::exec::LocalExec;
use crate::catalog::L7Protocol;
use crate::config::L7Config;
use crate::dataplane::sockets;

/// How a backend connection could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr}: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    #[error("connect to {addr}: timed out")]
    Timeout { addr: SocketAddr },
    #[error("HTTP handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        source: hyper::Error,
    },
}

/// A connection ready to take one request.
pub enum Sender {
    H1 {
        addr: SocketAddr,
        inner: http1::SendRequest<Incoming>,
        reused: bool,
    },
    H2 {
        inner: http2::SendRequest<Incoming>,
        reused: bool,
    },
}

impl Sender {
    /// Taken from the pool (it may have been closed by the backend since).
    pub fn reused(&self) -> bool {
        match self {
            Sender::H1 { reused, .. } | Sender::H2 { reused, .. } => *reused,
        }
    }

    /// Sends; an error that hands the request back means it never left
    /// (the pooled connection had closed), so it may go elsewhere.
    pub async fn send(
        self,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, TrySendError<Request<Incoming>>> {
        match self {
            Sender::H1 {
                addr, mut inner, ..
            } => {
                let resp = inner.try_send_request(req).await;
                if resp.is_ok() {
                    // Back in the pool at once, busy until its response
                    // body has been read; `take` skips it until then. No
                    // task or timer per request (see `take`).
                    POOL.with_borrow_mut(|p| p.put(addr, inner));
                }
                resp
            }
            Sender::H2 { mut inner, .. } => inner.try_send_request(req).await,
        }
    }
}

struct Idle {
    sender: http1::SendRequest<Incoming>,
    /// When its last request was sent.
    since: Instant,
}

impl Idle {
    /// Closed, or ready and unused for `timeout` (a busy connection is
    /// never expired: its response may be long).
    fn stale(&self, now: Instant, timeout: Duration) -> bool {
        self.sender.is_closed()
            || (self.sender.is_ready() && now.saturating_duration_since(self.since) >= timeout)
    }
}

struct Shared {
    sender: http2::SendRequest<Incoming>,
    used: Instant,
}

#[derive(Default)]
struct Pool {
    h1: HashMap<SocketAddr, Vec<Idle>>,
    h2: HashMap<SocketAddr, Shared>,
    idle_timeout: Duration,
    max_idle: usize,
    sweeper: bool,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// Settings the pool needs, from the worker's config.
#[derive(Debug, Clone, Copy)]
pub struct Dial {
    pub mark: u32,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
}

impl Dial {
    pub fn new(mark: u32, connect_timeout: Duration, l7: &L7Config) -> Self {
        Self {
            mark,
            connect_timeout,
            idle_timeout: l7.upstream_idle_timeout.0,
            max_idle: l7.max_idle_per_endpoint,
        }
    }
}

/// A connection to `addr`: a pooled one when there is a live one, else a
/// new one. `fresh` skips the pool (a retry after a stale connection).
pub async fn checkout(
    addr: SocketAddr,
    protocol: L7Protocol,
    dial: Dial,
    fresh: bool,
) -> Result<Sender, ConnectError> {
    POOL.with_borrow_mut(|p| {
        p.idle_timeout = dial.idle_timeout;
        p.max_idle = dial.max_idle;
        if !p.sweeper {
            p.sweeper = true;
            tokio::task::spawn_local(sweep(dial.idle_timeout));
        }
    });
    if !fresh && let Some(sender) = POOL.with_borrow_mut(|p| p.take(addr, protocol)) {
        return Ok(sender);
    }
    let stream = connect(addr, dial).await?;
    let io = TokioIo::new(stream);
    let handshake = |source| ConnectError::Handshake { addr, source };
    match protocol {
        L7Protocol::Http1 => {
            let (sender, conn) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(handshake)?;
            tokio::task::spawn_local(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(endpoint = %addr, error = %e, "upstream HTTP/1.1 connection ended");
                }
            });
            Ok(Sender::H1 {
                addr,
                inner: sender,
                reused: false,
            })
        }
        L7Protocol::H2c => {
            let (sender, conn) = http2::Builder::new(LocalExec)
                .timer(TokioTimer::new())
                .adaptive_window(true)
                .keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10))
                .handshake(io)
                .await
                .map_err(handshake)?;
            tokio::task::spawn_local(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(endpoint = %addr, error = %e, "upstream HTTP/2 connection ended");
                }
            });
            POOL.with_borrow_mut(|p| {
                p.h2.insert(
                    addr,
                    Shared {
                        sender: sender.clone(),
                        used: Instant::now(),
                    },
                )
            });
            Ok(Sender::H2 {
                inner: sender,
                reused: false,
            })
        }
    }
}

/// A new TCP connection to a backend, from the node, with the bypass
/// mark, within the connect timeout.
pub async fn connect(addr: SocketAddr, dial: Dial) -> Result<tokio::net::TcpStream, ConnectError> {
    let io_err = |source| ConnectError::Io { addr, source };
    let socket = sockets::upstream_tcp(addr, dial.mark, None).map_err(io_err)?;
    let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    match tokio::time::timeout(dial.connect_timeout, socket.connect(addr)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(io_err(e)),
        Err(_) => Err(ConnectError::Timeout { addr }),
    }
}

impl Pool {
    fn take(&mut self, addr: SocketAddr, protocol: L7Protocol) -> Option<Sender> {
        match protocol {
            L7Protocol::H2c => {
                let shared = self.h2.get_mut(&addr)?;
                if shared.sender.is_closed() {
                    self.h2.remove(&addr);
                    return None;
                }
                shared.used = Instant::now();
                Some(Sender::H2 {
                    inner: shared.sender.clone(),
                    reused: true,
                })
            }
            L7Protocol::Http1 => {
                let conns = self.h1.get_mut(&addr)?;
                let now = Instant::now();
                // Newest first: the least likely to have been closed by the
                // backend's own keep-alive timeout. Busy ones stay.
                let mut i = conns.len();
                while i > 0 {
                    i -= 1;
                    if conns[i].stale(now, self.idle_timeout) {
                        conns.swap_remove(i);
                    } else if conns[i].sender.is_ready() {
                        let c = conns.swap_remove(i);
                        return Some(Sender::H1 {
                            addr,
                            inner: c.sender,
                            reused: true,
                        });
                    }
                }
                None
            }
        }
    }

    fn put(&mut self, addr: SocketAddr, sender: http1::SendRequest<Incoming>) {
        let idle = self.h1.entry(addr).or_default();
        if idle.len() < self.max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    fn prune(&mut self) {
        let timeout = self.idle_timeout;
        let now = Instant::now();
        self.h1.retain(|_, conns| {
            conns.retain(|c| !c.stale(now, timeout));
            !conns.is_empty()
        });
        self.h2
            .retain(|_, s| !s.sender.is_closed() && s.used.elapsed() < timeout);
    }
}

/// Drops idle connections past the idle timeout, so that an idle worker
/// does not hold backend sockets forever.
async fn sweep(every: Duration) {
    let period = (every / 2).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(period).await;
        POOL.with_borrow_mut(Pool::prune);
    }
}
