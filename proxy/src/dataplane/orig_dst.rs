//! recvmsg(2) with IP_ORIGDSTADDR / IPV6_ORIGDSTADDR: the one datagram call
//! that std and tokio do not offer, and the only way a TPROXY UDP socket
//! learns which Service a datagram was sent to.

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// One received datagram: its length, sender and original destination.
pub struct Datagram {
    pub len: usize,
    pub from: SocketAddr,
    pub orig_dst: Option<SocketAddr>,
}

/// Receives one datagram without blocking (the fd is non-blocking).
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<Datagram> {
    let mut from = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = from.as_mut_ptr().cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 16]>();
    // SAFETY: every pointer in msg refers to a live buffer of the stated size.
    let n = unsafe { libc::recvmsg(fd, &raw mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zero-initialised, then (partly) written by the kernel.
    let from = unsafe { from.assume_init() };
    let from = sockaddr_to_std(&from).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "datagram from a non-IP address")
    })?;
    Ok(Datagram {
        len: n as usize,
        from,
        orig_dst: parse_orig_dst(&msg),
    })
}

fn sockaddr_to_std(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    let ptr: *const libc::sockaddr_storage = storage;
    match libc::c_int::from(storage.ss_family) {
        // SAFETY: the family says which sockaddr the storage holds, and
        // sockaddr_storage is large and aligned enough for either.
        libc::AF_INET => Some(sockaddr_in_to_std(unsafe { &*ptr.cast() })),
        libc::AF_INET6 => Some(sockaddr_in6_to_std(unsafe { &*ptr.cast() })),
        _ => None,
    }
}

fn sockaddr_in_to_std(sin: &libc::sockaddr_in) -> SocketAddr {
    let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
    SocketAddr::from((ip, u16::from_be(sin.sin_port)))
}

fn sockaddr_in6_to_std(sin6: &libc::sockaddr_in6) -> SocketAddr {
    let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
    SocketAddr::from((ip, u16::from_be(sin6.sin6_port)))
}

fn parse_orig_dst(msg: &libc::msghdr) -> Option<SocketAddr> {
    // SAFETY: msg was filled by recvmsg; the CMSG_* walkers stay within
    // msg_controllen, and each payload is read unaligned at its own size.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            let (level, kind) = ((*cmsg).cmsg_level, (*cmsg).cmsg_type);
            let data = libc::CMSG_DATA(cmsg);
            if level == libc::SOL_IP && kind == libc::IP_ORIGDSTADDR {
                let sin: libc::sockaddr_in = std::ptr::read_unaligned(data.cast());
                return Some(sockaddr_in_to_std(&sin));
            }
            if level == libc::SOL_IPV6 && kind == libc::IPV6_ORIGDSTADDR {
                let sin6: libc::sockaddr_in6 = std::ptr::read_unaligned(data.cast());
                return Some(sockaddr_in6_to_std(&sin6));
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    None
}
