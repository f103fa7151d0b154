//! Dual-stack Services: every cluster IP is a frontend, and each reaches
//! only the endpoints of its own family (`catalog::family_range`).

use std::sync::Arc;

use super::*;

#[test]
fn every_dual_stack_cluster_ip_is_a_frontend() {
    let out = build_yaml(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: default
spec:
  clusterIP: 10.96.5.5
  clusterIPs:
  - 10.96.5.5
  - fd00:10:96::5
  ipFamilies:
  - IPv4
  - IPv6
  ipFamilyPolicy: PreferDualStack
  ports:
  - port: 443
    protocol: TCP
    targetPort: 8443
  selector:
    app: api
  type: ClusterIP
"#,
    );
    assert_no_problems(&out);
    let v4 = vip(&out, "10.96.5.5:443", Protocol::Tcp);
    let v6 = vip(&out, "[fd00:10:96::5]:443", Protocol::Tcp);
    assert_eq!((v4.scope, v6.scope), (Scope::Internal, Scope::Internal));
    assert!(Arc::ptr_eq(&v4.port, &v6.port));
    assert_eq!(v4.port.name, "", "an unnamed port is named \"\"");
}

#[test]
fn each_cluster_ip_reaches_its_own_family_only() {
    let out = build_yaml(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: api
spec:
  clusterIPs:
  - 10.96.5.5
  - fd00:10:96::5
  ports:
  - name: http
    port: 80
    targetPort: 8080
---
addressType: IPv6
apiVersion: discovery.k8s.io/v1
endpoints:
- addresses:
  - fd00:244::7
kind: EndpointSlice
metadata:
  labels:
    kubernetes.io/service-name: api
  name: api-v6
ports:
- name: http
  port: 8080
  protocol: TCP
---
addressType: IPv4
apiVersion: discovery.k8s.io/v1
endpoints:
- addresses:
  - 10.244.0.7
kind: EndpointSlice
metadata:
  labels:
    kubernetes.io/service-name: api
  name: api-v4
ports:
- name: http
  port: 8080
  protocol: TCP
"#,
    );
    assert_no_problems(&out);
    assert_eq!(family(&out, "10.96.5.5:80"), ["10.244.0.7:8080"]);
    assert_eq!(family(&out, "[fd00:10:96::5]:80"), ["[fd00:244::7]:8080"]);
}

/// The endpoints a frontend's connections are balanced over.
fn family(out: &BuildOutput, frontend: &str) -> Vec<String> {
    let route = vip(out, frontend, Protocol::Tcp);
    let at: SocketAddr = frontend.parse().expect("ip:port");
    let all = route.endpoints();
    addrs(&all[crate::catalog::family_range(all, at.ip())])
}

/// Two Pods, each with an IPv4 and an IPv6 address; `v4_ready` is the
/// second Pod's IPv4 readiness.
fn two_pods(v4_ready: bool, v6_endpoints: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: api
spec:
  clusterIPs: [10.96.5.5, "fd00:10:96::5"]
  ports:
  - {{name: http, port: 80, targetPort: 8080}}
---
addressType: IPv4
apiVersion: discovery.k8s.io/v1
endpoints:
- addresses: [10.244.0.7]
  conditions: {{ready: true}}
- addresses: [10.244.0.8]
  conditions: {{ready: {v4_ready}}}
kind: EndpointSlice
metadata:
  labels: {{kubernetes.io/service-name: api}}
  name: api-v4
ports:
- {{name: http, port: 8080, protocol: TCP}}
---
addressType: IPv6
apiVersion: discovery.k8s.io/v1
endpoints:
{v6_endpoints}
kind: EndpointSlice
metadata:
  labels: {{kubernetes.io/service-name: api}}
  name: api-v6
ports:
- {{name: http, port: 8080, protocol: TCP}}
"#
    )
}

const BOTH_V6_READY: &str = "- addresses: [\"fd00:244::7\"]\n- addresses: [\"fd00:244::8\"]";

#[test]
fn an_endpoint_not_ready_in_one_family_leaves_only_that_family() {
    let out = build_yaml(&two_pods(false, BOTH_V6_READY));
    assert_no_problems(&out);
    assert_eq!(family(&out, "10.96.5.5:80"), ["10.244.0.7:8080"]);
    assert_eq!(
        family(&out, "[fd00:10:96::5]:80"),
        ["[fd00:244::7]:8080", "[fd00:244::8]:8080"]
    );
}

#[test]
fn a_family_without_endpoints_has_none() {
    let out = build_yaml(&two_pods(true, "  []"));
    assert_no_problems(&out);
    assert_eq!(family(&out, "10.96.5.5:80").len(), 2);
    assert!(family(&out, "[fd00:10:96::5]:80").is_empty());
}
