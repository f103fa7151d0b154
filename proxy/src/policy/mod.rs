//! Backend selection. Every decision maker — the built-in round robin and,
//! later, Wasm modules — implements [`Picker`], so that they are compared
//! through one interface.

mod round_robin;

use std::net::SocketAddr;
use std::time::Duration;

pub use round_robin::RoundRobin;

use crate::catalog::Route;

/// What a picker knows about a new connection.
#[derive(Debug)]
pub struct PickRequest<'a> {
    pub route: &'a Route,
    /// Identity of the route's `ServicePort` in the current snapshot; stable
    /// while the snapshot generation is.
    pub route_id: usize,
    pub generation: u64,
    pub client: SocketAddr,
    pub frontend: SocketAddr,
    /// Endpoint indices already tried (and failed) for this connection.
    pub tried: &'a [usize],
}

/// How a connection attempt to a picked endpoint ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Connected { latency: Duration },
    Failed,
}

/// Chooses an endpoint index into `route.endpoints()`. Owned by one worker:
/// `&mut self`, no locks.
pub trait Picker {
    /// `None` means "no choice": the caller falls back.
    fn pick(&mut self, req: &PickRequest<'_>) -> Option<usize>;

    fn outcome(&mut self, _req: &PickRequest<'_>, _endpoint: usize, _outcome: Outcome) {}
}
