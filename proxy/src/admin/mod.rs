//! Health probes and metrics, on kube-proxy's ports and paths.

pub mod metrics;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hyper::StatusCode;

pub use metrics::Metrics;
use server::text;

/// Liveness and readiness as the probes see them.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    /// Ready once the first sync is in force (snapshot and nftables).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// Serves `/healthz`, `/livez`, `/readyz`.
pub async fn serve_health(addr: SocketAddr, health: Arc<Health>) -> std::io::Result<SocketAddr> {
    let handler: server::Handler = Arc::new(move |req, _peer| match req.uri().path() {
        "/livez" => text(StatusCode::OK, "ok\n"),
        "/healthz" | "/readyz" if health.is_ready() => text(StatusCode::OK, "ok\n"),
        "/healthz" | "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: first sync not done\n",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz, /livez or /readyz\n",
        ),
    });
    server::spawn(addr, handler).await
}

/// Serves `/metrics`.
pub async fn serve_metrics(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let handler: server::Handler = Arc::new(move |req, _peer| match req.uri().path() {
        "/metrics" => text(StatusCode::OK, metrics.encode()),
        _ => text(StatusCode::NOT_FOUND, "not found; try /metrics\n"),
    });
    server::spawn(addr, handler).await
}
