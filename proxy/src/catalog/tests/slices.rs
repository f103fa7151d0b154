//! EndpointSlice checks: what is ignored, what is dropped, what is kept.

use super::*;
use crate::catalog::validate_endpoint_slice;

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  clusterIP: 10.96.0.20
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: 8080
"#;

fn with_service(slice_yaml: &str) -> BuildOutput {
    build_yaml(&format!("{SERVICE}---{slice_yaml}"))
}

fn web(out: &BuildOutput) -> Vec<String> {
    addrs(vip(out, "10.96.0.20:80", Protocol::Tcp).endpoints())
}

#[test]
fn a_slice_without_the_service_label_is_ignored_with_a_warning() {
    let out = with_service(
        r#"
addressType: IPv4
apiVersion: discovery.k8s.io/v1
endpoints:
- addresses:
  - 10.244.1.5
kind: EndpointSlice
metadata:
  labels:
    app: web
  name: web-nolabel
  namespace: shop
ports:
- name: http
  port: 8080
  protocol: TCP
"#,
    );
    assert_eq!(
        summary(&out.problems),
        [(
            Severity::Warning,
            "EndpointSlice shop/web-nolabel".to_owned(),
            "metadata.labels[\"kubernetes.io/service-name\"]".to_owned()
        )]
    );
    assert!(web(&out).is_empty());
}

#[test]
fn fqdn_slices_are_skipped_with_a_warning() {
    let out = with_service(
        r#"
addressType: FQDN
apiVersion: discovery.k8s.io/v1
endpoints:
- addresses:
  - db.example.com
kind: EndpointSlice
metadata:
  labels:
    kubernetes.io/service-name: web
  name: web-fqdn
  namespace: shop
ports:
- name: http
  port: 8080
  protocol: TCP
"#,
    );
    assert_eq!(summary(&out.problems)[0].2, "addressType");
    assert_eq!(out.problems[0].severity, Severity::Warning);
    assert!(web(&out).is_empty());
}

#[test]
fn an_invalid_endpoint_address_drops_only_that_endpoint() {
    let yaml = r#"
addressType: IPv4
apiVersion: discovery.k8s.io/v1
endpoints:
- addresses:
  - 10.244.1.5
- addresses:
  - 10.244.1.999
- addresses:
  - 10.244.1.7
  - not-an-ip
- addresses:
  - fd00::8
- addresses: []
- addresses:
  - 10.244.1.9
kind: EndpointSlice
metadata:
  labels:
    kubernetes.io/service-name: web
  name: web-mixed
  namespace: shop
ports:
- name: http
  port: 8080
  protocol: TCP
"#;
    let out = with_service(yaml);
    // Checking alone (as the sources do on reading) finds the same.
    assert_eq!(validate_endpoint_slice(&slice(yaml)), out.problems);
    let fields: Vec<_> = summary(&out.problems)
        .into_iter()
        .map(|p| (p.0, p.2))
        .collect();
    assert_eq!(
        fields,
        [
            (Severity::Error, "endpoints[1].addresses[0]".to_owned()),
            (Severity::Error, "endpoints[2].addresses[1]".to_owned()),
            (Severity::Error, "endpoints[3].addresses[0]".to_owned()),
            (Severity::Error, "endpoints[4].addresses".to_owned()),
        ]
    );
    assert!(out.problems[0].message.contains("10.244.1.999"));
    assert!(out.problems[2].message.contains("IPv4"));
    assert_eq!(web(&out), ["10.244.1.5:8080", "10.244.1.9:8080"]);
}

#[test]
fn slice_level_errors_drop_the_slice() {
    let bad = slice(
        r#"
addressType: IPv5
apiVersion: discovery.k8s.io/v1
endpoints:
- addresses:
  - 10.244.1.5
kind: EndpointSlice
metadata:
  labels:
    kubernetes.io/service-name: web
  namespace: shop
ports:
- name: http
  port: 70000
  protocol: TCP
- name: http
  port: 8080
  protocol: HTTP
- name: grpc
"#,
    );
    let fields: Vec<_> = summary(&validate_endpoint_slice(&bad))
        .into_iter()
        .map(|p| (p.0, p.2))
        .collect();
    assert_eq!(
        fields,
        [
            (Severity::Error, "metadata.name".to_owned()),
            (Severity::Error, "addressType".to_owned()),
            (Severity::Error, "ports[0].port".to_owned()),
            (Severity::Error, "ports[1].name".to_owned()),
            (Severity::Error, "ports[1].protocol".to_owned()),
            (Severity::Warning, "ports[2].port".to_owned()),
        ]
    );
    let objects = objects(SERVICE);
    let out = build(&objects.services, [&bad], &node("node-a"));
    assert!(web(&out).is_empty());
    assert!(
        out.problems
            .iter()
            .all(|p| p.message.contains("expected") || p.severity == Severity::Warning)
    );
}

#[test]
fn a_slice_port_without_a_number_is_ignored() {
    let out = with_service(
        r#"
addressType: IPv4
apiVersion: discovery.k8s.io/v1
endpoints:
- addresses:
  - 10.244.1.5
kind: EndpointSlice
metadata:
  labels:
    kubernetes.io/service-name: web
  name: web-any
  namespace: shop
ports:
- name: http
  protocol: TCP
"#,
    );
    assert_eq!(summary(&out.problems)[0].2, "ports[0].port");
    assert!(web(&out).is_empty());
}

#[test]
fn a_slice_without_ports_or_endpoints_is_fine() {
    let out = with_service(
        r#"
addressType: IPv4
apiVersion: discovery.k8s.io/v1
endpoints: null
kind: EndpointSlice
metadata:
  labels:
    kubernetes.io/service-name: web
  name: web-empty
  namespace: shop
ports: null
"#,
    );
    assert_no_problems(&out);
    assert!(web(&out).is_empty());
}

#[test]
fn a_slice_defined_twice_is_used_once_with_an_error() {
    let doc = r#"
addressType: IPv4
apiVersion: discovery.k8s.io/v1
endpoints:
- addresses:
  - 10.244.1.5
kind: EndpointSlice
metadata:
  labels:
    kubernetes.io/service-name: web
  name: web-twice
  namespace: shop
ports:
- name: http
  port: 8080
  protocol: TCP
"#;
    let out = build_yaml(&format!(
        "{SERVICE}---{doc}---{}",
        doc.replace("8080", "9090")
    ));
    assert_eq!(
        summary(&out.problems),
        [(
            Severity::Error,
            "EndpointSlice shop/web-twice".to_owned(),
            "metadata.name".to_owned()
        )]
    );
    assert_eq!(web(&out), ["10.244.1.5:8080"]);
}

#[test]
fn ipv4_mapped_ipv6_addresses_are_read_as_ipv4() {
    let out = with_service(
        r#"
addressType: IPv4
apiVersion: discovery.k8s.io/v1
endpoints:
- addresses:
  - '::ffff:10.244.1.5'
kind: EndpointSlice
metadata:
  labels:
    kubernetes.io/service-name: web
  name: web-mapped
  namespace: shop
ports:
- name: http
  port: 8080
  protocol: TCP
"#,
    );
    assert_no_problems(&out);
    assert_eq!(web(&out), ["10.244.1.5:8080"]);
}
