//! The shape of the config file, with kube-proxy-like camelCase names and
//! the defaults a node gets when a field is absent.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::HumanDuration;
use super::l7::L7Config;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Config {
    /// This node's name (traffic policy Local). Default: `$NODE_NAME`, then
    /// the host name.
    pub node_name: Option<String>,
    pub source: SourceConfig,
    pub dataplane: DataplaneConfig,
    pub intercept: InterceptConfig,
    pub policy: PolicyConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct SourceConfig {
    pub kind: SourceKind,
    /// Directory of Service / EndpointSlice YAML for `kind: file`.
    pub manifests: PathBuf,
    /// Largest manifest file read (`kind: file`); a larger file is refused
    /// whole, its last good contents stay in force.
    pub max_manifest_bytes: u64,
    /// Kubeconfig for `kind: kubernetes`. Absent: `$KUBECONFIG`, then
    /// `~/.kube/config`, then the in-cluster service account (in a Pod).
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SourceKind {
    /// A watched directory of manifests (`source.manifests`).
    File,
    /// The API server: list + watch Services, EndpointSlices and this Node.
    Kubernetes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "camelCase")]
pub enum IoMode {
    /// io_uring when the kernel and seccomp allow it, else epoll.
    Auto,
    Uring,
    Epoll,
}

/// Which engine drives an io_uring worker (`dataplane.uringEngine`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum UringEngine {
    /// tokio-uring 0.5 (the connect goes through epoll underneath); kept
    /// for comparison while the ring engine is new.
    TokioUring,
    /// Switchyard's own ring loop on the io-uring crate: one
    /// `io_uring_enter` per loop turn (ARCHITECTURE.md, "Data plane").
    #[default]
    Ring,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct DataplaneConfig {
    pub io: IoMode,
    /// The engine of an io_uring worker.
    pub uring_engine: UringEngine,
    /// Data-plane worker threads; 0 means one per core.
    pub workers: usize,
    /// Port the TPROXY listeners bind on every address (TCP and UDP).
    pub listen_port: u16,
    pub connect_timeout: HumanDuration,
    /// Endpoints tried for one connection before it is given up.
    pub connect_attempts: u32,
    /// Bytes per direction of a proxied TCP connection's copy buffer.
    pub buffer_size: usize,
    pub udp_idle_timeout: HumanDuration,
    /// UDP flows one worker tracks at most; new flows past it are dropped.
    pub max_udp_flows: usize,
    /// TCP connections one worker serves at once; connections past it are
    /// reset on accept (each holds two file descriptors and two buffers).
    pub max_connections_per_worker: usize,
    /// Kernel queue of connections not yet accepted, per listener
    /// (`listen(2)` backlog; the kernel caps it at `net.core.somaxconn`).
    pub listen_backlog: u32,
    /// Backends see the client's own address (IP_TRANSPARENT), as with
    /// kube-proxy. Off: they see the node's.
    pub transparent: bool,
    /// After SIGTERM, how long open connections may finish before the
    /// process exits anyway.
    pub drain_timeout: HumanDuration,
    /// How long connections to an endpoint that left its Service (removed,
    /// or terminating) may go on before they are closed.
    pub endpoint_drain_time: HumanDuration,
    /// The per-request HTTP proxy of L7 Service ports.
    pub l7: L7Config,
    /// The datapath of Service ports without a `switchyard.dev/datapath`
    /// annotation: `auto` (kernel when the policy gives a slot table and
    /// the port is L4 without PROXY protocol), `kernel` or `proxy`.
    pub datapath: crate::catalog::datapath::DatapathMode,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct InterceptConfig {
    /// Install nftables rules. Off only for running the data plane against
    /// rules managed elsewhere.
    pub enabled: bool,
    /// The `inet` table Switchyard owns; nothing else is touched.
    pub table: String,
    /// Packet mark bit that diverts a packet to the local TPROXY listener.
    pub divert_mark: u32,
    /// Socket mark on Switchyard's own upstream sockets; never intercepted.
    pub bypass_mark: u32,
    /// Policy-routing table that routes diverted packets to `lo`.
    pub route_table: u32,
    pub rule_priority: u32,
    /// Keep the table at exit so that a restarted proxy finds traffic still
    /// diverted (a fast restart) instead of falling through to nothing.
    pub keep_table_on_exit: bool,
    /// Turn `net.bridge.bridge-nf-call-ip(6)tables` off while running:
    /// TPROXY cannot intercept Pod traffic that br_netfilter hands to
    /// iptables at the bridge layer (see intercept/bridge.rs).
    pub disable_bridge_netfilter: bool,
    /// Which of this node's addresses accept NodePort traffic (kube-proxy's
    /// `--nodeport-addresses`): CIDRs and/or `primary` (the Node object's
    /// InternalIP and ExternalIP). Empty: every local address.
    pub node_port_addresses: Vec<super::NodePortAddress>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct PolicyConfig {
    /// Decision maker for Services without a `switchyard.dev/policy`
    /// annotation.
    pub default: String,
    /// Directory of `.wasm` policy modules; a module's name is its stem.
    /// Watched: a new or replaced module is swapped in live.
    pub directory: PathBuf,
    /// Longest a single decision (`sy_pick`, `sy_outcome`) may run before
    /// it is stopped.
    pub deadline: HumanDuration,
    /// Longest set-up work may run: instantiation, `sy_init`, and
    /// `sy_endpoints` (where a policy may precompute, e.g. a Maglev table).
    pub setup_deadline: HumanDuration,
    /// Linear-memory cap of one policy instance, in bytes.
    pub memory_limit: usize,
    /// Largest `.wasm` file loaded, in bytes.
    pub max_module_bytes: u64,
    /// Most endpoints of one Service port handed to a policy module; a
    /// larger set is balanced by the built-in round robin instead.
    pub max_endpoints: usize,
    /// sha256 (hex) of the only modules that may load; empty: any module in
    /// `directory`. See SECURITY.md.
    pub allowed_sha256: Vec<String>,
    /// Directory of compiled modules kept across restarts (keyed by module
    /// sha256, wasmtime version and engine config); absent: no cache, every
    /// start compiles every module. Must be writable only by the proxy.
    pub cache_dir: Option<PathBuf>,
    /// With `source.kind: kubernetes`: the ConfigMap whose `binaryData`
    /// keys `<name>.wasm` are policy modules, watched through the API (a
    /// change reaches the node within the watch latency, not the kubelet's
    /// volume refresh). Its modules take precedence over `directory`'s,
    /// which stays the fallback. Absent: the directory only.
    pub config_map: Option<ConfigMapRef>,
    /// Most modules taken from `configMap`; a ConfigMap with more is
    /// refused whole (the modules in force stay).
    pub max_modules: usize,
}

/// A ConfigMap by namespace and name (`policy.configMap`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigMapRef {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct AdminConfig {
    /// `/healthz`, `/livez`, `/readyz` (kube-proxy's port).
    pub healthz_address: SocketAddr,
    /// `/metrics` in Prometheus text format (kube-proxy's port).
    pub metrics_address: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, `switchyard=debug,warn`, ...
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "camelCase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            kind: SourceKind::File,
            manifests: PathBuf::from("conf/services"),
            max_manifest_bytes: 64 << 20,
            kubeconfig: None,
        }
    }
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            io: IoMode::Auto,
            uring_engine: UringEngine::Ring,
            workers: 0,
            listen_port: 15001,
            connect_timeout: HumanDuration::from_secs(2),
            connect_attempts: 3,
            buffer_size: 256 * 1024,
            udp_idle_timeout: HumanDuration::from_secs(30),
            max_udp_flows: 65536,
            max_connections_per_worker: 16384,
            listen_backlog: 4096,
            transparent: true,
            drain_timeout: HumanDuration::from_secs(20),
            endpoint_drain_time: HumanDuration::from_secs(30),
            l7: L7Config::default(),
            datapath: crate::catalog::datapath::DatapathMode::Auto,
        }
    }
}

