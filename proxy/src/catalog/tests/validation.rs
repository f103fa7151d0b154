//! Service checks: an error names the field and drops the Service.

use super::*;
use crate::catalog::validate_service;

/// `(severity, field)` of each problem `validate_service` finds.
fn check(yaml: &str) -> Vec<(Severity, String)> {
    let problems = validate_service(&service(yaml));
    for p in &problems {
        assert!(
            p.severity == Severity::Warning || p.message.contains("expected"),
            "an error says what was expected: {p}"
        );
    }
    summary(&problems).into_iter().map(|p| (p.0, p.2)).collect()
}

fn errors(fields: &[&str]) -> Vec<(Severity, String)> {
    fields
        .iter()
        .map(|f| (Severity::Error, (*f).to_owned()))
        .collect()
}

#[test]
fn a_valid_service_has_no_problems() {
    let yaml = r#"
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
    nodePort: 30080
    port: 80
    protocol: TCP
    targetPort: http-alt
  sessionAffinity: ClientIP
  sessionAffinityConfig:
    clientIP:
      timeoutSeconds: 86400
  type: NodePort
"#;
    assert_eq!(check(yaml), []);
}

#[test]
fn a_service_with_an_error_is_left_out_of_the_table() {
    let out = build_yaml(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: broken
spec:
  clusterIP: 10.96.0.1
  ports:
  - name: ok
    port: 80
  - name: bad
    port: 0
---
apiVersion: v1
kind: Service
metadata:
  name: fine
spec:
  clusterIP: 10.96.0.2
  ports:
  - port: 80
"#,
    );
    assert_eq!(
        summary(&out.problems),
        [(
            Severity::Error,
            "Service default/broken".to_owned(),
            "spec.ports[1].port".to_owned()
        )]
    );
    assert!(!out.table.services.contains_key(&key("default", "broken")));
    assert_eq!(out.table.frontends.len(), 1);
    ports(&out, "default", "fine");
}

#[test]
fn a_missing_name_is_an_error_and_a_missing_namespace_means_default() {
    let nameless = "apiVersion: v1\nkind: Service\nmetadata: {}\nspec:\n  clusterIP: 10.96.0.1\n  ports:\n  - port: 80\n";
    assert_eq!(check(nameless), errors(&["metadata.name"]));
    let out = build_yaml(nameless);
    assert!(out.table.services.is_empty());
    let problem = &out.problems[0];
    assert_eq!(
        (
            problem.object.kind.as_str(),
            problem.object.namespace.as_str()
        ),
        ("Service", "default")
    );
}

#[test]
fn ports_out_of_range_are_errors() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata:
  name: ports
spec:
  clusterIP: 10.96.0.1
  ports:
  - name: zero
    nodePort: 0
    port: 0
    targetPort: 0
  - name: big
    nodePort: 70000
    port: 65536
    targetPort: 99999
  - name: negative
    nodePort: -1
    port: -80
    targetPort: -8080
  type: NodePort
"#;
    let mut expected = Vec::new();
    for i in 0..3 {
        for f in ["port", "nodePort", "targetPort"] {
            expected.push(format!("spec.ports[{i}].{f}"));
        }
    }
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    assert_eq!(check(yaml), errors(&expected));
}

#[test]
fn a_named_target_port_must_be_a_port_name() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata:
  name: names
spec:
  clusterIP: 10.96.0.1
  ports:
  - name: quoted-number
    port: 80
    targetPort: "8080"
  - name: upper
    port: 81
    targetPort: HTTP
  - name: too-long
    port: 82
    targetPort: a-very-long-port-name
  - name: fine
    port: 83
    targetPort: h2c
"#;
    let expected = [
        "spec.ports[0].targetPort",
        "spec.ports[1].targetPort",
        "spec.ports[2].targetPort",
    ];
    assert_eq!(check(yaml), errors(&expected));
}

#[test]
fn invalid_addresses_are_errors() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata:
  name: addrs
