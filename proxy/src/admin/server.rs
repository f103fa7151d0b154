//! Minimal HTTP/1 listeners for probes, metrics and the admin API, on the
//! control plane.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;

pub type Reply = Response<Full<Bytes>>;

/// What a handler sees of a request: enough for probes and a small API,
/// nothing that needs the body.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    pub path: String,
    pub peer: SocketAddr,
    /// The `Accept` header, for content negotiation (`/metrics`).
    pub accept: Option<String>,
}

pub type Handler = Arc<dyn Fn(Call) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

/// A body with the given Content-Type.
pub fn typed(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut response = text(status, body);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

pub fn json(status: StatusCode, body: &impl serde::Serialize) -> Reply {
    match serde_json::to_vec_pretty(body) {
        Ok(bytes) => {
            let mut response = text(status, bytes);
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode: {e}\n"),
        ),
    }
}

/// Binds now (so that a taken port fails start-up) and serves in the
/// background.
pub async fn spawn(addr: SocketAddr, handler: Handler) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    spawn_listener(listener, handler);
    Ok(local)
}

/// Serves a bound listener until the task is aborted (which closes it).
pub fn spawn_listener(
    listener: tokio::net::TcpListener,
    handler: Handler,
) -> tokio::task::JoinHandle<()> {
    let local = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(%local, error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let call = Call {
                            method: req.method().clone(),
                            path: req.uri().path().to_owned(),
                            peer,
                            accept: req
                                .headers()
                                .get(hyper::header::ACCEPT)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned),
                        };
                        let reply = handler(call);
                        async move { Ok::<_, Infallible>(reply.await) }
                    },
                );
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "admin connection ended with an error");
                }
            });
        }
    })
}
