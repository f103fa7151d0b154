//! What every data-plane worker owns, whatever its io back end: the
//! snapshot handle, its picker, its buffers, and the decision + connect
//! loop that TCP and UDP share.

use std::cell::RefCell;
use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use crate::admin::Metrics;
use crate::admin::metrics::{FailureLabels, FailureReason};
use crate::catalog::{Protocol, Route, Scope};
use crate::config::DataplaneConfig;
use crate::policy::{BoundPolicy, Decider, Decision, Outcome, PickRequest};
use crate::snapshot::SharedSnapshot;

use super::Shared;
use super::bufpool::BufPool;
use super::drain::Connections;
use super::port_stats::{PortStats, PortStatsCache};

/// Buffers kept idle per worker beyond the ones in use.
const MAX_IDLE_BUFFERS: usize = 256;

pub struct Worker {
    pub id: usize,
    pub snapshot: SharedSnapshot,
    pub cfg: DataplaneConfig,
    pub bypass_mark: u32,
    pub metrics: Arc<Metrics>,
    pub pool: BufPool,
    /// One datagram's worth of space for UDP relaying; never held across an
    /// await.
    pub scratch: RefCell<Vec<u8>>,
    /// Open connections, for endpoint drain and stop.
    pub conns: Connections,
    /// Connections and flows open on every worker (the stop waits for 0).
    pub active: Arc<AtomicUsize>,
    /// Turns true at stop; L7 connections watch it to close gracefully
    /// (HTTP/2 GOAWAY, HTTP/1.1 close after the current response).
    pub stop: super::session::Stop,
    /// io_uring workers: where L7 connections go (`l7::companion`).
    pub l7_handoff: Option<crate::l7::Handoff>,
    /// This node's addresses (refreshed by the sweep task).
    pub local: RefCell<HashSet<IpAddr>>,
    decider: RefCell<Decider>,
    port_stats: PortStatsCache,
}

/// The connected upstream, and the decision that chose it (its outcome and
/// its end are reported against that decision).
pub struct Upstream<S> {
    pub stream: S,
    pub endpoint: SocketAddr,
    pub decision: Decision,
}

/// How a connect attempt is held to `connectTimeout`: `None` when it ran
/// out.
pub trait ConnectDeadline {
    fn within<F: Future>(
        &self,
        limit: std::time::Duration,
        attempt: F,
    ) -> impl Future<Output = Option<F::Output>>;
}

/// A tokio timer (the epoll and tokio-uring back ends).
pub struct TokioTimer;

impl ConnectDeadline for TokioTimer {
    async fn within<F: Future>(&self, limit: std::time::Duration, attempt: F) -> Option<F::Output> {
        tokio::time::timeout(limit, attempt).await.ok()
    }
}

/// The attempt holds itself to the limit (the ring engine links a timeout
/// to its connect) and fails with `TimedOut` when it runs out.
pub struct SelfTimed;

impl ConnectDeadline for SelfTimed {
    async fn within<F: Future>(
        &self,
        _limit: std::time::Duration,
        attempt: F,
    ) -> Option<F::Output> {
        Some(attempt.await)
    }
}

/// A connection's destination resolved against one snapshot.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub route: Route,
    pub binding: Option<Arc<BoundPolicy>>,
    pub generation: u64,
    pub stats: Arc<PortStats>,
}

impl Worker {
    pub fn new(id: usize, shared: Shared) -> Self {
        let pool = BufPool::new(shared.cfg.buffer_size, MAX_IDLE_BUFFERS);
        let decider = Decider::new(shared.policies, shared.here, shared.metrics.clone());
        Self {
            id,
            snapshot: shared.snapshot,
            cfg: shared.cfg,
            bypass_mark: shared.bypass_mark,
            metrics: shared.metrics,
            pool,
            scratch: RefCell::new(vec![0; super::udp::MAX_DATAGRAM]),
            conns: Connections::default(),
            active: shared.active,
            stop: shared.stop.clone(),
            l7_handoff: None,
            local: RefCell::new(crate::netif::local_addresses()),
            decider: RefCell::new(decider),
            port_stats: PortStatsCache::default(),
        }
    }

    /// Looks the original destination up in the current snapshot.
    pub fn resolve(&self, protocol: Protocol, dst: SocketAddr) -> Option<Resolved> {
        let snapshot = self.snapshot.load();
        let route = snapshot.table.lookup(protocol, dst)?;
        let port = &route.port;
        Some(Resolved {
            binding: snapshot.bindings.get(&port.id).cloned(),
            generation: snapshot.generation,
            stats: self.port_stats.get(&self.metrics, port),
            route: route.clone(),
        })
    }

