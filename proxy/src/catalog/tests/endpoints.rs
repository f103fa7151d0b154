//! How a Service port finds its endpoints: slice ports matched by name and
//! protocol, several slices per Service, de-duplication, families.

use super::*;

/// A Service whose `http` port targets the named container port `web`,
/// which differs between the old and the new Pods of a rollout.
const NAMED: &str = r#"
apiVersion: v1
kind: Service
metadata:
  creationTimestamp: "2025-03-01T10:00:00Z"
  name: web
  namespace: shop
spec:
  clusterIP: 10.96.0.20
  clusterIPs:
  - 10.96.0.20
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: web
  selector:
    app: web
  type: ClusterIP
---
addressType: IPv4
apiVersion: discovery.k8s.io/v1
endpoints:
- addresses:
  - 10.244.1.5
  conditions:
    ready: true
    serving: true
    terminating: false
  hostname: web-0
  nodeName: node-a
  targetRef:
    kind: Pod
    name: web-7d9f8-abcde
    namespace: shop
  zone: zone-a
- addresses:
  - 10.244.2.6
  conditions:
    ready: true
    serving: true
    terminating: false
  nodeName: node-b
  zone: zone-b
kind: EndpointSlice
metadata:
  generateName: web-
  labels:
    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
    kubernetes.io/service-name: web
  name: web-old12
  namespace: shop
ports:
- name: http
  port: 8080
  protocol: TCP
---
addressType: IPv4
apiVersion: discovery.k8s.io/v1
endpoints:
- addresses:
  - 10.244.3.7
  conditions:
    ready: true
    serving: true
    terminating: false
  nodeName: node-c
kind: EndpointSlice
metadata:
  labels:
    kubernetes.io/service-name: web
  name: web-new34
  namespace: shop
ports:
- name: http
  port: 8081
  protocol: TCP
"#;

#[test]
fn named_target_port_is_resolved_per_slice() {
    let out = build_yaml(NAMED);
    assert_no_problems(&out);
    let route = vip(&out, "10.96.0.20:80", Protocol::Tcp);
    assert_eq!(
        addrs(route.endpoints()),
        ["10.244.1.5:8080", "10.244.2.6:8080", "10.244.3.7:8081"]
    );
}

#[test]
fn endpoint_node_zone_and_hostname_are_copied() {
    let out = build_yaml(NAMED);
    let route = vip(&out, "10.96.0.20:80", Protocol::Tcp);
    let first = &route.endpoints()[0];
    assert_eq!(first.node_name.as_deref(), Some("node-a"));
    assert_eq!(first.zone.as_deref(), Some("zone-a"));
    assert_eq!(first.hostname.as_deref(), Some("web-0"));
    assert!(first.ready && first.serving && !first.terminating);
    assert_eq!(route.endpoints()[1].hostname, None);
}

#[test]
fn the_result_does_not_depend_on_input_order() {
    let objects = objects(NAMED);
    let reversed: Vec<_> = objects.slices.iter().rev().collect();
    let a = build(&objects.services, &objects.slices, &node("node-a"));
    let b = build(&objects.services, reversed, &node("node-a"));
    assert_eq!(a.table, b.table);
}

#[test]
fn numeric_target_port_also_comes_from_the_slice_port() {
    let out = build_yaml(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: cache
  namespace: shop
spec:
  clusterIP: 10.96.0.30
  ports:
  - name: redis
    port: 6379
    protocol: TCP
    targetPort: 6380
  selector:
    app: cache
---
addressType: IPv4
apiVersion: discovery.k8s.io/v1
endpoints:
- addresses:
  - 10.244.1.8
  conditions:
    ready: true
kind: EndpointSlice
metadata:
  labels:
    kubernetes.io/service-name: cache
  name: cache-x1
  namespace: shop
ports:
- name: redis
  port: 6380
  protocol: TCP
"#,
    );
    assert_no_problems(&out);
    let route = vip(&out, "10.96.0.30:6379", Protocol::Tcp);
    assert_eq!(addrs(route.endpoints()), ["10.244.1.8:6380"]);
}

