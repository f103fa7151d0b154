//! `spec.healthCheckNodePort`, served as kube-proxy serves it
//! (pkg/proxy/healthcheck/service_health.go): for every LoadBalancer
//! Service with `externalTrafficPolicy: Local`, an HTTP server on that port
//! of the node's NodePort addresses answers
//! `{"service":{"namespace":…,"name":…},"localEndpoints":N,"serviceProxyHealthy":…}`,
//! 200 when this node has ready endpoints of the Service and the proxy is
//! healthy, 503 otherwise (so 503 once a stop begins: load balancers drain
//! the node first). Cloud load balancers send the Service's traffic only to
//! nodes that answer 200.
//!
//! The control loop calls [`HealthCheckPorts::reconcile`] after every sync:
//! listeners open and close with the Services; every answer reads the
//! current snapshot, so endpoint changes show at once.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use hyper::StatusCode;
use tokio::task::JoinHandle;

use super::Health;
use super::server::{self, Handler};
use crate::catalog::{ServiceKey, ServiceTable, family_range};
use crate::config::{NodePortAddress, network};
use crate::snapshot::SharedSnapshot;

pub struct HealthCheckPorts {
    health: Arc<Health>,
    snapshot: SharedSnapshot,
    node_name: Option<String>,
    listeners: HashMap<SocketAddr, JoinHandle<()>>,
}

impl HealthCheckPorts {
    pub fn new(health: Arc<Health>, snapshot: SharedSnapshot, node_name: Option<String>) -> Self {
        Self {
            health,
            snapshot,
            node_name,
            listeners: HashMap::new(),
        }
    }

    /// Opens the listeners `table` asks for and closes the others. A port
    /// that cannot be bound is logged and tried again on the next sync.
    pub fn reconcile(&mut self, table: &ServiceTable, node_port_addresses: &[NodePortAddress]) {
        if table.health_checks.is_empty() && self.listeners.is_empty() {
            return;
        }
        let addresses = bind_addresses(table, node_port_addresses);
        let wanted: BTreeSet<SocketAddr> = table
            .health_checks
            .keys()
            .flat_map(|&port| addresses.iter().map(move |&ip| SocketAddr::new(ip, port)))
            .collect();
        self.listeners.retain(|addr, task| {
            let keep = wanted.contains(addr) && !task.is_finished();
            if !keep {
                task.abort();
                tracing::info!(%addr, "health-check node port closed");
            }
            keep
        });
        for addr in wanted {
            if self.listeners.contains_key(&addr) {
                continue;
            }
            match self.open(addr) {
                Ok(task) => {
                    tracing::info!(%addr, "health-check node port open");
                    self.listeners.insert(addr, task);
                }
                Err(e) => crate::logging::rate_limited_warn(&format!("hc-port:{addr}"), || {
                    tracing::warn!(%addr, error = %e, "cannot open a health-check node port; retrying on the next sync");
                }),
            }
        }
    }

    /// Closes every listener. While a stop drains, they stay open and
    /// answer 503 (readiness is off); this runs at exit.
    pub fn close_all(&mut self) {
        for (_, task) in self.listeners.drain() {
            task.abort();
        }
    }

    fn open(&self, addr: SocketAddr) -> std::io::Result<JoinHandle<()>> {
        let (health, snapshot, node) = (
            self.health.clone(),
            self.snapshot.clone(),
            self.node_name.clone(),
        );
        let port = addr.port();
        let handler: Handler = Arc::new(move |_call| {
            let table = snapshot.load().table.clone();
            let healthy = health.proxy_healthy(SystemTime::now());
            let reply = answer(&table, port, node.as_deref(), healthy);
            Box::pin(async move { reply })
        });
        let listener = bind(addr)?;
        Ok(server::spawn_listener(listener, handler))
    }
}

impl Drop for HealthCheckPorts {
    fn drop(&mut self) {
        self.close_all();
    }
}

/// The local ready endpoints of a Service: distinct Pods (one family at a
/// time, as kube-proxy's per-family proxiers count, the larger family).
pub fn local_endpoints(table: &ServiceTable, key: &ServiceKey, node: Option<&str>) -> usize {
    let Some(ports) = table.services.get(key) else {
        return 0;
    };
    let Some(node) = node else {
        return 0;
    };
    let count = |v6: bool| {
        let probe = if v6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        let mut pods: HashSet<IpAddr> = HashSet::new();
        for port in ports {
            let all = &port.external;
            for e in &all[family_range(all, probe)] {
                if e.ready && e.node_name.as_deref() == Some(node) {
                    pods.insert(e.addr.ip());
                }
            }
        }
        pods.len()
    };
    count(false).max(count(true))
}

fn answer(table: &ServiceTable, port: u16, node: Option<&str>, healthy: bool) -> server::Reply {
    let Some(key) = table.health_checks.get(&port) else {
        return server::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no Service uses this health-check node port\n",
        );
    };
    let count = local_endpoints(table, key, node);
    let body = serde_json::json!({
        "service": {"namespace": key.namespace, "name": key.name},
        "localEndpoints": count,
        "serviceProxyHealthy": healthy,
    });
    let status = if count > 0 && healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut reply = server::json(status, &body);
    if let Ok(weight) = hyper::header::HeaderValue::from_str(&count.to_string()) {
        reply
            .headers_mut()
            .insert("x-load-balancing-endpoint-weight", weight);
    }
    reply
}

/// Where NodePorts are accepted: every address (both wildcards) unless
/// `intercept.nodePortAddresses` narrows it to this node's addresses in
/// its CIDRs and, for `primary`, the Node object's addresses.
fn bind_addresses(table: &ServiceTable, wanted: &[NodePortAddress]) -> Vec<IpAddr> {
    if wanted.is_empty() {
        return vec![
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ];
    }
    let local = crate::netif::local_addresses();
    let mut out: BTreeSet<IpAddr> = BTreeSet::new();
    for entry in wanted {
        match *entry {
            NodePortAddress::Primary => {
                out.extend(table.node_addresses.iter().filter(|ip| local.contains(ip)));
            }
            NodePortAddress::Cidr(net, len) => out.extend(
                local
                    .iter()
                    .filter(|ip| ip.is_ipv4() == net.is_ipv4() && network(**ip, len) == net),
            ),
        }
    }
    out.into_iter().collect()
}

/// A listener of its own family only, so that `0.0.0.0:P` and `[::]:P`
/// can both be bound.
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    tokio::net::TcpListener::from_std(socket.into())
}
