//! Multi-document YAML (or JSON) manifests → typed Service and EndpointSlice
//! objects, the same YAML `kubectl get svc,endpointslices -o yaml` prints,
//! plus Node objects (`kubectl get node NAME -o yaml`) for this node's
//! addresses.

use std::fmt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;

use crate::catalog::{self, Severity};

mod block;
mod direct;
mod text;

/// The objects one file contributes.
#[derive(Debug, Clone, Default)]
pub struct Manifests {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub nodes: Vec<Node>,
}

impl Manifests {
    pub fn extend(&mut self, other: &Manifests) {
        self.services.extend(other.services.iter().cloned());
        self.slices.extend(other.slices.iter().cloned());
        self.nodes.extend(other.nodes.iter().cloned());
    }

    /// The Node called `node_name`, if a manifest has it.
    pub fn node(&self, node_name: Option<&str>) -> Option<&Node> {
        let name = node_name?;
        self.nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(name))
    }

    /// The addresses of the Node called `node_name`, if a manifest has it.
    pub fn node_addresses(&self, node_name: Option<&str>) -> Vec<std::net::IpAddr> {
        let Some(name) = node_name else {
            return Vec::new();
        };
        self.nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(name))
            .map(catalog::node_addresses)
            .unwrap_or_default()
    }
}

/// One problem in one manifest file, located as precisely as we can.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ManifestProblem {
    pub file: PathBuf,
    /// 0-based index of the YAML document in the file.
    pub document: usize,
    /// `Kind namespace/name`, once the document got that far.
    pub object: Option<String>,
    pub field: String,
    pub message: String,
    pub severity: Severity,
}

impl ManifestProblem {
    /// An error in document `document` of `file`, its object not yet known.
    fn error(file: &Path, document: usize, field: &str, message: String) -> Self {
        Self {
            file: file.to_owned(),
            document,
            object: None,
            field: field.to_owned(),
            message,
            severity: Severity::Error,
        }
    }
}

impl fmt::Display for ManifestProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} document {}", self.file.display(), self.document)?;
        if let Some(object) = &self.object {
            write!(f, " ({object})")?;
        }
        write!(f, ": {}: {}", self.field, self.message)
    }
}

/// Parses every document of a file. Objects with errors are left out and
/// reported; other kinds are ignored with a debug log.
pub fn parse(text: &str, file: &Path) -> (Manifests, Vec<ManifestProblem>) {
    direct::parse(text, file).unwrap_or_else(|| parse_values(text, file))
}

/// The fast path alone: `None` where `parse` falls back to `parse_values`.
/// Public for the fuzz target, which checks it against the general path.
pub fn parse_direct(text: &str, file: &Path) -> Option<(Manifests, Vec<ManifestProblem>)> {
    direct::parse(text, file)
}

/// The general path: every document read as a `Value` first, so that any
/// error names its object and field. Public for the fuzz target.
pub fn parse_values(text: &str, file: &Path) -> (Manifests, Vec<ManifestProblem>) {
    let mut out = Manifests::default();
    let mut problems = Vec::new();
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let problem =
            |field: &str, message: String| ManifestProblem::error(file, index, field, message);
        match serde_norway::Value::deserialize(document) {
            Ok(serde_norway::Value::Null) => {}
            Ok(value) => add_object(value, &mut out, &mut problems, &problem),
            Err(e) => {
                problems.push(problem("(document)", format!("not valid YAML: {e}")));
                // A syntax error leaves the rest of the stream unreadable.
                break;
            }
        }
    }
    (out, problems)
}

