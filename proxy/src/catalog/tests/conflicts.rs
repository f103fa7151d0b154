//! Two Services claiming one frontend or NodePort: the older keeps it.

use super::*;

/// A NodePort Service team-z/zeta and a LoadBalancer Service team-a/alpha
/// with the given cluster IP and `spec.ports` lines.
fn pair(a_created: &str, b_created: &str, b_ip: &str, b_ports: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata:
  creationTimestamp: "{a_created}"
  name: zeta
  namespace: team-z
spec:
  clusterIP: 10.96.0.50
  externalIPs:
  - 192.0.2.50
  ports:
  - name: http
    nodePort: 30050
    port: 80
    protocol: TCP
    targetPort: 8080
  type: NodePort
---
apiVersion: v1
kind: Service
metadata:
  creationTimestamp: "{b_created}"
  name: alpha
  namespace: team-a
spec:
  clusterIP: {b_ip}
  ports:
{b_ports}
  type: LoadBalancer
"#
    )
}

const OLD: &str = "2024-01-01T00:00:00Z";
const NEW: &str = "2025-01-01T00:00:00Z";

#[test]
fn the_older_service_keeps_a_shared_frontend_and_the_newer_is_dropped() {
    let b_ports = "  - name: http\n    nodePort: 30051\n    port: 80\n    protocol: TCP";
    let out = build_yaml(&pair(OLD, NEW, "10.96.0.50", b_ports));
    assert_eq!(
        summary(&out.problems),
        [(
            Severity::Error,
            "Service team-a/alpha".to_owned(),
            "spec.clusterIP".to_owned()
        )]
    );
    let message = &out.problems[0].message;
    assert!(
        message.contains("team-z/zeta") && message.contains("10.96.0.50 port 80/TCP"),
        "{message}"
    );
    assert_eq!(
        vip(&out, "10.96.0.50:80", Protocol::Tcp).port.service.key,
        key("team-z", "zeta")
    );
    assert!(!out.table.services.contains_key(&key("team-a", "alpha")));
    assert!(
        !out.table.node_ports.contains_key(&(Protocol::Tcp, 30051)),
        "dropped whole"
    );
}

#[test]
fn the_creation_time_decides_before_the_name() {
    let b_ports = "  - name: http\n    port: 80\n    protocol: TCP";
    let out = build_yaml(&pair(NEW, OLD, "10.96.0.50", b_ports));
    assert_eq!(summary(&out.problems)[0].1, "Service team-z/zeta");
    assert_eq!(
        vip(&out, "10.96.0.50:80", Protocol::Tcp).port.service.key,
        key("team-a", "alpha")
    );
    assert!(!out.table.frontends.contains_key(&Frontend {
        ip: ip("192.0.2.50"),
        protocol: Protocol::Tcp,
        port: 80
    }));
}

#[test]
fn equal_creation_times_fall_back_to_namespace_and_name() {
    let b_ports = "  - name: http\n    port: 80\n    protocol: TCP";
    let out = build_yaml(&pair(OLD, OLD, "10.96.0.50", b_ports));
    assert_eq!(summary(&out.problems)[0].1, "Service team-z/zeta");
    ports(&out, "team-a", "alpha");
}

#[test]
fn a_shared_external_ip_conflicts_too() {
    let out = build_yaml(&format!(
        "{}  externalIPs:\n  - 192.0.2.50\n",
        pair(
            OLD,
            NEW,
            "10.96.0.51",
            "  - name: http\n    port: 80\n    protocol: TCP"
        )
    ));
    assert_eq!(summary(&out.problems)[0].2, "spec.externalIPs[0]");
    assert_eq!(out.problems[0].severity, Severity::Error);
}

#[test]
fn a_shared_node_port_conflicts() {
    let b_ports = "  - name: web\n    nodePort: 30050\n    port: 8000\n    protocol: TCP";
    let out = build_yaml(&pair(OLD, NEW, "10.96.0.51", b_ports));
    assert_eq!(
        summary(&out.problems),
        [(
            Severity::Error,
            "Service team-a/alpha".to_owned(),
            "spec.ports[0].nodePort".to_owned()
        )]
    );
    assert!(out.problems[0].message.contains("nodePort 30050/TCP"));
    assert_eq!(
        node_port(&out, Protocol::Tcp, 30050).port.service.key,
        key("team-z", "zeta")
    );
}

#[test]
fn same_address_on_other_ports_or_protocols_is_no_conflict() {
    let b_ports = "  - name: http\n    nodePort: 30050\n    port: 80\n    protocol: UDP\n  - name: alt\n    port: 8080\n    protocol: TCP";
    let out = build_yaml(&pair(OLD, NEW, "10.96.0.50", b_ports));
    assert_no_problems(&out);
    assert_eq!(
        vip(&out, "10.96.0.50:80", Protocol::Udp).port.service.key,
        key("team-a", "alpha")
    );
    assert_eq!(
        node_port(&out, Protocol::Udp, 30050).port.service.key,
        key("team-a", "alpha")
    );
    assert_eq!(out.table.services.len(), 2);
}

#[test]
fn the_winner_does_not_depend_on_input_order() {
    let b_ports = "  - name: http\n    port: 80\n    protocol: TCP";
    let objects = objects(&pair(OLD, NEW, "10.96.0.50", b_ports));
    let forward = build(&objects.services, &objects.slices, &node("node-a"));
    let backward = build(
        objects.services.iter().rev(),
        &objects.slices,
        &node("node-a"),
    );
    assert_eq!(forward.table, backward.table);
    assert_eq!(forward.problems, backward.problems);
}

#[test]
fn a_service_defined_twice_is_used_once_with_an_error() {
    let doc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: twin\nspec:\n  clusterIP: 10.96.0.60\n  ports:\n  - port: 80\n";
    let other = doc.replace("10.96.0.60", "10.96.0.61");
    let out = build_yaml(&format!("{doc}---\n{other}"));
    assert_eq!(
        summary(&out.problems),
        [(
            Severity::Error,
            "Service default/twin".to_owned(),
            "metadata.name".to_owned()
        )]
    );
    vip(&out, "10.96.0.60:80", Protocol::Tcp);
    assert_eq!(out.table.frontends.len(), 1);
}

#[test]
fn a_hand_written_service_without_creation_time_yields_to_a_persisted_one() {
    let doc = |name: &str, created: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n{created}  name: {name}\nspec:\n  clusterIP: 10.96.0.70\n  ports:\n  - port: 80\n"
        )
    };
    let yaml = format!(
        "{}---\n{}",
        doc("aaa", ""),
        doc("zzz", "  creationTimestamp: \"2025-06-01T00:00:00Z\"\n")
    );
    let out = build_yaml(&yaml);
    assert_eq!(summary(&out.problems)[0].1, "Service default/aaa");
    ports(&out, "default", "zzz");
}
