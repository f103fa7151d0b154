//! The connections a worker carries, so that they can be drained: when an
//! endpoint leaves its Service (removed, or terminating while others are
//! ready) its open connections may finish for `endpointDrainTime`, then are
//! closed — where kube-proxy leaves conntrack entries pointing at a Pod
//! that is gone (kubernetes#108523).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::catalog::{Route, Scope, ServiceTable};

struct Open {
    key: (u64, Scope),
    endpoint: SocketAddr,
    /// Client and upstream sockets; valid while the entry exists (the
    /// connection unregisters before its sockets close).
    fds: [RawFd; 2],
    gone_since: Option<Instant>,
}

#[derive(Default)]
pub struct Connections {
    next: Cell<u64>,
    open: RefCell<HashMap<u64, Open>>,
}

impl Connections {
    pub fn register(&self, route: &Route, endpoint: SocketAddr, fds: [RawFd; 2]) -> u64 {
        let id = self.next.get();
        self.next.set(id + 1);
        let key = (route.port.id, route.scope);
        self.open.borrow_mut().insert(
            id,
            Open {
                key,
                endpoint,
                fds,
                gone_since: None,
            },
        );
        id
    }

    pub fn unregister(&self, id: u64) {
        self.open.borrow_mut().remove(&id);
    }

    pub fn len(&self) -> usize {
        self.open.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks connections whose endpoint is no longer in `table`, and closes
    /// those marked longer than `drain` ago. Returns how many it closed.
    pub fn sweep(&self, table: &ServiceTable, drain: Duration, now: Instant) -> usize {
        let mut open = self.open.borrow_mut();
        if open.is_empty() {
            return 0;
        }
        let mut live: HashSet<((u64, Scope), SocketAddr)> = HashSet::new();
        for port in table.services.values().flatten() {
            for scope in [Scope::Internal, Scope::External] {
                for e in port.endpoints(scope).iter() {
                    live.insert(((port.id, scope), e.addr));
                }
            }
        }
        let mut closed = 0;
        for conn in open.values_mut() {
            if live.contains(&(conn.key, conn.endpoint)) {
                conn.gone_since = None;
                continue;
            }
            let since = *conn.gone_since.get_or_insert(now);
            if now.duration_since(since) >= drain {
                shutdown(conn.fds);
                closed += 1;
            }
        }
        closed
    }

    /// Ends every connection now (the drain timeout of a stop ran out).
    pub fn close_all(&self) {
        for conn in self.open.borrow().values() {
            shutdown(conn.fds);
        }
    }
}

/// Shuts both sockets down: the copy loops see EOF/errors and end, and the
/// connection's own code closes the descriptors.
fn shutdown(fds: [RawFd; 2]) {
    for fd in fds {
        // SAFETY: the fd belongs to a connection still registered, so it is
        // open; shutdown(2) does not close or invalidate it.
        unsafe {
            libc::shutdown(fd, libc::SHUT_RDWR);
        }
    }
}
