//! L7 connections of an io_uring worker are served on an epoll runtime of
//! their own (one thread per worker), because hyper on tokio-uring's
//! runtime measured slower than on plain tokio (ARCHITECTURE.md, "L7"):
//! the io_uring worker accepts, resolves and hands the socket over; the
//! companion thread owns the HTTP connection, its policy instances and its
//! upstream pool from then on.
//!
//! A worker on the ring engine (`dataplane::ring`) also hands its UDP
//! sockets over: the datagram path (recvmsg with the original destination)
//! stays on tokio, on this thread.

use std::io;
use std::rc::Rc;

use tokio::sync::mpsc;

use crate::dataplane::Shared;
use crate::dataplane::admission;
use crate::dataplane::session::Accepted;
use crate::dataplane::worker::Worker;

/// Where an io_uring worker sends its L7 connections.
#[derive(Clone)]
pub struct Handoff(mpsc::UnboundedSender<(std::net::TcpStream, Accepted)>);

impl Handoff {
    /// Passes a connection on; `false` when the companion is gone (the
    /// socket is then closed).
    pub fn send(&self, stream: std::net::TcpStream, accepted: Accepted) -> bool {
        self.0.send((stream, accepted)).is_ok()
    }

    /// Hands worker `worker`'s accepted `client` over (a duplicate of its
    /// descriptor: the caller closes its own).
    pub fn hand_over(&self, worker: usize, client: &impl std::os::fd::AsRawFd, accepted: Accepted) {
        match crate::l7::adopt_std(client) {
            Ok(stream) => {
                if !self.send(stream, accepted) {
                    tracing::warn!(worker, "L7 companion thread is gone; connection closed");
                }
            }
            // dup() fails for every connection once descriptors run out.
            Err(e) => crate::logging::rate_limited_warn("l7-handoff", || {
                tracing::warn!(error = %e, "cannot hand an L7 connection over");
            }),
        }
    }
}

/// Starts worker `id`'s L7 companion thread, which also serves `udp`.
pub fn spawn(id: usize, shared: Shared, udp: Vec<std::net::UdpSocket>) -> io::Result<Handoff> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name(format!("sy-l7-{id}"))
        .spawn(move || run(id, shared, rx, udp))?;
    Ok(Handoff(tx))
}

fn run(
    id: usize,
    shared: Shared,
    rx: mpsc::UnboundedReceiver<(std::net::TcpStream, Accepted)>,
    udp: Vec<std::net::UdpSocket>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = id, error = %e, "cannot start the L7 runtime; L7 connections of this worker will be closed");
            return;
        }
    };
    let worker = Rc::new(Worker::new(id, shared));
    let local = tokio::task::LocalSet::new();
    for socket in udp {
        let stop = worker.stop.clone();
        local.spawn_local(crate::dataplane::udp::serve(worker.clone(), socket, stop));
    }
    local.block_on(&rt, serve(worker, rx));
}

async fn serve(
    worker: Rc<Worker>,
    mut rx: mpsc::UnboundedReceiver<(std::net::TcpStream, Accepted)>,
) {
    while let Some((stream, accepted)) = rx.recv().await {
        match tokio::net::TcpStream::from_std(stream) {
            Ok(stream) => {
                // The ring worker's admission slot ended at the hand-over;
                // this thread's own count keeps maxConnectionsPerWorker.
                let Some(slot) = admission::admit(&worker, &stream) else {
                    continue;
                };
                let worker = worker.clone();
                tokio::task::spawn_local(async move {
                    let _slot = slot;
                    super::serve(worker, stream, accepted).await;
                });
            }
            Err(e) => {
                tracing::warn!(worker = worker.id, error = %e, "cannot register an L7 connection")
            }
        }
    }
    // The io_uring worker is gone (stop): connections still open finish
    // or are cut when the process exits.
    std::future::pending::<()>().await;
}
