//! Where Service and EndpointSlice objects come from. Every source hands the
//! same typed objects to the one catalog translation.

pub mod file;
pub mod file_changes;
pub mod file_index;
mod file_watch;
pub mod kube;
pub mod manifest;

pub use file::{FileSource, Scan, SourceError};
pub use manifest::{ManifestProblem, Manifests};

/// The source the daemon runs on: both end in the same catalog translation
/// (a full build for files, per-Service rebuilds for the watch).
pub enum Source {
    File(FileSource),
    Kube(self::kube::KubeSource),
}
