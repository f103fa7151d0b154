//! Frontends reached from outside the cluster: NodePorts, externalIPs and
//! LoadBalancer ingress IPs, all with `Scope::External`.

use std::sync::Arc;

use super::*;

#[test]
fn node_ports_external_ips_and_lb_ips_share_the_port_with_external_scope() {
    let out = build_yaml(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: shop-lb
  namespace: shop
spec:
  allocateLoadBalancerNodePorts: true
  clusterIP: 10.96.3.3
  clusterIPs:
  - 10.96.3.3
  externalIPs:
  - 192.0.2.10
  externalTrafficPolicy: Cluster
  ports:
  - name: https
    nodePort: 30443
    port: 443
    protocol: TCP
    targetPort: 8443
  - name: quic
    nodePort: 30443
    port: 443
    protocol: UDP
    targetPort: 8443
  selector:
    app: shop
  type: LoadBalancer
status:
  loadBalancer:
    ingress:
    - ip: 203.0.113.7
      ipMode: VIP
    - hostname: shop.elb.example.com
    - ip: 203.0.113.8
      ipMode: Proxy
    - ip: 192.0.2.10
"#,
    );
    assert_no_problems(&out);
    let cluster = vip(&out, "10.96.3.3:443", Protocol::Tcp);
    let external = vip(&out, "192.0.2.10:443", Protocol::Tcp);
    let lb = vip(&out, "203.0.113.7:443", Protocol::Tcp);
    let np = node_port(&out, Protocol::Tcp, 30443);
    assert_eq!(cluster.scope, Scope::Internal);
    for route in [external, lb, np] {
        assert_eq!(route.scope, Scope::External);
        assert!(Arc::ptr_eq(&route.port, &cluster.port));
    }
    assert_eq!(cluster.port.node_port, Some(30443));
    let udp = node_port(&out, Protocol::Udp, 30443);
    assert_eq!(udp.port.name, "quic");
    // 3 VIPs (the LB ingress entry repeating an externalIP is one frontend;
    // hostname-only and ipMode Proxy entries are not VIPs) x 2 protocols.
    assert_eq!(out.table.frontends.len(), 6);
    assert_eq!(out.table.node_ports.len(), 2);
}

#[test]
fn node_port_on_a_cluster_ip_service_is_ignored_with_a_warning() {
    let out = build_yaml(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: odd
spec:
  clusterIP: 10.96.4.4
  ports:
  - nodePort: 31000
    port: 80
  type: ClusterIP
"#,
    );
    assert_eq!(
        summary(&out.problems),
        [(
            Severity::Warning,
            "Service default/odd".to_owned(),
            "spec.ports[0].nodePort".to_owned()
        )]
    );
    assert!(out.table.node_ports.is_empty());
    assert_eq!(
        vip(&out, "10.96.4.4:80", Protocol::Tcp).port.node_port,
        None
    );
}

#[test]
fn external_ip_equal_to_the_cluster_ip_stays_internal_with_a_warning() {
    let out = build_yaml(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: same
spec:
  clusterIP: 10.96.4.5
  externalIPs:
  - 10.96.4.5
  ports:
  - port: 80
"#,
    );
    assert_eq!(summary(&out.problems)[0].2, "spec.externalIPs[0]");
    assert_eq!(out.problems[0].severity, Severity::Warning);
    assert_eq!(
        vip(&out, "10.96.4.5:80", Protocol::Tcp).scope,
        Scope::Internal
    );
}

#[test]
fn load_balancer_source_ranges_are_reported_as_not_enforced() {
    let out = build_yaml(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: guarded
spec:
  clusterIP: 10.96.4.6
  loadBalancerSourceRanges:
  - 198.51.100.0/24
  ports:
  - nodePort: 31001
    port: 80
  type: LoadBalancer
"#,
    );
    assert_eq!(summary(&out.problems)[0].2, "spec.loadBalancerSourceRanges");
    assert_eq!(out.problems[0].severity, Severity::Warning);
    node_port(&out, Protocol::Tcp, 31001);
}
