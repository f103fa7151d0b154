//! What the watches receive: each object's JSON text as it came, with only
//! the metadata the watcher needs read out of it. The typed object is then
//! decoded straight from that text: one decode per object, where a
//! `DynamicObject` cost three (serde's buffered `Content` for its flattened
//! fields, a `serde_json::Value`, then the typed object from the value),
//! half of the Kubernetes source's start at 100,000 endpoints. A malformed
//! object still fails alone and is named with its field, since its text is
//! kept whole until it is decoded.

use std::borrow::Cow;

use ::kube::core::{ApiResource, DynamicResourceScope, ObjectMeta, Resource};
use serde::de::{Deserialize, Deserializer, Error as _};
use serde_json::value::RawValue;

use super::decode::{Incoming, Kind, Typed, checked};
use super::store::Key;
use crate::catalog::{ObjectRef, Problem};

/// One watched object, not yet decoded.
#[derive(Clone, Debug)]
pub struct RawObject {
    /// Name, namespace and resourceVersion only (the watcher resumes from
    /// the last resourceVersion).
    pub metadata: ObjectMeta,
    text: Box<RawValue>,
}

impl RawObject {
    #[cfg(test)]
    pub fn from_json(value: &serde_json::Value) -> Self {
        serde_json::from_value(value.clone()).expect("test object")
    }
}

impl<'de> Deserialize<'de> for RawObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // The text can be taken as it is only from serde_json's own reader:
        // list pages, and watch events whose "type" comes before "object"
        // (as the API server writes them). An event in the other order
        // reaches us through serde's buffer, which has no text: that object
        // is read as a value and written back out, slower but correct.
        let from_text =
            std::any::type_name::<D>().starts_with("&mut serde_json::de::Deserializer<");
        let text = if from_text {
            Box::<RawValue>::deserialize(deserializer)?
        } else {
            let value = serde_json::Value::deserialize(deserializer)?;
            serde_json::value::to_raw_value(&value).map_err(D::Error::custom)?
        };
        let head: Head = serde_json::from_str(text.get()).map_err(D::Error::custom)?;
        let metadata = ObjectMeta {
            name: head.metadata.name,
            namespace: head.metadata.namespace,
            resource_version: head.metadata.resource_version,
            ..ObjectMeta::default()
        };
        Ok(Self { metadata, text })
    }
}

/// The part of an object read before its typed decode: lenient about the
/// rest of the metadata, so that a bad label fails only its own object.
#[derive(serde::Deserialize)]
struct Head {
    #[serde(default)]
    metadata: HeadMeta,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct HeadMeta {
    name: Option<String>,
    namespace: Option<String>,
    resource_version: Option<String>,
}

impl Incoming for RawObject {
    fn key(&self) -> Key {
        (
            self.metadata.namespace.clone().unwrap_or_default(),
            self.metadata.name.clone().unwrap_or_default(),
        )
    }

    fn typed<T: Typed>(self, kind: Kind, problems: &mut Vec<Problem>) -> Option<T> {
        // Without path tracking first: it costs on every object, and only
        // a failed decode needs the path, found by decoding again.
        if let Ok(mut typed) = serde_json::from_str::<T>(self.text.get()) {
            typed.shrink();
            return checked(typed, problems);
        }
        let (namespace, name) = self.key();
        let object = ObjectRef::new(kind.name(), &namespace, &name);
        let mut de = serde_json::Deserializer::from_str(self.text.get());
        match serde_path_to_error::deserialize::<_, T>(&mut de) {
            Ok(mut typed) => {
                typed.shrink();
                checked(typed, problems)
            }
            Err(e) => {
                let field = e.path().to_string();
                let message = format!("{}; the object is skipped", e.into_inner());
                problems.push(Problem::error(&object, field, message));
                None
            }
        }
    }
}

impl Resource for RawObject {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }

    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }

    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }

    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests;
