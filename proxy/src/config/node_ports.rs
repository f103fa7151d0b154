//! `intercept.nodePortAddresses`, kube-proxy's `--nodeport-addresses`:
//! which of this node's addresses accept NodePort traffic.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One entry: a CIDR, or `primary` for the addresses the Node object lists
/// (`status.addresses`, InternalIP and ExternalIP), as kube-proxy's
/// nftables mode uses by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodePortAddress {
    Primary,
    Cidr(IpAddr, u8),
}

impl NodePortAddress {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "primary" {
            return Ok(Self::Primary);
        }
        let (ip, len) = match text.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (text, None),
        };
        let ip: IpAddr = ip.parse().map_err(|_| {
            format!("{text:?}: expected \"primary\" or a CIDR such as \"192.168.0.0/24\"")
        })?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(len) => len
                .parse::<u8>()
                .ok()
                .filter(|&l| l <= max)
                .ok_or_else(|| format!("{text:?}: prefix length must be 0 to {max}"))?,
        };
        Ok(Self::Cidr(network(ip, len), len))
    }
}

/// The address with the host bits cleared: nftables refuses an interval
/// element whose host bits are set.
pub fn network(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

impl fmt::Display for NodePortAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Primary => f.write_str("primary"),
            Self::Cidr(ip, len) => write!(f, "{ip}/{len}"),
        }
    }
}

impl Serialize for NodePortAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NodePortAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_primary_cidrs_and_plain_addresses() {
        assert_eq!(
            NodePortAddress::parse("primary"),
            Ok(NodePortAddress::Primary)
        );
        assert_eq!(
            NodePortAddress::parse("192.168.50.7/24"),
            Ok(NodePortAddress::Cidr(
                "192.168.50.0".parse().expect("ip"),
                24
            ))
        );
        assert_eq!(
            NodePortAddress::parse("fd00::1"),
            Ok(NodePortAddress::Cidr("fd00::1".parse().expect("ip"), 128))
        );
        assert_eq!(
            NodePortAddress::parse("0.0.0.0/0"),
            Ok(NodePortAddress::Cidr("0.0.0.0".parse().expect("ip"), 0))
        );
    }

    #[test]
    fn rejects_what_is_neither() {
        for bad in ["eth0", "10.0.0.0/33", "fd00::/129", "10.0.0.0/x", ""] {
            let err = NodePortAddress::parse(bad).expect_err(bad);
            assert!(
                err.contains("expected") || err.contains("prefix"),
                "{bad}: {err}"
            );
        }
    }
}
