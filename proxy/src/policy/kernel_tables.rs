//! The slot tables of every Service port, scope and address family, kept
//! between syncs: a table is recomputed (one `sy_table` call in a fresh
//! instance, on the control plane) only when the port's binding or its
//! endpoint set changed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::binding::{Bindings, BoundPolicy};
use super::engine::PolicyEngine;
use super::layout::Locality;
use super::table::{SlotTable, TableFault, builtin_round_robin, compute};
use crate::catalog::{Endpoint, Scope, ServicePort};

/// (port id, scope, IPv6).
type Key = (u64, Scope, bool);

#[derive(Debug)]
struct Entry {
    /// The binding's id; 0 for the built-in round robin.
    bound: u64,
    endpoints: Vec<Endpoint>,
    result: Result<Option<Arc<SlotTable>>, TableFault>,
}

/// A port's table for one scope and family, and the endpoints its slots
/// index.
#[derive(Debug, Clone)]
pub struct PortTable {
    pub endpoints: Vec<Endpoint>,
    pub table: Arc<SlotTable>,
}

#[derive(Debug)]
pub struct TableCache {
    engine: Option<Arc<PolicyEngine>>,
    here: Locality,
    entries: HashMap<Key, Entry>,
    used: HashSet<Key>,
}

impl TableCache {
    /// `engine` None: policies are off, every port is the built-in round
    /// robin.
    pub fn new(engine: Option<Arc<PolicyEngine>>, here: Locality) -> Self {
        Self {
            engine,
            here,
            entries: HashMap::new(),
            used: HashSet::new(),
        }
    }

    /// The table of `port`'s `scope` endpoints of one family, under its
    /// binding. `Ok(None)`: no endpoints, or the policy gives no table;
    /// `Err`: why the module's table was not used.
    pub fn get(
        &mut self,
        bindings: &Bindings,
        port: &ServicePort,
        scope: Scope,
        v6: bool,
    ) -> Result<Option<PortTable>, String> {
        let key = (port.id, scope, v6);
        self.used.insert(key);
        let endpoints: Vec<Endpoint> = port
            .endpoints(scope)
            .iter()
            .filter(|e| e.addr.is_ipv6() == v6)
            .cloned()
            .collect();
        let bound = bindings.get(&port.id);
        let bound_id = bound.map_or(0, |b| b.id);
        let fresh = self
            .entries
            .get(&key)
            .is_some_and(|e| e.bound == bound_id && e.endpoints == endpoints);
        if !fresh {
            let result = self.compute(bound, &endpoints);
            if let Err(fault) = &result {
                tracing::warn!(
                    service = %port.service.key,
                    port = %port.name,
                    "slot table refused, the port runs on the proxy: {fault}"
                );
            }
            self.entries.insert(
                key,
                Entry {
                    bound: bound_id,
                    endpoints: endpoints.clone(),
                    result,
                },
            );
        }
        let entry = self.entries.get(&key).ok_or("no entry")?;
        match &entry.result {
            Ok(Some(table)) => Ok(Some(PortTable {
                endpoints: entry.endpoints.clone(),
                table: table.clone(),
            })),
            Ok(None) => Ok(None),
            Err(fault) => Err(fault.to_string()),
        }
    }

    fn compute(
        &self,
        bound: Option<&Arc<BoundPolicy>>,
        endpoints: &[Endpoint],
    ) -> Result<Option<Arc<SlotTable>>, TableFault> {
        match (bound, &self.engine) {
            (Some(b), Some(engine)) => compute(engine, &b.module, &b.config, endpoints, &self.here),
            _ => Ok(builtin_round_robin(endpoints.len()).map(Arc::new)),
        }
    }

    /// Forgets the tables of ports no `get` asked for since the last call.
    pub fn sweep(&mut self) {
        let used = std::mem::take(&mut self.used);
        self.entries.retain(|k, _| used.contains(k));
    }
}
