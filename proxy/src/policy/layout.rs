//! Byte layouts of ABI v1 (policy-sdk/ABI.md): the endpoint table and the
//! context record the host writes into guest memory.

use std::net::{IpAddr, SocketAddr};

use crate::catalog::Endpoint;

pub const ABI_VERSION: i32 = 1;
pub const RECORD_SIZE: usize = 64;
pub const CONTEXT_SIZE: usize = 64;

/// Offsets of the live fields inside a record.
pub const LIVE_ACTIVE: usize = 44;
pub const LIVE_FAILURES: usize = 48;
pub const LIVE_LAST_FAILURE_MS: usize = 52;
pub const LIVE_EWMA_NS: usize = 56;

pub const FLAG_READY: u8 = 1;
pub const FLAG_SERVING: u8 = 1 << 1;
pub const FLAG_TERMINATING: u8 = 1 << 2;
pub const FLAG_LOCAL: u8 = 1 << 3;
pub const FLAG_SAME_ZONE: u8 = 1 << 4;

/// Where this node is, for the local / same-zone flags.
#[derive(Debug, Clone, Default)]
pub struct Locality {
    pub node: Option<String>,
    pub zone: Option<String>,
}

fn put_addr(out: &mut [u8], ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out[..16].copy_from_slice(&v6.octets()),
    }
}

fn family(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 4 } else { 6 }
}

/// Encodes a whole endpoint table: records, then strings. Live fields
/// start at zero; the caller fills them from its statistics.
pub fn encode_table(endpoints: &[Endpoint], here: &Locality) -> Vec<u8> {
    let strings: usize = endpoints
        .iter()
        .map(|e| {
            name_of(e).len()
                + e.node_name.as_deref().map_or(0, str::len)
                + e.zone.as_deref().map_or(0, str::len)
        })
        .sum();
    let mut out = vec![0u8; endpoints.len() * RECORD_SIZE];
    out.reserve(strings);
    for (i, e) in endpoints.iter().enumerate() {
        let mut flags = 0;
        flags |= if e.ready { FLAG_READY } else { 0 };
        flags |= if e.serving { FLAG_SERVING } else { 0 };
        flags |= if e.terminating { FLAG_TERMINATING } else { 0 };
        if here.node.is_some() && e.node_name == here.node {
            flags |= FLAG_LOCAL;
        }
        if here.zone.is_some() && e.zone == here.zone {
            flags |= FLAG_SAME_ZONE;
        }
        let base = i * RECORD_SIZE;
        let name = append(&mut out, name_of(e));
        let node = append(&mut out, e.node_name.as_deref().unwrap_or(""));
        let zone = append(&mut out, e.zone.as_deref().unwrap_or(""));
        let r = &mut out[base..base + RECORD_SIZE];
        r[0] = family(e.addr.ip());
        r[1] = flags;
        r[2..4].copy_from_slice(&e.addr.port().to_le_bytes());
        r[4..8].copy_from_slice(&1u32.to_le_bytes());
        put_addr(&mut r[8..24], e.addr.ip());
        r[24..28].copy_from_slice(&name.0.to_le_bytes());
        r[28..30].copy_from_slice(&name.1.to_le_bytes());
        r[30..32].copy_from_slice(&node.1.to_le_bytes());
        r[32..36].copy_from_slice(&node.0.to_le_bytes());
        r[36..40].copy_from_slice(&zone.0.to_le_bytes());
        r[40..42].copy_from_slice(&zone.1.to_le_bytes());
    }
    out
}

/// The Pod's name (targetRef), else its hostname.
fn name_of(e: &Endpoint) -> &str {
    e.target_name
        .as_deref()
        .or(e.hostname.as_deref())
        .unwrap_or("")
}

/// Appends a string (at most 64 KiB of it) and returns (offset, length).
fn append(out: &mut Vec<u8>, s: &str) -> (u32, u16) {
    let s = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    let off = out.len() as u32;
    out.extend_from_slice(s);
    (off, s.len() as u16)
}

