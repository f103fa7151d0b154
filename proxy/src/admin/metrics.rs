//! Prometheus metrics. Label sets are bounded: per Service port and reason,
//! never per client.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabels {
    /// `namespace/name`
    pub service: String,
    /// Service port name ("" when unnamed).
    pub port: String,
    pub protocol: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub service: String,
    pub port: String,
    pub reason: FailureReason,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum FailureReason {
    Refused,
    Timeout,
    Unreachable,
    Other,
    /// Every attempt failed; the client connection was closed.
    Exhausted,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub service: String,
    pub port: String,
    pub direction: Direction,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Direction {
    /// Client to backend.
    Tx,
    /// Backend to client.
    Rx,
}

/// Label values in Prometheus' lower-case style.
macro_rules! label_values {
    ($ty:ty { $($variant:ident => $text:literal),* $(,)? }) => {
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                use std::fmt::Write;
                encoder.write_str(match self { $(Self::$variant => $text),* })
            }
        }
    };
}

label_values!(FailureReason { Refused => "refused", Timeout => "timeout", Unreachable => "unreachable", Other => "other", Exhausted => "exhausted" });
label_values!(Direction { Tx => "tx", Rx => "rx" });

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

/// `kernel` or `proxy` (see `catalog::datapath`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DatapathLabels {
    pub datapath: String,
}

/// Which configured limit was reached (see `Metrics::limits_reached`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub policy: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyFaultLabels {
    pub policy: String,
    /// trap, deadline, out_of_range, bad_pointer, alloc, config, no_choice
    pub kind: String,
}

/// One decision in this many is timed for `policy_decision_duration_seconds`.
pub const DECISION_SAMPLE: u32 = 64;

