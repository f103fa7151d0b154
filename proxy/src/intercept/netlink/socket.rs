//! One NETLINK_NETFILTER socket: raw send and receive, nothing more.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// How much one batch may take in one send (the kernel wants a batch in
/// one message); asked for, the kernel may grant less.
const WANT_SNDBUF: usize = 8 << 20;
/// Room for many error replies of a failing batch before the kernel drops
/// some (ENOBUFS).
const WANT_RCVBUF: usize = 4 << 20;
/// A kernel that does not answer within this is broken; we do not hang.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    /// The largest datagram the kernel accepts from us.
    pub max_send: usize,
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn set_int(fd: libc::c_int, opt: libc::c_int, value: usize) -> io::Result<()> {
    let v = value.min(libc::c_int::MAX as usize) as libc::c_int;
    // SAFETY: a valid socket and a c_int option value of the right size.
    check(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

fn get_int(fd: libc::c_int, opt: libc::c_int) -> io::Result<usize> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid socket and a c_int out parameter of the right size.
    check(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(v.max(0) as usize)
}

impl Socket {
    /// `rcvbuf`: the receive buffer to ask for (tests make it tiny).
    pub fn open(rcvbuf: Option<usize>) -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = check(unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        })?;
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: an all-zero sockaddr_nl is valid (the kernel picks our id).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `addr` is a sockaddr_nl of the size given.
        check(unsafe {
            libc::bind(
                raw,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        })?;
        // The *FORCE variants pass the sysctl caps (we hold CAP_NET_ADMIN);
        // without them the plain ones give what the caps allow.
        if set_int(raw, libc::SO_SNDBUFFORCE, WANT_SNDBUF).is_err() {
            let _ = set_int(raw, libc::SO_SNDBUF, WANT_SNDBUF);
        }
        let want_rcv = rcvbuf.unwrap_or(WANT_RCVBUF);
        if set_int(raw, libc::SO_RCVBUFFORCE, want_rcv).is_err() {
            let _ = set_int(raw, libc::SO_RCVBUF, want_rcv);
        }
        let tv = libc::timeval {
            tv_sec: RECV_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: a timeval option value of the right size.
        check(unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        })?;
        // The kernel reports twice what it grants (bookkeeping overhead) and
        // refuses a message above sndbuf - 32 bytes.
        let granted = get_int(raw, libc::SO_SNDBUF)? / 2;
        let max_send = granted.saturating_sub(4096).max(16 * 1024);
        Ok(Self { fd, max_send })
    }

    pub fn send(&self, bytes: &[u8]) -> io::Result<()> {
        // SAFETY: an all-zero sockaddr_nl addresses the kernel.
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: `bytes` and `to` outlive the call; sizes are theirs.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    0,
                    (&to as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// One datagram into `buf`; its length.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is writable for its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}
