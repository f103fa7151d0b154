//! One IP family per connection. kube-proxy runs one proxier per family, so
//! a frontend of one family only ever reaches endpoints of that family; a
//! family without endpoints is a frontend without endpoints. A scope's
//! endpoint list holds both families, IPv4 first (`topology::categorize`
//! orders it so), so each family is one contiguous range of it: the data
//! plane's indices into the whole list stay valid, and a policy sees only
//! the range of the connection's family.

use std::net::IpAddr;
use std::ops::Range;

use super::table::Endpoint;

/// True for IPv6 frontends; an IPv4-mapped address counts as IPv4.
pub fn is_v6(ip: IpAddr) -> bool {
    ip.to_canonical().is_ipv6()
}

/// The indices of `endpoints` in `ip`'s family.
pub fn family_range(endpoints: &[Endpoint], ip: IpAddr) -> Range<usize> {
    let split = endpoints.partition_point(|e| e.addr.is_ipv4());
    if is_v6(ip) {
        split..endpoints.len()
    } else {
        0..split
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::fixtures::ready as ep;

    #[test]
    fn each_family_is_its_own_range() {
        let list = [ep("10.0.0.1:80"), ep("10.0.0.2:80"), ep("[fd00::1]:80")];
        let v4: IpAddr = "10.96.0.1".parse().expect("ip");
        let v6: IpAddr = "fd00:96::1".parse().expect("ip");
        let mapped: IpAddr = "::ffff:10.96.0.1".parse().expect("ip");
        assert_eq!(family_range(&list, v4), 0..2);
        assert_eq!(family_range(&list, mapped), 0..2);
        assert_eq!(family_range(&list, v6), 2..3);
        assert_eq!(family_range(&list[..2], v6), 2..2);
    }
}
