//! # Switchyard policy SDK
//!
//! Write a Switchyard backend-selection policy in Rust: implement
//! [`Policy`], invoke [`export_policy!`] once, build for
//! `wasm32-unknown-unknown`. The SDK implements ABI v1 (`policy-sdk/ABI.md`)
//! for you: the exports, the buffer ownership rules, and typed, bounds-checked
//! views of the endpoint table ([`Endpoints`]) and of the call context
//! ([`Context`]).
//!
//! ```
//! use switchyard_policy::{Context, Endpoints, Policy};
//!
//! struct First;
//!
//! impl Policy for First {
//!     fn new(_config: &[u8]) -> Result<Self, String> {
//!         Ok(First)
//!     }
//!
//!     fn pick(&mut self, ctx: &Context, endpoints: &Endpoints<'_>) -> Option<usize> {
//!         (0..endpoints.len()).find(|&i| !ctx.tried(i))
//!     }
//! }
//!
//! switchyard_policy::export_policy!(First);
//!
//! // The same policy, driven natively by the test harness:
//! use switchyard_policy::testing::{Call, EndpointSpec, Harness};
//! let mut h = Harness::<First>::new("{}").unwrap();
//! h.set_endpoints(&[EndpointSpec::new("10.0.0.1:80"), EndpointSpec::new("10.0.0.2:80")]);
//! assert_eq!(h.pick(&Call::new()), Some(0));
//! assert_eq!(h.pick(&Call::new().tried(&[0])), Some(1));
//! ```
//!
//! Layout of the crate:
//!
//! * [`Policy`], [`Outcome`], [`export_policy!`]: what an author implements.
//! * [`Endpoints`], [`Endpoint`], [`Context`], [`Attr`]: zero-copy views.
//! * [`now_ns`], [`random_u64`], [`random_below`], [`log`] and the
//!   [`error!`]/[`warn!`]/[`info!`]/[`debug!`] macros: the host functions.
//! * [`select`] (round robin, random, skipping tried endpoints),
//!   [`weighted`], [`maglev`], [`hash`], [`ewma`], [`glob`]: helpers.
//! * [`config`]: JSON configuration with serde (feature `json`, default).
//! * [`testing`]: the native test harness (not on wasm32).
//!
//! All `unsafe` code lives in `src/abi.rs`, compiled for wasm32 only; the
//! rest of the crate denies `unsafe_code`.

#![deny(unsafe_code)]
#![warn(missing_docs)]

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod abi;
#[cfg(not(target_arch = "wasm32"))]
mod native;

#[cfg(feature = "json")]
pub mod config;
pub mod ewma;
pub mod glob;
pub mod hash;
pub mod maglev;
pub mod select;
pub mod table;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
mod view;
pub mod weighted;

pub use table::TableKey;
pub use view::{Attr, CONTEXT_SIZE, Context, Endpoint, EndpointKey, Endpoints, RECORD_SIZE, flags};

/// The ABI version this SDK implements (`sy_abi_version`).
pub const ABI_VERSION: i32 = 1;

/// A backend-selection policy.
///
/// One value of the implementing type lives in each policy instance; the
/// host makes one instance per Service port, entry scope and worker thread,
/// so state kept in `self` is per worker. Calls never overlap.
///
/// A panic aborts the call: the module traps, the host discards the
/// instance, falls back (previous module, then its built-in round robin) for
/// that decision, and starts a fresh instance for the next one. There is
/// nothing to catch.
pub trait Policy: Sized + 'static {
    /// Builds the policy from the Service's `switchyard.dev/policy-config`
    /// annotation, JSON text (`{}` when absent). `Err` rejects the
    /// configuration; the message is shown to the operator.
    fn new(config: &[u8]) -> Result<Self, String>;

    /// A new endpoint set arrived (at least once before the first pick).
    /// Precompute here (hash tables, weight sums, groups): it runs only when
    /// the set changes. Indices refer to this set until the next call.
    fn endpoints_changed(&mut self, endpoints: &Endpoints<'_>) {
        let _ = endpoints;
    }

    /// Chooses an endpoint: an index below `endpoints.len()`, or `None` for
    /// "no choice" (the host falls back). An index out of range counts as
    /// "no choice" too. Endpoints whose bit is set in [`Context::tried`]
    /// already failed for this connection.
    fn pick(&mut self, ctx: &Context, endpoints: &Endpoints<'_>) -> Option<usize>;

    /// How the connection to an endpoint this instance picked went. The live
    /// fields of the table (active, failures, EWMA) already reflect it.
    fn outcome(&mut self, endpoint: usize, outcome: Outcome) {
        let _ = (endpoint, outcome);
    }

    /// The kernel datapath's slot table (`sy_table`, see [`crate::table`]): fill
    /// every slot with an index below `endpoints.len()` and name the key
    /// the kernel picks a slot by. Called after [`Policy::endpoints_changed`]
    /// with a non-empty set, off the data path. `None` (the default): the
    /// decision cannot be a table, the Service port stays on the proxy.
    fn table(&mut self, endpoints: &Endpoints<'_>, slots: &mut [u32]) -> Option<TableKey> {
        let _ = (endpoints, slots);
        None
    }
}

