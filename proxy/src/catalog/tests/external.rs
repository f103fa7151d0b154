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

/// A dual-stack LoadBalancer Service with an IPv4 and an IPv6 ingress IP,
/// an externalIP, and `extra` spec lines.
fn guarded(extra: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: guarded
spec:
  clusterIPs: [10.96.4.6, "fd00:10:96::6"]
  externalIPs: [203.0.113.9]
{extra}
  ports:
  - nodePort: 31001
    port: 80
  type: LoadBalancer
status:
  loadBalancer:
    ingress:
    - ip: 198.51.100.6
    - ip: 2001:db8::6
"#
    )
}

fn ranges(out: &BuildOutput, frontend: &str) -> Option<Vec<String>> {
    let at: SocketAddr = frontend.parse().expect("ip:port");
    let key = Frontend {
        ip: at.ip(),
        protocol: Protocol::Tcp,
        port: at.port(),
    };
    out.table
        .source_ranges
        .get(&key)
        .map(|r| r.iter().map(|(ip, len)| format!("{ip}/{len}")).collect())
}

#[test]
fn load_balancer_source_ranges_restrict_only_the_ingress_ips() {
    let out = build_yaml(&guarded(
        "  loadBalancerSourceRanges:\n  - 192.0.2.0/24\n  - 192.0.2.128/25\n  - 2001:db8:1::/48",
    ));
    assert_no_problems(&out);
    assert_eq!(
        ranges(&out, "198.51.100.6:80"),
        Some(vec!["192.0.2.0/24".to_owned()])
    );
    assert_eq!(
        ranges(&out, "[2001:db8::6]:80"),
        Some(vec!["2001:db8:1::/48".to_owned()])
    );
    assert_eq!(
        ranges(&out, "203.0.113.9:80"),
        None,
        "externalIPs stay open"
    );
    assert_eq!(
        ranges(&out, "10.96.4.6:80"),
        None,
        "the ClusterIP stays open"
    );
    assert_eq!(out.table.source_ranges.len(), 2);
    node_port(&out, Protocol::Tcp, 31001);
}

#[test]
fn source_ranges_of_one_family_shut_the_other_family_out() {
    let out = build_yaml(&guarded("  loadBalancerSourceRanges:\n  - 192.0.2.0/24"));
    assert_no_problems(&out);
    assert_eq!(ranges(&out, "[2001:db8::6]:80"), Some(vec![]));
}

#[test]
fn the_source_ranges_annotation_applies_when_the_field_is_empty() {
    let yaml = guarded("").replace(
        "  name: guarded\n",
        "  name: guarded\n  annotations:\n    service.beta.kubernetes.io/load-balancer-source-ranges: \"192.0.2.0/24, 10.0.0.0/8\"\n",
    );
    let out = build_yaml(&yaml);
    assert_no_problems(&out);
    assert_eq!(
        ranges(&out, "198.51.100.6:80"),
        Some(vec!["10.0.0.0/8".to_owned(), "192.0.2.0/24".to_owned()])
    );
}

#[test]
fn an_invalid_source_range_leaves_the_service_out_rather_than_open() {
    let out = build_yaml(&guarded(
        "  loadBalancerSourceRanges:\n  - 192.0.2.0/24\n  - not-a-cidr",
    ));
    assert_eq!(
        summary(&out.problems),
        [(
            Severity::Error,
            "Service default/guarded".to_owned(),
            "spec.loadBalancerSourceRanges[1]".to_owned()
        )]
    );
    assert!(out.table.services.is_empty());
}

#[test]
fn health_check_node_port_is_served_for_local_load_balancers_only() {
    let local = build_yaml(&guarded(
        "  externalTrafficPolicy: Local\n  healthCheckNodePort: 32001",
    ));
    assert_no_problems(&local);
    assert_eq!(
        local.table.health_checks.get(&32001),
        Some(&key("default", "guarded"))
    );
    let cluster = build_yaml(&guarded("  healthCheckNodePort: 32001"));
    assert!(cluster.table.health_checks.is_empty());
}

#[test]
fn a_load_balancer_without_node_ports_serves_its_ingress_ips() {
    let out = build_yaml(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: direct
spec:
  allocateLoadBalancerNodePorts: false
  clusterIP: 10.96.4.7
  ports:
  - port: 80
    targetPort: 8080
  type: LoadBalancer
status:
  loadBalancer:
    ingress:
    - ip: 198.51.100.17
"#,
    );
    assert_no_problems(&out);
    assert_eq!(
        vip(&out, "198.51.100.17:80", Protocol::Tcp).scope,
        Scope::External
    );
    assert!(out.table.node_ports.is_empty());
}
