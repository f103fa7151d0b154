//! Where Service and EndpointSlice objects come from. Every source hands the
//! same typed objects to the one catalog translation.

pub mod file;
pub mod manifest;

pub use file::{FileSource, Scan, SourceError};
pub use manifest::{ManifestProblem, Manifests};
