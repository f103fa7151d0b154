//! Socket setup: transparent listeners that TPROXY delivers to, and
//! upstream sockets that nftables must not intercept again.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Listeners on both families; IPv6 is optional (a node without it still
/// serves IPv4).
pub const LISTEN_ADDRS: [&str; 2] = ["0.0.0.0", "::"];

fn domain(addr: &SocketAddr) -> Domain {
    if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    }
}

fn set_transparent(socket: &Socket, v6: bool) -> io::Result<()> {
    if v6 {
        socket.set_ip_transparent_v6(true)
    } else {
        socket.set_ip_transparent_v4(true)
    }
}

/// A TCP listener that accepts connections TPROXY diverted to it: bound on
/// every address with IP_TRANSPARENT, shared by the workers through
/// SO_REUSEPORT. It carries the bypass mark, which the kernel gives to the
/// handshake replies and the accepted sockets, so that what we send to a
/// client is, like what we send upstream, marked as ours (nftables leaves
/// it out of connection tracking).
pub fn tcp_listener(
    addr: SocketAddr,
    backlog: i32,
    bypass_mark: u32,
) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(
        domain(&addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    set_transparent(&socket, addr.is_ipv6())?;
    socket.set_mark(bypass_mark)?;
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// A UDP socket that receives TPROXY-diverted datagrams and reports each
/// one's original destination.
pub fn udp_listener(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(
        domain(&addr),
        Type::DGRAM.nonblocking(),
        Some(Protocol::UDP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    set_transparent(&socket, addr.is_ipv6())?;
    set_recv_orig_dst(&socket, addr.is_ipv6())?;
    socket.bind(&SockAddr::from(addr))?;
    Ok(socket.into())
}

fn set_recv_orig_dst(socket: &Socket, v6: bool) -> io::Result<()> {
    let (level, name) = if v6 {
        (libc::SOL_IPV6, libc::IPV6_RECVORIGDSTADDR)
    } else {
        (libc::SOL_IP, libc::IP_RECVORIGDSTADDR)
    };
    let one: libc::c_int = 1;
    // SAFETY: a valid fd, a pointer to a live c_int and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An unconnected, non-blocking upstream TCP socket for `to`, carrying the
/// bypass mark so that our own traffic is never diverted back to us. With
/// `from`, it leaves from the client's own address (see [`bind_source`]).
pub fn upstream_tcp(
    to: SocketAddr,
    bypass_mark: u32,
    from: Option<SocketAddr>,
) -> io::Result<Socket> {
    let socket = Socket::new(domain(&to), Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
    socket.set_mark(bypass_mark)?;
    socket.set_tcp_nodelay(true)?;
    if let Some(from) = from {
        bind_source(&socket, from)?;
    }
    Ok(socket)
}

/// A UDP socket connected to a backend, with the bypass mark, from the
/// client's own address when `from` is given.
pub fn upstream_udp(
    to: SocketAddr,
    bypass_mark: u32,
    from: Option<SocketAddr>,
) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(domain(&to), Type::DGRAM.nonblocking(), Some(Protocol::UDP))?;
    socket.set_mark(bypass_mark)?;
    if let Some(from) = from {
        bind_source(&socket, from)?;
    }
    socket.connect(&SockAddr::from(to))?;
    Ok(socket.into())
}

/// Binds to the client's address, which is not ours (IP_TRANSPARENT), and
/// its port when that is free here; the backend then sees the client as
/// kube-proxy's DNAT would show it. The backend's replies come back to this
/// socket through the prerouting rule that sends packets of our own
/// transparent sockets to them.
fn bind_source(socket: &Socket, from: SocketAddr) -> io::Result<()> {
    set_transparent(socket, from.is_ipv6())?;
    socket.set_reuse_address(true)?;
    match socket.bind(&SockAddr::from(from)) {
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
            socket.bind(&SockAddr::from(SocketAddr::new(from.ip(), 0)))
        }
        other => other,
    }
}

/// A UDP socket bound to the Service VIP (not a local address, hence
/// IP_TRANSPARENT) and connected to the client, so that replies leave from
/// the address the client sent to, with the bypass mark.
pub fn reply_udp(
    vip: SocketAddr,
    client: SocketAddr,
    bypass_mark: u32,
) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(domain(&vip), Type::DGRAM.nonblocking(), Some(Protocol::UDP))?;
    if vip.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_mark(bypass_mark)?;
    socket.set_reuse_address(true)?;
    set_transparent(&socket, vip.is_ipv6())?;
    socket.bind(&SockAddr::from(vip))?;
    socket.connect(&SockAddr::from(client))?;
    Ok(socket.into())
}

/// Closes with a TCP reset instead of a FIN, to tell a client at once that
/// its connection could not be served.
pub fn reset_on_close(socket: &impl AsRawFd) {
    let fd = borrow(socket);
    let sock = socket2::SockRef::from(&fd);
    let _ = sock.set_linger(Some(std::time::Duration::ZERO));
}

/// One non-blocking receive, whatever the socket's mode: `Ok(0)` is the
/// peer's FIN, `WouldBlock` an empty queue.
pub fn try_recv(socket: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    let fd = borrow(socket);
    // SAFETY: `[u8]` and `[MaybeUninit<u8>]` share their layout, and recv
    // only writes initialized bytes into the slice.
    let buf = unsafe { &mut *(std::ptr::from_mut(buf) as *mut [std::mem::MaybeUninit<u8>]) };
    socket2::SockRef::from(&fd).recv_with_flags(buf, libc::MSG_DONTWAIT)
}

/// One non-blocking send, whatever the socket's mode; a peer gone is an
/// error, not a SIGPIPE.
pub fn try_send(socket: &impl AsRawFd, buf: &[u8]) -> io::Result<usize> {
    let fd = borrow(socket);
    socket2::SockRef::from(&fd).send_with_flags(buf, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
}

/// What a direction does once the data in hand is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Read again.
    More,
    /// The peer's FIN was seen: half-close now.
    Fin,
    /// The peer's socket failed: pass a reset on.
    Reset,
}

/// The io_uring close order's first half: after a short read of `n` bytes
/// into `buf`, one non-blocking receive into the rest finds a FIN (or more
/// data) that came with them, so that the half-close can follow the data
/// in the same turn (`tcp_uring::pump`). Returns the bytes now in `buf`
/// and what follows them.
pub fn take_trailing(from: &impl AsRawFd, buf: &mut [u8], n: usize) -> (usize, After) {
    match try_recv(from, &mut buf[n..]) {
        Ok(0) => (n, After::Fin),
        Ok(k) => (n + k, After::More),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            (n, After::More)
        }
        Err(_) => (n, After::Reset),
    }
}

/// Its second half: what of `data` the socket takes at once (0 when its
/// buffer is full); `None` when the socket failed.
pub fn send_now(to: &impl AsRawFd, data: &[u8]) -> Option<usize> {
    match try_send(to, data) {
        Ok(k) => Some(k),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Some(0),
        Err(_) => None,
    }
}

/// Ends a direction `from` → `to`: a failed one passes the reset on and
/// ends the other direction too; a finished one half-closes `to`, so a
/// client that shut its write side still gets the whole response.
pub fn end_direction(from: &impl AsRawFd, to: &impl AsRawFd, failed: bool) {
    if failed {
        reset_on_close(to);
    }
    let (from, to) = (borrow(from), borrow(to));
    let (from, to) = (socket2::SockRef::from(&from), socket2::SockRef::from(&to));
    if failed {
        let _ = from.shutdown(std::net::Shutdown::Both);
        let _ = to.shutdown(std::net::Shutdown::Both);
    } else {
        let _ = to.shutdown(std::net::Shutdown::Write);
    }
}

/// Borrows a socket's descriptor for a socket2 call. tokio-uring's streams
/// implement only `AsRawFd`.
pub fn borrow<T: AsRawFd>(socket: &T) -> BorrowedFd<'_> {
    // SAFETY: the fd belongs to `socket`, which outlives the borrow.
    unsafe { BorrowedFd::borrow_raw(socket.as_raw_fd()) }
}

/// Maps `::ffff:a.b.c.d` back to IPv4 so that lookups match the table.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => addr,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{Shutdown, TcpListener, TcpStream};

    use super::*;

    /// What the io_uring copy loop relies on for the close order: on a
    /// blocking socket, `try_recv` never waits, tells an empty queue from
    /// the peer's FIN, and `try_send` writes at once.
    #[test]
    fn try_recv_tells_an_empty_queue_from_a_fin() -> io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let mut peer = TcpStream::connect(listener.local_addr()?)?;
        let (ours, _) = listener.accept()?;
        let mut buf = [0u8; 16];
        let empty = try_recv(&ours, &mut buf).expect_err("nothing was sent");
        assert_eq!(empty.kind(), io::ErrorKind::WouldBlock);

        peer.write_all(b"last")?;
        peer.shutdown(Shutdown::Write)?;
        let (mut got, mut fin) = (Vec::new(), false);
        // Loopback delivers within the sender's calls; the bound only keeps
        // a broken kernel from spinning the test forever.
        for _ in 0..10_000 {
            match try_recv(&ours, &mut buf) {
                Ok(0) => {
                    fin = true;
                    break;
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => return Err(e),
            }
        }
        assert_eq!(got, b"last");
        assert!(fin, "the FIN was never seen");

        assert_eq!(try_send(&ours, b"reply")?, 5);
        let mut reply = [0u8; 5];
        std::io::Read::read_exact(&mut peer, &mut reply)?;
        assert_eq!(&reply, b"reply");
        Ok(())
    }
}