    /// Picks endpoints and connects until one answers, at most
    /// `connectAttempts` distinct endpoints, each within `connectTimeout`
    /// (a tokio timer).
    pub async fn connect_upstream<S, F, Fut>(
        &self,
        target: &Resolved,
        client: SocketAddr,
        frontend: SocketAddr,
        connect: F,
    ) -> Option<Upstream<S>>
    where
        F: FnMut(SocketAddr) -> Fut,
        Fut: Future<Output = io::Result<S>>,
    {
        self.connect_upstream_within(target, client, frontend, &TokioTimer, connect)
            .await
    }

    /// [`Worker::connect_upstream`] with `connectTimeout` enforced by
    /// `deadline`.
    pub async fn connect_upstream_within<S, F, Fut, D>(
        &self,
        target: &Resolved,
        client: SocketAddr,
        frontend: SocketAddr,
        deadline: &D,
        mut connect: F,
    ) -> Option<Upstream<S>>
    where
        F: FnMut(SocketAddr) -> Fut,
        Fut: Future<Output = io::Result<S>>,
        D: ConnectDeadline,
    {
        let endpoints = target.route.endpoints();
        let attempts = (self.cfg.connect_attempts as usize).min(endpoints.len());
        let mut tried: Vec<usize> = Vec::with_capacity(attempts);
        for _ in 0..attempts {
            let req = PickRequest {
                route: &target.route,
                binding: target.binding.as_ref(),
                generation: target.generation,
                client,
                frontend,
                tried: &tried,
            };
            let decision = self.decider.borrow_mut().pick(&req)?;
            let index = decision.index;
            let addr = endpoints[index].addr;
            let start = Instant::now();
            let result = deadline
                .within(self.cfg.connect_timeout.0, connect(addr))
                .await;
            let reason = match result {
                Some(Ok(stream)) => {
                    let outcome = Outcome::Connected {
                        latency: start.elapsed(),
                    };
                    self.decider
                        .borrow_mut()
                        .outcome(&req, decision, addr, outcome);
                    return Some(Upstream {
                        stream,
                        endpoint: addr,
                        decision,
                    });
                }
                Some(Err(e)) => {
                    tracing::debug!(service = %target.stats.labels.service, endpoint = %addr, error = %e, "upstream connect failed");
                    match e.kind() {
                        io::ErrorKind::ConnectionRefused => FailureReason::Refused,
                        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                            FailureReason::Unreachable
                        }
                        io::ErrorKind::TimedOut => FailureReason::Timeout,
                        _ => FailureReason::Other,
                    }
                }
                None => FailureReason::Timeout,
            };
            let outcome = Outcome::Failed {
                after: start.elapsed(),
            };
            self.decider
                .borrow_mut()
                .outcome(&req, decision, addr, outcome);
            self.count_failure(target, reason);
            tried.push(index);
        }
        self.count_failure(target, FailureReason::Exhausted);
        // Once per Service per window: a dead backend set (or a node out of
        // descriptors) fails every connection, and must not flood the log.
        let labels = &target.stats.labels;
        crate::logging::rate_limited_warn(&format!("exhausted:{}", labels.service), || {
            tracing::warn!(service = %labels.service, port = %labels.port, client = %client, tried = tried.len(), "no endpoint accepted the connection");
        });
        None
    }

    /// The address the upstream connection leaves from: the client's own,
    /// as kube-proxy's DNAT would show it, unless transparency is off, the
    /// Service wants a PROXY header instead, the client is a process on this
    /// node, or it came from outside to a Service with
    /// `externalTrafficPolicy: Cluster` (then the node's address, as with
    /// kube-proxy's masquerade).
    pub fn upstream_source(
        &self,
        target: &Resolved,
        client: SocketAddr,
        endpoint: SocketAddr,
    ) -> Option<SocketAddr> {
        let info = &target.route.port.service;
        let transparent = self.cfg.transparent
            && !info.proxy_protocol
            && client.is_ipv4() == endpoint.is_ipv4()
            && (target.route.scope == Scope::Internal || info.external_local)
            && !self.local.borrow().contains(&client.ip());
        transparent.then_some(client)
    }

    /// The worker's decision maker, for the L7 per-request pick
    /// (`l7::forward`), which has no connection-level connect loop.
    pub(crate) fn decider(&self) -> &RefCell<Decider> {
        &self.decider
    }

    /// A proxied connection or flow to `endpoint` ended.
    pub fn release(&self, target: &Resolved, decision: Decision, endpoint: SocketAddr) {
        self.decider
            .borrow_mut()
            .release(&target.route, decision, endpoint);
    }

    fn count_failure(&self, target: &Resolved, reason: FailureReason) {
        self.metrics
            .connect_failures
            .get_or_create(&FailureLabels {
                service: target.stats.labels.service.clone(),
                port: target.stats.labels.port.clone(),
                reason,
            })
            .inc();
    }
}
