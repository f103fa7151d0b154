//! Native stand-ins for the `switchyard` imports, so that a policy runs in
//! `cargo test`: a clock (real, or the harness's fake one), a seeded PRNG,
//! logging to stderr and to a buffer, and request attributes set by the
//! harness. State is per thread: each test runs on its own.

use std::cell::{Cell, RefCell};
use std::sync::OnceLock;
use std::time::Instant;

use crate::Level;
use crate::testing::Request;

/// Seed of the PRNG until a test sets one.
pub const DEFAULT_SEED: u64 = 0x5eed_5717_c4ad_0001;
/// Log lines kept for [`crate::testing::logs`].
const MAX_LOGS: usize = 10_000;

thread_local! {
    static FAKE_NOW: Cell<Option<u64>> = const { Cell::new(None) };
    static RNG: Cell<u64> = const { Cell::new(DEFAULT_SEED) };
    static REQUEST: RefCell<Option<Request>> = const { RefCell::new(None) };
    static LOGS: RefCell<Vec<(Level, String)>> = const { RefCell::new(Vec::new()) };
}

pub fn now_ns() -> u64 {
    FAKE_NOW.with(Cell::get).unwrap_or_else(|| {
        static START: OnceLock<Instant> = OnceLock::new();
        // Start at 1 s so that "0 = never" in the ABI stays unambiguous.
        1_000_000_000 + START.get_or_init(Instant::now).elapsed().as_nanos() as u64
    })
}

pub fn set_fake_now(now_ns: Option<u64>) {
    FAKE_NOW.with(|c| c.set(now_ns));
}

/// splitmix64: small, fast, good enough for load balancing tests.
pub fn random_u64() -> u64 {
    RNG.with(|state| {
        let s = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(s);
        crate::hash::mix64(s)
    })
}

pub fn seed(seed: u64) {
    RNG.with(|c| c.set(seed));
}

pub fn log(level: Level, message: &str) {
    eprintln!("[policy {level:?}] {message}");
    LOGS.with(|logs| {
        let mut logs = logs.borrow_mut();
        if logs.len() < MAX_LOGS {
            logs.push((level, message.to_owned()));
        }
    });
}

pub fn take_logs() -> Vec<(Level, String)> {
    LOGS.with(|logs| std::mem::take(&mut *logs.borrow_mut()))
}

pub fn set_request(request: Option<Request>) {
    REQUEST.with(|r| *r.borrow_mut() = request);
}

/// Same contract as the import: full length, or -1 when absent.
pub fn request_attr(kind: i32, name: &[u8], out: &mut [u8]) -> i32 {
    REQUEST.with(|r| {
        let r = r.borrow();
        let Some(value) = r.as_ref().and_then(|req| req.attr(kind, name)) else {
            return -1;
        };
        let n = value.len().min(out.len());
        out[..n].copy_from_slice(&value[..n]);
        i32::try_from(value.len()).unwrap_or(i32::MAX)
    })
}