impl Default for InterceptConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            table: "switchyard".into(),
            divert_mark: 0x0020_0000,
            bypass_mark: 0x0040_0000,
            route_table: 2300,
            rule_priority: 100,
            keep_table_on_exit: false,
            disable_bridge_netfilter: true,
            node_port_addresses: Vec::new(),
        }
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            default: "round-robin".into(),
            directory: PathBuf::from("/etc/switchyard/policies"),
            deadline: HumanDuration::from_micros(100),
            setup_deadline: HumanDuration::from_millis(50),
            memory_limit: 16 << 20,
            max_module_bytes: 16 << 20,
            max_endpoints: 16384,
            allowed_sha256: Vec::new(),
            cache_dir: None,
            config_map: None,
            max_modules: 64,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            healthz_address: SocketAddr::from(([0, 0, 0, 0], 10256)),
            metrics_address: SocketAddr::from(([127, 0, 0, 1], 10249)),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl Config {
    /// Checks ranges and relations serde cannot; returns the field path and
    /// what was expected.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let dp = &self.dataplane;
        dp.l7.validate()?;
        if dp.workers > 256 {
            return Err((
                "dataplane.workers",
                format!(
                    "{} is too many; expected 0 (one per core) to 256",
                    dp.workers
                ),
            ));
        }
        if dp.listen_port == 0 {
            return Err((
                "dataplane.listenPort",
                "expected a port from 1 to 65535".into(),
            ));
        }
        if !(1..=16).contains(&dp.connect_attempts) {
            return Err((
                "dataplane.connectAttempts",
                format!("{} is out of range; expected 1 to 16", dp.connect_attempts),
            ));
        }
        if !(4096..=16 << 20).contains(&dp.buffer_size) {
            return Err((
                "dataplane.bufferSize",
                format!(
                    "{} is out of range; expected 4096 to 16777216 bytes",
                    dp.buffer_size
                ),
            ));
        }
        if dp.connect_timeout.0.is_zero() {
            return Err((
                "dataplane.connectTimeout",
                "expected a positive duration such as \"2s\"".into(),
            ));
        }
        if dp.udp_idle_timeout.0.is_zero() {
            return Err((
                "dataplane.udpIdleTimeout",
                "expected a positive duration such as \"30s\"".into(),
            ));
        }
        if dp.max_udp_flows == 0 {
            return Err(("dataplane.maxUdpFlows", "expected at least 1".into()));
        }
        if !(1..=1 << 20).contains(&dp.max_connections_per_worker) {
            return Err((
                "dataplane.maxConnectionsPerWorker",
                format!(
                    "{} is out of range; expected 1 to 1048576",
                    dp.max_connections_per_worker
                ),
            ));
        }
        if !(1..=65535).contains(&dp.listen_backlog) {
            return Err((
                "dataplane.listenBacklog",
                format!("{} is out of range; expected 1 to 65535", dp.listen_backlog),
            ));
        }
        if !(1024..=1 << 30).contains(&self.source.max_manifest_bytes) {
            return Err((
                "source.maxManifestBytes",
                format!(
                    "{} is out of range; expected 1024 to 1073741824 bytes",
                    self.source.max_manifest_bytes
                ),
            ));
        }
        let ic = &self.intercept;
        let table_ok = !ic.table.is_empty()
            && ic.table.len() <= 64
            && ic
                .table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !table_ok {
            return Err((
                "intercept.table",
                format!(
                    "{:?} is not a valid nftables table name; expected 1-64 of [A-Za-z0-9_-]",
                    ic.table
                ),
            ));
        }
        if ic.divert_mark == 0 || ic.bypass_mark == 0 || ic.divert_mark & ic.bypass_mark != 0 {
            return Err((
                "intercept.divertMark",
                "divertMark and bypassMark must be non-zero and share no bits".into(),
            ));
        }
        if ic.route_table == 0 || (253..=255).contains(&ic.route_table) {
            return Err((
                "intercept.routeTable",
                format!(
                    "{} is reserved; expected a table id other than 0, 253, 254, 255",
                    ic.route_table
                ),
            ));
        }
        if ic.rule_priority == 0 || ic.rule_priority >= 32766 {
            return Err((
                "intercept.rulePriority",
                format!(
                    "{} must lie between 1 and 32765 (before the main table)",
                    ic.rule_priority
                ),
            ));
        }
        let pc = &self.policy;
        if pc.deadline.0 < std::time::Duration::from_micros(10)
            || pc.deadline.0 > std::time::Duration::from_secs(1)
        {
            return Err((
                "policy.deadline",
                format!("{} is out of range; expected 10us to 1s", pc.deadline),
            ));
        }
        if pc.setup_deadline.0 < pc.deadline.0
            || pc.setup_deadline.0 > std::time::Duration::from_secs(10)
        {
            return Err((
                "policy.setupDeadline",
                format!(
                    "{} is out of range; expected policy.deadline to 10s",
                    pc.setup_deadline
                ),
            ));
        }
        if !(64 << 10..=1 << 30).contains(&pc.memory_limit) {
            return Err((
                "policy.memoryLimit",
                format!(
                    "{} is out of range; expected 65536 to 1073741824 bytes",
                    pc.memory_limit
                ),
            ));
        }
        if !(1024..=256 << 20).contains(&pc.max_module_bytes) {
            return Err((
                "policy.maxModuleBytes",
                format!(
                    "{} is out of range; expected 1024 to 268435456 bytes",
                    pc.max_module_bytes
                ),
            ));
        }
        if !(1..=1 << 20).contains(&pc.max_endpoints) {
            return Err((
                "policy.maxEndpoints",
                format!(
                    "{} is out of range; expected 1 to 1048576",
                    pc.max_endpoints
                ),
            ));
        }
        if let Some(bad) = pc
            .allowed_sha256
            .iter()
            .find(|h| h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err((
                "policy.allowedSha256",
                format!("{bad:?} is not a sha256; expected 64 hex digits (sha256sum prints them)"),
            ));
        }
        if !(1..=4096).contains(&pc.max_modules) {
            return Err((
                "policy.maxModules",
                format!("{} is out of range; expected 1 to 4096", pc.max_modules),
            ));
        }
        if let Some(cm) = &pc.config_map
            && (cm.name.is_empty() || cm.namespace.is_empty())
        {
            return Err((
                "policy.configMap",
                "expected both namespace and name, e.g. {namespace: kube-system, name: switchyard-policies}".into(),
            ));
        }
        if self.policy.default.is_empty() {
            return Err((
                "policy.default",
                "expected a policy name such as \"round-robin\"".into(),
            ));
        }
        if self.source.kubeconfig.is_some() && self.source.kind != SourceKind::Kubernetes {
            return Err((
                "source.kubeconfig",
                "is only read with source.kind: kubernetes; expected no kubeconfig or that kind"
                    .into(),
            ));
        }
        if let Some(name) = &self.node_name
            && name.is_empty()
        {
            return Err(("nodeName", "expected a node name or no field at all".into()));
        }
        Ok(())
    }
}
