//! The one response body type the L7 server returns: a backend's streamed
//! body (tracked until it ends, for metrics and the policy's live counts),
//! or a short local answer (503, 502, 504, gRPC trailers-only).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::http::{HeaderValue, Response, StatusCode, header};

use super::metrics::ErrorReason;

/// Runs when a proxied response is over (complete, broken or dropped).
pub trait Finish {
    fn finish(&mut self, broken: bool);
}

pub enum ProxyBody {
    Upstream {
        inner: Incoming,
        done: Option<Box<dyn Finish>>,
    },
    Local(Option<Bytes>),
}

impl ProxyBody {
    pub fn upstream(inner: Incoming, done: Box<dyn Finish>) -> Self {
        Self::Upstream {
            inner,
            done: Some(done),
        }
    }

    fn end(&mut self, broken: bool) {
        if let Self::Upstream { done, .. } = self
            && let Some(mut d) = done.take()
        {
            d.finish(broken);
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // Dropped before its end: the client went away or the server gave
        // up on the stream. Not the backend's fault.
        self.end(false);
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut *self {
            Self::Upstream { inner, .. } => {
                let polled = Pin::new(inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => self.end(false),
                    Poll::Ready(Some(Err(_))) => self.end(true),
                    _ => {}
                }
                polled
            }
            Self::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream { inner, .. } => inner.is_end_stream(),
            Self::Local(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream { inner, .. } => inner.size_hint(),
            Self::Local(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

/// A request that came in as gRPC (its client expects grpc-status).
pub fn is_grpc(headers: &hyper::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The status and gRPC code of a local failure answer.
fn codes(reason: ErrorReason) -> (StatusCode, &'static str) {
    match reason {
        ErrorReason::NoEndpoint => (StatusCode::SERVICE_UNAVAILABLE, "14"),
        ErrorReason::Timeout => (StatusCode::GATEWAY_TIMEOUT, "4"),
        _ => (StatusCode::BAD_GATEWAY, "14"),
    }
}

/// The local answer to a request that could not be proxied. gRPC clients
/// get a trailers-only response (HTTP 200, `grpc-status` in the headers,
/// no body), which every gRPC library maps to a status; others get the
/// HTTP status with a one-line text body naming the Service.
pub fn failure(reason: ErrorReason, grpc: bool, message: String) -> Response<ProxyBody> {
    let (status, grpc_status) = codes(reason);
    let mut resp = if grpc {
        let mut r = Response::new(ProxyBody::Local(None));
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from_static(grpc_status));
        if let Ok(v) = HeaderValue::from_str(&percent_encode(&message)) {
            h.insert("grpc-message", v);
        }
        r
    } else {
        let mut r = Response::new(ProxyBody::Local(Some(Bytes::from(message + "\n"))));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    resp.headers_mut().insert(
        "x-switchyard-error",
        HeaderValue::from_static(reason_name(reason)),
    );
    resp
}

fn reason_name(reason: ErrorReason) -> &'static str {
    match reason {
        ErrorReason::NoEndpoint => "no-endpoint",
        ErrorReason::Connect => "connect",
        ErrorReason::Upstream => "upstream",
        ErrorReason::Timeout => "timeout",
        ErrorReason::UpstreamReset => "upstream-reset",
        ErrorReason::Client => "client",
    }
}

/// grpc-message is percent-encoded (gRPC over HTTP/2 spec): printable
/// ASCII except `%` passes, everything else becomes `%XX`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn grpc_failures_are_trailers_only() {
        let r = failure(
            ErrorReason::NoEndpoint,
            true,
            "no endpoint for a/b 100%".into(),
        );
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()["grpc-message"], "no endpoint for a/b 100%25");
        assert!(r.body().is_end_stream());
    }

    #[test]
    fn http_failures_have_a_status_and_a_body() {
        let r = failure(ErrorReason::Timeout, false, "slow".into());
        assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let body = rt.block_on(r.into_body().collect()).expect("local body");
        assert_eq!(body.to_bytes(), "slow\n");
        let r = failure(ErrorReason::Connect, false, String::new());
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    }
}