/// The result of a connection attempt (`sy_outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Connected after `latency_ns`.
    Connected {
        /// Time to connect (L7: from the request to its response headers), ns.
        latency_ns: u64,
    },
    /// Failed after `latency_ns`.
    Failed {
        /// Time until the failure, ns.
        latency_ns: u64,
    },
}

impl Outcome {
    /// Decodes `sy_outcome`'s `(result, latency_ns)`; unknown results are
    /// `None` (a later ABI version may add some).
    pub fn from_abi(result: i32, latency_ns: i64) -> Option<Self> {
        let latency_ns = u64::try_from(latency_ns).unwrap_or(0);
        match result {
            0 => Some(Outcome::Connected { latency_ns }),
            1 => Some(Outcome::Failed { latency_ns }),
            _ => None,
        }
    }

    /// Whether the endpoint answered.
    pub fn is_connected(self) -> bool {
        matches!(self, Outcome::Connected { .. })
    }

    /// The latency of either kind, ns.
    pub fn latency_ns(self) -> u64 {
        match self {
            Outcome::Connected { latency_ns } | Outcome::Failed { latency_ns } => latency_ns,
        }
    }
}

/// Object-safe face of a [`Policy`], so the wasm glue can keep the instance
/// in one non-generic static.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub(crate) trait Driver {
    fn endpoints_changed(&mut self, endpoints: &Endpoints<'_>);
    fn pick(&mut self, ctx: &Context, endpoints: &Endpoints<'_>) -> Option<usize>;
    fn outcome(&mut self, endpoint: usize, outcome: Outcome);
    fn table(&mut self, endpoints: &Endpoints<'_>, slots: &mut [u32]) -> Option<TableKey>;
}

impl<P: Policy> Driver for P {
    fn endpoints_changed(&mut self, endpoints: &Endpoints<'_>) {
        Policy::endpoints_changed(self, endpoints);
    }

    fn pick(&mut self, ctx: &Context, endpoints: &Endpoints<'_>) -> Option<usize> {
        Policy::pick(self, ctx, endpoints)
    }

    fn outcome(&mut self, endpoint: usize, outcome: Outcome) {
        Policy::outcome(self, endpoint, outcome);
    }

    fn table(&mut self, endpoints: &Endpoints<'_>, slots: &mut [u32]) -> Option<TableKey> {
        Policy::table(self, endpoints, slots)
    }
}

/// What `sy_pick` returns for a policy's answer: the index, or `-1` for
/// `None` and for an index outside the table.
pub fn pick_result(choice: Option<usize>, count: usize) -> i32 {
    match choice {
        Some(i) if i < count => i32::try_from(i).unwrap_or(-1),
        _ => -1,
    }
}

/// Log levels of the `log` import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Level 0.
    Error = 0,
    /// Level 1.
    Warn = 1,
    /// Level 2.
    Info = 2,
    /// Level 3.
    Debug = 3,
}

/// Monotonic nanoseconds since an arbitrary start (the `now_ns` import;
/// natively a std clock, or the harness's fake clock).
pub fn now_ns() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        abi::now_ns()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        native::now_ns()
    }
}

/// 64 random bits (the `random_u64` import; natively a seeded PRNG,
/// see [`testing::Harness::seed`]).
pub fn random_u64() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        abi::random_u64()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        native::random_u64()
    }
}

