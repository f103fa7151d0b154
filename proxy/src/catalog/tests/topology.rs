//! Topology hints (kube-proxy's `CategorizeEndpoints`): forZones, forNodes,
//! and the fallbacks, each written as the objects kubectl prints.

use super::*;

/// A Service with `spec_extra` and one IPv4 slice with `endpoints`.
fn objects_yaml(spec_extra: &str, endpoints: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations:
    service.kubernetes.io/topology-mode: Auto
spec:
  clusterIP: 10.96.0.30
  clusterIPs:
  - 10.96.0.30
{spec_extra}
  ports:
  - name: http
    nodePort: 30081
    port: 80
    protocol: TCP
    targetPort: 8080
  type: NodePort
---
addressType: IPv4
apiVersion: discovery.k8s.io/v1
endpoints:
{endpoints}
kind: EndpointSlice
metadata:
  labels:
    kubernetes.io/service-name: web
  name: web-hinted
  namespace: shop
ports:
- name: http
  port: 8080
  protocol: TCP
"#
    )
}

/// node-a in zone-a: the node the tests build on.
fn here() -> NodeContext {
    NodeContext {
        node_name: Some("node-a".into()),
        zone: Some("zone-a".into()),
        ..NodeContext::default()
    }
}

fn internal(yaml: &str, node: &NodeContext) -> Vec<String> {
    let out = build_yaml_on(yaml, node);
    assert_no_problems(&out);
    addrs(vip(&out, "10.96.0.30:80", Protocol::Tcp).endpoints())
}

/// Three ready endpoints: .1 on node-a (zone-a), .2 on node-b (zone-a),
/// .3 on node-c (zone-b), each hinted for its own zone and node.
const HINTED: &str = r#"- addresses: [10.244.1.1]
  conditions: {ready: true}
  nodeName: node-a
  zone: zone-a
  hints:
    forZones: [{name: zone-a}]
    forNodes: [{name: node-a}]
- addresses: [10.244.2.1]
  conditions: {ready: true}
  nodeName: node-b
  zone: zone-a
  hints:
    forZones: [{name: zone-a}]
    forNodes: [{name: node-b}]
- addresses: [10.244.3.1]
  conditions: {ready: true}
  nodeName: node-c
  zone: zone-b
  hints:
    forZones: [{name: zone-b}]
    forNodes: [{name: node-c}]"#;

/// The same endpoints with zone hints only (`PreferClose`).
const ZONE_HINTED: &str = r#"- addresses: [10.244.1.1]
  conditions: {ready: true}
  nodeName: node-a
  zone: zone-a
  hints:
    forZones: [{name: zone-a}]
- addresses: [10.244.2.1]
  conditions: {ready: true}
  nodeName: node-b
  zone: zone-a
  hints:
    forZones: [{name: zone-a}]
- addresses: [10.244.3.1]
  conditions: {ready: true}
  nodeName: node-c
  zone: zone-b
  hints:
    forZones: [{name: zone-b}]"#;

const ALL: [&str; 3] = ["10.244.1.1:8080", "10.244.2.1:8080", "10.244.3.1:8080"];

#[test]
fn zone_hints_keep_the_endpoints_hinted_for_this_zone() {
    let yaml = objects_yaml("  trafficDistribution: PreferClose", ZONE_HINTED);
    assert_eq!(
        internal(&yaml, &here()),
        ["10.244.1.1:8080", "10.244.2.1:8080"]
    );
    let zone_b = NodeContext {
        zone: Some("zone-b".into()),
        ..here()
    };
    assert_eq!(internal(&yaml, &zone_b), ["10.244.3.1:8080"]);
}

#[test]
fn node_hints_win_over_zone_hints_when_one_is_for_this_node() {
    let yaml = objects_yaml("  trafficDistribution: PreferSameNode", HINTED);
    assert_eq!(internal(&yaml, &here()), ["10.244.1.1:8080"]);
}

#[test]
fn node_hints_for_other_nodes_only_fall_back_to_zone_hints() {
    let yaml = objects_yaml("  trafficDistribution: PreferSameNode", HINTED);
    let node_d = NodeContext {
        node_name: Some("node-d".into()),
        ..here()
    };
    assert_eq!(
        internal(&yaml, &node_d),
        ["10.244.1.1:8080", "10.244.2.1:8080"]
    );
}

#[test]
fn a_ready_endpoint_without_hints_disables_them() {
    let missing = ZONE_HINTED.to_owned()
        + "\n- addresses: [10.244.4.1]\n  conditions: {ready: true}\n  nodeName: node-d\n  zone: zone-b";
    let yaml = objects_yaml("  trafficDistribution: PreferClose", &missing);
    let mut all = ALL.to_vec();
    all.push("10.244.4.1:8080");
    assert_eq!(internal(&yaml, &here()), all);
}

#[test]
fn a_not_ready_endpoint_without_hints_does_not_count() {
    let unready = ZONE_HINTED.to_owned()
        + "\n- addresses: [10.244.4.1]\n  conditions: {ready: false}\n  nodeName: node-d\n  zone: zone-b";
    let yaml = objects_yaml("  trafficDistribution: PreferClose", &unready);
    assert_eq!(
        internal(&yaml, &here()),
        ["10.244.1.1:8080", "10.244.2.1:8080"]
    );
}

#[test]
fn no_endpoint_hinted_for_this_zone_ignores_the_hints() {
    let yaml = objects_yaml("  trafficDistribution: PreferClose", ZONE_HINTED);
    let zone_c = NodeContext {
        zone: Some("zone-c".into()),
        ..here()
    };
    assert_eq!(internal(&yaml, &zone_c), ALL);
    // A node without a zone label cannot match any zone hint either.
    let no_zone = NodeContext {
        zone: None,
        ..here()
    };
    assert_eq!(internal(&yaml, &no_zone), ALL);
}

#[test]
fn hinted_terminating_endpoints_serve_when_none_is_ready() {
    let terminating = r#"- addresses: [10.244.1.1]
  conditions: {ready: false, serving: true, terminating: true}
  nodeName: node-a
  hints:
    forZones: [{name: zone-a}]
- addresses: [10.244.3.1]
  conditions: {ready: false, serving: true, terminating: true}
  nodeName: node-c
  hints:
    forZones: [{name: zone-b}]"#;
    let yaml = objects_yaml("  trafficDistribution: PreferClose", terminating);
    // No ready endpoint: the hints give no mode, every serving and
    // terminating endpoint is used (kube-proxy's order of the two rules).
    assert_eq!(
        internal(&yaml, &here()),
        ["10.244.1.1:8080", "10.244.3.1:8080"]
    );
}

#[test]
fn local_traffic_policy_ignores_hints() {
    let yaml = objects_yaml(
        "  trafficDistribution: PreferClose\n  externalTrafficPolicy: Local",
        ZONE_HINTED,
    );
    let out = build_yaml_on(&yaml, &here());
    assert_no_problems(&out);
    assert_eq!(
        addrs(node_port(&out, Protocol::Tcp, 30081).endpoints()),
        ["10.244.1.1:8080"]
    );
    assert_eq!(
        addrs(vip(&out, "10.96.0.30:80", Protocol::Tcp).endpoints()),
        ["10.244.1.1:8080", "10.244.2.1:8080"]
    );
}
