//! One client connection's view of its Service: the resolved target,
//! re-resolved only when the snapshot changes (a long-lived HTTP/2
//! connection sees endpoint changes), its metric handles, and how many of
//! its requests are in flight (for the idle timeout).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use super::metrics::Handles;
use super::pool::Dial;
use crate::catalog::{L7Protocol, Protocol};
use crate::dataplane::worker::{Resolved, Worker};
use crate::policy::PickRequest;

pub struct Target {
    pub resolved: Resolved,
    pub protocol: L7Protocol,
    pub metrics: Rc<Handles>,
}

impl Target {
    pub fn new(worker: &Worker, resolved: Resolved) -> Self {
        let protocol = resolved.route.port.l7.unwrap_or(L7Protocol::Http1);
        let metrics = cached_handles(worker, &resolved);
        Self {
            resolved,
            protocol,
            metrics,
        }
    }

    /// `namespace/name:port` for messages.
    pub fn name(&self) -> String {
        let l = &self.resolved.stats.labels;
        if l.port.is_empty() {
            l.service.clone()
        } else {
            format!("{}:{}", l.service, l.port)
        }
    }
}

/// Entries kept before starting over (Services that went away leave
/// theirs behind).
const MAX_CACHED: usize = 4096;

thread_local! {
    /// Metric handles by `ServicePort::id`, per worker thread: building
    /// them allocates label strings, which a connection should not pay.
    static HANDLES: RefCell<HashMap<u64, Rc<Handles>>> = RefCell::new(HashMap::new());
}

fn cached_handles(worker: &Worker, resolved: &Resolved) -> Rc<Handles> {
    let id = resolved.route.port.id;
    HANDLES.with_borrow_mut(|cache| {
        if let Some(h) = cache.get(&id) {
            return h.clone();
        }
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        let labels = &resolved.stats.labels;
        let h = Rc::new(worker.metrics.l7.handles(&labels.service, &labels.port));
        cache.insert(id, h.clone());
        h
    })
}

pub struct Conn {
    pub worker: Rc<Worker>,
    pub client: SocketAddr,
    pub frontend: SocketAddr,
    pub dial: Dial,
    target: RefCell<Rc<Target>>,
    pub in_flight: Cell<u32>,
    pub last_active: Cell<Instant>,
    pub requests: Cell<u64>,
    /// `x-forwarded-for` for this client, made once.
    pub forwarded_for: hyper::http::HeaderValue,
}

impl Conn {
    pub fn new(
        worker: Rc<Worker>,
        client: SocketAddr,
        frontend: SocketAddr,
        target: Target,
    ) -> Self {
        let dial = Dial::new(
            worker.bypass_mark,
            worker.cfg.connect_timeout.0,
            &worker.cfg.l7,
        );
        Self {
            worker,
            client,
            frontend,
            dial,
            target: RefCell::new(Rc::new(target)),
            in_flight: Cell::new(0),
            last_active: Cell::new(Instant::now()),
            requests: Cell::new(0),
            forwarded_for: super::rewrite::forwarded_for(client),
        }
    }

    /// The target under the current snapshot; `None` when the Service
    /// port is gone.
    pub fn target(&self) -> Option<Rc<Target>> {
        let generation = self.worker.snapshot.load().generation;
        let current = self.target.borrow().clone();
        if current.resolved.generation == generation {
            return Some(current);
        }
        let resolved = self.worker.resolve(Protocol::Tcp, self.frontend)?;
        let fresh = Rc::new(Target::new(&self.worker, resolved));
        *self.target.borrow_mut() = fresh.clone();
        Some(fresh)
    }

    pub fn pick_request<'a>(&self, target: &'a Target, tried: &'a [usize]) -> PickRequest<'a> {
        PickRequest {
            route: &target.resolved.route,
            binding: target.resolved.binding.as_ref(),
            generation: target.resolved.generation,
            client: self.client,
            frontend: self.frontend,
            tried,
        }
    }

    pub fn started(&self) {
        self.in_flight.set(self.in_flight.get() + 1);
        self.requests.set(self.requests.get() + 1);
    }

    pub fn ended(&self) {
        self.in_flight.set(self.in_flight.get().saturating_sub(1));
        self.last_active.set(Instant::now());
    }
}