#[test]
fn a_slice_port_of_another_protocol_does_not_match() {
    let out = build_yaml(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: dns
  namespace: kube-system
spec:
  clusterIP: 10.96.0.10
  ports:
  - name: dns
    port: 53
    protocol: UDP
    targetPort: 53
---
addressType: IPv4
apiVersion: discovery.k8s.io/v1
endpoints:
- addresses:
  - 10.244.0.2
kind: EndpointSlice
metadata:
  labels:
    kubernetes.io/service-name: dns
  name: dns-a
  namespace: kube-system
ports:
- name: dns
  port: 53
  protocol: TCP
"#,
    );
    assert_no_problems(&out);
    assert!(
        vip(&out, "10.96.0.10:53", Protocol::Udp)
            .endpoints()
            .is_empty()
    );
}

#[test]
fn slices_are_joined_and_duplicate_addresses_kept_once_ready_first() {
    let out = build_yaml(
        r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata:
    name: api
    namespace: prod
  spec:
    clusterIP: 10.96.1.1
    ports:
    - name: http
      port: 80
      protocol: TCP
      targetPort: 8080
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses:
    - 10.244.1.1
    conditions:
      ready: false
      serving: false
      terminating: false
    nodeName: node-a
  - addresses:
    - 10.244.1.2
  kind: EndpointSlice
  metadata:
    labels:
      kubernetes.io/service-name: api
    name: api-a
    namespace: prod
  ports:
  - name: http
    port: 8080
    protocol: TCP
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses:
    - 10.244.1.1
    conditions:
      ready: true
    nodeName: node-a
  - addresses:
    - 10.244.1.2
    zone: later
  kind: EndpointSlice
  metadata:
    labels:
      kubernetes.io/service-name: api
    name: api-b
    namespace: prod
  ports:
  - name: http
    port: 8080
    protocol: TCP
"#,
    );
    assert_no_problems(&out);
    let eps = vip(&out, "10.96.1.1:80", Protocol::Tcp).endpoints().clone();
    assert_eq!(addrs(&eps), ["10.244.1.1:8080", "10.244.1.2:8080"]);
    assert!(eps[0].ready, "the ready copy from api-b wins");
    assert_eq!(eps[1].zone, None, "otherwise the first slice by name wins");
}

#[test]
fn a_service_without_selector_uses_hand_made_slices() {
    let out = build_yaml(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: legacy-db
  namespace: default
spec:
  clusterIP: 10.96.2.2
  ports:
  - port: 5432
    protocol: TCP
    targetPort: 5432
  type: ClusterIP
---
addressType: IPv4
apiVersion: discovery.k8s.io/v1
endpoints:
- addresses:
  - 192.168.10.5
kind: EndpointSlice
metadata:
  labels:
    endpointslice.kubernetes.io/managed-by: staff
    kubernetes.io/service-name: legacy-db
  name: legacy-db-1
ports:
- port: 5432
"#,
    );
    assert_no_problems(&out);
    let route = vip(&out, "10.96.2.2:5432", Protocol::Tcp);
    assert_eq!(addrs(route.endpoints()), ["192.168.10.5:5432"]);
}

#[test]
fn slices_of_a_missing_service_or_another_namespace_are_ignored_quietly() {
    let out = build_yaml(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  clusterIP: 10.96.0.20
  ports:
  - port: 80
---
addressType: IPv4
apiVersion: discovery.k8s.io/v1
endpoints:
- addresses:
  - 10.244.9.9
kind: EndpointSlice
metadata:
  labels:
    kubernetes.io/service-name: web
  name: web-elsewhere
  namespace: staging
ports:
- port: 80
---
addressType: IPv4
apiVersion: discovery.k8s.io/v1
endpoints:
- addresses:
  - 10.244.9.8
kind: EndpointSlice
metadata:
  labels:
    kubernetes.io/service-name: gone
  name: gone-1
  namespace: shop
ports:
- port: 80
"#,
    );
    assert_no_problems(&out);
    assert!(
        vip(&out, "10.96.0.20:80", Protocol::Tcp)
            .endpoints()
            .is_empty()
    );
}
