//! Offline decisions for `switchyard policy test`: drive a module (or the
//! built-in round robin) through the same decider the workers use, on real
//! manifests, and count where connections would go.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::binding::BoundPolicy;
use super::decider::{DecidedBy, Decider, Outcome, PickRequest};
use crate::admin::Metrics;
use crate::catalog::Route;

/// What to simulate.
pub struct Simulation<'a> {
    pub route: &'a Route,
    /// The frontend the clients connect to; its family decides which
    /// endpoints serve them, as in the data plane.
    pub frontend: SocketAddr,
    /// The first client address; further clients count up from it.
    pub client: IpAddr,
    pub binding: Option<Arc<BoundPolicy>>,
    pub connections: usize,
    /// Distinct client addresses the connections come from.
    pub clients: usize,
    /// Endpoints (by address, or by Pod name) whose connects fail.
    pub failing: &'a [String],
    pub attempts: usize,
    /// Keep every connection open (so that load-aware policies see load).
    pub hold: bool,
}

/// Where the connections went.
#[derive(Debug, Default)]
pub struct Report {
    /// Connections per endpoint address.
    pub picks: BTreeMap<SocketAddr, usize>,
    /// Decisions by who made them.
    pub by_current: usize,
    pub by_previous: usize,
    pub by_builtin: usize,
    /// Connections that found no working endpoint.
    pub failed: usize,
    pub metrics: String,
}

/// The default first client of a frontend's family.
pub fn default_client(frontend: IpAddr) -> IpAddr {
    if crate::catalog::is_v6(frontend) {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 0))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 200, 0, 0))
    }
}

fn client(first: IpAddr, i: usize) -> SocketAddr {
    let ip = match first {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4).wrapping_add(i as u32))),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6).wrapping_add(i as u128))),
    };
    SocketAddr::new(ip, 30000 + (i % 30000) as u16)
}

pub fn run(
    engine: Option<Arc<super::PolicyEngine>>,
    sim: &Simulation<'_>,
    here: super::Locality,
) -> Report {
    let metrics = Arc::new(Metrics::new("simulation"));
    let mut decider = Decider::new(engine, here, metrics.clone());
    let mut report = Report::default();
    let endpoints = sim.route.endpoints().clone();
    let fails = |i: usize| {
        let e = &endpoints[i];
        sim.failing.iter().any(|f| {
            *f == e.addr.to_string()
                || *f == e.addr.ip().to_string()
                || Some(f.as_str()) == e.target_name.as_deref()
        })
    };
    let frontend = sim.frontend;
    let family = crate::catalog::family_range(&endpoints, frontend.ip()).len();
    for i in 0..sim.connections {
        let client = client(sim.client, i % sim.clients.max(1));
        let mut tried = Vec::new();
        let mut done = false;
        for _ in 0..sim.attempts.min(family) {
            let req = PickRequest {
                route: sim.route,
                binding: sim.binding.as_ref(),
                generation: 1,
                client,
                frontend,
                tried: &tried,
            };
            let Some(decision) = decider.pick(&req) else {
                break;
            };
            match decision.by {
                DecidedBy::Current => report.by_current += 1,
                DecidedBy::Previous => report.by_previous += 1,
                DecidedBy::Builtin => report.by_builtin += 1,
            }
            let addr = endpoints[decision.index].addr;
            if fails(decision.index) {
                decider.outcome(
                    &req,
                    decision,
                    addr,
                    Outcome::Failed {
                        after: Duration::from_millis(1),
                    },
                );
                tried.push(decision.index);
                continue;
            }
            decider.outcome(
                &req,
                decision,
                addr,
                Outcome::Connected {
                    latency: Duration::from_micros(200),
                },
            );
            if !sim.hold {
                decider.release(sim.route, decision, addr);
            }
            *report.picks.entry(addr).or_default() += 1;
            done = true;
            break;
        }
        report.failed += usize::from(!done);
    }
    report.metrics = metrics.encode();
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{NodeContext, Scope, build};

    const DUAL: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: api, namespace: default}
spec:
  clusterIPs: [10.96.5.5, "fd00:10:96::5"]
  ports: [{name: http, port: 80, targetPort: 8080}]
---
addressType: IPv4
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-v4, namespace: default, labels: {kubernetes.io/service-name: api}}
endpoints:
- {addresses: [10.244.0.7], conditions: {ready: true}}
- {addresses: [10.244.0.8], conditions: {ready: false}}
ports: [{name: http, port: 8080, protocol: TCP}]
---
addressType: IPv6
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-v6, namespace: default, labels: {kubernetes.io/service-name: api}}
endpoints:
- {addresses: ["fd00:244::7"], conditions: {ready: true}}
- {addresses: ["fd00:244::8"], conditions: {ready: true}}
ports: [{name: http, port: 8080, protocol: TCP}]
"#;

    fn route() -> Route {
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(DUAL) {
            let value =
                <serde_yaml::Value as serde::Deserialize>::deserialize(doc).expect("test YAML");
            if value.get("kind").and_then(|k| k.as_str()) == Some("Service") {
                services.push(serde_yaml::from_value(value).expect("a Service"));
            } else {
                slices.push(serde_yaml::from_value(value).expect("an EndpointSlice"));
            }
        }
        let table = build(&services, &slices, &NodeContext::default()).table;
        let port = table.services.values().next().expect("the Service")[0].clone();
        Route {
            port,
            scope: Scope::Internal,
        }
    }

    fn picks(route: &Route, frontend: &str) -> Vec<SocketAddr> {
        let frontend: SocketAddr = frontend.parse().expect("frontend");
        let sim = Simulation {
            route,
            frontend,
            client: default_client(frontend.ip()),
            binding: None,
            connections: 20,
            clients: 20,
            failing: &[],
            attempts: 3,
            hold: false,
        };
        let report = run(None, &sim, super::super::Locality::default());
        assert_eq!(report.failed, 0);
        report.picks.keys().copied().collect()
    }

    #[test]
    fn each_frontend_is_balanced_over_its_own_family() {
        let route = route();
        let v4 = picks(&route, "10.96.5.5:80");
        assert_eq!(v4, ["10.244.0.7:8080".parse().expect("addr")]);
        let v6 = picks(&route, "[fd00:10:96::5]:80");
        let want: Vec<SocketAddr> = ["[fd00:244::7]:8080", "[fd00:244::8]:8080"]
            .iter()
            .map(|a| a.parse().expect("addr"))
            .collect();
        assert_eq!(v6, want);
    }
}
