//! The service table the data plane reads. Built by [`super::build`] or
//! patched by [`super::Assembly`], published as an immutable snapshot. Its
//! maps are persistent (shared shards, shared tree nodes): a published
//! table is never changed, and the next one shares everything a change did
//! not touch with it.
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use imbl::OrdMap;

use super::app_protocol::L7Protocol;
pub use super::shard_map::ShardMap;

/// Every proxied Service's ports, by Service, in key order.
pub type Services = OrdMap<ServiceKey, Vec<Arc<ServicePort>>>;

/// L4 protocols a Service port can proxy. SCTP is reported as unsupported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The name nftables uses (`meta l4proto tcp`).
    pub fn nft_name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// `namespace/name` of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One backend of one Service port, with the target port already resolved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub node_name: Option<String>,
    pub zone: Option<String>,
    pub hostname: Option<String>,
    /// `targetRef.name`: the Pod's name, what policies match names against.
    pub target_name: Option<String>,
    /// `conditions.ready`; endpoints that are only serving+terminating are
    /// used solely when no endpoint of the port is ready (kube-proxy's rule).
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

/// Where a connection entered: Service VIP from inside the cluster, or
/// from outside (NodePort, externalIP, LoadBalancer IP). The traffic
/// policies (`internalTrafficPolicy`, `externalTrafficPolicy`) choose the
/// endpoint set per scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Scope {
    Internal,
    External,
}

/// The per-Service facts that every port shares.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServiceInfo {
    pub key: ServiceKey,
    /// `switchyard.dev/policy` annotation, if set.
    pub policy: Option<String>,
    /// `switchyard.dev/policy-config` annotation (JSON text), if set.
    pub policy_config: Option<String>,
    /// `sessionAffinity: ClientIP` with its timeout (default 10800 s).
    pub affinity_timeout: Option<Duration>,
    /// `externalTrafficPolicy: Local`: external clients keep their address
    /// (with `Cluster` the node's address may stand in for it).
    pub external_local: bool,
    /// `switchyard.dev/proxy-protocol: v2`: the backend learns the client's
    /// address from a PROXY v2 header instead of the packets' source.
    pub proxy_protocol: bool,
    /// All annotations, for features that read their own (L7, proxy protocol).
    pub annotations: BTreeMap<String, String>,
}

/// One port of one Service with the endpoints each scope may use.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServicePort {
    /// Stable across snapshots for the same Service port, so that per-worker
    /// state (policy instances, cursors) survives unrelated changes.
    pub id: u64,
    #[serde(serialize_with = "ser::through_arc")]
    pub service: Arc<ServiceInfo>,
    /// `spec.ports[].name` ("" when the Service has a single unnamed port).
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
    pub app_protocol: Option<String>,
    /// `Some`: proxied per HTTP request (opt-in, see `app_protocol.rs`).
    pub l7: Option<L7Protocol>,
    /// Endpoints for ClusterIP traffic (after `internalTrafficPolicy`).
    #[serde(serialize_with = "ser::through_arc")]
    pub internal: Arc<[Endpoint]>,
    /// Endpoints for NodePort / externalIP / LB traffic (after
    /// `externalTrafficPolicy`).
    #[serde(serialize_with = "ser::through_arc")]
    pub external: Arc<[Endpoint]>,
}

impl ServicePort {
    /// FNV-1a over namespace, name, port name and protocol.
    pub fn stable_id(key: &ServiceKey, port_name: &str, protocol: Protocol) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let parts = [
            key.namespace.as_bytes(),
            b"/",
            key.name.as_bytes(),
            b":",
            port_name.as_bytes(),
            b"/",
            protocol.nft_name().as_bytes(),
        ];
        for byte in parts.into_iter().flatten() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash
    }

    pub fn endpoints(&self, scope: Scope) -> &Arc<[Endpoint]> {
        match scope {
            Scope::Internal => &self.internal,
            Scope::External => &self.external,
        }
    }
}

/// A frontend the proxy answers on: a VIP (ClusterIP, externalIP, LB IP)
/// with protocol and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Frontend {
    pub ip: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

/// What a frontend resolves to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Route {
    #[serde(serialize_with = "ser::through_arc")]
    pub port: Arc<ServicePort>,
    pub scope: Scope,
}

impl Route {
    pub fn endpoints(&self) -> &Arc<[Endpoint]> {
        self.port.endpoints(self.scope)
    }
}

