//! Backend selection by WebAssembly policy modules (ABI v1, see
//! policy-sdk/ABI.md), with the built-in round robin as the fallback of
//! every decision.
//!
//! Control plane: [`PolicyRegistry`] loads modules and binds Services.
//! Data plane: each worker's [`Decider`] owns its instances.

#[cfg(test)]
mod api_modules_tests;
mod binding;
mod cache;
mod changed_services;
mod decider;
mod engine;
pub mod events;
#[cfg(test)]
mod incremental_bind_tests;
mod instance;
pub mod kernel_tables;
pub mod layout;
mod module;
mod registry;
pub mod simulate;
mod stats;
pub mod table;

pub use binding::{BUILTIN_ROUND_ROBIN, Bindings, BoundPolicy};
pub use decider::{DecidedBy, Decider, Decision, FAULT_WINDOW, MAX_FAULTS, Outcome, PickRequest};
pub use engine::{EngineError, PolicyEngine};
pub use instance::{Fault, WasmInstance};
pub use layout::Locality;
pub use module::{ModuleError, PolicyModule, content_hash, load as load_module};
pub use registry::{BindStats, PolicyProblem, PolicyRegistry, dry_run};
pub use table::{SlotKey, SlotTable, TableFault};