spec:
  clusterIP: 10.96.0.300
  clusterIPs:
  - 10.96.0.300
  - fd00::zz
  externalIPs:
  - 192.0.2.1
  - example.com
  - 0.0.0.0
  ports:
  - port: 80
  type: LoadBalancer
status:
  loadBalancer:
    ingress:
    - ip: 203.0.113.500
"#;
    let expected = [
        "spec.clusterIPs[0]",
        "spec.clusterIPs[1]",
        "spec.externalIPs[1]",
        "spec.externalIPs[2]",
        "status.loadBalancer.ingress[0].ip",
    ];
    assert_eq!(check(yaml), errors(&expected));
}

#[test]
fn cluster_ips_must_agree_with_cluster_ip_and_be_one_per_family() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata:
  name: dual
spec:
  clusterIP: 10.96.0.1
  clusterIPs:
  - 10.96.0.2
  - 10.96.0.3
  ports:
  - port: 80
"#;
    assert_eq!(
        check(yaml),
        errors(&["spec.clusterIPs[0]", "spec.clusterIPs[1]"])
    );
}

#[test]
fn a_service_without_cluster_ip_or_ports_is_an_error() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata:
  name: empty
spec:
  selector:
    app: web
  type: ClusterIP
"#;
    assert_eq!(check(yaml), errors(&["spec.clusterIP", "spec.ports"]));
}

#[test]
fn duplicate_ports_names_and_node_ports_are_errors() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata:
  name: dup
spec:
  clusterIP: 10.96.0.1
  ports:
  - name: a
    nodePort: 30001
    port: 80
    protocol: TCP
  - name: b
    nodePort: 30002
    port: 80
    protocol: UDP
  - name: c
    nodePort: 30001
    port: 80
  - name: a
    port: 81
  type: NodePort
"#;
    assert_eq!(
        check(yaml),
        [
            (Severity::Error, "spec.ports[2].port".to_owned()),
            (Severity::Error, "spec.ports[2].nodePort".to_owned()),
            (Severity::Error, "spec.ports[3].name".to_owned()),
            (Severity::Warning, "spec.ports[3].nodePort".to_owned()),
        ]
    );
}

#[test]
fn unknown_enumerations_are_errors() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata:
  name: enums
spec:
  clusterIP: 10.96.0.1
  externalTrafficPolicy: Global
  internalTrafficPolicy: Nearby
  ports:
  - port: 80
    protocol: QUIC
  sessionAffinity: Cookie
"#;
    let expected = [
        "spec.ports[0].protocol",
        "spec.internalTrafficPolicy",
        "spec.externalTrafficPolicy",
        "spec.sessionAffinity",
    ];
    assert_eq!(check(yaml), errors(&expected));
    let typed = "apiVersion: v1\nkind: Service\nmetadata:\n  name: t\nspec:\n  clusterIP: 10.96.0.1\n  ports:\n  - port: 80\n  type: Magic\n";
    assert_eq!(check(typed), errors(&["spec.type"]));
}

#[test]
fn affinity_timeout_must_be_within_a_day() {
    for seconds in [0, -5, 86_401] {
        let yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  clusterIP: 10.96.0.1\n  ports:\n  - port: 80\n  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: {seconds}\n"
        );
        assert_eq!(
            check(&yaml),
            errors(&["spec.sessionAffinityConfig.clientIP.timeoutSeconds"]),
            "{seconds}"
        );
    }
}

#[test]
fn headless_and_external_name_services_are_not_checked_further() {
    let headless = "apiVersion: v1\nkind: Service\nmetadata:\n  name: h\nspec:\n  clusterIP: None\n  ports:\n  - port: 0\n";
    assert_eq!(check(headless), []);
    let external = "apiVersion: v1\nkind: Service\nmetadata:\n  name: e\nspec:\n  externalName: db.example.com\n  type: ExternalName\n";
    assert_eq!(check(external), []);
}
