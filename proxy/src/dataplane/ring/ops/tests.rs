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

const BUFFERS: u16 = 8;

/// Invariants 6-9 with the buffers provided by IORING_OP_PROVIDE_BUFFERS
/// (the default).
#[test]
fn provided_buffers_all_come_back() {
    let rt = Runtime::with_buffers(BUFFERS).expect("ring");
    assert!(!rt.ring.buffers_mapped());
    buffers_all_come_back(&rt);
}

/// The same with the mapped list (the kernels we run on have it).
#[test]
fn mapped_provided_buffers_all_come_back() {
    let rt = Runtime::with_mapped_buffers(BUFFERS).expect("ring");
    assert!(rt.ring.buffers_mapped(), "the kernel refused a mapped list");
    buffers_all_come_back(&rt);
}

/// Invariants 6-9: receives pick provided buffers only while some are
/// free (the rest fail with ENOBUFS), a buffer sent from goes back once the
/// send completed, a detached receive's buffer goes back too, every buffer
/// is free again at the end of each round, and each round picks again
/// (the ids came back to the kernel, 20 rounds lapping the mapped list).
fn buffers_all_come_back(rt: &Rc<Runtime>) {
    const PAIRS: usize = 24;
    assert!(rt.ring.has_buffers(), "the kernel refused provided buffers");
    let mut picked_total = 0;
    let mut enobufs_total = 0;
    for round in 0..20usize {
        let pairs: Vec<(UnixStream, UnixStream)> = (0..PAIRS)
            .map(|_| UnixStream::pair().expect("socketpair"))
            .collect();
        for (i, (a, _)) in pairs.iter().enumerate() {
            (&*a)
                .write_all(payload(i, round).as_bytes())
                .expect("write");
            a.set_nonblocking(true).expect("nonblocking");
        }
        let pairs = Rc::new(pairs);
        let echoed = Rc::new(std::cell::RefCell::new(Vec::new()));
        let enobufs = Rc::new(Cell::new(0usize));
        let done = Rc::new(Cell::new(0usize));
        for i in 0..PAIRS {
            let (ring, pairs, echoed, enobufs, done) = (
                rt.ring.clone(),
                pairs.clone(),
                echoed.clone(),
                enobufs.clone(),
                done.clone(),
            );
            rt.spawn(async move {
                let fd = pairs[i].1.as_raw_fd();
                let op = ring.recv_select(fd).expect("a group");
                if i % 3 == 0 {
                    // Dropped before its completion: detached, its buffer
                    // (if it got one) must still come back.
                    drop(op);
                    done.set(done.get() + 1);
                    return;
                }
                let (res, _, owned) = op.with_flags().await;
                if res == -libc::ENOBUFS {
                    enobufs.set(enobufs.get() + 1);
                    done.set(done.get() + 1);
                    return;
                }
                let n = result(res).expect("a receive");
                let want = payload(i, round);
                assert!(matches!(owned, Owned::Provided(_)), "pair {i}: no buffer");
                assert_eq!(&owned.as_slice()[..n], want.as_bytes(), "pair {i}");
                // Held across a turn, so the group runs dry.
                let _ = ring.sleep(Duration::from_millis(1)).await;
                let (res, _) = ring.send_owned(fd, owned, 0, n).await;
                assert_eq!(result(res).ok(), Some(n), "pair {i}: the echo");
                echoed.borrow_mut().push(i);
                done.set(done.get() + 1);
            });
        }
        run_until(rt, || done.get() == PAIRS);
        assert_eq!(
            rt.ring.buffers_held(),
            0,
            "round {round}: buffers still held"
        );
        for &i in echoed.borrow().iter() {
            let mut back = vec![0u8; 64];
            let n = std::io::Read::read(&mut &pairs[i].0, &mut back).expect("the echo");
            assert_eq!(&back[..n], payload(i, round).as_bytes(), "pair {i}");
        }
        // Every round picks again: the last round's buffers came back.
        assert!(
            !echoed.borrow().is_empty(),
            "round {round}: no buffer picked"
        );
        picked_total += echoed.borrow().len();
        enobufs_total += enobufs.get();
    }
    assert!(enobufs_total > 0, "the group never ran dry");
    assert!(
        picked_total <= 20 * usize::from(BUFFERS),
        "more buffers picked than the group has: {picked_total}"
    );
}

fn payload(i: usize, round: usize) -> String {
    format!("pair {i} round {round}")
}
