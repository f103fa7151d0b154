//! Watched objects arrive undecoded (`RawObject`, or `DynamicObject` in
//! tests), one at a time, so that one malformed object is named and skipped
//! instead of failing the whole list it came in, as a typed watch would.

use ::kube::core::DynamicObject;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::store::Key;
use crate::catalog::{self, ObjectRef, Problem, Severity};

/// The kinds the source watches; conf/k8s/ grants exactly these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Service, Kind::EndpointSlice, Kind::Node];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Kind::Service | Kind::Node => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
        }
    }
}

/// A typed object this source keeps, with the checks it must pass.
pub trait Typed: serde::de::DeserializeOwned {
    /// Problems that keep the object out (errors) or only warn.
    fn check(&self) -> Vec<Problem>;

    /// Gives back the spare capacity of the object's big lists. A decode
    /// from JSON text knows no lengths, so its `Vec`s grow by doubling: at
    /// 100k endpoints that spare room was ~35 MiB of peak RSS.
    fn shrink(&mut self) {}
}

impl Typed for Service {
    fn check(&self) -> Vec<Problem> {
        // Warnings come again from the translation; only errors matter here.
        catalog::validate_service(self)
            .into_iter()
            .filter(|p| p.severity == Severity::Error)
            .collect()
    }

    fn shrink(&mut self) {
        if let Some(ports) = self.spec.as_mut().and_then(|s| s.ports.as_mut()) {
            ports.shrink_to_fit();
        }
    }
}

impl Typed for EndpointSlice {
    fn check(&self) -> Vec<Problem> {
        catalog::validate_endpoint_slice(self)
    }

    fn shrink(&mut self) {
        self.endpoints.shrink_to_fit();
        for endpoint in &mut self.endpoints {
            endpoint.addresses.shrink_to_fit();
        }
        if let Some(ports) = &mut self.ports {
            ports.shrink_to_fit();
        }
    }
}

impl Typed for Node {
    fn check(&self) -> Vec<Problem> {
        Vec::new()
    }
}

/// An object as a watch delivers it, before its typed decode.
pub trait Incoming {
    /// `(namespace, name)`, from the metadata the watcher read.
    fn key(&self) -> Key;
    /// Decodes and checks the object. A decode error or a validation error
    /// is pushed to `problems` (naming the object and field) and gives
    /// `None`.
    fn typed<T: Typed>(self, kind: Kind, problems: &mut Vec<Problem>) -> Option<T>;
}

impl Incoming for DynamicObject {
    fn key(&self) -> Key {
        key(self)
    }

    fn typed<T: Typed>(self, kind: Kind, problems: &mut Vec<Problem>) -> Option<T> {
        typed(kind, self, problems)
    }
}

/// The object, unless its checks found an error; every problem is pushed.
pub fn checked<T: Typed>(typed: T, problems: &mut Vec<Problem>) -> Option<T> {
    let found = typed.check();
    let fatal = found.iter().any(|p| p.severity == Severity::Error);
    problems.extend(found);
    (!fatal).then_some(typed)
}

pub fn key(obj: &DynamicObject) -> Key {
    (
        obj.metadata.namespace.clone().unwrap_or_default(),
        obj.metadata.name.clone().unwrap_or_default(),
    )
}

/// Decodes and checks one object. A decode error or a validation error
/// is pushed to `problems` (naming the object and field) and gives `None`.
///
/// The object is consumed: its fields move into the value the typed
/// decoder reads, instead of a clone re-serialised (two deep copies per
/// object, most of an initial list's decode time at 100,000 endpoints).
pub fn typed<T: Typed>(kind: Kind, obj: DynamicObject, problems: &mut Vec<Problem>) -> Option<T> {
    let (namespace, name) = key(&obj);
    let object = ObjectRef::new(kind.name(), &namespace, &name);
    let DynamicObject { metadata, data, .. } = obj;
    let mut fields = match data {
        serde_json::Value::Object(fields) => fields,
        serde_json::Value::Null => serde_json::Map::new(),
        _ => {
            problems.push(Problem::error(
                &object,
                "(object)",
                "expected a JSON object",
            ));
            return None;
        }
    };
    let metadata = match serde_json::to_value(metadata) {
        Ok(v) => v,
        Err(e) => {
            problems.push(Problem::error(&object, "metadata", e.to_string()));
            return None;
        }
    };
    fields.insert("metadata".into(), metadata);
    // Lists carry apiVersion/kind only on the list; the typed decoder wants
    // them on the object.
    fields.insert("apiVersion".into(), kind.api_version().into());
    fields.insert("kind".into(), kind.name().into());
    let typed: T = match serde_path_to_error::deserialize(serde_json::Value::Object(fields)) {
        Ok(t) => t,
        Err(e) => {
            let field = e.path().to_string();
            let message = format!("{}; the object is skipped", e.into_inner());
            problems.push(Problem::error(&object, field, message));
            return None;
        }
    };
    checked(typed, problems)
}
