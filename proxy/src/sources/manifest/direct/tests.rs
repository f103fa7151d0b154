use std::path::Path;

use super::super::parse_values;
use super::{parse, split};

const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: demo\nspec:\n  clusterIP: 10.96.0.10\n  ports:\n  - name: http\n    port: 80\n    protocol: TCP\n    targetPort: 8080\n";

// kubectl's key order: `kind` after the endpoints, a `kind:` of the
// targetRef indented.
const SLICE: &str = "addressType: IPv4\napiVersion: discovery.k8s.io/v1\nendpoints:\n- addresses:\n  - 10.244.0.5\n  conditions:\n    ready: true\n  nodeName: node-a\n  targetRef:\n    kind: Pod\n    name: web-1\n    namespace: demo\nkind: EndpointSlice\nmetadata:\n  labels:\n    kubernetes.io/service-name: web\n  name: web-abc\n  namespace: demo\nports:\n- name: http\n  port: 8080\n  protocol: TCP\n";

const NODE: &str = "apiVersion: \"v1\"\nkind: 'Node' # ours\nmetadata:\n  name: node-a\nstatus:\n  addresses:\n  - address: 192.0.2.10\n    type: InternalIP\n";

const OTHER: &str =
    "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\nspec:\n  replicas: 2\n";

/// Both paths give the same objects and problems, and the fast one took it.
fn same_as_values(text: &str) {
    let file = Path::new("m.yaml");
    let (fast, fast_problems) = parse(text, file).expect("the fast path takes this file");
    let (slow, slow_problems) = parse_values(text, file);
    assert_eq!(format!("{fast:?}"), format!("{slow:?}"));
    assert_eq!(fast_problems, slow_problems);
}

#[test]
fn decodes_what_the_value_path_decodes() {
    same_as_values(&format!(
        "# header comment\n---\n{SVC}---\n{SLICE}---\n\n---\n{NODE}---\n{OTHER}"
    ));
    same_as_values(&format!("{SVC}---\n{SLICE}---\n"));
    same_as_values("");
    same_as_values("# only a comment\n");
}

#[test]
fn validation_problems_are_the_value_paths() {
    // An address that is no IP and a second port without a name: problems
    // from validation, found on the typed objects by both paths.
    let bad_slice = SLICE.replace("10.244.0.5", "10.244.0.500");
    let text = format!("{SVC}---\n{bad_slice}");
    same_as_values(&text);
    let (m, problems) = parse(&text, Path::new("m.yaml")).expect("fast path");
    assert_eq!(m.services.len(), 1);
    assert!(!problems.is_empty(), "the bad address is reported");
}

#[test]
fn documents_are_numbered_as_libyaml_numbers_them() {
    assert_eq!(split("a: 1\n---\nb: 2\n").map(|d| d.len()), Some(2));
    assert_eq!(split("# c\n---\na: 1\n").map(|d| d.len()), Some(1));
    assert_eq!(split("---\na: 1\n---\n").map(|d| d.len()), Some(2));
    assert_eq!(split("---  \r\na: 1\n").map(|d| d.len()), Some(1));
    assert_eq!(split("").map(|d| d.len()), Some(0));
}

#[test]
fn leaves_what_it_cannot_vouch_for_to_the_value_path() {
    let file = Path::new("m.yaml");
    for text in [
        format!("%YAML 1.2\n---\n{SVC}"),
        format!("{SVC}...\n"),
        format!("--- # first\n{SVC}"),
        // A flow document, no kind at column 0, two kinds.
        "{\"apiVersion\": \"v1\", \"kind\": \"Service\"}\n".to_owned(),
        "apiVersion: v1\nmetadata: {}\n".to_owned(),
        format!("{SVC}kind: Service\n"),
        // A syntax error in a document of another kind; a duplicate key,
        // an error of the whole stream to the general path.
        format!("{OTHER}  bad: [\n"),
        SVC.replace(
            "  name: web\n",
            "  name: web\n  labels:\n    a: b\n    a: c\n",
        ),
        // Line breaks libyaml knows and a plain split does not (found by
        // the fuzz target: a comment that a lone CR ends).
        "# a comment\rkind: Service\n".to_owned(),
        format!("{SVC}# a\u{2028}b\n"),
        // Characters YAML does not allow, even in a comment.
        format!("{SVC}# a\u{0}b\n"),
        format!("{SVC}# a\u{7f}b\n"),
        format!("{SVC}# a\u{9f}b\n"),
        " \t\t".to_owned(),
        "\n\u{a0}".to_owned(),
    ] {
        assert!(parse(&text, file).is_none(), "{text}");
    }
}

#[test]
fn reads_what_the_block_reader_refuses_as_the_value_path_does() {
    // A List, an unsupported version, a decode error, a flow value, a
    // multi-line scalar: each that document only.
    for other in [
        "apiVersion: v1\nkind: List\nitems: []\n".to_owned(),
        SVC.replace("apiVersion: v1", "apiVersion: v2"),
        SVC.replace("port: 80", "port: eighty"),
        SVC.replace(
            "  clusterIP: 10.96.0.10\n",
            "  clusterIP: 10.96.0.10\n  selector: {app: web}\n",
        ),
        SVC.replace(
            "  name: web\n",
            "  name: web\n  annotations:\n    note: |\n      two\n      lines\n",
        ),
    ] {
        same_as_values(&format!("{SLICE}---\n{other}---\n{NODE}"));
    }
}

#[test]
fn errors_still_name_object_and_field() {
    let text = format!("{SLICE}---\n{}", SVC.replace("port: 80", "port: eighty"));
    let (m, problems) = super::super::parse(&text, Path::new("m.yaml"));
    assert_eq!(m.slices.len(), 1, "the rest of the file is still served");
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].document, 1);
    assert_eq!(problems[0].field, "spec.ports[0].port");
    assert_eq!(problems[0].object.as_deref(), Some("Service demo/web"));
}
