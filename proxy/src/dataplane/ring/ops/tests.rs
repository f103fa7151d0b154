//! Stress of the op slab: many ops in flight, futures dropped mid-flight,
//! cancellations racing completions. Every slot must come back, every
//! completed receive must hold the bytes sent, and nothing may crash.

use std::cell::Cell;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::Duration;

use super::super::runtime::Runtime;
use super::*;

/// Runs the loop until `done`, then until every slot but the runtime's own
/// eventfd read has come back; fails after 20 s.
fn run_until(rt: &Rc<Runtime>, done: impl Fn() -> bool) {
    let finished = Rc::new(Cell::new(false));
    let timed_out = Rc::new(Cell::new(false));
    let guard_alive = Rc::new(Cell::new(true));
    {
        let (ring, finished, timed_out, alive) = (
            rt.ring.clone(),
            finished.clone(),
            timed_out.clone(),
            guard_alive.clone(),
        );
        rt.spawn(async move {
            for _ in 0..2000 {
                if finished.get() {
                    break;
                }
                let _ = ring.sleep(Duration::from_millis(10)).await;
            }
            timed_out.set(!finished.get());
            alive.set(false);
        });
    }
    rt.run(|| {
        if done() {
            finished.set(true);
        }
        timed_out.get() || (finished.get() && !guard_alive.get() && rt.ring.in_flight() == 1)
    })
    .expect("ring loop");
    assert!(!timed_out.get(), "the ops never all completed");
}

#[test]
fn stress() {
    let rt = Runtime::new().expect("ring");
    for round in 0..30u64 {
        let pairs: Vec<(UnixStream, UnixStream)> = (0..48)
            .map(|_| UnixStream::pair().expect("socketpair"))
            .collect();
        let all = Rc::new(pairs);
        let done = Rc::new(Cell::new(0usize));
        let total = all.len() * 2;
        for i in 0..all.len() {
            let (ring, pairs, finished) = (rt.ring.clone(), all.clone(), done.clone());
            // A receiver, dropped mid-flight in every third pair.
            rt.spawn(async move {
                let fd = pairs[i].1.as_raw_fd();
                let recv = ring.recv(fd, vec![0u8; 64]);
                if (i as u64 + round).is_multiple_of(3) {
                    tokio::select! {
                        biased;
                        _ = ring.sleep(Duration::from_micros(50 * (i as u64 % 4))) => {}
                        (res, owned) = recv => check(i, res, owned),
                    }
                } else {
                    let (res, owned) = recv.await;
                    check(i, res, owned);
                }
                finished.set(finished.get() + 1);
            });
            // A sender through the ring, or a plain write, or nothing at all
            // (then the receive is only ever cancelled or sees the close).
            let (ring, pairs, finished) = (rt.ring.clone(), all.clone(), done.clone());
            rt.spawn(async move {
                let payload = format!("pair {i:04}").into_bytes();
                match i % 4 {
                    0 => {
                        let len = payload.len();
                        let (res, _) = ring.send(pairs[i].0.as_raw_fd(), payload, 0, len).await;
                        assert_eq!(result(res).expect("send"), len);
                    }
                    1 => {
                        (&pairs[i].0).write_all(&payload).expect("write");
                    }
                    2 => {
                        // Dropped before it ever reaches the kernel.
                        drop(ring.sleep(Duration::from_millis(1)));
                        let _ = pairs[i].0.shutdown(std::net::Shutdown::Both);
                    }
                    _ => {
                        let _ = ring.sleep(Duration::from_micros(100)).await;
                        let _ = pairs[i].0.shutdown(std::net::Shutdown::Both);
                    }
                }
                finished.set(finished.get() + 1);
            });
        }
        run_until(&rt, || done.get() == total);
        // Ops cancelled while their socket still lives: cancel, then close.
        drop(all);
    }
}

fn check(i: usize, res: i32, owned: Owned) {
    let Owned::Buf(buf) = owned else {
        panic!("a receive gave back no buffer");
    };
    match result(res) {
        Ok(0) => {}
        Ok(n) => assert_eq!(&buf[..n], format!("pair {i:04}").as_bytes()),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ECANCELED)),
    }
}

#[test]
fn a_dropped_multishot_accept_closes_what_it_had_not_handed_out() {
    let rt = Runtime::new().expect("ring");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let clients: Vec<_> = (0..5)
        .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
        .collect();
    let got = Rc::new(Cell::new(0));
    {
        let (ring, got) = (rt.ring.clone(), got.clone());
        let fd = listener.as_raw_fd();
        rt.spawn(async move {
            let mut accepts = ring.accept_multishot(fd);
            let first = accepts.next().await.expect("an accepted connection");
            assert!(first >= 0, "accept failed: {first}");
            close_fd(first);
            got.set(1);
            // Dropped with more connections queued or arriving.
        });
    }
    run_until(&rt, || got.get() == 1);
    // Every accepted descriptor was closed: each client sees EOF.
    for mut c in clients.into_iter().skip(1) {
        c.set_read_timeout(Some(Duration::from_millis(1)))
            .expect("timeout");
        let mut b = [0u8; 1];
        // Either EOF (accepted then closed) or still queued in the backlog.
        match std::io::Read::read(&mut c, &mut b) {
            Ok(0) => {}
            Ok(_) => panic!("data from nowhere"),
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "{e}"
            ),
        }
    }
}

#[test]
fn a_connect_is_cancelled_by_its_linked_timeout() {
    let rt = Runtime::new().expect("ring");
    // A loopback listener that never accepts, its queue full: the kernel
    // drops further SYNs, and a connect waits for a SYN-ACK that never comes.
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    listener
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .expect("addr")
                .into(),
        )
        .expect("bind");
    listener.listen(0).expect("listen");
    let addr = listener
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet");
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        s.set_nonblocking(true).expect("nonblocking");
        let _ = s.connect(&addr.into());
        fillers.push(s);
    }
    let done = Rc::new(Cell::new(None));
    {
        let (ring, done) = (rt.ring.clone(), done.clone());
        rt.spawn(async move {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            let (res, _) = ring
                .connect(socket.as_raw_fd(), addr, Duration::from_millis(300))
                .await;
            done.set(Some(res));
        });
    }
    run_until(&rt, || done.get().is_some());
    assert_eq!(done.get(), Some(-libc::ECANCELED));
}

#[test]
fn a_refused_connect_fails_at_once() {
    let rt = Runtime::new().expect("ring");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let done = Rc::new(Cell::new(None));
    {
        let (ring, done) = (rt.ring.clone(), done.clone());
        rt.spawn(async move {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            let (res, _) = ring
                .connect(socket.as_raw_fd(), port, Duration::from_secs(5))
                .await;
            done.set(Some(res));
        });
    }
    run_until(&rt, || done.get().is_some());
    assert_eq!(done.get(), Some(-libc::ECONNREFUSED));
}
