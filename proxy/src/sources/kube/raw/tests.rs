use ::kube::core::{DynamicObject, ObjectList, WatchEvent};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

use super::super::decode::{Incoming, Kind};
use super::RawObject;

fn service(name: &str, port: serde_json::Value) -> serde_json::Value {
    json!({
        "metadata": {"name": name, "namespace": "demo", "resourceVersion": "7"},
        "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": port}]}
    })
}

fn slice() -> serde_json::Value {
    json!({
        "metadata": {"name": "web-1", "namespace": "demo",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.0.5"], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    })
}

#[test]
fn a_malformed_object_fails_alone_and_is_named() {
    // A list page as the API server sends it: the bad Service must not
    // fail the page.
    let page = json!({
        "apiVersion": "v1", "kind": "ServiceList",
        "metadata": {"resourceVersion": "9"},
        "items": [service("good", json!(80)), service("bad", json!("eighty"))]
    });
    let list: ObjectList<RawObject> =
        serde_json::from_str(&page.to_string()).expect("the page decodes");
    let mut problems = Vec::new();
    let decoded: Vec<Option<Service>> = list
        .items
        .into_iter()
        .map(|o| o.typed(Kind::Service, &mut problems))
        .collect();
    assert!(decoded[0].is_some());
    assert!(decoded[1].is_none());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].object.to_string(), "Service demo/bad");
    assert_eq!(problems[0].field, "spec.ports[0].port");
}

#[test]
fn a_bad_label_fails_only_its_object() {
    let mut bad = slice();
    bad["metadata"]["labels"] = json!("not-a-map");
    let raw = RawObject::from_json(&bad);
    assert_eq!(raw.key(), ("demo".to_owned(), "web-1".to_owned()));
    let mut problems = Vec::new();
    assert!(
        raw.typed::<EndpointSlice>(Kind::EndpointSlice, &mut problems)
            .is_none()
    );
    assert_eq!(problems[0].field, "metadata.labels");
}

#[test]
fn watch_events_decode_in_either_key_order() {
    let object = service("web", json!(80)).to_string();
    // The API server's order, then the other one (serde buffers the object).
    for line in [
        format!(r#"{{"type":"MODIFIED","object":{object}}}"#),
        format!(r#"{{"object":{object},"type":"MODIFIED"}}"#),
    ] {
        let event: WatchEvent<RawObject> = serde_json::from_str(&line).expect("event");
        let WatchEvent::Modified(raw) = event else {
            panic!("expected MODIFIED");
        };
        assert_eq!(raw.metadata.resource_version.as_deref(), Some("7"));
        let mut problems = Vec::new();
        let svc: Option<Service> = raw.typed(Kind::Service, &mut problems);
        assert!(svc.is_some(), "{problems:?}");
    }
}

#[test]
fn decodes_what_the_dynamic_object_path_decodes() {
    let mut problems = Vec::new();
    let value = slice();
    let raw: Option<EndpointSlice> =
        RawObject::from_json(&value).typed(Kind::EndpointSlice, &mut problems);
    let dynamic: DynamicObject = serde_json::from_value(value).expect("dynamic object");
    assert!(raw.is_some());
    assert_eq!(raw, dynamic.typed(Kind::EndpointSlice, &mut problems));
    let value = service("web", json!(80));
    let raw: Option<Service> = RawObject::from_json(&value).typed(Kind::Service, &mut problems);
    let dynamic: DynamicObject = serde_json::from_value(value).expect("dynamic object");
    assert!(raw.is_some());
    assert_eq!(raw, dynamic.typed(Kind::Service, &mut problems));
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn decoded_lists_keep_no_spare_capacity() {
    let mut value = slice();
    let endpoint = value["endpoints"][0].clone();
    value["endpoints"] = json!(vec![endpoint; 5]);
    let mut problems = Vec::new();
    let decoded: EndpointSlice = RawObject::from_json(&value)
        .typed(Kind::EndpointSlice, &mut problems)
        .expect("decodes");
    assert_eq!(decoded.endpoints.len(), 5);
    assert_eq!(decoded.endpoints.capacity(), 5);
    assert_eq!(decoded.endpoints[0].addresses.capacity(), 1);
}
