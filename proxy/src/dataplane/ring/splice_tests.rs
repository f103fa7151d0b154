//! The ring engine's copy loop through its splice stretches, on loopback
//! TCP: bytes unchanged across the moves between buffers and pipe, the
//! pipe back with the worker at the end, and a direction dropped while it
//! waits in a splice leaving neither an op nor a pipe behind.

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Duration;

use super::super::super::Shared;
use super::super::super::worker::Worker;
use super::super::runtime::Runtime;
use super::super::tcp::pump;

fn worker() -> Rc<Worker> {
    let (_tx, stop) = tokio::sync::watch::channel(false);
    Rc::new(Worker::new(
        0,
        Shared {
            cfg: crate::config::DataplaneConfig::default(),
            bypass_mark: 0,
            snapshot: crate::snapshot::SharedSnapshot::default(),
            metrics: Arc::new(crate::admin::Metrics::new("uring")),
            policies: None,
            here: crate::policy::layout::Locality::default(),
            stop,
            active: Arc::new(AtomicUsize::new(0)),
        },
    ))
}

/// Two loopback connections: (the writer's end, the proxy's end).
fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (b, _) = listener.accept().expect("accept");
    (a, b)
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

/// Bulk, then chatty (short writes the loop reads one by one and so goes
/// back to buffers), then bulk again, then the FIN: every byte arrives in
/// order, the count is right, the FIN is passed on, and the pipe the
/// streaming stretches used is back with the worker, empty.
#[test]
fn bulk_and_chatty_stretches_arrive_whole_and_the_pipe_comes_back() {
    let rt = Runtime::new().expect("ring");
    let worker = worker();
    let (mut client, from) = pair();
    let (to, mut server) = pair();
    let mut data = pattern(6 << 20, 1);
    let chatty: Vec<Vec<u8>> = (0..20).map(|i| pattern(40 + i * 7, i as u32)).collect();
    let tail = pattern(6 << 20, 2);
    for piece in &chatty {
        data.extend_from_slice(piece);
    }
    data.extend_from_slice(&tail);
    let writer = {
        let (head, tail) = (data[..6 << 20].to_vec(), tail.clone());
        std::thread::spawn(move || {
            for chunk in head.chunks(128 << 10) {
                client.write_all(chunk).expect("write");
            }
            for piece in &chatty {
                // Each piece alone in the socket: a short read.
                std::thread::sleep(Duration::from_millis(5));
                client.write_all(piece).expect("write");
            }
            std::thread::sleep(Duration::from_millis(5));
            for chunk in tail.chunks(128 << 10) {
                client.write_all(chunk).expect("write");
            }
            client
                .shutdown(std::net::Shutdown::Write)
                .expect("shutdown");
            client
        })
    };
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        server.read_to_end(&mut got).expect("read");
        got
    });
    let total = Rc::new(Cell::new(None));
    {
        let (ring, worker, total) = (rt.ring.clone(), worker.clone(), total.clone());
        rt.spawn(async move {
            total.set(Some(pump(&ring, &worker, &from, &to, false).await));
        });
    }
    rt.run(|| total.get().is_some()).expect("ring loop");
    let _client = writer.join().expect("writer");
    let got = reader.join().expect("reader");
    assert_eq!(got.len(), data.len(), "bytes through the proxy");
    assert!(got == data, "the bytes changed on the way");
    assert_eq!(total.get(), Some(data.len() as u64), "bytes counted");
    assert_eq!(
        worker.pipes.kept(),
        1,
        "the streaming stretches' pipe, back and empty"
    );
}

/// A direction dropped while its splice waits for data (a connection
/// drained or stopped mid-stream): its poll is cancelled and its slot
/// comes back, and the pipe (empty then) goes back to the worker.
#[test]
fn a_direction_dropped_mid_splice_gives_its_pipe_back() {
    let rt = Runtime::new().expect("ring");
    let worker = worker();
    for round in 0..10 {
        let (mut client, from) = pair();
        let (to, mut server) = pair();
        let data = pattern(1 << 20, round);
        let seen = Arc::new(AtomicBool::new(false));
        let reader = {
            let (seen, want) = (seen.clone(), data.len());
            std::thread::spawn(move || {
                let mut got = vec![0u8; want];
                server.read_exact(&mut got).expect("read");
                seen.store(true, std::sync::atomic::Ordering::Release);
                (server, got)
            })
        };
        // Written whole and kept open: the direction then waits in a
        // splice for more.
        client.write_all(&data).expect("write");
        let ended = Rc::new(Cell::new(false));
        {
            let (ring, worker, ended, seen) =
                (rt.ring.clone(), worker.clone(), ended.clone(), seen.clone());
            rt.spawn(async move {
                let copy = pump(&ring, &worker, &from, &to, false);
                let delivered = async {
                    while !seen.load(std::sync::atomic::Ordering::Acquire) {
                        let _ = ring.sleep(Duration::from_millis(1)).await;
                    }
                };
                tokio::select! {
                    biased;
                    _ = copy => panic!("the copy ended with the connection open"),
                    () = delivered => {}
                }
                ended.set(true);
            });
        }
        // Every slot back but the runtime's own eventfd read.
        rt.run(|| ended.get() && rt.ring.in_flight() == 1)
            .expect("ring loop");
        let (_server, got) = reader.join().expect("reader");
        assert!(got == data, "round {round}: the bytes changed on the way");
        assert_eq!(worker.pipes.kept(), 1, "round {round}: the pipe came back");
        drop(client);
    }
}

/// What an idle connection pays for the splice path: nothing but the room
/// its direction's future reserves for the await of a stretch.
#[test]
fn a_direction_future_stays_small() {
    let rt = Runtime::new().expect("ring");
    let worker = worker();
    let (_a, from) = pair();
    let (to, _b) = pair();
    let copy = pump(&rt.ring, &worker, &from, &to, false);
    let size = std::mem::size_of_val(&copy);
    drop(copy);
    // 224 bytes before the splice path (debug build): the stretch's await
    // must not add to it.
    assert!(size <= 224, "a direction's future grew to {size} bytes");
}
