use ::kube::core::DynamicObject;
use ::kube::runtime::watcher::Event;

use super::*;

fn obj(value: serde_json::Value) -> DynamicObject {
    serde_json::from_value(value).expect("dynamic object")
}

fn svc(name: &str) -> DynamicObject {
    obj(serde_json::json!({
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}
    }))
}

fn slice(name: &str, service: &str, ip: &str) -> DynamicObject {
    obj(serde_json::json!({
        "metadata": {"name": name, "namespace": "demo",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip]}],
        "ports": [{"port": 8080}]
    }))
}

fn key(name: &str) -> Key {
    ("demo".to_owned(), name.to_owned())
}

fn list(store: &mut Store, kind: Kind, objects: Vec<DynamicObject>) {
    store.apply(kind, Event::Init);
    for o in objects {
        store.apply(kind, Event::InitApply(o));
    }
    store.apply(kind, Event::InitDone);
}

#[test]
fn synced_only_after_every_kind_listed() {
    let mut store = Store::default();
    list(&mut store, Kind::Service, vec![svc("a")]);
    list(&mut store, Kind::EndpointSlice, vec![]);
    assert!(!store.synced());
    list(&mut store, Kind::Node, vec![]);
    assert!(store.synced());
    assert_eq!(store.take_dirty().services.len(), 1);
}

#[test]
fn relist_drops_objects_deleted_while_away() {
    let mut store = Store::default();
    list(
        &mut store,
        Kind::EndpointSlice,
        vec![slice("a-1", "a", "10.0.0.1"), slice("a-2", "a", "10.0.0.2")],
    );
    assert_eq!(store.slices_of(&key("a")).len(), 2);
    store.take_dirty();
    // A 410 Gone: the watcher relists; a-2 was deleted meanwhile.
    list(
        &mut store,
        Kind::EndpointSlice,
        vec![slice("a-1", "a", "10.0.0.1")],
    );
    assert_eq!(store.slices_of(&key("a")).len(), 1);
    let dirty = store.take_dirty();
    assert_eq!(
        dirty.services.into_iter().collect::<Vec<_>>(),
        vec![key("a")]
    );
}

#[test]
fn unchanged_relist_marks_nothing() {
    let mut store = Store::default();
    list(&mut store, Kind::Service, vec![svc("a")]);
    store.take_dirty();
    list(&mut store, Kind::Service, vec![svc("a")]);
    assert!(store.take_dirty().is_empty());
}

#[test]
fn malformed_object_is_named_and_keeps_its_last_good_version() {
    let mut store = Store::default();
    store.apply(Kind::Service, Event::Apply(svc("a")));
    store.take_dirty();
    let bad = obj(serde_json::json!({
        "metadata": {"name": "a", "namespace": "demo"},
        "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": "eighty"}]}
    }));
    store.apply(Kind::Service, Event::Apply(bad));
    let problems = store.take_problems();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].object.to_string(), "Service demo/a");
    assert_eq!(problems[0].field, "spec.ports[0].port");
    assert!(store.service(&key("a")).is_some());
    assert!(store.take_dirty().is_empty());
}

#[test]
fn slice_moving_between_services_marks_both() {
    let mut store = Store::default();
    store.apply(
        Kind::EndpointSlice,
        Event::Apply(slice("s", "a", "10.0.0.1")),
    );
    store.take_dirty();
    store.apply(
        Kind::EndpointSlice,
        Event::Apply(slice("s", "b", "10.0.0.1")),
    );
    let dirty = store.take_dirty();
    assert_eq!(
        dirty.services.into_iter().collect::<Vec<_>>(),
        vec![key("a"), key("b")]
    );
    store.apply(
        Kind::EndpointSlice,
        Event::Delete(slice("s", "b", "10.0.0.1")),
    );
    assert_eq!(
        store.take_dirty().services.into_iter().collect::<Vec<_>>(),
        vec![key("b")]
    );
}

#[test]
fn node_zone_is_read_from_its_label() {
    let mut store = Store::default();
    let node = obj(serde_json::json!({
        "metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "z1"}}
    }));
    assert!(store.apply(Kind::Node, Event::Apply(node)));
    assert_eq!(store.node_zone().as_deref(), Some("z1"));
}

#[test]
fn watched_slice_changes_report_their_trigger_time_and_lists_do_not() {
    let mut store = Store::default();
    let annotated = |ip: &str, at: &str| {
        let mut o = slice("a-1", "a", ip);
        o.metadata.annotations = Some(
            [(TRIGGER_TIME_ANNOTATION.to_owned(), at.to_owned())]
                .into_iter()
                .collect(),
        );
        o
    };
    list(
        &mut store,
        Kind::EndpointSlice,
        vec![annotated("10.0.0.1", "2026-12-06T04:00:00Z")],
    );
    assert!(store.take_triggers().is_empty(), "a list is no change");
    store.apply(
        Kind::EndpointSlice,
        Event::Apply(annotated("10.0.0.2", "2026-12-06T04:00:01.5Z")),
    );
    let want = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_796_529_601_500);
    assert_eq!(store.take_triggers(), vec![want]);
    // Malformed: no time, no error either (the slice itself is fine).
    store.apply(
        Kind::EndpointSlice,
        Event::Apply(annotated("10.0.0.3", "yesterday")),
    );
    assert!(store.take_triggers().is_empty());
}
