//! Pipes for splice(2): a direction that streams moves its data socket →
//! pipe → socket, so the bytes are never copied to user space and back
//! (the skb pages the receive queued go by reference into the pipe, and
//! from it into the send queue). A pipe is taken only once a direction
//! streams (it reached the pool's full-size buffers) and given back as it
//! stops, so idle and chatty connections hold none; a worker keeps a few
//! empty ones for the next stream.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Empty pipes a worker keeps for the next stream (a kept pipe costs two
/// descriptors and the kernel's pipe header, no pages).
const KEPT: usize = 16;

/// The largest pipe asked for; `/proc/sys/fs/pipe-max-size` is 1 MiB by
/// default, and a request above it fails (the default 64 KiB pipe stays).
const MAX_SIZE: usize = 1 << 20;

#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes it can hold (the kernel's rounding of what was asked).
    size: usize,
    /// Bytes in it now; only an empty pipe goes back to the worker's set.
    pub held: usize,
}

impl Pipe {
    /// A non-blocking pipe of about `size` bytes (`F_SETPIPE_SZ`; when the
    /// kernel refuses, the default size).
    fn new(size: usize) -> io::Result<Self> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 just created both, owned by nothing else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let want = i32::try_from(size.min(MAX_SIZE)).unwrap_or(i32::MAX);
        // SAFETY: a plain fcntl on our own descriptor.
        let got = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, want) };
        let size = if got > 0 {
            got as usize
        } else {
            // SAFETY: as above.
            let current = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
            usize::try_from(current).unwrap_or(0).max(4096)
        };
        Ok(Self {
            read,
            write,
            size,
            held: 0,
        })
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Moves up to the pipe's free room from `from` into the pipe without
    /// blocking (both the pipe and, for `splice`, `from` must be
    /// non-blocking): the bytes moved, 0 at the peer's FIN, `WouldBlock`
    /// when nothing waits.
    pub fn fill_from(&mut self, from: RawFd) -> io::Result<usize> {
        let n = splice(from, self.write.as_raw_fd(), self.size - self.held)?;
        self.held += n;
        Ok(n)
    }

    /// Moves what the pipe holds into `to` without blocking: the bytes the
    /// socket took, `WouldBlock` when its send buffer is full.
    pub fn drain_into(&mut self, to: RawFd) -> io::Result<usize> {
        let n = splice(self.read.as_raw_fd(), to, self.held)?;
        self.held -= n.min(self.held);
        Ok(n)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: no memory of ours is passed; both descriptors are open
        // for the call (the caller holds them).
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        match usize::try_from(n) {
            Ok(n) => return Ok(n),
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// How a spliced stretch of a direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A read shorter than a small buffer: the stream has turned chatty,
    /// and the direction goes back to buffers (the pipe is empty).
    Short,
    /// The peer's FIN, after the data before it was sent.
    Fin,
    /// A socket failed: the reset is passed on.
    Failed,
}

/// A spliced stretch of a direction, boxed: awaited inline, its state
/// would size every direction's future, idle ones included.
pub type Stretch<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = (Ended, u64)> + 'a>>;

/// A pipe lent to a streaming direction, given back to the worker however
/// the stretch ends, its future dropped mid-flight included (a connection
/// drained or stopped): kept when empty, else closed.
pub struct Lease<'a> {
    pipe: Option<Pipe>,
    pipes: &'a Pipes,
}

impl<'a> Lease<'a> {
    pub fn new(pipes: &'a Pipes, pipe: Pipe) -> Self {
        Self {
            pipe: Some(pipe),
            pipes,
        }
    }

    pub fn pipe(&mut self) -> Option<&mut Pipe> {
        self.pipe.as_mut()
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            self.pipes.give(pipe);
        }
    }
}

/// A worker's empty pipes, and the size new ones get.
#[derive(Debug)]
pub struct Pipes {
    size: usize,
    kept: RefCell<Vec<Pipe>>,
}

impl Pipes {
    pub fn new(size: usize) -> Self {
        Self {
            size,
            kept: RefCell::default(),
        }
    }

    /// An empty pipe: a kept one, else a new one (`None` when the process
    /// is out of descriptors or pipe memory: the direction then keeps its
    /// buffers).
    pub fn take(&self) -> Option<Pipe> {
        if let Some(pipe) = self.kept.borrow_mut().pop() {
            return Some(pipe);
        }
        match Pipe::new(self.size) {
            Ok(pipe) => Some(pipe),
            Err(e) => {
                tracing::debug!(error = %e, "no pipe for splice; copying through buffers");
                None
            }
        }
    }

    /// Keeps an empty pipe for the next stream; one that still holds
    /// bytes (a direction that failed) is closed, its pages freed.
    pub fn give(&self, pipe: Pipe) {
        let mut kept = self.kept.borrow_mut();
        if pipe.held == 0 && kept.len() < KEPT {
            kept.push(pipe);
        }
    }

    #[cfg(test)]
    pub fn kept(&self) -> usize {
        self.kept.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let a = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (b, _) = listener.accept().expect("accept");
        (a, b)
    }

    /// Bytes written into one connection come out of another through the
    /// pipe unchanged, the FIN shows as 0, and an empty pipe is kept.
    #[test]
    fn moves_bytes_socket_to_socket_and_keeps_the_empty_pipe() {
        let (mut client, from) = pair();
        let (to, mut server) = pair();
        from.set_nonblocking(true).expect("nonblocking");
        to.set_nonblocking(true).expect("nonblocking");
        let pipes = Pipes::new(256 * 1024);
        let mut pipe = pipes.take().expect("pipe");
        assert!(pipe.size() >= 64 * 1024);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let writer = {
            let data = data.clone();
            std::thread::spawn(move || {
                client.write_all(&data).expect("write");
                drop(client);
            })
        };
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            server.read_to_end(&mut got).expect("read");
            got
        });
        let mut moved = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            assert!(std::time::Instant::now() < deadline, "splice stalled");
            match pipe.fill_from(from.as_raw_fd()) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::yield_now();
                }
                Err(e) => panic!("splice in: {e}"),
            }
            while pipe.held > 0 {
                match pipe.drain_into(to.as_raw_fd()) {
                    Ok(n) => moved += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                    Err(e) => panic!("splice out: {e}"),
                }
            }
        }
        to.shutdown(std::net::Shutdown::Write).expect("shutdown");
        writer.join().expect("writer");
        assert_eq!(reader.join().expect("reader"), data);
        assert_eq!(moved, data.len());
        pipes.give(pipe);
        assert_eq!(pipes.kept(), 1);
    }

    #[test]
    fn a_pipe_that_holds_bytes_is_not_kept() {
        let pipes = Pipes::new(64 * 1024);
        let mut pipe = pipes.take().expect("pipe");
        pipe.held = 10;
        pipes.give(pipe);
        assert_eq!(pipes.kept(), 0);
    }
}
