//! L7 metrics per Service port: requests by status class, request latency,
//! streams in flight, and failures by reason. A connection caches the
//! handles of its Service ([`Handles`]) so that a request costs no label
//! allocation.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// `namespace/name`
    pub service: String,
    pub port: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub service: String,
    pub port: String,
    /// `1xx` .. `5xx`
    pub class: StatusClass,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub service: String,
    pub port: String,
    pub reason: ErrorReason,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum StatusClass {
    Informational,
    Success,
    Redirection,
    ClientError,
    ServerError,
}

impl StatusClass {
    pub const ALL: [StatusClass; 5] = [
        Self::Informational,
        Self::Success,
        Self::Redirection,
        Self::ClientError,
        Self::ServerError,
    ];

    pub fn of(status: u16) -> Self {
        match status {
            100..=199 => Self::Informational,
            200..=299 => Self::Success,
            300..=399 => Self::Redirection,
            400..=499 => Self::ClientError,
            _ => Self::ServerError,
        }
    }
}

/// Why a request did not get a backend's complete answer.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum ErrorReason {
    /// No endpoint (503).
    NoEndpoint,
    /// Connecting to a backend failed (retried, then 502).
    Connect,
    /// The backend failed before its response headers (502).
    Upstream,
    /// The backend did not answer within `responseTimeout` (504).
    Timeout,
    /// The backend's response body broke off (reset mid-response).
    UpstreamReset,
    /// A client connection ended with a protocol error (malformed request,
    /// oversized head, header timeout, reset).
    Client,
}

/// Label values in Prometheus' lower-case style.
macro_rules! label_values {
    ($ty:ty { $($variant:ident => $text:literal),* $(,)? }) => {
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                use std::fmt::Write;
                encoder.write_str(match self { $(Self::$variant => $text),* })
            }
        }
    };
}

label_values!(StatusClass { Informational => "1xx", Success => "2xx", Redirection => "3xx", ClientError => "4xx", ServerError => "5xx" });
label_values!(ErrorReason { NoEndpoint => "no_endpoint", Connect => "connect", Upstream => "upstream", Timeout => "timeout", UpstreamReset => "upstream_reset", Client => "client" });

pub struct L7Metrics {
    pub requests: Family<ClassLabels, Counter>,
    pub latency: Family<ServiceLabels, Histogram>,
    pub active_streams: Family<ServiceLabels, Gauge>,
    pub errors: Family<ErrorLabels, Counter>,
    pub connections: Family<ServiceLabels, Counter>,
}

impl Default for L7Metrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                // 100 µs .. ~26 s
                Histogram::new(exponential_buckets(0.000_1, 2.0, 19))
            }),
            active_streams: Family::default(),
            errors: Family::default(),
            connections: Family::default(),
        }
    }
}

impl L7Metrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "http_requests",
            "L7 requests answered, by status class",
            self.requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "L7 request latency, from the request head to the end of the response",
            self.latency.clone(),
        );
        r.register(
            "http_active_streams",
            "L7 requests in flight",
            self.active_streams.clone(),
        );
        r.register(
            "http_errors",
            "L7 requests or connections that failed, by reason",
            self.errors.clone(),
        );
        r.register(
            "http_connections",
            "L7 client connections accepted",
            self.connections.clone(),
        );
    }

    /// The handles of one Service port.
    pub fn handles(&self, service: &str, port: &str) -> Handles {
        let labels = ServiceLabels {
            service: service.to_owned(),
            port: port.to_owned(),
        };
        let class = |class| {
            self.requests
                .get_or_create(&ClassLabels {
                    service: service.to_owned(),
                    port: port.to_owned(),
                    class,
                })
                .clone()
        };
        let error = |reason| {
            self.errors
                .get_or_create(&ErrorLabels {
                    service: service.to_owned(),
                    port: port.to_owned(),
                    reason,
                })
                .clone()
        };
        Handles {
            requests: StatusClass::ALL.map(class),
            latency: self.latency.get_or_create(&labels).clone(),
            active_streams: self.active_streams.get_or_create(&labels).clone(),
            errors: [
                ErrorReason::NoEndpoint,
                ErrorReason::Connect,
                ErrorReason::Upstream,
                ErrorReason::Timeout,
                ErrorReason::UpstreamReset,
                ErrorReason::Client,
            ]
            .map(error),
            connections: self.connections.get_or_create(&labels).clone(),
        }
    }
}

/// Metric handles of one Service port (cheap clones of shared cells).
#[derive(Clone)]
pub struct Handles {
    requests: [Counter; 5],
    pub latency: Histogram,
    pub active_streams: Gauge,
    errors: [Counter; 6],
    pub connections: Counter,
}

impl Handles {
    pub fn status(&self, status: u16) {
        self.requests[StatusClass::of(status) as usize].inc();
    }

    pub fn error(&self, reason: ErrorReason) {
        self.errors[reason as usize].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_reasons_land_in_their_series() {
        let m = L7Metrics::default();
        let mut r = Registry::default();
        m.register(&mut r);
        let h = m.handles("shop/web", "http");
        h.status(204);
        h.status(503);
        h.status(999);
        h.error(ErrorReason::UpstreamReset);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).expect("encodes");
        assert!(
            out.contains(r#"http_requests_total{service="shop/web",port="http",class="2xx"} 1"#),
            "{out}"
        );
        assert!(out.contains(r#"class="5xx"} 2"#), "{out}");
        assert!(out.contains(r#"reason="upstream_reset"} 1"#), "{out}");
    }
}
