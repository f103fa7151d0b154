//! Which Service ports Switchyard proxies per HTTP request (L7) instead of
//! per connection. Opt-in only: a port is L7 when its `appProtocol` names
//! an HTTP protocol Switchyard speaks in clear text, or when the Service's
//! `switchyard.dev/protocol` annotation asks for it. Everything else stays
//! L4, because terminating a protocol we do not understand would break it.

use serde::Serialize;

use super::table::Protocol;

/// Annotation that turns L7 on for every TCP port of a Service:
/// `http` (HTTP/1.1 to the backends) or `h2c` (HTTP/2 prior knowledge).
pub const PROTOCOL_ANNOTATION: &str = "switchyard.dev/protocol";

/// How an L7 port talks to its backends. Clients may use HTTP/1.1 or h2c
/// on either; this is the upstream side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum L7Protocol {
    /// HTTP/1.1 with keep-alive; upgrades (websocket) pass through.
    Http1,
    /// HTTP/2 with prior knowledge (h2c, gRPC): one multiplexed connection
    /// per backend and worker.
    H2c,
}

impl L7Protocol {
    /// The annotation's values.
    pub fn from_annotation(value: &str) -> Option<Self> {
        match value {
            "http" => Some(Self::Http1),
            "h2c" => Some(Self::H2c),
            _ => None,
        }
    }

    /// The `appProtocol` values Switchyard terminates. `kubernetes.io/wss`,
    /// `https` and unknown names are TLS or opaque to us: L4.
    pub fn from_app_protocol(value: &str) -> Option<Self> {
        match value {
            "http" | "kubernetes.io/ws" => Some(Self::Http1),
            "kubernetes.io/h2c" | "grpc" => Some(Self::H2c),
            _ => None,
        }
    }
}

/// The L7 protocol of one port: its own `appProtocol` first (the more
/// specific statement), then the Service-wide annotation. UDP never is.
pub fn port_l7(
    protocol: Protocol,
    app_protocol: Option<&str>,
    annotation: Option<L7Protocol>,
) -> Option<L7Protocol> {
    if protocol != Protocol::Tcp {
        return None;
    }
    app_protocol
        .and_then(L7Protocol::from_app_protocol)
        .or(annotation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_protocols_that_switch_l7_on() {
        let l7 = |a| port_l7(Protocol::Tcp, Some(a), None);
        assert_eq!(l7("http"), Some(L7Protocol::Http1));
        assert_eq!(l7("kubernetes.io/ws"), Some(L7Protocol::Http1));
        assert_eq!(l7("kubernetes.io/h2c"), Some(L7Protocol::H2c));
        assert_eq!(l7("grpc"), Some(L7Protocol::H2c));
    }

    #[test]
    fn other_ports_stay_l4() {
        let l7 = |a| port_l7(Protocol::Tcp, a, None);
        assert_eq!(l7(None), None);
        assert_eq!(l7(Some("https")), None);
        assert_eq!(l7(Some("kubernetes.io/wss")), None);
        assert_eq!(l7(Some("HTTP")), None);
        assert_eq!(l7(Some("mysql")), None);
    }

    #[test]
    fn annotation_applies_to_tcp_ports_without_a_known_app_protocol() {
        let h2c = Some(L7Protocol::H2c);
        assert_eq!(port_l7(Protocol::Tcp, None, h2c), h2c);
        assert_eq!(port_l7(Protocol::Tcp, Some("mysql"), h2c), h2c);
        assert_eq!(port_l7(Protocol::Udp, None, h2c), None);
        assert_eq!(port_l7(Protocol::Udp, Some("http"), None), None);
    }

    #[test]
    fn app_protocol_wins_over_annotation() {
        assert_eq!(
            port_l7(Protocol::Tcp, Some("grpc"), Some(L7Protocol::Http1)),
            Some(L7Protocol::H2c)
        );
    }

    #[test]
    fn annotation_values() {
        assert_eq!(L7Protocol::from_annotation("http"), Some(L7Protocol::Http1));
        assert_eq!(L7Protocol::from_annotation("h2c"), Some(L7Protocol::H2c));
        assert_eq!(L7Protocol::from_annotation("grpc"), None);
        assert_eq!(L7Protocol::from_annotation(""), None);
    }
}
