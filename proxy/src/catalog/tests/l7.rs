//! The L7 opt-in reaches the table: per port by `appProtocol`, per Service
//! by `switchyard.dev/protocol`, and nothing else turns L7 on.

use super::*;
use crate::catalog::L7Protocol;

fn service(annotation: Option<&str>) -> String {
    let annotations = annotation
        .map(|v| format!("  annotations:\n    switchyard.dev/protocol: \"{v}\"\n"))
        .unwrap_or_default();
    format!(
        r#"
apiVersion: v1
kind: Service
metadata:
{annotations}  name: api
  namespace: shop
spec:
  clusterIP: 10.96.0.30
  ports:
  - appProtocol: grpc
    name: grpc
    port: 50051
    protocol: TCP
  - appProtocol: kubernetes.io/ws
    name: ws
    port: 8080
    protocol: TCP
  - name: plain
    port: 9000
    protocol: TCP
  - name: dns
    port: 53
    protocol: UDP
"#
    )
}

fn l7_of(out: &BuildOutput) -> Vec<Option<L7Protocol>> {
    [
        ("10.96.0.30:50051", Protocol::Tcp),
        ("10.96.0.30:8080", Protocol::Tcp),
        ("10.96.0.30:9000", Protocol::Tcp),
        ("10.96.0.30:53", Protocol::Udp),
    ]
    .into_iter()
    .map(|(addr, protocol)| vip(out, addr, protocol).port.l7)
    .collect()
}

#[test]
fn app_protocol_selects_l7_per_port() {
    let out = build_yaml(&service(None));
    assert_no_problems(&out);
    assert_eq!(
        l7_of(&out),
        [Some(L7Protocol::H2c), Some(L7Protocol::Http1), None, None]
    );
}

#[test]
fn annotation_covers_the_other_tcp_ports() {
    let out = build_yaml(&service(Some("h2c")));
    assert_no_problems(&out);
    assert_eq!(
        l7_of(&out),
        [
            Some(L7Protocol::H2c),
            Some(L7Protocol::Http1),
            Some(L7Protocol::H2c),
            None
        ]
    );
}

#[test]
fn unknown_annotation_is_a_warning_and_stays_l4() {
    let out = build_yaml(&service(Some("tls")));
    assert_eq!(
        summary(&out.problems),
        [(
            Severity::Warning,
            "Service shop/api".to_owned(),
            "metadata.annotations[\"switchyard.dev/protocol\"]".to_owned()
        )]
    );
    assert_eq!(
        l7_of(&out),
        [Some(L7Protocol::H2c), Some(L7Protocol::Http1), None, None]
    );
}
