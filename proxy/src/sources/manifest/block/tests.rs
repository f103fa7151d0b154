use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;

use super::from_str;

// What `kubectl get -o yaml` prints (the scale bench's documents).
const SVC: &str = r#"apiVersion: v1
kind: Service
metadata:
  annotations:
    switchyard.dev/datapath: proxy
    note: 'it''s "quoted"'
  creationTimestamp: "2024-06-11T09:00:00Z"
  labels:
    app: svc0
  name: svc0
  namespace: scale # a comment
  resourceVersion: "1001"
  uid: 357bef2a-a0f7-4161-8842-3a41b2a75671
spec:
  clusterIP: 10.96.1.1
  clusterIPs:
  - 10.96.1.1
  - fd00:96::1
  internalTrafficPolicy: Cluster
  ipFamilies:
  - IPv4
  ipFamilyPolicy: SingleStack
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: 8080
  - name: dns
    port: 53
    protocol: UDP
    targetPort: dns
  selector:
    app: svc0
  sessionAffinity: None
  type: ClusterIP
status:
  loadBalancer: {}
"#;

const SLICE: &str = "addressType: IPv4\napiVersion: discovery.k8s.io/v1\nendpoints:\n- addresses:\n  - 10.100.0.1\n  conditions:\n    ready: true\n    serving: true\n    terminating: false\n  nodeName: node-a\n  targetRef:\n    kind: Pod\n    name: svc0-pod0\n    namespace: scale\n    uid: 5216e93e-3444-403c-8af2-799b86de514d\n- addresses:\n  - 10.100.0.2\n  conditions:\n    ready: false\n  hints:\n    forZones:\n    - name: \"zone-a\"\n  zone: zone-a\nkind: EndpointSlice\nmetadata:\n  labels:\n    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io\n    kubernetes.io/service-name: svc0\n  name: svc0-abcde\n  namespace: scale\nports:\n- name: http\n  port: 8080\n  protocol: TCP\n";

const NODE: &str = "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-a\n  labels:\n    topology.kubernetes.io/zone: zone-a\nstatus:\n  addresses:\n  -\n    address: 192.0.2.10\n    type: InternalIP\n  - address: \"2001:db8::10\"\n    type: InternalIP\n";

/// The block reader takes the document and gives what serde_norway gives.
fn same<T: DeserializeOwned + PartialEq + std::fmt::Debug>(text: &str) {
    let ours: T = from_str(text).expect("the block reader takes this document");
    let theirs: T = serde_norway::from_str(text).expect("serde_norway reads it");
    assert_eq!(ours, theirs);
}

#[test]
fn reads_kubectl_yaml_as_serde_norway_does() {
    same::<Service>(SVC);
    same::<EndpointSlice>(SLICE);
    same::<Node>(NODE);
    same::<Service>(&SVC.replace("\n", "\r\n"));
    same::<Service>(&SVC.replace("sessionAffinity: None", "sessionAffinity:"));
}

#[test]
fn refuses_what_it_cannot_vouch_for() {
    for (from, to) in [
        ("name: svc0", "name: &a svc0"),
        ("name: svc0", "name: !!str svc0"),
        ("name: svc0", "name: \"svc\\u0030\""),
        ("app: svc0", "app: {a: b}"),
        ("  - IPv4", "  - [IPv4]"),
        ("name: svc0", "name: |\n    svc0"),
        ("name: svc0", "name: svc0\n    more"),
        ("name: svc0", "name:\tsvc0"),
        ("app: svc0", "app: yes"),
        ("app: svc0", "app: 0123"),
        ("app: svc0", "app: 1e3"),
        ("app: svc0", "app: null"),
        ("app: svc0", "\"app\": svc0"),
        ("port: 80", "port: eighty"),
        ("port: 80", "port: 0x50"),
        ("port: 80", "port: \"80\""),
        ("clusterIP: 10.96.1.1", "clusterIP: a: b"),
        ("clusterIP: 10.96.1.1", "clusterIP: - a"),
        ("  - name: http", "  - - name: http"),
        ("  selector:", "   selector:"),
    ] {
        assert!(SVC.contains(from), "{from}");
        let text = SVC.replacen(from, to, 1);
        assert!(from_str::<Service>(&text).is_none(), "{text}");
    }
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let mut text = String::from("apiVersion: v1\nkind: Service\nmetadata:\n  annotations:\n");
    for depth in 0..10_000 {
        text.push_str(&" ".repeat(depth + 4));
        text.push_str("a:\n");
    }
    assert!(from_str::<Service>(&text).is_none());
}

#[test]
fn plain_strings_are_only_what_yaml_reads_as_strings() {
    use super::de::is_plain_string;
    for word in [
        "web",
        "ClusterIP",
        "TCP",
        "node-a",
        "10.96.1.1",
        "fd00::1",
        "svc0",
        "2024-06-11T09:00:00Z",
        "0bf1dc7d-35a2-49d0-8d1f-a5d1f516c8db",
        "0b110100-35a2-49d0-8d1f-a5d1f516c8db",
        "0x1fz",
        "0o19",
        "-0b12",
    ] {
        assert!(is_plain_string(word), "{word}");
        // The general path's reader agrees.
        let value: serde_norway::Value = serde_norway::from_str(word).expect("yaml");
        assert!(value.is_string(), "{word}: {value:?}");
    }
    for word in [
        "null", "Null", "~", "", "true", "False", "yes", "No", "on", "Off", "y", "n", "inf", "NaN",
        "infinity", ".inf", "1", "-1", "0123", "1e3", "1.5", "0x1F", "0o17", "+1", "1_000",
        "0b101", "-0b101", "-0o17", "-0x1f", "0x", "0b1_0", "0x+1", "0o-7",
    ] {
        assert!(!is_plain_string(word), "{word}");
    }
}
