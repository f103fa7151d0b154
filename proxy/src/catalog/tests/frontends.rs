//! Which frontends a Service gets: cluster IPs, NodePorts, externalIPs,
//! LoadBalancer IPs, and the per-Service facts every port shares.

use std::sync::Arc;
use std::time::Duration;

use super::*;

const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata:
  annotations:
    switchyard.dev/policy: p2c-ewma
    switchyard.dev/policy-config: '{"decay_ms":500}'
    team: shop
  creationTimestamp: "2025-03-01T10:00:00Z"
  labels:
    app: web
  name: web
  namespace: shop
  resourceVersion: "1234"
  uid: 6f1c2b2e-0d1a-4e0b-9a55-1f7c3d2a9b10
spec:
  clusterIP: 10.96.0.20
  clusterIPs:
  - 10.96.0.20
  internalTrafficPolicy: Cluster
  ipFamilies:
  - IPv4
  ipFamilyPolicy: SingleStack
  ports:
  - appProtocol: http
    name: http
    port: 80
    protocol: TCP
    targetPort: http
  - name: metrics
    port: 9090
    protocol: TCP
    targetPort: 9090
  selector:
    app: web
  sessionAffinity: None
  type: ClusterIP
status:
  loadBalancer: {}
"#;

#[test]
fn cluster_ip_ports_are_internal_frontends_with_service_facts() {
    let out = build_yaml(WEB);
    assert_no_problems(&out);
    assert_eq!(out.table.frontends.len(), 2);
    assert!(out.table.node_ports.is_empty());
    let http = vip(&out, "10.96.0.20:80", Protocol::Tcp);
    assert_eq!(http.scope, Scope::Internal);
    assert_eq!(http.port.name, "http");
    assert_eq!(http.port.port, 80);
    assert_eq!(http.port.node_port, None);
    assert_eq!(http.port.app_protocol.as_deref(), Some("http"));
    let info = &http.port.service;
    assert_eq!(info.key, key("shop", "web"));
    assert_eq!(info.policy.as_deref(), Some("p2c-ewma"));
    assert_eq!(info.policy_config.as_deref(), Some(r#"{"decay_ms":500}"#));
    assert_eq!(info.affinity_timeout, None);
    assert_eq!(info.annotations.len(), 3);
    assert_eq!(
        info.annotations.get("team").map(String::as_str),
        Some("shop")
    );
    let metrics = vip(&out, "10.96.0.20:9090", Protocol::Tcp);
    assert_eq!(metrics.port.app_protocol, None);
    assert!(Arc::ptr_eq(&http.port.service, &metrics.port.service));
    let listed = ports(&out, "shop", "web");
    assert_eq!(listed.len(), 2);
    assert!(Arc::ptr_eq(&listed[0], &http.port));
    assert!(Arc::ptr_eq(&listed[1], &metrics.port));
}

#[test]
fn port_without_endpoints_still_has_its_frontend() {
    let out = build_yaml(WEB);
    let http = vip(&out, "10.96.0.20:80", Protocol::Tcp);
    assert!(http.port.internal.is_empty());
    assert!(http.port.external.is_empty());
    assert!(http.endpoints().is_empty());
}

#[test]
fn cluster_ip_alone_is_used_when_cluster_ips_is_absent() {
    let out = build_yaml(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: legacy
spec:
  clusterIP: 10.96.7.7
  ports:
  - port: 80
"#,
    );
    assert_no_problems(&out);
    let route = vip(&out, "10.96.7.7:80", Protocol::Tcp);
    assert_eq!(route.port.service.key, key("default", "legacy"));
}

#[test]
fn headless_and_external_name_services_are_ignored_quietly() {
    let out = build_yaml(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: db
  namespace: shop
spec:
  clusterIP: None
  clusterIPs:
  - None
  ports:
  - name: pg
    port: 5432
    protocol: TCP
    targetPort: 5432
  selector:
    app: db
  type: ClusterIP
---
apiVersion: v1
kind: Service
metadata:
  name: upstream
  namespace: shop
spec:
  externalName: api.example.com
  sessionAffinity: None
  type: ExternalName
---
addressType: IPv4
apiVersion: discovery.k8s.io/v1
endpoints:
- addresses:
  - 10.244.1.9
kind: EndpointSlice
metadata:
  labels:
    kubernetes.io/service-name: db
  name: db-abcde
  namespace: shop
ports:
- name: pg
  port: 5432
  protocol: TCP
"#,
    );
    assert_no_problems(&out);
    assert_eq!(out.table, Default::default());
}

#[test]
fn tcp_is_the_default_protocol_and_udp_ports_are_kept() {
    let out = build_yaml(
        r#"
apiVersion: v1
kind: Service
metadata:
  labels:
    k8s-app: kube-dns
  name: kube-dns
  namespace: kube-system
spec:
  clusterIP: 10.96.0.10
  clusterIPs:
  - 10.96.0.10
  ports:
  - name: dns
    port: 53
    protocol: UDP
    targetPort: 53
  - name: dns-tcp
    port: 53
    targetPort: 53
  selector:
    k8s-app: kube-dns
  type: ClusterIP
"#,
    );
    assert_no_problems(&out);
    let udp = vip(&out, "10.96.0.10:53", Protocol::Udp);
    let tcp = vip(&out, "10.96.0.10:53", Protocol::Tcp);
    assert_eq!(
        (udp.port.name.as_str(), udp.port.protocol),
        ("dns", Protocol::Udp)
    );
    assert_eq!(
        (tcp.port.name.as_str(), tcp.port.protocol),
        ("dns-tcp", Protocol::Tcp)
    );
}

#[test]
fn sctp_port_is_skipped_with_a_warning() {
    let out = build_yaml(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: signalling
  namespace: telco
spec:
  clusterIP: 10.96.9.9
  ports:
  - name: sctp
    port: 3868
    protocol: SCTP
    targetPort: 3868
  - name: tcp
    port: 3868
    protocol: TCP
    targetPort: 3868
  type: ClusterIP
"#,
    );
    assert_eq!(
        summary(&out.problems),
        [(
            Severity::Warning,
            "Service telco/signalling".to_owned(),
            "spec.ports[0].protocol".to_owned()
        )]
    );
    assert!(out.problems[0].message.contains("SCTP"));
    assert_eq!(out.table.frontends.len(), 1);
    assert_eq!(ports(&out, "telco", "signalling").len(), 1);
    vip(&out, "10.96.9.9:3868", Protocol::Tcp);
}

#[test]
fn client_ip_affinity_uses_the_configured_or_default_timeout() {
    let out = build_yaml(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: sticky
spec:
  clusterIP: 10.96.8.1
  ports:
  - port: 80
  sessionAffinity: ClientIP
  sessionAffinityConfig:
    clientIP:
      timeoutSeconds: 600
---
apiVersion: v1
kind: Service
metadata:
  name: sticky-default
spec:
  clusterIP: 10.96.8.2
  ports:
  - port: 80
  sessionAffinity: ClientIP
"#,
    );
    assert_no_problems(&out);
    let timeout = |addr| vip(&out, addr, Protocol::Tcp).port.service.affinity_timeout;
    assert_eq!(timeout("10.96.8.1:80"), Some(Duration::from_secs(600)));
    assert_eq!(timeout("10.96.8.2:80"), Some(Duration::from_secs(10_800)));
}

#[test]
fn a_service_without_annotations_has_no_policy() {
    let out = build_yaml(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: plain
spec:
  clusterIP: 10.96.8.3
  ports:
  - port: 80
"#,
    );
    let info = &vip(&out, "10.96.8.3:80", Protocol::Tcp).port.service;
    assert_eq!(
        (info.policy.as_deref(), info.policy_config.as_deref()),
        (None, None)
    );
    assert!(info.annotations.is_empty());
}
