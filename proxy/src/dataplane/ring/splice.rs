//! A streaming direction of the ring engine's copy loop on splice(2):
//! socket → pipe → socket with non-blocking `splice` calls made by the
//! worker, and ring polls (`IORING_OP_POLL_ADD`, in the turn's one
//! `io_uring_enter`) to wait for data or for room.
//!
//! Not `IORING_OP_SPLICE`: the kernel never runs that op inline (it goes to
//! an io-wq thread, a thread hop and two context switches per splice on
//! the worker's core), and it looks its descriptors up only when that
//! thread runs it, so a ring close queued behind it could overtake it and
//! a new socket with the same number be spliced (the hazard found with
//! `IORING_OP_SHUTDOWN`, see `tcp.rs`), unless every socket were a
//! registered file.

use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use super::super::bufpool::SMALL;
use super::super::pipes::{Ended, Lease, Pipe};
use super::super::worker::Worker;
use super::ops::Ring;

/// Whether a direction can splice: both sockets non-blocking (a splice's
/// socket side blocks or not by the descriptor's mode; the ring's own ops
/// do not depend on it).
pub fn prepare(from: &TcpStream, to: &TcpStream) -> bool {
    from.set_nonblocking(true).is_ok() && to.set_nonblocking(true).is_ok()
}

/// Moves `from` → `to` through `pipe` (one of the worker's, given back
/// here) until the stream ends or turns chatty; returns how, and the bytes
/// sent.
///
/// Kept from the buffer loop: the close order (after the pipe is drained
/// the next splice finds a FIN that came with the data, and the caller
/// half-closes in the same turn), the back-pressure (nothing is read while
/// `to` has no room), and every byte counted once sent.
pub async fn stream(
    ring: Rc<Ring>,
    worker: &Worker,
    pipe: Pipe,
    from: &TcpStream,
    to: &TcpStream,
) -> (Ended, u64) {
    let mut lease = Lease::new(&worker.pipes, pipe);
    let Some(pipe) = lease.pipe() else {
        return (Ended::Failed, 0);
    };
    let (rfd, wfd) = (from.as_raw_fd(), to.as_raw_fd());
    let mut sent = 0u64;
    let ended = 'stream: loop {
        let n = match pipe.fill_from(rfd) {
            Ok(0) => break Ended::Fin,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if ring.poll(rfd, libc::POLLIN).await.0 < 0 {
                    break Ended::Failed;
                }
                continue;
            }
            Err(_) => break Ended::Failed,
        };
        while pipe.held > 0 {
            match pipe.drain_into(wfd) {
                // A pipe with bytes and its writer open never gives 0.
                Ok(0) => break 'stream Ended::Failed,
                Ok(k) => sent += k as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if ring.poll(wfd, libc::POLLOUT).await.0 < 0 {
                        break 'stream Ended::Failed;
                    }
                }
                Err(_) => break 'stream Ended::Failed,
            }
        }
        if n < SMALL {
            break Ended::Short;
        }
    };
    drop(lease);
    (ended, sent)
}

#[cfg(test)]
#[path = "splice_tests.rs"]
mod tests;
