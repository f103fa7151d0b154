//! The slot tables of every Service port, scope and address family, kept
//! between syncs: a table is recomputed (one `sy_table` call in a fresh
//! instance, on the control plane) only when the port's binding or its
//! endpoint set changed.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
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
    /// The port's endpoint set the entry was made from: an unchanged
    /// Service keeps its `Arc`, so most syncs skip the comparison below.
    source: Arc<[Endpoint]>,
    endpoints: Vec<Endpoint>,
    addrs: Arc<[SocketAddr]>,
    result: Result<Option<Arc<SlotTable>>, TableFault>,
}

/// A port's table for one scope and family, and the endpoints its slots
/// index.
#[derive(Debug, Clone)]
pub struct PortTable {
    pub endpoints: Arc<[SocketAddr]>,
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
        let source = port.endpoints(scope);
        let bound = bindings.get(&port.id);
        let bound_id = bound.map_or(0, |b| b.id);
        let same_source = self
            .entries
            .get(&key)
            .is_some_and(|e| e.bound == bound_id && Arc::ptr_eq(&e.source, source));
        let endpoints: Vec<Endpoint> = if same_source {
            Vec::new()
        } else {
            source
                .iter()
                .filter(|e| e.addr.is_ipv6() == v6)
                .cloned()
                .collect()
        };
        let fresh = same_source
            || self
                .entries
                .get(&key)
                .is_some_and(|e| e.bound == bound_id && e.endpoints == endpoints);
        if let Some(e) = self.entries.get_mut(&key)
            && fresh
        {
            e.source = source.clone();
        }
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
                    source: source.clone(),
                    addrs: endpoints.iter().map(|e| e.addr).collect(),
                    endpoints,
                    result,
                },
            );
        }
        let entry = self.entries.get(&key).ok_or("no entry")?;
        match &entry.result {
            Ok(Some(table)) => Ok(Some(PortTable {
                endpoints: entry.addrs.clone(),
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

    /// Forgets the tables of ports that are gone, when only the changed
    /// Services' ports were asked for (no sweep: the others stand).
    pub fn forget_ports(&mut self, gone: &HashSet<u64>) {
        self.used.clear();
        if !gone.is_empty() {
            self.entries.retain(|k, _| !gone.contains(&k.0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::fixtures;

    fn port(addrs: &[&str]) -> ServicePort {
        let endpoints: Arc<[Endpoint]> = addrs.iter().map(|a| fixtures::ready(a)).collect();
        ServicePort {
            id: 9,
            internal: endpoints.clone(),
            external: endpoints,
            ..fixtures::port("web")
        }
    }

    #[test]
    fn tables_are_per_family_and_recomputed_only_on_change() {
        let mut cache = TableCache::new(None, Locality::default());
        let bindings = Bindings::new();
        let p = port(&["10.0.0.1:80", "[fd00::1]:80", "10.0.0.2:80"]);
        let v4 = cache
            .get(&bindings, &p, Scope::Internal, false)
            .expect("no fault")
            .expect("a table");
        assert_eq!(v4.endpoints.len(), 2);
        assert_eq!(v4.table.counts(2), [34, 33]);
        let v6 = cache
            .get(&bindings, &p, Scope::Internal, true)
            .expect("no fault")
            .expect("a table");
        assert_eq!(&v6.endpoints[..], &["[fd00::1]:80".parse().expect("addr")]);
        // The same set again (a new Arc, equal contents): the same table.
        let again = cache
            .get(
                &bindings,
                &port(&["10.0.0.1:80", "[fd00::1]:80", "10.0.0.2:80"]),
                Scope::Internal,
                false,
            )
            .expect("no fault")
            .expect("a table");
        assert!(Arc::ptr_eq(&again.table, &v4.table));
        let changed = cache
            .get(&bindings, &port(&["10.0.0.1:80"]), Scope::Internal, false)
            .expect("no fault")
            .expect("a table");
        assert_eq!(changed.table.counts(1), [67]);
        assert!(
            cache
                .get(&bindings, &port(&[]), Scope::Internal, false)
                .expect("no fault")
                .is_none()
        );
        cache.sweep();
        assert_eq!(cache.entries.len(), 2);
    }
}
