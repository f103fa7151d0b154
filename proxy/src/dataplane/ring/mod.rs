//! The io_uring engine: one ring per worker, driven by a small
//! single-threaded executor whose leaf futures are ring operations
//! (ARCHITECTURE.md, "Data plane").
//!
//! - `ops`: the ring, the op slab and the ops (all the unsafe code about
//!   memory the kernel uses);
//! - `executor`: tasks, wakers, and the eventfd that wakes from other
//!   threads land on;
//! - `runtime`: the loop, one `io_uring_enter` per turn;
//! - `tcp`: accept, connect and the copy loop;
//! - `sweep`: endpoint drain and stop on a ring timeout.
//!
//! UDP and L7 connections of a ring worker are served by its companion
//! epoll thread (`l7::companion`).

mod executor;
mod ops;
mod runtime;
mod sweep;
mod tcp;

use std::rc::Rc;

use super::session::Stop;
use super::worker::Worker;

/// Runs a worker on the ring engine until the process exits.
pub fn run(worker: Rc<Worker>, listeners: Vec<std::net::TcpListener>, stop: Stop) {
    let rt = match runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = worker.id, error = %e, "cannot start the io_uring engine");
            return;
        }
    };
    tracing::info!(
        worker = worker.id,
        engine = "ring",
        "io_uring worker started"
    );
    for listener in listeners {
        rt.spawn(tcp::serve(
            rt.clone(),
            worker.clone(),
            listener,
            stop.clone(),
        ));
    }
    rt.spawn(sweep::sweep(rt.ring.clone(), worker.clone(), stop));
    if let Err(e) = rt.run(|| false) {
        tracing::error!(worker = worker.id, error = %e, "the io_uring loop failed; worker stopped");
    }
}
