//! The data plane: N worker threads, each a single-threaded runtime owning
//! its SO_REUSEPORT listeners, its picker and its buffers. Nothing is shared
//! between workers but the snapshot (read lock-free) and the metrics.

mod bufpool;
mod orig_dst;
mod session;
mod sockets;
mod tcp_epoll;
mod tcp_uring;
mod udp;
mod worker;

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::admin::Metrics;
use crate::config::{DataplaneConfig, IoMode};
use crate::policy::{Locality, PolicyEngine};
use crate::snapshot::SharedSnapshot;

pub use worker::Worker;

/// Pending connections per listener.
const LISTEN_BACKLOG: i32 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoBackend {
    Uring,
    Epoll,
}

impl IoBackend {
    pub fn name(self) -> &'static str {
        match self {
            IoBackend::Uring => "io_uring",
            IoBackend::Epoll => "epoll",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "io_uring was requested (--io uring) but is unavailable: {0}; use --io auto or --io epoll"
    )]
    UringUnavailable(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start worker thread: {0}")]
    Thread(std::io::Error),
}

/// Picks the io back end: io_uring when asked for or when `auto` finds it
/// usable (a seccomp profile may block io_uring_setup).
pub fn choose_backend(mode: IoMode) -> Result<IoBackend, DataplaneError> {
    let probe = io_uring::IoUring::new(8).map(drop);
    match (mode, probe) {
        (IoMode::Epoll, _) => Ok(IoBackend::Epoll),
        (IoMode::Uring | IoMode::Auto, Ok(())) => Ok(IoBackend::Uring),
        (IoMode::Uring, Err(e)) => Err(DataplaneError::UringUnavailable(e)),
        (IoMode::Auto, Err(e)) => {
            tracing::warn!(error = %e, "io_uring unavailable; falling back to epoll");
            Ok(IoBackend::Epoll)
        }
    }
}

/// One worker's sockets, created before its thread so that a bind error
/// fails start-up instead of a thread.
struct WorkerSockets {
    tcp: Vec<std::net::TcpListener>,
    udp: Vec<std::net::UdpSocket>,
}

fn bind_worker_sockets(port: u16) -> Result<WorkerSockets, DataplaneError> {
    let mut out = WorkerSockets {
        tcp: Vec::new(),
        udp: Vec::new(),
    };
    for ip in sockets::LISTEN_ADDRS {
        let ip: IpAddr = match ip.parse() {
            Ok(ip) => ip,
            Err(_) => continue,
        };
        let addr = SocketAddr::new(ip, port);
        let listen_err = |source| DataplaneError::Listen { addr, source };
        match (
            sockets::tcp_listener(addr, LISTEN_BACKLOG),
            sockets::udp_listener(addr),
        ) {
            (Ok(tcp), Ok(udp)) => {
                out.tcp.push(tcp);
                out.udp.push(udp);
            }
            // A node without IPv6 still serves IPv4.
            (Err(e), _) | (_, Err(e))
                if ip.is_ipv6() && e.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
            {
                tracing::info!("IPv6 unavailable; serving IPv4 only");
            }
            (Err(e), _) | (_, Err(e)) => return Err(listen_err(e)),
        }
    }
    Ok(out)
}

/// What every worker shares.
#[derive(Clone)]
pub struct Shared {
    pub cfg: DataplaneConfig,
    pub bypass_mark: u32,
    pub snapshot: SharedSnapshot,
    pub metrics: Arc<Metrics>,
    pub policies: Option<Arc<PolicyEngine>>,
    pub here: Locality,
}

/// Starts `workers` threads on `backend`.
pub fn start(
    backend: IoBackend,
    workers: usize,
    shared: &Shared,
) -> Result<Vec<JoinHandle<()>>, DataplaneError> {
    let mut handles = Vec::with_capacity(workers);
    for id in 0..workers {
        let sockets = bind_worker_sockets(shared.cfg.listen_port)?;
        let s = shared.clone();
        let handle = std::thread::Builder::new()
            .name(format!("sy-worker-{id}"))
            .spawn(move || {
                let worker = Rc::new(Worker::new(
                    id,
                    s.snapshot,
                    s.cfg,
                    s.bypass_mark,
                    s.metrics,
                    s.policies,
                    s.here,
                ));
                run_worker(backend, worker, sockets);
            })
            .map_err(DataplaneError::Thread)?;
        handles.push(handle);
    }
    Ok(handles)
}

fn run_worker(backend: IoBackend, worker: Rc<Worker>, sockets: WorkerSockets) {
    let serve = async move {
        let mut tasks = Vec::new();
        for udp in sockets.udp {
            tasks.push(tokio::task::spawn_local(udp::serve(worker.clone(), udp)));
        }
        for tcp in sockets.tcp {
            tasks.push(match backend {
                IoBackend::Uring => tokio::task::spawn_local(tcp_uring::serve(worker.clone(), tcp)),
                IoBackend::Epoll => tokio::task::spawn_local(tcp_epoll::serve(worker.clone(), tcp)),
            });
        }
        for task in tasks {
            let _ = task.await;
        }
    };
    match backend {
        IoBackend::Uring => match tokio_uring::Runtime::new(tokio_uring::builder().entries(1024)) {
            Ok(rt) => rt.block_on(serve),
            Err(e) => tracing::error!(error = %e, "cannot start io_uring runtime"),
        },
        IoBackend::Epoll => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match rt {
                Ok(rt) => tokio::task::LocalSet::new().block_on(&rt, serve),
                Err(e) => tracing::error!(error = %e, "cannot start epoll runtime"),
            }
        }
    }
}
