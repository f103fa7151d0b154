//! The connections a worker carries, so that they can be drained: when an
//! endpoint leaves its Service (removed, or terminating while others are
//! ready) its open connections may finish for `endpointDrainTime`, then are
//! closed — where kube-proxy leaves conntrack entries pointing at a Pod
//! that is gone (kubernetes#108523).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::catalog::{Route, Scope, ServiceInfo, ServiceKey, ServiceTable};

struct Open {
    key: (u64, Scope),
    /// The Service of the port, to find the port in a later table.
    service: Arc<ServiceInfo>,
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
                service: route.port.service.clone(),
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
    ///
    /// Looks only at the ports that carry connections, each once: a set of
    /// every endpoint of the table (200k entries, ~19 MB and 20-40 ms of the
    /// worker at 10k Services, every tick while any connection was open)
    /// stalled the worker and grew its heap.
    pub fn sweep(&self, table: &ServiceTable, drain: Duration, now: Instant) -> usize {
        let mut open = self.open.borrow_mut();
        if open.is_empty() {
            return 0;
        }
        let mut live: HashMap<(u64, Scope), HashSet<SocketAddr>> = HashMap::new();
        let mut closed = 0;
        for conn in open.values_mut() {
            let endpoints = live
                .entry(conn.key)
                .or_insert_with(|| endpoints_now(table, &conn.service.key, conn.key));
            if endpoints.contains(&conn.endpoint) {
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

/// The endpoints a Service port has in `table` for one scope (none when
/// the Service or the port is gone).
fn endpoints_now(
    table: &ServiceTable,
    service: &ServiceKey,
    (id, scope): (u64, Scope),
) -> HashSet<SocketAddr> {
    table
        .services
        .get(service)
        .into_iter()
        .flatten()
        .filter(|port| port.id == id)
        .flat_map(|port| port.endpoints(scope).iter().map(|e| e.addr))
        .collect()
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

#[cfg(test)]
#[path = "drain_tests.rs"]
mod tests;
