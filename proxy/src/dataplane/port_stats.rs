//! The metric handles of one Service port, looked up once per worker and
//! port rather than once per connection: building a label key allocates
//! three Strings, and every `Family::get_or_create` hashes them under a
//! lock. prometheus-client's counters and gauges are shared handles, so a
//! clone kept here updates the series the registry exports.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::admin::Metrics;
use crate::admin::metrics::{Direction, DirectionLabels, PortLabels};
use crate::catalog::ServicePort;

/// Entries a worker keeps before it starts over: Services that went away
/// leave theirs behind, and this bounds what they hold.
const MAX_PORTS: usize = 65_536;

#[derive(Debug)]
pub struct PortStats {
    pub labels: PortLabels,
    pub connections: Counter,
    pub active: Gauge,
    /// Bytes client → backend.
    pub tx: Counter,
    /// Bytes backend → client.
    pub rx: Counter,
    pub udp_flows: Counter,
}

impl PortStats {
    fn new(metrics: &Metrics, port: &ServicePort) -> Self {
        let labels = PortLabels {
            service: port.service.key.to_string(),
            port: port.name.clone(),
            protocol: port.protocol.to_string(),
        };
        let bytes = |direction| {
            metrics
                .bytes
                .get_or_create(&DirectionLabels {
                    service: labels.service.clone(),
                    port: labels.port.clone(),
                    direction,
                })
                .clone()
        };
        Self {
            connections: metrics.connections.get_or_create(&labels).clone(),
            active: metrics.connections_active.get_or_create(&labels).clone(),
            tx: bytes(Direction::Tx),
            rx: bytes(Direction::Rx),
            udp_flows: metrics.udp_flows.get_or_create(&labels).clone(),
            labels,
        }
    }
}

/// One worker's handles, by `ServicePort::id`.
#[derive(Default)]
pub struct PortStatsCache {
    ports: RefCell<HashMap<u64, Arc<PortStats>>>,
}

impl PortStatsCache {
    pub fn get(&self, metrics: &Metrics, port: &ServicePort) -> Arc<PortStats> {
        let mut ports = self.ports.borrow_mut();
        if let Some(stats) = ports.get(&port.id) {
            return stats.clone();
        }
        if ports.len() >= MAX_PORTS {
            ports.clear();
        }
        let stats = Arc::new(PortStats::new(metrics, port));
        ports.insert(port.id, stats.clone());
        stats
    }
}
