//! Settings of the L7 (per-request HTTP) proxy: `dataplane.l7` in the
//! config file. The defaults bound every wait, so that no client or backend
//! can hold a connection or a request open forever.

use serde::{Deserialize, Serialize};

use super::HumanDuration;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct L7Config {
    /// A client must send a complete request head within this time (on a
    /// new connection and between keep-alive requests); slowloris defence.
    pub header_read_timeout: HumanDuration,
    /// A client connection with no request in flight is closed after this.
    pub idle_timeout: HumanDuration,
    /// A pooled backend connection unused this long is closed.
    pub upstream_idle_timeout: HumanDuration,
    /// Longest wait for a backend's response headers (then 504).
    pub response_timeout: HumanDuration,
    /// Largest request head (request line + headers) a client may send;
    /// larger ones get 431.
    pub max_header_bytes: usize,
    /// HTTP/1.1 connections kept for reuse per backend per worker (busy or
    /// idle); past it, a new connection serves one request and closes.
    pub max_idle_per_endpoint: usize,
}

impl Default for L7Config {
    fn default() -> Self {
        Self {
            header_read_timeout: HumanDuration::from_secs(10),
            idle_timeout: HumanDuration::from_secs(60),
            upstream_idle_timeout: HumanDuration::from_secs(90),
            response_timeout: HumanDuration::from_secs(60),
            max_header_bytes: 64 * 1024,
            max_idle_per_endpoint: 64,
        }
    }
}

impl L7Config {
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(8192..=1 << 20).contains(&self.max_header_bytes) {
            return Err((
                "dataplane.l7.maxHeaderBytes",
                format!(
                    "{} is out of range; expected 8192 to 1048576 bytes",
                    self.max_header_bytes
                ),
            ));
        }
        let zero = |d: &HumanDuration| d.0.is_zero();
        for (field, d) in [
            ("dataplane.l7.headerReadTimeout", &self.header_read_timeout),
            ("dataplane.l7.idleTimeout", &self.idle_timeout),
            (
                "dataplane.l7.upstreamIdleTimeout",
                &self.upstream_idle_timeout,
            ),
            ("dataplane.l7.responseTimeout", &self.response_timeout),
        ] {
            if zero(d) {
                return Err((field, "must be more than 0".into()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_fields_are_camel_case() {
        assert!(L7Config::default().validate().is_ok());
        let c: L7Config =
            serde_yaml::from_str("headerReadTimeout: 2s\nmaxIdlePerEndpoint: 8\n").expect("valid");
        assert_eq!(c.header_read_timeout, HumanDuration::from_secs(2));
        assert_eq!(c.max_idle_per_endpoint, 8);
        assert!(serde_yaml::from_str::<L7Config>("headerTimeout: 2s\n").is_err());
    }

    #[test]
    fn out_of_range_values_name_the_field() {
        let c = L7Config {
            max_header_bytes: 10,
            ..L7Config::default()
        };
        assert_eq!(
            c.validate().map_err(|e| e.0),
            Err("dataplane.l7.maxHeaderBytes")
        );
        let c = L7Config {
            idle_timeout: HumanDuration::from_secs(0),
            ..L7Config::default()
        };
        assert_eq!(
            c.validate().map_err(|e| e.0),
            Err("dataplane.l7.idleTimeout")
        );
    }
}
