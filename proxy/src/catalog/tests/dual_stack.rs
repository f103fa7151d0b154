//! Dual-stack Services: every cluster IP is a frontend, and endpoints of
//! both families serve each of them.

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
fn ipv4_and_ipv6_endpoints_share_the_port_list() {
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
    let expected = ["10.244.0.7:8080", "[fd00:244::7]:8080"];
    assert_eq!(
        addrs(vip(&out, "10.96.5.5:80", Protocol::Tcp).endpoints()),
        expected
    );
    let v6 = vip(&out, "[fd00:10:96::5]:80", Protocol::Tcp);
    assert_eq!(addrs(v6.endpoints()), expected);
}