/// Every metric Switchyard exports.
pub struct Metrics {
    pub connections: Family<PortLabels, Counter>,
    pub connections_active: Family<PortLabels, Gauge>,
    pub connect_failures: Family<FailureLabels, Counter>,
    pub bytes: Family<DirectionLabels, Counter>,
    /// Connections or datagrams whose destination is in no Service (a race
    /// with a snapshot change, or traffic sent to the listener directly).
    pub unroutable: Counter,
    pub udp_flows: Family<PortLabels, Counter>,
    pub udp_flows_active: Gauge,
    /// Flows refused because a worker's flow table was full.
    pub udp_flows_dropped: Counter,
    pub accept_errors: Counter,
    /// Times a limit refused work: connections, udp_flows, file_descriptors,
    /// module_bytes, policy_endpoints, manifest_bytes, config_bytes.
    pub limits_reached: Family<LimitLabels, Counter>,
    /// Rejected input by kind (manifest, config).
    pub rejected_input: Family<KindLabels, Counter>,
    pub syncs: Family<KindLabels, Counter>,
    pub sync_duration: Histogram,
    pub nft_batch_duration: Histogram,
    /// kube-proxy's split of sync_duration: a full sync re-translates every
    /// Service (the first, a forced reload), a partial one what changed.
    pub sync_full_duration: Histogram,
    pub sync_partial_duration: Histogram,
    /// From an EndpointSlice's `endpoints.kubernetes.io/last-change-trigger-time`
    /// to the change being in force (kube-proxy's
    /// network_programming_duration_seconds).
    pub network_programming_duration: Histogram,
    /// Netlink batches that failed (the sync then fails and is retried).
    pub netlink_failures: Counter,
    pub policy_faults: Family<PolicyFaultLabels, Counter>,
    pub policy_fallbacks: Family<PolicyFaultLabels, Counter>,
    pub policy_disabled: Family<PolicyLabels, Counter>,
    pub policy_loads: Family<KindLabels, Counter>,
    /// Time of one decision, sampled (1 in [`DECISION_SAMPLE`]) so that the
    /// measuring costs nothing that shows.
    pub policy_decision: Family<PolicyLabels, Histogram>,
    /// Per-request metrics of L7 Service ports.
    pub l7: crate::l7::L7Metrics,
    /// Service ports per datapath, as of the last sync.
    pub service_ports: Family<DatapathLabels, Gauge>,
    registry: Registry,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new(io_backend: &str) -> Self {
        let mut registry = Registry::with_prefix("switchyard");
        let m = Metrics {
            connections: Family::default(),
            connections_active: Family::default(),
            connect_failures: Family::default(),
            bytes: Family::default(),
            unroutable: Counter::default(),
            udp_flows: Family::default(),
            udp_flows_active: Gauge::default(),
            udp_flows_dropped: Counter::default(),
            accept_errors: Counter::default(),
            limits_reached: Family::default(),
            rejected_input: Family::default(),
            syncs: Family::default(),
            sync_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            nft_batch_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            sync_full_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            sync_partial_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            // Around the 50 ms a sustained change rate may fall behind by.
            network_programming_duration: Histogram::new([
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
                60.0,
            ]),
            netlink_failures: Counter::default(),
            policy_faults: Family::default(),
            policy_fallbacks: Family::default(),
            policy_disabled: Family::default(),
            policy_loads: Family::default(),
            policy_decision: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_000_05, 2.0, 16))
            }),
            l7: crate::l7::L7Metrics::default(),
            service_ports: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "connections",
            "TCP connections proxied (ports on the kernel datapath are served by nftables DNAT and not counted here)",
            m.connections.clone(),
        );
        r.register(
            "connections_active",
            "TCP connections open now",
            m.connections_active.clone(),
        );
        r.register(
            "connect_failures",
            "Upstream connect attempts that failed",
            m.connect_failures.clone(),
        );
        r.register("bytes", "Bytes proxied", m.bytes.clone());
        r.register(
            "service_ports",
            "Service ports per datapath: kernel (nftables executes the policy's slot table) or proxy",
            m.service_ports.clone(),
        );
        r.register(
            "unroutable",
            "Connections or flows whose destination is in no Service",
            m.unroutable.clone(),
        );
        r.register("udp_flows", "UDP flows created", m.udp_flows.clone());
        r.register(
            "udp_flows_active",
            "UDP flows open now",
            m.udp_flows_active.clone(),
        );
        r.register(
            "udp_flows_dropped",
            "UDP flows refused at the per-worker limit",
            m.udp_flows_dropped.clone(),
        );
        r.register(
            "accept_errors",
            "Errors accepting connections",
            m.accept_errors.clone(),
        );
        r.register(
            "limits_reached",
            "Connections, flows, files or modules refused at a configured limit, by limit",
            m.limits_reached.clone(),
        );
        r.register(
            "rejected_input",
            "Rejected manifests and configs",
            m.rejected_input.clone(),
        );
        r.register("syncs", "Service table syncs by result", m.syncs.clone());
        r.register(
            "sync_duration_seconds",
            "Time from a source change to the snapshot and nftables in force",
            m.sync_duration.clone(),
        );
        r.register(
            "nft_batch_duration_seconds",
            "Time to apply one nftables batch",
            m.nft_batch_duration.clone(),
        );
        r.register(
            "sync_full_proxy_rules_duration_seconds",
            "Time of a sync that re-translated every Service",
            m.sync_full_duration.clone(),
        );
        r.register(
            "sync_partial_proxy_rules_duration_seconds",
            "Time of a sync that re-translated only the Services that changed",
            m.sync_partial_duration.clone(),
        );
        r.register(
            "network_programming_duration_seconds",
            "From an EndpointSlice's last-change-trigger-time to the change in force",
            m.network_programming_duration.clone(),
        );
        r.register(
            "netlink_failures",
            "nf_tables netlink batches that failed",
            m.netlink_failures.clone(),
        );
        r.register(
            "policy_faults",
            "Policy calls that trapped, ran past the deadline or answered out of range",
            m.policy_faults.clone(),
        );
        r.register(
            "policy_fallbacks",
            "Decisions made by a fallback instead of the bound policy, by cause",
            m.policy_fallbacks.clone(),
        );
        r.register(
            "policy_disabled",
            "Times a policy was disabled for a Service after repeated faults",
            m.policy_disabled.clone(),
        );
        r.register(
            "policy_loads",
            "Policy module loads by result",
            m.policy_loads.clone(),
        );
        m.l7.register(r);
        let info = Info::new(vec![("backend".to_owned(), io_backend.to_owned())]);
        r.register("io", "The data-plane io back end in use", info);
        Metrics { registry, ..m }
    }

    /// OpenMetrics text exposition (`admin::exposition` renders it for
    /// 0.0.4 scrapers).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
