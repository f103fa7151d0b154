//! TCP on the ring engine: a multishot accept per listener, the upstream
//! connect with a linked timeout, and the copy loop of the tokio-uring
//! back end (same buffers, same close order) on ring receives and sends;
//! the closes go on the ring too, where they join the turn's one
//! `io_uring_enter`.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use super::super::admission;
use super::super::session::{self, Stop};
use super::super::sockets::{self, After};
use super::super::worker::{SelfTimed, Worker};
use super::ops::{self, Owned, Ring};
use super::runtime::Runtime;

pub async fn serve(
    rt: Rc<Runtime>,
    worker: Rc<Worker>,
    listener: std::net::TcpListener,
    mut stop: Stop,
) {
    // Accepted sockets inherit TCP_NODELAY from their listener: one
    // setsockopt per worker instead of one per connection.
    if let Err(e) = socket2::SockRef::from(&listener).set_tcp_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY on the listener");
    }
    let fd = listener.as_raw_fd();
    loop {
        let mut accepts = rt.ring.accept_multishot(fd);
        let backoff = loop {
            let next = tokio::select! {
                biased;
                () = session::stopped(&mut stop) => return,
                next = accepts.next() => next,
            };
            // The multishot accept ended (the kernel ends it on an error):
            // arm a new one.
            let Some(res) = next else { break false };
            match ops::result(res) {
                Ok(n) => {
                    let Ok(fd) = RawFd::try_from(n) else { continue };
                    // SAFETY: a descriptor the accept just created, owned
                    // by nothing else.
                    let client = unsafe { TcpStream::from_raw_fd(fd) };
                    if let Some(slot) = admission::admit(&worker, &client) {
                        rt.spawn(handle(rt.ring.clone(), worker.clone(), client, slot));
                    }
                }
                Err(e) => {
                    admission::accept_error(&worker, &e);
                    if session::count_accept_failure(&worker, &e) {
                        break true;
                    }
                }
            }
        };
        drop(accepts);
        if backoff {
            let _ = rt.ring.sleep(session::ACCEPT_BACKOFF).await;
        }
    }
}

async fn handle(ring: Rc<Ring>, worker: Rc<Worker>, client: TcpStream, _slot: admission::Slot) {
    // A multishot accept cannot return each peer's address.
    let Ok(peer) = client.peer_addr() else {
        return;
    };
    let Some(accepted) = session::accept(&worker, &client, peer) else {
        return;
    };
    if accepted.target.route.port.l7.is_some() {
        hand_over(&worker, &client, accepted);
        return;
    }
    let timeout = worker.cfg.connect_timeout.0;
    let connecting = ring.clone();
    let up = session::connect_upstream_within(
        &worker,
        &accepted,
        SelfTimed,
        move |addr, mark, from, header| {
            connect(connecting.clone(), addr, mark, from, header, timeout)
        },
    )
    .await;
    let Some(up) = up else {
        sockets::reset_on_close(&client);
        return;
    };
    let upstream = up.stream;
    let fds = [client.as_raw_fd(), upstream.as_raw_fd()];
    let guard = session::Active::new(&worker, &accepted, up.endpoint, up.decision, fds);
    let (to_backend, to_client) = tokio::join!(
        pump(&ring, &worker, &client, &upstream, false),
        pump(&ring, &worker, &upstream, &client, true)
    );
    guard.finish(to_backend, to_client);
    // Unregistered (the guard) before the descriptors go.
    ring.close(OwnedFd::from(client));
    ring.close(OwnedFd::from(upstream));
}

/// L7 connections are served by the worker's companion epoll thread.
fn hand_over(worker: &Worker, client: &TcpStream, accepted: session::Accepted) {
    let Some(handoff) = &worker.l7_handoff else {
        tracing::warn!(worker = worker.id, "no L7 companion; connection closed");
        return;
    };
    handoff.hand_over(worker.id, client, accepted);
}

/// Connects a socket made by `sockets::upstream_tcp` (mark, transparent
/// source) on the ring, within `timeout` (a linked timeout: its expiry
/// cancels the connect).
async fn connect(
    ring: Rc<Ring>,
    addr: SocketAddr,
    mark: u32,
    from: Option<SocketAddr>,
    header: Option<Vec<u8>>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = sockets::upstream_tcp(addr, mark, from)?;
    let (res, _) = ring.connect(socket.as_raw_fd(), addr, timeout).await;
    if res == -libc::ECANCELED {
        return Err(io::ErrorKind::TimedOut.into());
    }
    ops::result(res)?;
    let stream = TcpStream::from(OwnedFd::from(socket));
    if let Some(header) = header {
        let mut start = 0;
        let mut buf = header;
        while start < buf.len() {
            let end = buf.len();
            let (res, owned) = ring.send(stream.as_raw_fd(), buf, start, end).await;
            buf = into_buf(owned);
            match ops::result(res)? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => start += n,
            }
        }
    }
    Ok(stream)
}

fn into_buf(owned: Owned) -> Vec<u8> {
    match owned {
        Owned::Buf(buf) => buf,
        _ => Vec::new(),
    }
}