/// The per-call context record.
#[derive(Debug, Clone, Copy)]
pub struct CallContext {
    pub l7: bool,
    pub client: SocketAddr,
    pub frontend: SocketAddr,
    pub attempt: u16,
    pub now_ns: u64,
    pub tried: u64,
    pub count: u32,
}

impl CallContext {
    pub fn encode(&self) -> [u8; CONTEXT_SIZE] {
        let mut r = [0u8; CONTEXT_SIZE];
        r[0] = family(self.client.ip());
        r[1] = u8::from(self.l7);
        r[2..4].copy_from_slice(&self.client.port().to_le_bytes());
        r[4..6].copy_from_slice(&self.frontend.port().to_le_bytes());
        r[6..8].copy_from_slice(&self.attempt.to_le_bytes());
        put_addr(&mut r[8..24], self.client.ip());
        put_addr(&mut r[24..40], self.frontend.ip());
        r[40..48].copy_from_slice(&self.now_ns.to_le_bytes());
        r[48..56].copy_from_slice(&self.tried.to_le_bytes());
        r[56..60].copy_from_slice(&self.count.to_le_bytes());
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(addr: &str, node: Option<&str>, name: Option<&str>) -> Endpoint {
        Endpoint {
            addr: addr.parse().expect("addr"),
            node_name: node.map(str::to_owned),
            zone: Some("z1".into()),
            hostname: None,
            target_name: name.map(str::to_owned),
            ready: true,
            serving: true,
            terminating: false,
        }
    }

    #[test]
    fn table_layout_matches_abi_md() {
        let eps = [
            endpoint("10.244.1.11:8080", Some("node-a"), Some("web-0")),
            endpoint("[fd00::12]:80", Some("node-b"), None),
        ];
        let here = Locality {
            node: Some("node-a".into()),
            zone: Some("z1".into()),
        };
        let t = encode_table(&eps, &here);
        assert_eq!(t[0], 4);
        assert_eq!(
            t[1],
            FLAG_READY | FLAG_SERVING | FLAG_LOCAL | FLAG_SAME_ZONE
        );
        assert_eq!(u16::from_le_bytes([t[2], t[3]]), 8080);
        assert_eq!(&t[8..12], &[10, 244, 1, 11]);
        let name_off = u32::from_le_bytes(t[24..28].try_into().expect("4")) as usize;
        let name_len = u16::from_le_bytes([t[28], t[29]]) as usize;
        assert_eq!(&t[name_off..name_off + name_len], b"web-0");
        let node_off = u32::from_le_bytes(t[32..36].try_into().expect("4")) as usize;
        let node_len = u16::from_le_bytes([t[30], t[31]]) as usize;
        assert_eq!(&t[node_off..node_off + node_len], b"node-a");
        let second = &t[RECORD_SIZE..2 * RECORD_SIZE];
        assert_eq!(second[0], 6);
        assert_eq!(second[1] & FLAG_LOCAL, 0);
        assert_eq!(u16::from_le_bytes([second[28], second[29]]), 0, "no name");
    }

    #[test]
    fn context_layout_matches_abi_md() {
        let ctx = CallContext {
            l7: true,
            client: "10.244.1.100:40000".parse().expect("addr"),
            frontend: "10.96.0.10:80".parse().expect("addr"),
            attempt: 2,
            now_ns: 7,
            tried: 0b101,
            count: 3,
        };
        let r = ctx.encode();
        assert_eq!((r[0], r[1]), (4, 1));
        assert_eq!(u16::from_le_bytes([r[2], r[3]]), 40000);
        assert_eq!(u16::from_le_bytes([r[4], r[5]]), 80);
        assert_eq!(u16::from_le_bytes([r[6], r[7]]), 2);
        assert_eq!(&r[24..28], &[10, 96, 0, 10]);
        assert_eq!(u64::from_le_bytes(r[48..56].try_into().expect("8")), 0b101);
        assert_eq!(u32::from_le_bytes(r[56..60].try_into().expect("4")), 3);
    }
}
