//! The PROXY protocol v2 header (haproxy's spec), for backends that want
//! the client's address in-band instead of as the packets' source.

use std::net::{IpAddr, SocketAddr};

const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2, command PROXY.
const VERSION_PROXY: u8 = 0x21;

/// The header for a connection from `client` to `frontend` (the address the
/// client dialled). Mixed families are sent as IPv6, v4 addresses mapped.
pub fn v2_header(client: SocketAddr, frontend: SocketAddr, udp: bool) -> Vec<u8> {
    let transport = if udp { 0x02 } else { 0x01 };
    let mut out = Vec::with_capacity(52);
    out.extend_from_slice(&SIGNATURE);
    out.push(VERSION_PROXY);
    match (client.ip(), frontend.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            out.push(0x10 | transport);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&dst.octets());
        }
        (src, dst) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x20 | transport);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(src).octets());
            out.extend_from_slice(&v6(dst).octets());
        }
    }
    out.extend_from_slice(&client.port().to_be_bytes());
    out.extend_from_slice(&frontend.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_tcp_header_matches_the_spec() {
        let h = v2_header(
            "10.244.1.100:40000".parse().expect("addr"),
            "10.96.0.10:80".parse().expect("addr"),
            false,
        );
        assert_eq!(&h[..12], &SIGNATURE);
        assert_eq!((h[12], h[13]), (0x21, 0x11));
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 12);
        assert_eq!(&h[16..20], &[10, 244, 1, 100]);
        assert_eq!(&h[20..24], &[10, 96, 0, 10]);
        assert_eq!(u16::from_be_bytes([h[24], h[25]]), 40000);
        assert_eq!(u16::from_be_bytes([h[26], h[27]]), 80);
        assert_eq!(h.len(), 28);
    }

    #[test]
    fn mixed_families_are_sent_as_ipv6() {
        let h = v2_header(
            "10.244.1.100:1".parse().expect("addr"),
            "[fd00::10]:80".parse().expect("addr"),
            true,
        );
        assert_eq!(h[13], 0x22);
        assert_eq!(h.len(), 16 + 36);
    }
}
