use std::path::Path;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.yaml"))
}

fn field_error(text: &str) -> (String, String) {
    match parse(text) {
        Err(ConfigError::Field { field, message, .. }) => (field, message),
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn empty_file_is_all_defaults() {
    assert_eq!(parse("").expect("valid"), Config::default());
}

#[test]
fn shipped_default_config_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/switchyard.yaml");
    let config = Config::load(&path).expect("conf/switchyard.yaml is valid");
    assert_eq!(config.dataplane.listen_port, 15001);
}

#[test]
fn unknown_field_is_named() {
    let (field, message) = field_error("dataplane:\n  wokers: 2\n");
    assert_eq!(field, "dataplane.wokers");
    assert!(message.contains("wokers"), "{message}");
}

#[test]
fn wrong_type_is_named_with_its_path() {
    let (field, message) = field_error("dataplane:\n  workers: many\n");
    assert_eq!(field, "dataplane.workers");
    assert!(message.contains("invalid"), "{message}");
}

#[test]
fn bad_duration_is_named() {
    let (field, message) = field_error("dataplane:\n  connectTimeout: 2 parsecs\n");
    assert_eq!(field, "dataplane.connectTimeout");
    assert!(message.contains("unit"), "{message}");
}

#[test]
fn unknown_enum_value_is_named() {
    let (field, _) = field_error("dataplane:\n  io: carrier-pigeon\n");
    assert_eq!(field, "dataplane.io");
}

#[test]
fn ranges_are_checked() {
    assert_eq!(
        field_error("dataplane:\n  bufferSize: 10\n").0,
        "dataplane.bufferSize"
    );
    assert_eq!(
        field_error("dataplane:\n  connectAttempts: 0\n").0,
        "dataplane.connectAttempts"
    );
    assert_eq!(
        field_error("dataplane:\n  listenPort: 0\n").0,
        "dataplane.listenPort"
    );
    assert_eq!(
        field_error("dataplane:\n  listenPort: 70000\n").0,
        "dataplane.listenPort"
    );
    assert_eq!(
        field_error("intercept:\n  table: 'bad name'\n").0,
        "intercept.table"
    );
    assert_eq!(
        field_error("intercept:\n  divertMark: 3\n  bypassMark: 1\n").0,
        "intercept.divertMark"
    );
    assert_eq!(
        field_error("intercept:\n  routeTable: 254\n").0,
        "intercept.routeTable"
    );
}

#[test]
fn malformed_yaml_is_an_error_not_a_panic() {
    assert!(parse("dataplane: [unclosed\n").is_err());
    assert!(parse("- a list\n- not a map\n").is_err());
}

#[test]
fn kubernetes_source_parses() {
    let config =
        parse("source:\n  kind: kubernetes\n  kubeconfig: /etc/kube.conf\n").expect("valid");
    assert_eq!(config.source.kind, SourceKind::Kubernetes);
    assert_eq!(
        config.source.kubeconfig.as_deref(),
        Some(Path::new("/etc/kube.conf"))
    );
}

#[test]
fn kubeconfig_needs_the_kubernetes_source() {
    let (field, message) = field_error("source:\n  kubeconfig: /etc/kube.conf\n");
    assert_eq!(field, "source.kubeconfig");
    assert!(message.contains("kubernetes"), "{message}");
}
