//! UDP through a Service: one flow per (client, Service address), pinned to
//! the endpoint picked for its first datagram, ended after an idle timeout.
//! Replies leave from the Service address the client sent to.
//!
//! Runs on tokio's reactor in both back ends (tokio-uring sits on it too):
//! the datagram path needs recvmsg with control messages, which tokio-uring
//! 0.5 cannot deliver.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Instant;

use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::catalog::Protocol;

use super::orig_dst;
use super::session::{self, Stop};
use super::sockets;
use super::worker::Worker;

/// Largest UDP payload.
pub const MAX_DATAGRAM: usize = 65535;

type FlowKey = (SocketAddr, SocketAddr);
type Flows = Rc<RefCell<HashMap<FlowKey, Rc<Flow>>>>;

struct Flow {
    upstream: UdpSocket,
    last_seen: Cell<Instant>,
}

pub async fn serve(worker: Rc<Worker>, socket: std::net::UdpSocket, mut stop: Stop) {
    let socket = match UdpSocket::from_std(socket) {
        Ok(socket) => socket,
        Err(e) => {
            tracing::error!(worker = worker.id, error = %e, "cannot register UDP listener");
            return;
        }
    };
    let flows: Flows = Rc::default();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let fd = socket.as_raw_fd();
        let received = tokio::select! {
            received = socket.async_io(Interest::READABLE, || orig_dst::recv(fd, &mut buf)) => received,
            () = session::stopped(&mut stop) => return,
        };
        let datagram = match received {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(worker = worker.id, error = %e, "UDP receive failed");
                continue;
            }
        };
        let Some(dst) = datagram.orig_dst.map(sockets::canonical) else {
            worker.metrics.unroutable.inc();
            continue;
        };
        let client = sockets::canonical(datagram.from);
        let payload = &buf[..datagram.len];
        let existing = flows.borrow().get(&(client, dst)).cloned();
        match existing {
            Some(flow) => {
                flow.last_seen.set(Instant::now());
                let _ = send_now(&flow.upstream, payload);
            }
            None => start_flow(&worker, &flows, client, dst, payload).await,
        }
    }
}

async fn start_flow(
    worker: &Rc<Worker>,
    flows: &Flows,
    client: SocketAddr,
    dst: SocketAddr,
    first: &[u8],
) {
    if flows.borrow().len() >= worker.cfg.max_udp_flows {
        worker.metrics.udp_flows_dropped.inc();
        // A flood of new clients would otherwise log one line per datagram.
        let limit = worker.cfg.max_udp_flows;
        crate::logging::limit_reached(&worker.metrics, "udp_flows", || {
            tracing::warn!(worker = worker.id, limit, %client, "UDP flow table full (dataplane.maxUdpFlows); datagram dropped");
        });
        return;
    }
    let Some(target) = worker.resolve(Protocol::Udp, dst) else {
        worker.metrics.unroutable.inc();
        return;
    };
    let mark = worker.bypass_mark;
    let connect = |addr| {
        let from = worker.upstream_source(&target, client, addr);
        async move { UdpSocket::from_std(sockets::upstream_udp(addr, mark, from)?) }
    };
    let Some(up) = worker.connect_upstream(&target, client, dst, connect).await else {
        return;
    };
    let reply = match sockets::reply_udp(dst, client, mark).and_then(UdpSocket::from_std) {
        Ok(reply) => reply,
        Err(e) => {
            // Fails for every new flow when descriptors run out: rate-limited.
            let service = &target.stats.labels.service;
            crate::logging::rate_limited_warn(&format!("reply-socket:{service}"), || {
                tracing::warn!(%service, %dst, error = %e, "cannot bind a reply socket to the Service address");
            });
            return;
        }
    };
    let (upstream, endpoint, decision) = (up.stream, up.endpoint, up.decision);
    let _ = send_now(&upstream, first);
    let flow = Rc::new(Flow {
        upstream,
        last_seen: Cell::new(Instant::now()),
    });
    flows.borrow_mut().insert((client, dst), flow.clone());
    target.stats.udp_flows.inc();
    worker.metrics.udp_flows_active.inc();
    tracing::trace!(%client, service = %target.stats.labels.service, %endpoint, "UDP flow started");
    let worker = worker.clone();
    let flows = flows.clone();
    tokio::task::spawn_local(async move {
        relay(&worker, &flow, &reply).await;
        flows.borrow_mut().remove(&(client, dst));
        worker.release(&target, decision, endpoint);
        worker.metrics.udp_flows_active.dec();
    });
}

/// Moves datagrams both ways until the flow is idle for the timeout. The
/// reply socket is connected to the client, so the kernel may also deliver
/// the client's later datagrams to it directly. Datagrams pass through the
/// worker's scratch buffer, so an idle flow holds no buffer of its own.
async fn relay(worker: &Worker, flow: &Flow, reply: &UdpSocket) {
    let idle = worker.cfg.udp_idle_timeout.0;
    loop {
        let deadline = flow.last_seen.get() + idle;
        tokio::select! {
            r = flow.upstream.readable() => if r.is_ok() {
                forward(worker, flow, &flow.upstream, reply);
            },
            r = reply.readable() => if r.is_ok() {
                forward(worker, flow, reply, &flow.upstream);
            },
            _ = tokio::time::sleep_until(deadline.into()) => {
                if flow.last_seen.get() + idle <= Instant::now() {
                    return;
                }
            }
        }
    }
}

/// Moves every datagram waiting on `from` to `to`. A datagram that cannot be
/// sent at once is dropped, as a full queue would drop it anyway.
fn forward(worker: &Worker, flow: &Flow, from: &UdpSocket, to: &UdpSocket) {
    let mut buf = worker.scratch.borrow_mut();
    // ICMP errors surface as recv errors; they end nothing.
    while let Ok(n) = from.try_recv(&mut buf) {
        flow.last_seen.set(Instant::now());
        let _ = send_now(to, &buf[..n]);
    }
}

/// Sends without waiting for the reactor: tokio's `try_send` refuses until
/// it has seen write readiness, which a fresh socket never reported, and a
/// datagram that does not fit the socket buffer is dropped either way.
fn send_now(socket: &UdpSocket, datagram: &[u8]) -> std::io::Result<usize> {
    socket2::SockRef::from(socket).send(datagram)
}
