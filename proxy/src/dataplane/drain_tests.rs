use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Connections;
use crate::catalog::fixtures::{port, ready};
use crate::catalog::{Endpoint, Route, Scope, ServicePort, ServiceTable};

fn with_endpoints(name: &str, internal: &[&str]) -> Arc<ServicePort> {
    let endpoints: Vec<Endpoint> = internal.iter().map(|a| ready(a)).collect();
    Arc::new(ServicePort {
        internal: endpoints.into(),
        ..port(name)
    })
}

fn table(ports: &[&Arc<ServicePort>]) -> ServiceTable {
    let mut table = ServiceTable::default();
    for p in ports {
        table
            .services
            .insert(p.service.key.clone(), vec![Arc::clone(p)]);
    }
    table
}

fn route(port: &Arc<ServicePort>) -> Route {
    Route {
        port: port.clone(),
        scope: Scope::Internal,
    }
}

/// A connection's two sockets; the test keeps their peers to see a
/// shutdown as end of file.
struct Sockets {
    ours: [UnixStream; 2],
    peers: [UnixStream; 2],
}

impl Sockets {
    fn new() -> Self {
        let (a, pa) = UnixStream::pair().expect("socketpair");
        let (b, pb) = UnixStream::pair().expect("socketpair");
        Self {
            ours: [a, b],
            peers: [pa, pb],
        }
    }

    fn fds(&self) -> [i32; 2] {
        [self.ours[0].as_raw_fd(), self.ours[1].as_raw_fd()]
    }

    /// Whether our end was shut down: the peer reads end of file at once.
    fn shut(&mut self) -> bool {
        self.peers[0].set_nonblocking(true).expect("nonblocking");
        let mut byte = [0u8; 1];
        matches!(self.peers[0].read(&mut byte), Ok(0))
    }
}

const DRAIN: Duration = Duration::from_secs(10);

#[test]
fn a_connection_whose_endpoint_stays_is_kept() {
    let web = with_endpoints("web", &["10.0.0.1:80", "10.0.0.2:80"]);
    let conns = Connections::default();
    let mut s = Sockets::new();
    conns.register(&route(&web), "10.0.0.2:80".parse().expect("addr"), s.fds());
    let later = Instant::now() + DRAIN * 2;
    assert_eq!(conns.sweep(&table(&[&web]), DRAIN, Instant::now()), 0);
    assert_eq!(conns.sweep(&table(&[&web]), DRAIN, later), 0);
    assert!(!s.shut());
}

#[test]
fn a_connection_to_a_removed_endpoint_is_closed_after_the_drain_time() {
    let before = with_endpoints("web", &["10.0.0.1:80", "10.0.0.2:80"]);
    let after = with_endpoints("web", &["10.0.0.1:80"]);
    let other = with_endpoints("other", &["10.0.0.2:80"]);
    let conns = Connections::default();
    let mut s = Sockets::new();
    conns.register(
        &route(&before),
        "10.0.0.2:80".parse().expect("addr"),
        s.fds(),
    );
    // The same address behind another Service does not keep it.
    let now = Instant::now();
    let t = table(&[&after, &other]);
    assert_eq!(conns.sweep(&t, DRAIN, now), 0, "marked, still draining");
    assert!(!s.shut());
    assert_eq!(conns.sweep(&t, DRAIN, now + DRAIN), 1);
    assert!(s.shut());
}

#[test]
fn an_endpoint_back_before_the_drain_time_clears_the_mark() {
    let full = with_endpoints("web", &["10.0.0.1:80"]);
    let empty = with_endpoints("web", &[]);
    let conns = Connections::default();
    let mut s = Sockets::new();
    conns.register(&route(&full), "10.0.0.1:80".parse().expect("addr"), s.fds());
    let now = Instant::now();
    assert_eq!(conns.sweep(&table(&[&empty]), DRAIN, now), 0);
    assert_eq!(conns.sweep(&table(&[&full]), DRAIN, now + DRAIN / 2), 0);
    // Marked again from here: the first mark was cleared.
    assert_eq!(conns.sweep(&table(&[&empty]), DRAIN, now + DRAIN), 0);
    assert!(!s.shut());
}

#[test]
fn a_gone_service_closes_its_connections_and_spares_the_others() {
    let web = with_endpoints("web", &["10.0.0.1:80"]);
    let api = with_endpoints("api", &["10.0.0.9:80"]);
    let conns = Connections::default();
    let mut a = Sockets::new();
    let mut b = Sockets::new();
    let mut c = Sockets::new();
    conns.register(&route(&web), "10.0.0.1:80".parse().expect("addr"), a.fds());
    conns.register(&route(&web), "10.0.0.1:80".parse().expect("addr"), b.fds());
    conns.register(&route(&api), "10.0.0.9:80".parse().expect("addr"), c.fds());
    let now = Instant::now();
    let only_api = table(&[&api]);
    assert_eq!(conns.sweep(&only_api, DRAIN, now), 0);
    assert_eq!(conns.sweep(&only_api, DRAIN, now + DRAIN), 2);
    assert!(a.shut() && b.shut());
    assert!(!c.shut());
}
