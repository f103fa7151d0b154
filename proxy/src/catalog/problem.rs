//! Problems found in Kubernetes objects, named the way a user finds them:
//! kind, namespace/name, field path, what was expected.

use std::fmt;

/// Which object a problem is about.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: &str, namespace: &str, name: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// One problem with one field of one object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[error("{object}: {field}: {message}")]
pub struct Problem {
    pub object: ObjectRef,
    /// A field path as `kubectl explain` spells it, e.g. `spec.ports[1].port`.
    pub field: String,
    pub message: String,
    /// Whether the object was dropped from the table (an error) or only
    /// partly used (a warning, e.g. an unsupported SCTP port).
    pub severity: Severity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Severity {
    Error,
    Warning,
}

impl Problem {
    pub fn error(object: &ObjectRef, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            object: object.clone(),
            field: field.into(),
            message: message.into(),
            severity: Severity::Error,
        }
    }

    pub fn warning(
        object: &ObjectRef,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(object, field, message)
        }
    }
}
