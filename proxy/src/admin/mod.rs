//! Health probes, metrics and the admin API, on kube-proxy's ports and
//! paths. Anything that changes state answers only to loopback peers.

mod debug;
mod exposition;
mod health;
mod health_check_ports;
pub mod metrics;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::{Method, StatusCode};
use tokio::sync::{mpsc, oneshot};

pub use debug::PolicySummary;
pub use health::Health;
pub use health_check_ports::HealthCheckPorts;
pub use metrics::Metrics;
use server::{json, text};

use crate::snapshot::SharedSnapshot;

/// The answer to a reload: whether everything applied, and what happened.
pub type ReloadAnswer = (bool, String);
/// How the admin API asks the control loop for a reload.
pub type ReloadSender = mpsc::Sender<oneshot::Sender<ReloadAnswer>>;

/// Serves `/healthz`, `/livez`, `/readyz`.
pub async fn serve_health(addr: SocketAddr, health: Arc<Health>) -> std::io::Result<SocketAddr> {
    let handler: server::Handler = Arc::new(move |call| {
        let reply = match call.path.as_str() {
            "/livez" => {
                let (status, body) = health.livez(std::time::SystemTime::now());
                nosniff(server::typed(status, "application/json", body))
            }
            "/healthz" => {
                let (status, body) = health.healthz(std::time::SystemTime::now());
                nosniff(server::typed(status, "application/json", body))
            }
            "/readyz" if health.is_ready() => text(StatusCode::OK, "ok\n"),
            "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /healthz, /livez or /readyz\n",
            ),
        };
        Box::pin(async move { reply })
    });
    server::spawn(addr, handler).await
}

/// kube-proxy's probe answers carry it; some load balancers' checkers
/// are browsers' cousins.
fn nosniff(mut reply: server::Reply) -> server::Reply {
    reply.headers_mut().insert(
        "x-content-type-options",
        hyper::header::HeaderValue::from_static("nosniff"),
    );
    reply
}

/// Everything the metrics/admin listener serves.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub snapshot: SharedSnapshot,
    pub policies: Arc<PolicySummary>,
    pub reload: ReloadSender,
}

/// Serves `/metrics`, `/debug/services`, `/debug/policies` and `POST
/// /reload` (loopback peers only).
pub async fn serve_admin(addr: SocketAddr, state: Arc<AdminState>) -> std::io::Result<SocketAddr> {
    let handler: server::Handler = Arc::new(move |call| {
        let state = state.clone();
        Box::pin(async move {
            match (call.method.clone(), call.path.as_str()) {
                (_, "/metrics") => {
                    let format = exposition::Format::negotiate(call.accept.as_deref());
                    let body = match format {
                        exposition::Format::OpenMetrics => state.metrics.encode(),
                        exposition::Format::PrometheusText => {
                            exposition::to_prometheus_text(&state.metrics.encode())
                        }
                    };
                    server::typed(StatusCode::OK, format.content_type(), body)
                }
                (_, "/debug/services") => json(
                    StatusCode::OK,
                    &debug::services(&state.snapshot, &state.policies),
                ),
                (_, "/debug/policies") => json(
                    StatusCode::OK,
                    &debug::policies(&state.policies, &state.metrics),
                ),
                (Method::POST, "/reload") if !call.peer.ip().is_loopback() => text(
                    StatusCode::FORBIDDEN,
                    "reload is refused from non-loopback addresses\n",
                ),
                (Method::POST, "/reload") => reload(&state.reload).await,
                (_, "/reload") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST /reload\n"),
                _ => text(
                    StatusCode::NOT_FOUND,
                    "not found; try /metrics, /debug/services, /debug/policies or POST /reload\n",
                ),
            }
        })
    });
    server::spawn(addr, handler).await
}

async fn reload(sender: &ReloadSender) -> server::Reply {
    let (tx, rx) = oneshot::channel();
    if sender.send(tx).await.is_err() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    match rx.await {
        Ok((true, body)) => text(StatusCode::OK, body),
        Ok((false, body)) => text(StatusCode::UNPROCESSABLE_ENTITY, body),
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
    }
}
