//! Small helpers shared by the Service and EndpointSlice checks: a problem
//! collector bound to one object, and the field parsers whose messages say
//! what was expected.

use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::problem::{ObjectRef, Problem, Severity};
use super::table::Protocol;

/// Collects the problems of one object.
pub(crate) struct Checker {
    object: ObjectRef,
    problems: Vec<Problem>,
}

impl Checker {
    /// Starts checking an object; a missing name is the first problem.
    /// A missing namespace means "default", as `kubectl apply` would do.
    pub(crate) fn new(kind: &str, meta: &ObjectMeta) -> Self {
        let (namespace, name) = identity(meta);
        let mut checker = Self {
            object: ObjectRef::new(kind, &namespace, name.unwrap_or_default()),
            problems: Vec::new(),
        };
        if name.is_none() {
            checker.error("metadata.name", "expected the object's name; it is missing");
        }
        checker
    }

    /// Collects problems about an object already known to be named.
    pub(crate) fn for_object(object: ObjectRef) -> Self {
        Self {
            object,
            problems: Vec::new(),
        }
    }

    pub(crate) fn object(&self) -> &ObjectRef {
        &self.object
    }

    pub(crate) fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems
            .push(Problem::error(&self.object, field, message));
    }

    pub(crate) fn warning(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems
            .push(Problem::warning(&self.object, field, message));
    }

    /// How many errors so far; lets a caller tell whether a part it just
    /// checked added any.
    pub(crate) fn error_count(&self) -> usize {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .count()
    }

    pub(crate) fn into_problems(self) -> Vec<Problem> {
        self.problems
    }
}

/// `(namespace, name)`, with the namespace defaulted to "default" and an
/// empty name treated as missing.
pub(crate) fn identity(meta: &ObjectMeta) -> (String, Option<&str>) {
    let namespace = match meta.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => ns.to_owned(),
        _ => "default".to_owned(),
    };
    let name = meta.name.as_deref().filter(|n| !n.is_empty());
    (namespace, name)
}

/// A unicast IP address as Kubernetes spells it. IPv4-mapped IPv6
/// addresses are folded to IPv4, as Go's parser does, so that a lookup by a
/// connection's destination finds them.
pub(crate) fn parse_ip(text: &str) -> Result<IpAddr, String> {
    let ip = text
        .parse::<IpAddr>()
        .map_err(|_| format!("expected an IPv4 or IPv6 address, got {text:?}"))?
        .to_canonical();
    let unusable = match ip {
        IpAddr::V4(v4) => v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast(),
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
    };
    if unusable {
        return Err(format!(
            "expected a unicast address, got {text:?} (unspecified, multicast or broadcast)"
        ));
    }
    Ok(ip)
}

/// A port number from 1 to 65535.
pub(crate) fn port_number(value: i32) -> Result<u16, String> {
    match u16::try_from(value) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!(
            "expected a port number from 1 to 65535, got {value}"
        )),
    }
}

/// `protocol` of a Service or EndpointSlice port: TCP when absent;
/// `Ok(None)` for SCTP, which the API accepts and Switchyard does not proxy.
pub(crate) fn parse_protocol(value: Option<&str>) -> Result<Option<Protocol>, String> {
    match value {
        None | Some("TCP") => Ok(Some(Protocol::Tcp)),
        Some("UDP") => Ok(Some(Protocol::Udp)),
        Some("SCTP") => Ok(None),
        Some(other) => Err(format!(
            "expected \"TCP\", \"UDP\" or \"SCTP\", got {other:?}"
        )),
    }
}

/// A named target port must be an IANA service name (RFC 6335): at most 15
/// lowercase letters, digits and single inner hyphens, with a letter.
pub(crate) fn check_port_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if valid {
        Ok(())
    } else {
        Err(format!(
            "expected a port number or a port name (up to 15 lowercase letters, digits and \
             hyphens, with at least one letter), got {name:?}"
        ))
    }
}