fn add_object(
    value: serde_norway::Value,
    out: &mut Manifests,
    problems: &mut Vec<ManifestProblem>,
    problem: &dyn Fn(&str, String) -> ManifestProblem,
) {
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_owned();
    let api_version = value
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or_default();
    // Read before the typed decode so that a wrong field still names its
    // object.
    let name = object_name(&value);
    let name = name.as_deref();
    match (kind.as_str(), api_version) {
        ("Service", "v1") => match typed::<Service>(value) {
            Ok(svc) => {
                let issues = catalog::validate_service(&svc);
                accept(svc, issues, &mut out.services, problems, problem);
            }
            Err((field, message)) => problems.push(named(problem(&field, message), &kind, name)),
        },
        ("Node", "v1") => match typed::<Node>(value) {
            Ok(node) => out.nodes.push(node),
            Err((field, message)) => problems.push(named(problem(&field, message), &kind, name)),
        },
        ("EndpointSlice", "discovery.k8s.io/v1") => match typed::<EndpointSlice>(value) {
            Ok(slice) => {
                let issues = catalog::validate_endpoint_slice(&slice);
                accept(slice, issues, &mut out.slices, problems, problem);
            }
            Err((field, message)) => problems.push(named(problem(&field, message), &kind, name)),
        },
        ("List", "v1") => match value.get("items").cloned() {
            Some(serde_norway::Value::Sequence(items)) => {
                for (i, item) in items.into_iter().enumerate() {
                    let prefixed = |field: &str, message: String| {
                        problem(&format!("items[{i}].{field}"), message)
                    };
                    add_object(item, out, problems, &prefixed);
                }
            }
            Some(serde_norway::Value::Null) | None => {}
            Some(_) => problems.push(problem("items", "expected a list of objects".into())),
        },
        ("Service" | "EndpointSlice", other) => problems.push(problem(
            "apiVersion",
            format!(
                "{other:?} is not supported for {kind}; expected {}",
                if kind == "Service" {
                    "v1"
                } else {
                    "discovery.k8s.io/v1"
                }
            ),
        )),
        ("", _) => problems.push(problem(
            "kind",
            "missing; expected Service, EndpointSlice or List".into(),
        )),
        (other, _) => tracing::debug!(kind = other, "ignoring object of another kind"),
    }
}

/// Keeps an object unless validation found an error; every problem is
/// reported either way.
fn accept<
    T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
>(
    object: T,
    issues: Vec<catalog::Problem>,
    into: &mut Vec<T>,
    problems: &mut Vec<ManifestProblem>,
    problem: &dyn Fn(&str, String) -> ManifestProblem,
) {
    let fatal = issues.iter().any(|p| p.severity == Severity::Error);
    for issue in issues {
        let mut p = problem(&issue.field, issue.message.clone());
        p.severity = issue.severity;
        p.object = Some(issue.object.to_string());
        problems.push(p);
    }
    if !fatal {
        into.push(object);
    }
}

/// `namespace/name` from raw metadata ("default" when the namespace is
/// absent, as kubectl would apply it).
fn object_name(value: &serde_norway::Value) -> Option<String> {
    let meta = value.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    let namespace = meta
        .get("namespace")
        .and_then(|n| n.as_str())
        .unwrap_or("default");
    Some(format!("{namespace}/{name}"))
}

fn named(mut p: ManifestProblem, kind: &str, name: Option<&str>) -> ManifestProblem {
    p.object = Some(match name {
        Some(name) => format!("{kind} {name}"),
        None => kind.to_owned(),
    });
    p
}

/// Deserializes with the path of the failing field.
fn typed<T: serde::de::DeserializeOwned>(
    value: serde_norway::Value,
) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        (path, e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: demo\nspec:\n  clusterIP: 10.96.0.10\n  ports:\n  - port: 80\n    protocol: TCP\n    targetPort: 8080\n";

    fn parse_str(text: &str) -> (Manifests, Vec<ManifestProblem>) {
        parse(text, Path::new("m.yaml"))
    }

    #[test]
    fn reads_several_documents_and_ignores_other_kinds() {
        let text =
            format!("{SVC}---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n---\n");
        let (m, problems) = parse_str(&text);
        assert_eq!(m.services.len(), 1);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn reads_lists() {
        let indented: String = SVC.lines().map(|l| format!("  {l}\n")).collect();
        let text = format!("apiVersion: v1\nkind: List\nitems:\n-{}", &indented[1..]);
        let (m, problems) = parse_str(&text);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(m.services.len(), 1);
    }

    #[test]
    fn wrong_type_names_document_and_field() {
        let text = format!("{SVC}---\n{}", SVC.replace("port: 80", "port: eighty"));
        let (m, problems) = parse_str(&text);
        assert_eq!(m.services.len(), 1);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].document, 1);
        assert_eq!(problems[0].field, "spec.ports[0].port");
        assert_eq!(problems[0].object.as_deref(), Some("Service demo/web"));
    }

    #[test]
    fn syntax_error_is_reported_not_panicked() {
        let (_, problems) = parse_str("apiVersion: v1\nkind: Service\nmetadata: [\n");
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.contains("YAML"));
    }

    #[test]
    fn missing_kind_and_wrong_api_version_are_reported() {
        let (_, problems) = parse_str("apiVersion: v1\nmetadata: {}\n");
        assert_eq!(problems[0].field, "kind");
        let (_, problems) = parse_str(&SVC.replace("apiVersion: v1", "apiVersion: v2"));
        assert_eq!(problems[0].field, "apiVersion");
    }
}