/// The service table: every frontend this node proxies, immutable.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ServiceTable {
    /// VIP frontends (ClusterIPs with `Scope::Internal`, externalIPs and
    /// LoadBalancer ingress IPs with `Scope::External`).
    #[serde(serialize_with = "ser::frontends")]
    pub frontends: ShardMap<Frontend, Route>,
    /// NodePorts, on every local address, always `Scope::External`.
    #[serde(serialize_with = "ser::node_ports")]
    pub node_ports: ShardMap<(Protocol, u16), Route>,
    /// Every proxied Service port, by Service, for the admin API and the
    /// policy bindings.
    #[serde(serialize_with = "ser::services")]
    pub services: Services,
    /// This node's addresses as its Node object lists them (InternalIP,
    /// ExternalIP): what `intercept.nodePortAddresses: [primary]` means.
    pub node_addresses: Vec<IpAddr>,
    /// `spec.healthCheckNodePort` of LoadBalancer Services with
    /// `externalTrafficPolicy: Local`: the port and its Service.
    #[serde(skip)]
    pub health_checks: OrdMap<u16, ServiceKey>,
    /// LoadBalancer ingress frontends restricted by
    /// `loadBalancerSourceRanges`: the sources allowed, of the frontend's
    /// family (empty: none).
    #[serde(skip)]
    pub source_ranges: OrdMap<Frontend, Arc<[(IpAddr, u8)]>>,
    /// Names this table among those one [`super::Assembly`] made (0: built
    /// whole by [`super::build`], named by nothing).
    #[serde(skip)]
    pub revision: u64,
    /// What changed from the table this one was patched from; `None` when
    /// it was assembled whole (a reader then compares everything).
    #[serde(skip)]
    pub changes: Option<Arc<TableChange>>,
}

/// The keys a patch touched: entries added, removed or replaced. Readers
/// that kept the table named `from` look at these only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableChange {
    /// The `revision` of the table patched.
    pub from: u64,
    pub services: Vec<ServiceKey>,
    pub frontends: Vec<Frontend>,
    pub node_ports: Vec<(Protocol, u16)>,
    pub source_ranges: Vec<Frontend>,
}

/// The contents; how a table was made (`revision`, `changes`) is not.
impl PartialEq for ServiceTable {
    fn eq(&self, other: &Self) -> bool {
        self.frontends == other.frontends
            && self.node_ports == other.node_ports
            && self.services == other.services
            && self.node_addresses == other.node_addresses
            && self.health_checks == other.health_checks
            && self.source_ranges == other.source_ranges
    }
}

impl Eq for ServiceTable {}

impl ServiceTable {
    /// The route for a connection's original destination. A destination that
    /// is not a VIP reached us through a NodePort rule.
    pub fn lookup(&self, protocol: Protocol, dst: SocketAddr) -> Option<&Route> {
        let key = Frontend {
            ip: dst.ip(),
            protocol,
            port: dst.port(),
        };
        self.frontends
            .get(&key)
            .or_else(|| self.node_ports.get(&(protocol, dst.port())))
    }

    /// What changed since `old`, when this table was patched from it (a
    /// reader that kept an older table, or a table built whole, gets
    /// `None` and compares everything).
    pub fn changed_since(&self, old: &ServiceTable) -> Option<&TableChange> {
        self.changes
            .as_deref()
            .filter(|c| old.revision != 0 && c.from == old.revision)
    }
}

/// Serialization for the config dump. serde's `rc` feature is off, so
/// shared values are written through their `Arc`; maps get string keys
/// (JSON has no others) in a stable order.
mod ser {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::Arc;

    use serde::{Serialize, Serializer};

    use super::{Frontend, Protocol, Route, ServicePort, Services, ShardMap};

    pub(super) fn through_arc<T, S>(value: &Arc<T>, s: S) -> Result<S::Ok, S::Error>
    where
        T: Serialize + ?Sized,
        S: Serializer,
    {
        T::serialize(value, s)
    }

    /// `"10.96.0.10:53/UDP"`, `"[fd00::a]:443/TCP"`.
    pub(super) fn frontends<S: Serializer>(
        map: &ShardMap<Frontend, Route>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let sorted: BTreeMap<&Frontend, &Route> = map.iter().collect();
        s.collect_map(sorted.into_iter().map(|(f, route)| {
            let addr = SocketAddr::new(f.ip, f.port);
            (format!("{addr}/{}", f.protocol), route)
        }))
    }

    /// `"30080/TCP"`.
    pub(super) fn node_ports<S: Serializer>(
        map: &ShardMap<(Protocol, u16), Route>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let sorted: BTreeMap<&(Protocol, u16), &Route> = map.iter().collect();
        s.collect_map(
            sorted
                .into_iter()
                .map(|((protocol, port), route)| (format!("{port}/{protocol}"), route)),
        )
    }

    /// `"namespace/name"`.
    pub(super) fn services<S: Serializer>(map: &Services, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(map.iter().map(|(key, ports)| {
            let ports: Vec<&ServicePort> = ports.iter().map(|p| &**p).collect();
            (key.to_string(), ports)
        }))
    }
}
