//! The data plane: N worker threads, each a single-threaded runtime owning
//! its SO_REUSEPORT listeners, its picker and its buffers. Nothing is shared
//! between workers but the snapshot (read lock-free) and the metrics.

pub(crate) mod admission;
mod bufpool;
mod drain;
mod orig_dst;
mod port_stats;
mod proxy_protocol;
mod ring;
pub(crate) mod session;
pub(crate) mod sockets;
mod tcp_epoll;
mod tcp_uring;
pub(crate) mod udp;
pub(crate) mod worker;

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::thread::JoinHandle;

use crate::admin::Metrics;
use crate::config::{DataplaneConfig, IoMode, UringEngine};
use crate::policy::{Locality, PolicyEngine};
use crate::snapshot::SharedSnapshot;

pub use worker::Worker;

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

fn bind_worker_sockets(
    port: u16,
    backlog: u32,
    bypass_mark: u32,
) -> Result<WorkerSockets, DataplaneError> {
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
            sockets::tcp_listener(
                addr,
                i32::try_from(backlog).unwrap_or(i32::MAX),
                bypass_mark,
            ),
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
    /// Turns true at stop: listeners close.
    pub stop: session::Stop,
    /// Connections and UDP flows open on all workers.
    pub active: Arc<AtomicUsize>,
}

/// Starts `workers` threads on `backend`.
pub fn start(
    backend: IoBackend,
    workers: usize,
    shared: &Shared,
) -> Result<Vec<JoinHandle<()>>, DataplaneError> {
    let mut handles = Vec::with_capacity(workers);
    for id in 0..workers {
        let sockets = bind_worker_sockets(
            shared.cfg.listen_port,
            shared.cfg.listen_backlog,
            shared.bypass_mark,
        )?;
        let mut sockets = sockets;
        let s = shared.clone();
        let own_ring = backend == IoBackend::Uring && shared.cfg.uring_engine == UringEngine::Ring;
        // The ring engine has no UDP path: its worker's UDP sockets are
        // served by the companion's tokio runtime.
        let companion_udp = if own_ring {
            std::mem::take(&mut sockets.udp)
        } else {
            Vec::new()
        };
        // hyper runs faster on plain tokio than on tokio-uring's runtime:
        // an io_uring worker hands its L7 connections to an epoll thread.
        let l7_handoff = match backend {
            IoBackend::Uring => Some(
                crate::l7::spawn_companion(id, shared.clone(), companion_udp)
                    .map_err(DataplaneError::Thread)?,
            ),
            IoBackend::Epoll => None,
        };
        let handle = std::thread::Builder::new()
            .name(format!("sy-worker-{id}"))
            .spawn(move || {
                let stop = s.stop.clone();
                let mut worker = Worker::new(id, s);
                worker.l7_handoff = l7_handoff;
                let worker = Rc::new(worker);
                if own_ring {
                    ring::run(worker, sockets.tcp, stop);
                } else {
                    run_worker(backend, worker, sockets, stop);
                }
            })
            .map_err(DataplaneError::Thread)?;
        handles.push(handle);
    }
    Ok(handles)
}

/// How often a worker re-reads the node's addresses (they change rarely;
/// a new one is only mistaken for a Pod's address until then).
const LOCAL_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

/// How often a worker looks for connections to endpoints that left.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// The sweep's clock, whatever drives it: drains connections to departed
/// endpoints; after a stop, ends them all once the drain timeout passed.
struct Sweep {
    stopping_since: Option<std::time::Instant>,
    refreshed: std::time::Instant,
}

impl Sweep {
    fn new() -> Self {
        Self {
            stopping_since: None,
            refreshed: std::time::Instant::now(),
        }
    }

    fn stopping(&self) -> bool {
        self.stopping_since.is_some()
    }

    fn stop_seen(&mut self) {
        self.stopping_since = Some(std::time::Instant::now());
    }

    /// One round; `false` once every connection was ended after a stop.
    fn tick(&mut self, worker: &Worker) -> bool {
        let now = std::time::Instant::now();
        if now.duration_since(self.refreshed) >= LOCAL_REFRESH {
            *worker.local.borrow_mut() = crate::netif::local_addresses();
            self.refreshed = now;
        }
        if let Some(since) = self.stopping_since
            && now.duration_since(since) >= worker.cfg.drain_timeout.0
        {
            worker.conns.close_all();
            return false;
        }
        let closed = worker.conns.sweep(
            &worker.snapshot.load().table,
            worker.cfg.endpoint_drain_time.0,
            now,
        );
        if closed > 0 {
            tracing::info!(
                worker = worker.id,
                closed,
                "closed connections to endpoints that left their Service after the drain time"
            );
        }
        true
    }
}

/// The sweep on tokio's timer.
async fn sweep(worker: &Worker, mut stop: session::Stop) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut state = Sweep::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = session::stopped(&mut stop), if !state.stopping() => state.stop_seen(),
        }
        if !state.tick(worker) {
            return;
        }
    }
}

fn run_worker(backend: IoBackend, worker: Rc<Worker>, sockets: WorkerSockets, stop: session::Stop) {
    let serve = async move {
        let mut tasks = Vec::new();
        for udp in sockets.udp {
            tasks.push(tokio::task::spawn_local(udp::serve(
                worker.clone(),
                udp,
                stop.clone(),
            )));
        }
        for tcp in sockets.tcp {
            let stop = stop.clone();
            tasks.push(match backend {
                IoBackend::Uring => {
                    tokio::task::spawn_local(tcp_uring::serve(worker.clone(), tcp, stop))
                }
                IoBackend::Epoll => {
                    tokio::task::spawn_local(tcp_epoll::serve(worker.clone(), tcp, stop))
                }
            });
        }
        // The listeners are gone after a stop; the connections still open
        // keep the runtime busy until the process exits.
        sweep(&worker, stop).await;
        for task in tasks {
            let _ = task.await;
        }
        std::future::pending::<()>().await;
    };
    match backend {
        IoBackend::Uring => match uring_runtime() {
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

/// The worker's ring. A completion normally interrupts the worker with a
/// signal-like notification (an inter-processor interrupt when the worker
/// runs on another core than the softirq that completed it); cooperative
/// task running lets it pick completions up at its next ring call instead,
/// which the event loop makes anyway. The ring has one submitter, the
/// worker thread, which lets the kernel skip its locking. Kernels before
/// 6.0 lack the flags: the ring is then made without them.
fn uring_runtime() -> std::io::Result<tokio_uring::Runtime> {
    let mut flags = tokio_uring::uring_builder();
    flags.setup_coop_taskrun().setup_single_issuer();
    tokio_uring::Runtime::new(tokio_uring::builder().entries(1024).uring_builder(&flags)).or_else(
        |e| {
            tracing::debug!(error = %e, "io_uring without cooperative task running");
            tokio_uring::Runtime::new(tokio_uring::builder().entries(1024))
        },
    )
}
