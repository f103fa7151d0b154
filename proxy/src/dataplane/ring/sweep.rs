//! The sweep (endpoint drain, local addresses, the end of a stop) on a
//! ring timeout instead of a tokio timer.

use std::rc::Rc;

use super::super::session::{self, Stop};
use super::super::worker::Worker;
use super::super::{SWEEP_EVERY, Sweep};
use super::ops::Ring;

pub async fn sweep(ring: Rc<Ring>, worker: Rc<Worker>, mut stop: Stop) {
    let mut state = Sweep::new();
    loop {
        tokio::select! {
            biased;
            () = session::stopped(&mut stop), if !state.stopping() => state.stop_seen(),
            _ = ring.sleep(SWEEP_EVERY) => {}
        }
        if !state.tick(&worker) {
            return;
        }
    }
}
