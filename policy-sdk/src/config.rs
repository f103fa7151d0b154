//! Policy configuration: the Service's `switchyard.dev/policy-config`
//! annotation, JSON text handed to [`crate::Policy::new`].
//!
//! ```
//! use switchyard_policy::config;
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields, rename_all = "camelCase")]
//! struct Config {
//!     #[serde(default)]
//!     avoid_ms: u32,
//! }
//!
//! let c: Config = config::from_json(br#"{"avoidMs": 500}"#).unwrap();
//! assert_eq!(c.avoid_ms, 500);
//! assert_eq!(config::from_json::<Config>(b"").unwrap().avoid_ms, 0);
//! let err = config::from_json::<Config>(br#"{"avoid": 1}"#).err().unwrap();
//! assert!(err.starts_with("invalid policy config: unknown field `avoid`"), "{err}");
//! ```

use serde::de::DeserializeOwned;

/// Parses a JSON configuration. Empty or blank text counts as `{}`. The
/// error names the problem and where it is, ready for `Err(..)` in
/// [`crate::Policy::new`] (the host shows it to the operator). Use
/// `#[serde(deny_unknown_fields)]` on your type so that typos are rejected
/// rather than ignored.
pub fn from_json<T: DeserializeOwned>(config: &[u8]) -> Result<T, String> {
    let text: &[u8] = if config.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        config
    };
    serde_json::from_slice(text).map_err(|e| format!("invalid policy config: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Conf {
        #[serde(default)]
        timeout_seconds: u64,
    }

    #[test]
    fn blank_is_an_empty_object() {
        assert_eq!(from_json::<Conf>(b""), Ok(Conf { timeout_seconds: 0 }));
        assert_eq!(from_json::<Conf>(b"  \n"), Ok(Conf { timeout_seconds: 0 }));
        assert_eq!(
            from_json::<Conf>(br#"{"timeoutSeconds": 5}"#),
            Ok(Conf { timeout_seconds: 5 })
        );
    }

    #[test]
    fn errors_say_what_and_where() {
        let err = from_json::<Conf>(br#"{"timeoutSecond": 5}"#).unwrap_err();
        assert!(
            err.starts_with("invalid policy config: unknown field `timeoutSecond`"),
            "{err}"
        );
        assert!(err.contains("column"), "{err}");
        assert!(from_json::<Conf>(b"{").is_err());
    }
}
