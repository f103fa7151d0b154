//! Endpoint conditions and traffic policies: which endpoints each scope
//! may use.

use std::sync::Arc;

use super::*;

/// A NodePort Service with the given spec lines (traffic policies), and
/// one slice with the given endpoints, both the way kubectl prints them.
fn service_and_slice(spec_extra: &str, endpoints: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  clusterIP: 10.96.0.20
  clusterIPs:
  - 10.96.0.20
{spec_extra}
  ports:
  - name: http
    nodePort: 30080
    port: 80
    protocol: TCP
    targetPort: 8080
  selector:
    app: web
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
  name: web-abcde
  namespace: shop
ports:
- name: http
  port: 8080
  protocol: TCP
"#
    )
}

fn internal(out: &BuildOutput) -> Vec<String> {
    addrs(vip(out, "10.96.0.20:80", Protocol::Tcp).endpoints())
}

fn external(out: &BuildOutput) -> Vec<String> {
    addrs(node_port(out, Protocol::Tcp, 30080).endpoints())
}

/// Ready on node-a and node-b, not ready on node-a, terminating (still
/// serving) on node-a and node-b, terminating and not serving on node-c.
const MIXED: &str = r#"- addresses:
  - 10.244.1.1
  conditions:
    ready: true
    serving: true
    terminating: false
  nodeName: node-a
- addresses:
  - 10.244.2.1
  conditions:
    ready: true
    serving: true
    terminating: false
  nodeName: node-b
- addresses:
  - 10.244.1.2
  conditions:
    ready: false
    serving: false
    terminating: false
  nodeName: node-a
- addresses:
  - 10.244.1.3
  conditions:
    ready: false
    serving: true
    terminating: true
  nodeName: node-a
- addresses:
  - 10.244.2.3
  conditions:
    ready: false
    serving: true
    terminating: true
  nodeName: node-b
- addresses:
  - 10.244.3.3
  conditions:
    ready: false
    serving: false
    terminating: true
  nodeName: node-c"#;

/// MIXED without its ready endpoints.
const DRAINING: &str = r#"- addresses:
  - 10.244.1.3
  conditions:
    ready: false
    serving: true
    terminating: true
  nodeName: node-a
- addresses:
  - 10.244.2.3
  conditions:
    ready: false
    serving: true
    terminating: true
  nodeName: node-b
- addresses:
  - 10.244.3.3
  conditions:
    ready: false
    serving: false
    terminating: true
  nodeName: node-c"#;

#[test]
fn absent_conditions_mean_ready() {
    let endpoints = "- addresses:\n  - 10.244.1.1\n  conditions: {}\n- addresses:\n  - 10.244.1.2";
    let out = build_yaml(&service_and_slice("", endpoints));
    assert_no_problems(&out);
    assert_eq!(internal(&out), ["10.244.1.1:8080", "10.244.1.2:8080"]);
    let eps = vip(&out, "10.96.0.20:80", Protocol::Tcp)
        .endpoints()
        .clone();
    assert!(eps.iter().all(|e| e.ready && e.serving && !e.terminating));
}

#[test]
fn only_ready_endpoints_are_used_while_any_is_ready() {
    let out = build_yaml(&service_and_slice("", MIXED));
    assert_no_problems(&out);
    assert_eq!(internal(&out), ["10.244.1.1:8080", "10.244.2.1:8080"]);
    assert_eq!(external(&out), ["10.244.1.1:8080", "10.244.2.1:8080"]);
}

#[test]
fn without_ready_endpoints_serving_terminating_ones_are_used() {
    let out = build_yaml(&service_and_slice("", DRAINING));
    assert_eq!(internal(&out), ["10.244.1.3:8080", "10.244.2.3:8080"]);
    let eps = vip(&out, "10.96.0.20:80", Protocol::Tcp)
        .endpoints()
        .clone();
    assert!(eps.iter().all(|e| !e.ready && e.serving && e.terminating));
}

#[test]
fn not_ready_and_not_serving_endpoints_are_never_used() {
    let endpoints = r#"- addresses:
  - 10.244.1.2
  conditions:
    ready: false
  nodeName: node-a
- addresses:
  - 10.244.3.3
  conditions:
    ready: false
    terminating: true
  nodeName: node-c"#;
    let out = build_yaml(&service_and_slice("", endpoints));
    // serving unknown follows ready (false): neither is serving-terminating.
    assert!(internal(&out).is_empty());
    assert!(external(&out).is_empty());
}

#[test]
fn cluster_policies_share_one_list_between_scopes() {
    let spec = "  externalTrafficPolicy: Cluster\n  internalTrafficPolicy: Cluster";
    let out = build_yaml(&service_and_slice(spec, MIXED));
    let port = &vip(&out, "10.96.0.20:80", Protocol::Tcp).port;
    assert!(Arc::ptr_eq(&port.internal, &port.external));
}

#[test]
fn internal_traffic_policy_local_keeps_this_nodes_endpoints_for_cluster_ips() {
    let spec = "  internalTrafficPolicy: Local";
    let out = build_yaml(&service_and_slice(spec, MIXED));
    assert_no_problems(&out);
    assert_eq!(internal(&out), ["10.244.1.1:8080"]);
    assert_eq!(external(&out), ["10.244.1.1:8080", "10.244.2.1:8080"]);
}

#[test]
fn external_traffic_policy_local_keeps_this_nodes_endpoints_for_node_ports() {
    let spec = "  externalTrafficPolicy: Local";
    let out = build_yaml_on(&service_and_slice(spec, MIXED), &node("node-b"));
    assert_no_problems(&out);
    assert_eq!(internal(&out), ["10.244.1.1:8080", "10.244.2.1:8080"]);
    assert_eq!(external(&out), ["10.244.2.1:8080"]);
    let route = node_port(&out, Protocol::Tcp, 30080);
    assert_eq!(route.scope, Scope::External);
}

#[test]
fn local_policy_falls_back_to_this_nodes_terminating_endpoints() {
    let spec = "  externalTrafficPolicy: Local\n  internalTrafficPolicy: Local";
    let out = build_yaml(&service_and_slice(spec, DRAINING));
    assert_eq!(internal(&out), ["10.244.1.3:8080"]);
    assert_eq!(external(&out), ["10.244.1.3:8080"]);
}

#[test]
fn local_policy_ignores_other_nodes_even_when_this_one_has_nothing() {
    let spec = "  externalTrafficPolicy: Local";
    let out = build_yaml_on(&service_and_slice(spec, MIXED), &node("node-z"));
    assert!(external(&out).is_empty());
    assert_eq!(internal(&out).len(), 2);
}

#[test]
fn without_a_node_name_no_endpoint_is_local() {
    let spec = "  internalTrafficPolicy: Local";
    let out = build_yaml_on(&service_and_slice(spec, MIXED), &NodeContext::default());
    assert!(internal(&out).is_empty());
    assert_eq!(external(&out).len(), 2);
}
