//! Switchyard: a Kubernetes node proxy whose backend choice is made by
//! WebAssembly policies. See DESIGN.md in the shared notes and README.md.
//!
//! Data flows one way: `sources` → `catalog` → snapshot → `dataplane` and
//! `policy`; `intercept` follows the snapshot.

pub mod admin;
pub mod catalog;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod intercept;
pub mod l7;
pub mod logging;
pub mod netif;
pub mod policy;
pub mod snapshot;
pub mod sources;
