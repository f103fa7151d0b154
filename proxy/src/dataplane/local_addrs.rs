//! The node's own addresses. A connection from one of them comes from a
//! host process (hostNetwork Pod, kubelet, ...), which keeps the node's
//! address towards the backend, as with kube-proxy.

use std::collections::HashSet;
use std::net::IpAddr;

/// Every address configured on an interface of this network namespace.
pub fn local_addresses() -> HashSet<IpAddr> {
    let mut out = HashSet::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned; its
        // ifa_addr, when not null, points to a sockaddr of the family it
        // names, which is large enough for that family's struct.
        unsafe {
            let addr = (*cur).ifa_addr;
            if !addr.is_null() {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*addr.cast::<libc::sockaddr_in>();
                        out.insert(IpAddr::from(
                            u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                        ));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*addr.cast::<libc::sockaddr_in6>();
                        out.insert(IpAddr::from(sin6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_is_local() {
        let addrs = super::local_addresses();
        assert!(
            addrs.contains(&std::net::IpAddr::from([127, 0, 0, 1])),
            "{addrs:?}"
        );
    }
}
