//! TCP on io_uring (tokio-uring): accept, pick, connect, and a copy loop
//! per direction whose reads and writes are ring operations on buffers
//! borrowed from the worker's pool.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::{TcpListener, TcpStream};

use super::admission;
use super::session::{self, Stop};
use super::sockets::{self, After};
use super::worker::Worker;

pub async fn serve(worker: Rc<Worker>, listener: std::net::TcpListener, mut stop: Stop) {
    let listener = TcpListener::from_std(listener);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = session::stopped(&mut stop) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                if let Some(slot) = admission::admit(&worker, &stream) {
                    tokio_uring::spawn(handle(worker.clone(), stream, peer, slot));
                }
            }
            Err(e) => {
                admission::accept_error(&worker, &e);
                session::accept_failed(&worker, &e).await;
            }
        }
    }
}

async fn handle(worker: Rc<Worker>, client: TcpStream, peer: SocketAddr, _slot: admission::Slot) {
    let Some(accepted) = session::accept(&worker, &client, peer) else {
        return;
    };
    if accepted.target.route.port.l7.is_some() {
        // hyper needs readiness-based io: the L7 server runs on the epoll
        // companion thread, or on the tokio reactor under the ring
        // (ARCHITECTURE.md, "L7").
        if let Some(handoff) = &worker.l7_handoff {
            handoff.hand_over(worker.id, &client, accepted);
            return;
        }
        match crate::l7::adopt(&client) {
            Ok(stream) => {
                drop(client);
                // Boxed, as in the epoll twin: it would size every task.
                Box::pin(crate::l7::serve(worker, stream, accepted)).await;
            }
            // dup() fails for every connection once descriptors run out.
            Err(e) => crate::logging::rate_limited_warn("l7-adopt", || {
                tracing::warn!(error = %e, "cannot hand an L7 connection to the reactor");
            }),
        }
        return;
    }
    let Some(up) = session::connect_upstream(&worker, &accepted, connect).await else {
        sockets::reset_on_close(&client);
        return;
    };
    let upstream = up.stream;
    let _ = client.set_nodelay(true);
    let fds = [client.as_raw_fd(), upstream.as_raw_fd()];
    let guard = session::Active::new(&worker, &accepted, up.endpoint, up.decision, fds);
    let (to_backend, to_client) = tokio::join!(
        pump(&worker, &client, &upstream, false),
        pump(&worker, &upstream, &client, true)
    );
    guard.finish(to_backend, to_client);
}

/// Connects with a pre-configured socket. tokio-uring 0.5 can only connect
/// a socket it creates itself, so the connect runs on the reactor tokio-uring
/// sits on, and the stream then moves to the ring.
async fn connect(
    addr: SocketAddr,
    mark: u32,
    from: Option<SocketAddr>,
    header: Option<Vec<u8>>,
) -> io::Result<TcpStream> {
    let socket = sockets::upstream_tcp(addr, mark, from)?;
    let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    let mut stream = socket.connect(addr).await?;
    if let Some(header) = header {
        tokio::io::AsyncWriteExt::write_all(&mut stream, &header).await?;
    }
    Ok(TcpStream::from_std(stream.into_std()?))
}

/// Copies `from` → `to` until EOF, then half-closes `to`: a client that
/// shuts its write side still gets the whole response.
///
/// With `close_early` (the backend → client direction), a short read (the
/// end of a message, maybe of the connection) is followed by one
/// non-blocking receive, which finds a FIN that came with the data, and the
/// data goes out at once with a plain send (the ring takes only what the
/// socket did not): then either the FIN follows in the same turn, or the
/// next ring read is already armed when a trailing FIN comes. Through the
/// ring, a write completion and a read completion stood between the data
/// and the FIN, and the client, having read the whole response by then,
/// often closed first and held the TIME_WAIT that belongs to the backend's
/// side (tests/e2e/test_close_order.py). The send also saves the ring turn
/// of a write per response (bench/results/2026-12-06-syscalls.md).
async fn pump(worker: &Worker, from: &TcpStream, to: &TcpStream, close_early: bool) -> u64 {
    // A ring read holds its buffer until data comes: start small (bufpool.rs).
    let mut buf = worker.pool.take_small();
    let mut total = 0u64;
    let failed = loop {
        let (res, b) = from.read(buf).await;
        buf = b;
        let mut n = match res {
            Ok(0) => break false,
            Ok(n) => n,
            Err(_) => break true,
        };
        let mut then = After::More;
        let mut start = 0;
        if close_early && n < buf.len() {
            (n, then) = sockets::take_trailing(from, &mut buf, n);
            match sockets::send_now(to, &buf[..n]) {
                Some(k) => start = k,
                None => break true,
            }
        }
        // One ring write per partial write. Not `write_all`: the state of
        // every future awaited here is reserved in each connection's task,
        // idle or not, and that one's is three times this loop's.
        let written = if start == n {
            (true, buf)
        } else {
            let mut pending = buf.slice(start..n);
            loop {
                let (res, rest) = to.write(pending).submit().await;
                match res {
                    Ok(k) if k > 0 && k < rest.bytes_init() => pending = rest.slice(k..),
                    Ok(k) => break (k > 0, rest.into_inner()),
                    Err(_) => break (false, rest.into_inner()),
                }
            }
        };
        buf = worker.pool.next(written.1, n);
        if !written.0 {
            break true;
        }
        total += n as u64;
        match then {
            After::More => {}
            After::Fin => break false,
            After::Reset => break true,
        }
    };
    worker.pool.give(buf);
    sockets::end_direction(from, to, failed);
    total
}