/// Copies `from` → `to` until EOF, then half-closes `to`: the tokio-uring
/// back end's loop (`tcp_uring::pump`, where the close order is explained)
/// on ring ops.
///
/// While it waits for data a direction holds no buffer: its receive picks
/// one from the ring's provided group once data is there (`ENOBUFS`, the
/// group all held: a small pool buffer instead). A read that fills its
/// buffer moves the direction to the pool's growing buffers, kept while
/// reads fill them; a short read there goes back to the group.
async fn pump(
    ring: &Rc<Ring>,
    worker: &Worker,
    from: &TcpStream,
    to: &TcpStream,
    close_early: bool,
) -> u64 {
    let select = ring.has_buffers();
    // A pool buffer while data streams; `None` while waiting (with a group).
    let mut held = (!select).then(|| worker.pool.take_small());
    let mut total = 0u64;
    let failed = loop {
        let (res, flags, mut buf) = match held.take() {
            Some(buf) => ring.recv(from.as_raw_fd(), buf).with_flags().await,
            None => recv_any(ring, worker, from).await,
        };
        let mut n = match ops::result(res) {
            Ok(0) => {
                give(worker, buf);
                break false;
            }
            Ok(n) => n,
            Err(_) => {
                give(worker, buf);
                break true;
            }
        };
        let mut then = After::More;
        let mut start = 0;
        let len = buf.as_slice().len();
        // Without SOCK_NONEMPTY the socket held neither data nor a FIN when
        // the receive completed (DEFER_TASKRUN kernels, where the flag is
        // reliable). That is stale by the time this runs: a FIN sent right
        // after a connection's one response often arrives in between, and
        // the try_recv then saves a turn before the FIN goes out. So the
        // hint skips the try_recv only once the direction has relayed data
        // before (a keep-alive connection's later responses), where it
        // almost always returns EAGAIN. The direct send stays: a ring send
        // would add the turn it saves.
        let nothing_waits =
            total > 0 && ring.nonempty_hint() && !io_uring::cqueue::sock_nonempty(flags);
        // A short read is written at once with a plain send, both ways:
        // through the ring, the send's inline completion would end the
        // next wait and cost a turn (an `io_uring_enter` and a wake) before
        // the next receive is armed, and on the way to the backend it
        // would delay the request by that turn.
        if n < len {
            if close_early && !nothing_waits {
                (n, then) = sockets::take_trailing(from, buf.as_mut_slice(), n);
            }
            match sockets::send_now(to, &buf.as_slice()[..n]) {
                Some(k) => start = k,
                None => {
                    give(worker, buf);
                    break true;
                }
            }
        }
        let mut written = true;
        while start < n {
            let (res, owned) = ring.send_owned(to.as_raw_fd(), buf, start, n).await;
            buf = owned;
            match ops::result(res) {
                Ok(k) if k > 0 => start += k,
                _ => {
                    written = false;
                    break;
                }
            }
        }
        held = next_buffer(worker, buf, n, select);
        if !written {
            break true;
        }
        total += n as u64;
        match then {
            After::More => {}
            After::Fin => break false,
            After::Reset => break true,
        }
    };
    if let Some(buf) = held {
        worker.pool.give(buf);
    }
    // Plain syscalls, not IORING_OP_SHUTDOWN: the kernel always runs that
    // one on an io-wq thread (a thread hop per direction), where it ran
    // after the ring close queued behind it and shut down the next
    // connection that got the same descriptor number.
    sockets::end_direction(from, to, failed);
    total
}

/// A receive into a provided buffer, or into a small pool buffer when the
/// group is all held (ENOBUFS).
async fn recv_any(ring: &Rc<Ring>, worker: &Worker, from: &TcpStream) -> (i32, u32, Owned) {
    let fd = from.as_raw_fd();
    if let Some(op) = ring.recv_select(fd) {
        let got = op.with_flags().await;
        if got.0 != -libc::ENOBUFS {
            return got;
        }
        // Only bursts of more connections with data in hand than buffers.
        tracing::trace!(worker = worker.id, "provided buffers all held");
    }
    ring.recv(fd, worker.pool.take_small()).with_flags().await
}

/// What the direction holds while it waits for its next read: a pool
/// buffer while reads fill their buffers, else nothing (with a group; the
/// provided buffer goes back to the kernel as it drops here).
fn next_buffer(worker: &Worker, buf: Owned, n: usize, select: bool) -> Option<Vec<u8>> {
    match buf {
        Owned::Buf(buf) => {
            let buf = worker.pool.next(buf, n);
            if select && worker.pool.is_small(&buf) {
                worker.pool.give(buf);
                None
            } else {
                Some(buf)
            }
        }
        Owned::Provided(p) => {
            let full = n >= p.as_slice().len();
            drop(p);
            full.then(|| worker.pool.take_longer_than(ops::PROVIDED_SIZE))
        }
        _ => (!select).then(|| worker.pool.take_small()),
    }
}

fn give(worker: &Worker, buf: Owned) {
    if let Owned::Buf(buf) = buf {
        worker.pool.give(buf);
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    /// What `serve` relies on to skip a setsockopt per connection: Linux
    /// copies TCP_NODELAY from the listener to the sockets it accepts.
    #[test]
    fn accepted_sockets_inherit_nodelay_from_the_listener() -> std::io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        socket2::SockRef::from(&listener).set_tcp_nodelay(true)?;
        let client = std::net::TcpStream::connect(listener.local_addr()?)?;
        let (accepted, _) = listener.accept()?;
        assert!(accepted.nodelay()?, "the accepted socket lost TCP_NODELAY");
        assert!(!client.nodelay()?, "the client side was never set");
        Ok(())
    }
}
