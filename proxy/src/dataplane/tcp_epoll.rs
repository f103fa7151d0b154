//! TCP on tokio's epoll reactor: the same session logic as the io_uring
//! back end, for hosts where io_uring is blocked (most container runtimes'
//! default seccomp profile).

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};

use super::admission;
use super::session::{self, Stop};
use super::sockets;
use super::worker::Worker;

pub async fn serve(worker: Rc<Worker>, listener: std::net::TcpListener, mut stop: Stop) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(worker = worker.id, error = %e, "cannot register listener with epoll");
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = session::stopped(&mut stop) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                if let Some(slot) = admission::admit(&worker, &stream) {
                    tokio::task::spawn_local(handle(worker.clone(), stream, peer, slot));
                }
            }
            Err(e) => {
                admission::accept_error(&worker, &e);
                session::accept_failed(&worker, &e).await;
            }
        }
    }
}

async fn handle(
    worker: Rc<Worker>,
    mut client: TcpStream,
    peer: SocketAddr,
    _slot: admission::Slot,
) {
    let Some(accepted) = session::accept(&worker, &client, peer) else {
        return;
    };
    if accepted.target.route.port.l7.is_some() {
        // Boxed: the HTTP server's state is ~2.5 KiB, and inline it would
        // size every L4 connection's task too (ARCHITECTURE.md, "Copy loop").
        Box::pin(crate::l7::serve(worker, client, accepted)).await;
        return;
    }
    let Some(up) = session::connect_upstream(&worker, &accepted, connect).await else {
        sockets::reset_on_close(&client);
        return;
    };
    let _ = client.set_nodelay(true);
    let mut upstream = up.stream;
    let fds = [client.as_raw_fd(), upstream.as_raw_fd()];
    let guard = session::Active::new(&worker, &accepted, up.endpoint, up.decision, fds);
    let (client_read, client_write) = client.split();
    let (upstream_read, upstream_write) = upstream.split();
    let (to_backend, to_client) = tokio::join!(
        pump(&worker, client_read, upstream_write),
        pump(&worker, upstream_read, client_write)
    );
    guard.finish(to_backend, to_client);
}

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
        stream.write_all(&header).await?;
    }
    Ok(stream)
}

/// Copies until EOF, then half-closes the writer (see the io_uring twin).
///
/// Readiness first, then a buffer: a connection waiting for data holds
/// none, and one that just moved a short message goes back to a small one.
async fn pump(worker: &Worker, from: ReadHalf<'_>, mut to: WriteHalf<'_>) -> u64 {
    let mut buf: Option<Vec<u8>> = None;
    let mut total = 0u64;
    let failed = loop {
        if from.readable().await.is_err() {
            break true;
        }
        let mut b = buf.take().unwrap_or_else(|| worker.pool.take_small());
        let n = match from.try_read(&mut b) {
            Ok(0) => {
                worker.pool.give(b);
                break false;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                buf = Some(b);
                continue;
            }
            Err(_) => {
                worker.pool.give(b);
                break true;
            }
        };
        let written = to.write_all(&b[..n]).await;
        let b = worker.pool.next(b, n);
        if worker.pool.is_small(&b) {
            // Short messages: wait for the next one holding nothing.
            worker.pool.give(b);
        } else {
            buf = Some(b);
        }
        if written.is_err() {
            break true;
        }
        total += n as u64;
    };
    if let Some(b) = buf {
        worker.pool.give(b);
    }
    if failed {
        sockets::reset_on_close(to.as_ref());
        let _ = socket2::SockRef::from(from.as_ref()).shutdown(Shutdown::Both);
        let _ = socket2::SockRef::from(to.as_ref()).shutdown(Shutdown::Both);
    } else {
        let _ = to.shutdown().await;
    }
    total
}
