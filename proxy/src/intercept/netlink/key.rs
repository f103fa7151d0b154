//! Key bytes of nftables data types as the kernel stores them: a
//! concatenation pads every field to 4 bytes; addresses and ports are in
//! network order.

use std::net::IpAddr;

use crate::catalog::Protocol;

pub fn ip(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// `inet_proto`: the protocol number.
pub fn proto(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => libc::IPPROTO_TCP as u8,
        Protocol::Udp => libc::IPPROTO_UDP as u8,
    }
}

/// Fields of a concatenated key, each padded to a multiple of 4 bytes.
pub fn concat(fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(fields.len() * 16);
    for f in fields {
        out.extend_from_slice(f);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    out
}

/// `ipv4_addr . inet_proto . inet_service` (or the ipv6 twin).
pub fn addr_proto_port(addr: IpAddr, p: Protocol, port: u16) -> Vec<u8> {
    concat(&[&ip(addr), &[proto(p)], &port.to_be_bytes()])
}

/// `inet_proto . inet_service`.
pub fn proto_port(p: Protocol, port: u16) -> Vec<u8> {
    concat(&[&[proto(p)], &port.to_be_bytes()])
}

/// A `numgen`/`jhash` result in a concatenation: a 32-bit integer in host
/// byte order, as the expression writes its register.
pub fn slot(n: u32) -> Vec<u8> {
    n.to_ne_bytes().to_vec()
}

/// The last address of `addr/len` (the inclusive end that a concatenated
/// interval set's `key_end` carries).
pub fn last_of_prefix(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let host = u32::MAX.checked_shr(u32::from(len.min(32))).unwrap_or(0);
            IpAddr::from((u32::from(v4) | host).to_be_bytes())
        }
        IpAddr::V6(v6) => {
            let host = u128::MAX.checked_shr(u32::from(len.min(128))).unwrap_or(0);
            IpAddr::from((u128::from(v6) | host).to_be_bytes())
        }
    }
}

/// The first address after `addr/len`, None past the end of the family's
/// space (a non-concatenated interval set then needs no end element).
pub fn after_prefix(addr: IpAddr, len: u8) -> Option<IpAddr> {
    match addr {
        IpAddr::V4(v4) => {
            let size = 1u64 << (32 - u32::from(len.min(32)));
            let end = u64::from(u32::from(v4)) + size;
            u32::try_from(end)
                .ok()
                .map(|e| IpAddr::from(e.to_be_bytes()))
        }
        IpAddr::V6(v6) => {
            let bits = 128 - u32::from(len.min(128));
            let size = 1u128.checked_shl(bits).unwrap_or(0);
            if size == 0 {
                return None;
            }
            u128::from(v6)
                .checked_add(size)
                .map(|e| IpAddr::from(e.to_be_bytes()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenated_fields_are_padded_to_four_bytes() {
        let v4: IpAddr = "10.96.0.10".parse().expect("ip");
        assert_eq!(
            addr_proto_port(v4, Protocol::Tcp, 80),
            vec![10, 96, 0, 10, 6, 0, 0, 0, 0, 80, 0, 0]
        );
        assert_eq!(
            proto_port(Protocol::Udp, 30053),
            vec![17, 0, 0, 0, 0x75, 0x65, 0, 0]
        );
        assert_eq!(
            addr_proto_port("fd00::1".parse().expect("ip"), Protocol::Tcp, 1).len(),
            24
        );
    }

    #[test]
    fn prefix_ends() {
        let a = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(after_prefix(a("10.0.0.0"), 24), Some(a("10.0.1.0")));
        assert_eq!(after_prefix(a("10.0.0.5"), 32), Some(a("10.0.0.6")));
        assert_eq!(after_prefix(a("255.255.255.255"), 32), None);
        assert_eq!(after_prefix(a("0.0.0.0"), 0), None);
        assert_eq!(after_prefix(a("fd00::"), 64), Some(a("fd00:0:0:1::")));
        assert_eq!(after_prefix(a("::"), 0), None);
        assert_eq!(last_of_prefix(a("10.0.0.0"), 24), a("10.0.0.255"));
        assert_eq!(last_of_prefix(a("10.0.0.5"), 32), a("10.0.0.5"));
        assert_eq!(last_of_prefix(a("0.0.0.0"), 0), a("255.255.255.255"));
        assert_eq!(
            last_of_prefix(a("fd00::"), 64),
            a("fd00::ffff:ffff:ffff:ffff")
        );
    }
}