/// A uniformly random index below `n` (`0` when `n == 0`).
pub fn random_below(n: usize) -> usize {
    weighted::uniform(random_u64(), n)
}

/// Logs a message through the host (rate-limited there). Natively it goes
/// to stderr and to [`testing::logs`].
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    abi::log(level as i32, message);
    #[cfg(not(target_arch = "wasm32"))]
    native::log(level, message);
}

/// The raw `request_attr` import: copies at most `out.len()` bytes of the
/// attribute and returns its full length, or `None` when absent (always in
/// L4 mode). Prefer the [`Context`] methods, which skip the call in L4 mode.
pub fn request_attr(kind: i32, name: &[u8], out: &mut [u8]) -> Option<usize> {
    #[cfg(target_arch = "wasm32")]
    let n = abi::request_attr(kind, name, out);
    #[cfg(not(target_arch = "wasm32"))]
    let n = native::request_attr(kind, name, out);
    usize::try_from(n).ok()
}

/// Logs at error level, `format!` style.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log($crate::Level::Error, &::std::format!($($arg)+)) };
}

/// Logs at warn level, `format!` style.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log($crate::Level::Warn, &::std::format!($($arg)+)) };
}

/// Logs at info level, `format!` style.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log($crate::Level::Info, &::std::format!($($arg)+)) };
}

/// Logs at debug level, `format!` style.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log($crate::Level::Debug, &::std::format!($($arg)+)) };
}

/// Exports a [`Policy`] implementation as a Switchyard module: emits
/// `sy_abi_version`, `sy_alloc`, `sy_init`, `sy_endpoints`, `sy_pick` and
/// `sy_outcome` when compiling for wasm32. Invoke it once per crate. On
/// other targets it only checks that the type implements [`Policy`], so
/// native test binaries never see the exported symbols.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        const _: fn() = || {
            fn implements_policy<P: $crate::Policy>() {}
            implements_policy::<$policy>();
        };

        #[cfg(target_arch = "wasm32")]
        const _: () = {
            #[unsafe(no_mangle)]
            pub extern "C" fn sy_abi_version() -> i32 {
                $crate::__private::abi_version()
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn sy_alloc(size: i32) -> i32 {
                $crate::__private::alloc(size)
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn sy_init(config_ptr: i32, config_len: i32) -> i32 {
                $crate::__private::init::<$policy>(config_ptr, config_len)
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn sy_endpoints(table_ptr: i32, count: i32) {
                $crate::__private::endpoints(table_ptr, count)
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn sy_pick(ctx_ptr: i32) -> i32 {
                $crate::__private::pick(ctx_ptr)
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn sy_outcome(index: i32, result: i32, latency_ns: i64) {
                $crate::__private::outcome(index, result, latency_ns)
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn sy_table(slots_ptr: i32, slots: i32) -> i32 {
                $crate::__private::table(slots_ptr, slots)
            }
        };
    };
}

/// Used by [`export_policy!`]; not a stable API.
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod __private {
    pub use crate::abi::{abi_version, alloc, endpoints, init, outcome, pick, table};
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn outcome_decodes_abi_values() {
        assert_eq!(
            Outcome::from_abi(0, 1500),
            Some(Outcome::Connected { latency_ns: 1500 })
        );
        assert_eq!(
            Outcome::from_abi(1, 7),
            Some(Outcome::Failed { latency_ns: 7 })
        );
        assert_eq!(
            Outcome::from_abi(1, -3),
            Some(Outcome::Failed { latency_ns: 0 })
        );
        assert_eq!(Outcome::from_abi(2, 0), None);
        assert!(Outcome::Connected { latency_ns: 1 }.is_connected());
        assert_eq!(Outcome::Failed { latency_ns: 9 }.latency_ns(), 9);
    }

    #[test]
    fn pick_result_maps_none_and_out_of_range_to_minus_one() {
        assert_eq!(pick_result(Some(2), 3), 2);
        assert_eq!(pick_result(Some(3), 3), -1);
        assert_eq!(pick_result(None, 3), -1);
        assert_eq!(pick_result(Some(0), 0), -1);
    }

    #[test]
    fn random_below_stays_in_range() {
        for n in 1..50 {
            assert!(random_below(n) < n);
        }
        assert_eq!(random_below(0), 0);
    }
}
