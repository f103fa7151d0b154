//! Which policy decides for which Service port: resolved and validated on
//! the control plane, published in the snapshot, read by the workers.

use std::collections::HashMap;
use std::sync::Arc;

use super::module::PolicyModule;
use crate::catalog::ServiceKey;

/// Name of the native round robin; always available, never a file.
pub const BUILTIN_ROUND_ROBIN: &str = "builtin-round-robin";
/// The module that keeps `sessionAffinity: ClientIP`.
pub const CLIENT_AFFINITY: &str = "client-affinity";

/// A module bound to one Service with its configuration.
#[derive(Debug)]
pub struct BoundPolicy {
    /// Changes whenever the module or the configuration does; workers swap
    /// instances when they see a new id.
    pub id: u64,
    pub service: ServiceKey,
    pub module: Arc<PolicyModule>,
    pub config: Arc<str>,
}

/// Bindings by `ServicePort::id`. A port without an entry uses the
/// built-in round robin.
pub type Bindings = HashMap<u64, Arc<BoundPolicy>>;
