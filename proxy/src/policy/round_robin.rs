//! The built-in round robin: the fallback of every policy, and the baseline
//! Wasm policies are measured against.

use std::collections::HashMap;

use super::{PickRequest, Picker};

/// Per-worker round robin with one cursor per Service port.
#[derive(Debug, Default)]
pub struct RoundRobin {
    generation: u64,
    cursors: HashMap<usize, usize>,
}

impl Picker for RoundRobin {
    fn pick(&mut self, req: &PickRequest<'_>) -> Option<usize> {
        let len = req.route.endpoints().len();
        if len == 0 {
            return None;
        }
        if req.generation != self.generation {
            // Cursor keys are pointers into the old snapshot.
            self.generation = req.generation;
            self.cursors.clear();
        }
        let cursor = self
            .cursors
            .entry(req.route_id)
            .or_insert_with(|| fastrand::usize(..len));
        for _ in 0..len {
            let index = *cursor % len;
            *cursor = cursor.wrapping_add(1);
            if !req.tried.contains(&index) {
                return Some(index);
            }
        }
        None
    }
}
