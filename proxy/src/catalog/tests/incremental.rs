//! One Service translated alone, joined with `assemble`, must give what
//! `build` gives: that is what a watch source relies on.

use std::sync::Arc;

use super::*;
use crate::catalog::{TranslatedService, assemble, translate_service, validate_service};

const CLUSTER: &str = r#"
apiVersion: v1
kind: Service
metadata:
  creationTimestamp: "2025-03-01T10:00:00Z"
  name: web
  namespace: shop
spec:
  clusterIP: 10.96.0.20
  ports:
  - name: http
    nodePort: 30080
    port: 80
    protocol: TCP
    targetPort: http
  - name: sctp
    port: 9000
    protocol: SCTP
  type: NodePort
---
apiVersion: v1
kind: Service
metadata:
  creationTimestamp: "2025-03-02T10:00:00Z"
  name: cart
  namespace: shop
spec:
  clusterIP: 10.96.0.21
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  creationTimestamp: "2025-03-03T10:00:00Z"
  name: copycat
  namespace: shop
spec:
  clusterIP: 10.96.0.21
  ports:
  - port: 80
---
apiVersion: v1
kind: Service
metadata:
  name: db
  namespace: shop
spec:
  clusterIP: None
  ports:
  - port: 5432
---
addressType: IPv4
apiVersion: discovery.k8s.io/v1
endpoints:
- addresses:
  - 10.244.1.5
  nodeName: node-a
kind: EndpointSlice
metadata:
  labels:
    kubernetes.io/service-name: web
  name: web-1
  namespace: shop
ports:
- name: http
  port: 8080
  protocol: TCP
---
addressType: IPv4
apiVersion: discovery.k8s.io/v1
endpoints:
- addresses:
  - 10.244.2.5
kind: EndpointSlice
metadata:
  labels:
    kubernetes.io/service-name: cart
  name: cart-1
  namespace: shop
ports:
- name: http
  port: 8080
  protocol: TCP
"#;

#[test]
fn translating_one_service_at_a_time_gives_the_same_table() {
    let objects = objects(CLUSTER);
    let node = node("node-a");
    let all_slices: Vec<_> = objects.slices.iter().collect();
    let mut translated: Vec<TranslatedService> = Vec::new();
    let mut problems = Vec::new();
    for svc in &objects.services {
        let t = translate_service(svc, &all_slices, &node);
        assert_eq!(t.problems, validate_service(svc));
        problems.extend(t.problems);
        translated.extend(t.service);
    }
    assert_eq!(
        translated.len(),
        3,
        "the headless Service is not translated"
    );
    let assembled = assemble(translated.iter().rev());
    let whole = build(&objects.services, &objects.slices, &node);
    assert_eq!(assembled.table, whole.table);
    problems.extend(assembled.problems);
    assert_eq!(problems, whole.problems);
    assert_eq!(
        summary(&whole.problems),
        [
            (
                Severity::Warning,
                "Service shop/web".to_owned(),
                "spec.ports[1].protocol".to_owned()
            ),
            (
                Severity::Error,
                "Service shop/copycat".to_owned(),
                "spec.clusterIP".to_owned()
            ),
        ]
    );
}

#[test]
fn a_translation_uses_only_its_own_slices() {
    let objects = objects(CLUSTER);
    let all_slices: Vec<_> = objects.slices.iter().collect();
    let web = translate_service(&objects.services[0], &all_slices, &node("node-a"));
    let web = web.service.expect("web is proxied");
    assert_eq!(web.key(), &key("shop", "web"));
    assert_eq!(web.ports().len(), 1);
    assert_eq!(addrs(&web.ports()[0].internal), ["10.244.1.5:8080"]);
}

#[test]
fn rebuilding_one_service_replaces_only_its_entries() {
    let objects = objects(CLUSTER);
    let node = node("node-a");
    let slices: Vec<_> = objects.slices.iter().collect();
    let mut cache: Vec<TranslatedService> = objects
        .services
        .iter()
        .filter_map(|svc| translate_service(svc, &slices, &node).service)
        .collect();
    let before = assemble(&cache);
    // The cart slice loses its endpoint: only cart is translated again.
    let emptied = slice(
        "addressType: IPv4\napiVersion: discovery.k8s.io/v1\nendpoints: []\nkind: EndpointSlice\nmetadata:\n  labels:\n    kubernetes.io/service-name: cart\n  name: cart-1\n  namespace: shop\nports:\n- name: http\n  port: 8080\n  protocol: TCP\n",
    );
    let cart = translate_service(&objects.services[1], &[&emptied], &node).service;
    let slot = cache.iter_mut().find(|t| t.key() == &key("shop", "cart"));
    *slot.expect("cart cached") = cart.expect("cart is proxied");
    let after = assemble(&cache);
    assert!(
        vip(&after, "10.96.0.21:80", Protocol::Tcp)
            .endpoints()
            .is_empty()
    );
    let web_before = vip(&before, "10.96.0.20:80", Protocol::Tcp);
    let web_after = vip(&after, "10.96.0.20:80", Protocol::Tcp);
    assert!(
        Arc::ptr_eq(&web_before.port, &web_after.port),
        "web is untouched"
    );
}

#[test]
fn headless_services_translate_to_nothing() {
    let objects = objects(CLUSTER);
    let db = translate_service(&objects.services[3], &[], &NodeContext::default());
    assert!(db.service.is_none());
    assert!(db.problems.is_empty());
}

#[test]
fn the_table_serializes_to_json_with_readable_keys() {
    let out = build_yaml(CLUSTER);
    let json = serde_json::to_value(&out.table).expect("the table serializes");
    let frontend = &json["frontends"]["10.96.0.20:80/TCP"];
    assert_eq!(frontend["scope"], "Internal");
    assert_eq!(frontend["port"]["internal"][0]["addr"], "10.244.1.5:8080");
    assert_eq!(json["node_ports"]["30080/TCP"]["scope"], "External");
    assert_eq!(
        json["services"]["shop/web"][0]["service"]["key"]["name"],
        "web"
    );
}
