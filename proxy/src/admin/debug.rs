//! `/debug/services` and `/debug/policies`: the live state as JSON, for
//! operators and for tests.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;

use super::Metrics;
use crate::catalog::datapath::DatapathChoice;
use crate::catalog::{Endpoint, Frontend};
use crate::intercept::kernel::Choices;
use crate::policy::{Bindings, PolicyRegistry};
use crate::snapshot::SharedSnapshot;

#[derive(Debug, Clone, Serialize)]
pub struct ModuleInfo {
    pub name: String,
    pub sha256: String,
    pub bytes: usize,
    /// Services bound to this module.
    pub services: Vec<String>,
}

/// What the control plane last published about policies, and the
/// datapath it chose for each Service port (by `ServicePort::id`).
#[derive(Debug, Default)]
pub struct PolicySummary(ArcSwap<Vec<ModuleInfo>>, ArcSwap<Choices>);

impl PolicySummary {
    pub fn publish(&self, registry: &PolicyRegistry, bindings: &Bindings) {
        let mut modules: Vec<ModuleInfo> = registry
            .modules()
            .map(|m| ModuleInfo {
                name: m.name.to_string(),
                sha256: m.hash.clone(),
                bytes: m.size,
                services: Vec::new(),
            })
            .collect();
        for bound in bindings.values() {
            if let Some(info) = modules
                .iter_mut()
                .find(|i| i.sha256 == bound.module.hash && *i.name == *bound.module.name)
            {
                let service = bound.service.to_string();
                if !info.services.contains(&service) {
                    info.services.push(service);
                }
            }
        }
        self.0.store(Arc::new(modules));
    }

    /// The datapath choices of the last sync.
    pub fn publish_datapaths(&self, choices: Choices) {
        self.1.store(Arc::new(choices));
    }

    /// The choices last published.
    pub fn datapaths(&self) -> Arc<Choices> {
        self.1.load_full()
    }
}

#[derive(Serialize)]
struct PolicyView {
    #[serde(flatten)]
    module: ModuleInfo,
    faults: BTreeMap<&'static str, u64>,
    /// Status records about this module (policy/events.rs): the same
    /// aggregates the Events carry, in file mode too.
    events: Vec<crate::policy::events::EntryView>,
}

const FAULT_KINDS: [&str; 7] = [
    "trap",
    "deadline",
    "out_of_range",
    "bad_pointer",
    "alloc",
    "config",
    "no_choice",
];

pub fn policies(summary: &PolicySummary, metrics: &Metrics) -> impl Serialize {
    let events = crate::policy::events::recent();
    summary
        .0
        .load()
        .iter()
        .map(|m| {
            let faults = FAULT_KINDS
                .iter()
                .map(|&kind| {
                    let labels = super::metrics::PolicyFaultLabels {
                        policy: m.name.clone(),
                        kind: kind.into(),
                    };
                    let family = if kind == "no_choice" {
                        &metrics.policy_fallbacks
                    } else {
                        &metrics.policy_faults
                    };
                    (kind, family.get_or_create(&labels).get())
                })
                .collect();
            PolicyView {
                module: m.clone(),
                faults,
                events: events
                    .iter()
                    .filter(|e| e.policy == m.name)
                    .cloned()
                    .collect(),
            }
        })
        .collect::<Vec<_>>()
}

#[derive(Serialize)]
struct PortView<'a> {
    name: &'a str,
    protocol: String,
    port: u16,
    node_port: Option<u16>,
    frontends: Vec<String>,
    internal_endpoints: &'a [Endpoint],
    external_endpoints: &'a [Endpoint],
    /// `loadBalancerSourceRanges` in force, by restricted frontend.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    source_ranges: BTreeMap<String, Vec<String>>,
    /// `kernel` or `proxy`, and why (absent when nftables is off).
    datapath: Option<DatapathChoice>,
}

#[derive(Serialize)]
struct ServiceView<'a> {
    service: String,
    policy: String,
    policy_config: Option<&'a str>,
    /// Served on this node (LoadBalancer, `externalTrafficPolicy: Local`).
    #[serde(skip_serializing_if = "Option::is_none")]
    health_check_node_port: Option<u16>,
    ports: Vec<PortView<'a>>,
}

/// The live service table with each Service's bound policy and each
/// port's datapath.
pub fn services(snapshot: &SharedSnapshot, summary: &PolicySummary) -> impl Serialize {
    let snap = snapshot.load_full();
    let datapaths = summary.1.load_full();
    let mut frontends: BTreeMap<u64, Vec<Frontend>> = BTreeMap::new();
    for (frontend, route) in &snap.table.frontends {
        frontends.entry(route.port.id).or_default().push(*frontend);
    }
    let services: Vec<serde_json::Value> = snap
        .table
        .services
        .iter()
        .map(|(key, ports)| {
            let policy = ports
                .first()
                .and_then(|p| snap.bindings.get(&p.id))
                .map_or_else(
                    || crate::policy::BUILTIN_ROUND_ROBIN.to_owned(),
                    |b| format!("{} ({})", b.module.name, &b.module.hash[..12]),
                );
            let view = ServiceView {
                service: key.to_string(),
                policy,
                policy_config: ports
                    .first()
                    .and_then(|p| p.service.policy_config.as_deref()),
                health_check_node_port: snap
                    .table
                    .health_checks
                    .iter()
                    .find(|(_, k)| *k == key)
                    .map(|(port, _)| *port),
                ports: ports
                    .iter()
                    .map(|p| {
                        let mut fronts: Vec<String> = frontends
                            .get(&p.id)
                            .map(|f| f.iter().map(|f| format!("{}:{}", f.ip, f.port)).collect())
                            .unwrap_or_default();
                        fronts.sort();
                        let source_ranges = frontends
                            .get(&p.id)
                            .into_iter()
                            .flatten()
                            .filter_map(|f| {
                                let ranges = snap.table.source_ranges.get(f)?;
                                let ranges = ranges
                                    .iter()
                                    .map(|(ip, len)| format!("{ip}/{len}"))
                                    .collect();
                                Some((format!("{}:{}", f.ip, f.port), ranges))
                            })
                            .collect();
                        PortView {
                            name: &p.name,
                            protocol: p.protocol.to_string(),
                            port: p.port,
                            node_port: p.node_port,
                            frontends: fronts,
                            internal_endpoints: &p.internal,
                            external_endpoints: &p.external,
                            source_ranges,
                            datapath: datapaths.get(&p.id).cloned(),
                        }
                    })
                    .collect(),
            };
            serde_json::to_value(view).unwrap_or(serde_json::Value::Null)
        })
        .collect();
    serde_json::json!({ "generation": snap.generation, "services": services })
}
