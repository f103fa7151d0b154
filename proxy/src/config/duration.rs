//! Durations written the way Kubernetes component configs write them:
//! `250ms`, `2s`, `5m`, `1h`, or combinations such as `1m30s`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration that (de)serialises as Go-style text (`"2s"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn from_millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }
    pub const fn from_micros(us: u64) -> Self {
        Self(Duration::from_micros(us))
    }
    pub const fn from_secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }
}

/// Parses `"1h2m3s4ms"`-style text. Units: h, m, s, ms, us, ns.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration; expected e.g. \"2s\" or \"250ms\"".into());
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{text:?}: expected a number before the unit"));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "h" => value.checked_mul(3600).map(Duration::from_secs),
            "m" => value.checked_mul(60).map(Duration::from_secs),
            "s" => Some(Duration::from_secs(value)),
            "ms" => Some(Duration::from_millis(value)),
            "us" | "µs" => Some(Duration::from_micros(value)),
            "ns" => Some(Duration::from_nanos(value)),
            "" => return Err(format!("{text:?}: missing unit (h, m, s, ms, us, ns)")),
            other => {
                return Err(format!(
                    "{text:?}: unknown unit {other:?} (h, m, s, ms, us, ns)"
                ));
            }
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| format!("{text:?}: duration too large"))?;
    }
    Ok(total)
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            write!(f, "{}s", d.as_secs())
        } else if d.subsec_nanos().is_multiple_of(1_000_000) {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{}us", d.as_micros())
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_bad_text_with_a_reason() {
        for bad in ["", "s", "10", "10x", "-1s", "99999999999999999999s"] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(!err.is_empty());
        }
    }

    #[test]
    fn display_round_trips() {
        for d in ["2s", "250ms", "100us"] {
            let parsed = HumanDuration(parse_duration(d).expect("valid"));
            assert_eq!(parsed.to_string(), d);
        }
    }
}
