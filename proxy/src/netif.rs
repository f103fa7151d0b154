//! This network namespace's interface addresses, read with getifaddrs(3)
//! (no `ip` process: the interceptor asks on every sync).

use std::collections::HashSet;
use std::net::IpAddr;

/// One address configured on an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddr {
    pub interface: String,
    pub ip: IpAddr,
    pub prefix: u8,
}

/// Every IPv4 and IPv6 address of every interface.
pub fn addresses() -> Vec<IfAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned; its
        // ifa_name is a NUL-terminated string, and ifa_addr and
        // ifa_netmask, when not null, point to sockaddrs of the family
        // ifa_addr names, large enough for that family's struct.
        unsafe {
            let node = &*cur;
            if let Some(ip) = sockaddr_ip(node.ifa_addr) {
                let prefix = sockaddr_ip(node.ifa_netmask).map_or(0, |mask| match mask {
                    IpAddr::V4(m) => u32::from(m).count_ones() as u8,
                    IpAddr::V6(m) => u128::from(m).count_ones() as u8,
                });
                let interface = std::ffi::CStr::from_ptr(node.ifa_name)
                    .to_string_lossy()
                    .into_owned();
                out.push(IfAddr {
                    interface,
                    ip,
                    prefix,
                });
            }
            cur = node.ifa_next;
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// The address in a sockaddr of family AF_INET or AF_INET6.
///
/// # Safety
/// `addr` is null or points to a sockaddr whose storage fits its family.
unsafe fn sockaddr_ip(addr: *const libc::sockaddr) -> Option<IpAddr> {
    if addr.is_null() {
        return None;
    }
    // SAFETY: the caller vouches for `addr`; the family says its type.
    unsafe {
        match i32::from((*addr).sa_family) {
            libc::AF_INET => {
                let sin = &*addr.cast::<libc::sockaddr_in>();
                Some(IpAddr::from(
                    u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                ))
            }
            libc::AF_INET6 => {
                let sin6 = &*addr.cast::<libc::sockaddr_in6>();
                Some(IpAddr::from(sin6.sin6_addr.s6_addr))
            }
            _ => None,
        }
    }
}

/// Every address configured on an interface of this network namespace. A
/// connection from one of them comes from a host process (hostNetwork Pod,
/// kubelet, ...), which keeps the node's address towards the backend, as
/// with kube-proxy.
pub fn local_addresses() -> HashSet<IpAddr> {
    addresses().into_iter().map(|a| a.ip).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_local_with_its_prefix() {
        let addrs = addresses();
        let lo = addrs
            .iter()
            .find(|a| a.ip == IpAddr::from([127, 0, 0, 1]))
            .unwrap_or_else(|| panic!("no 127.0.0.1 in {addrs:?}"));
        assert_eq!((lo.interface.as_str(), lo.prefix), ("lo", 8));
        assert!(local_addresses().contains(&lo.ip));
    }
}
