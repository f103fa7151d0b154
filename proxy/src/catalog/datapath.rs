//! Which datapath serves a Service port: the kernel (nftables executes the
//! policy's slot table, conntrack keeps flows, kube-proxy's cost) or the
//! user-space proxy (dynamic policies, L7, PROXY protocol). Asked for with
//! the annotation `switchyard.dev/datapath: auto|kernel|proxy`, defaulting
//! to `dataplane.datapath`; decided here, purely, from what the port needs
//! and whether its policy gave a table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::check::Checker;
use super::table::ServicePort;

pub const DATAPATH_ANNOTATION: &str = "switchyard.dev/datapath";

/// What an operator asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatapathMode {
    /// Kernel when the port can take it, proxy otherwise.
    #[default]
    Auto,
    /// Kernel; a port that cannot take it runs on the proxy, with a warning.
    Kernel,
    /// Always the proxy.
    Proxy,
}

impl DatapathMode {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "auto" => Some(DatapathMode::Auto),
            "kernel" => Some(DatapathMode::Kernel),
            "proxy" => Some(DatapathMode::Proxy),
            _ => None,
        }
    }
}

/// Where a port's connections go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Datapath {
    Kernel,
    Proxy,
}

impl Datapath {
    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Datapath::Kernel => "kernel",
            Datapath::Proxy => "proxy",
        }
    }
}

/// The decision and why, for `/debug/services` and the warning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatapathChoice {
    pub datapath: Datapath,
    pub reason: String,
    /// `kernel` was asked for and could not be given.
    pub refused: bool,
}

/// The Service's annotation; an unknown value is a warning (naming the
/// field) and counts as absent.
pub(crate) fn datapath_annotation(
    annotations: &BTreeMap<String, String>,
    ck: &mut Checker,
) -> Option<DatapathMode> {
    let value = annotations.get(DATAPATH_ANNOTATION)?;
    let mode = DatapathMode::parse(value);
    if mode.is_none() {
        ck.warning(
            format!("metadata.annotations[\"{DATAPATH_ANNOTATION}\"]"),
            format!(
                "{value:?} is not supported; expected \"auto\", \"kernel\" or \"proxy\" \
                 (dataplane.datapath applies)"
            ),
        );
    }
    mode
}

/// The mode a port asks for: its Service's annotation, else the default.
pub fn requested(port: &ServicePort, default: DatapathMode) -> DatapathMode {
    port.service
        .annotations
        .get(DATAPATH_ANNOTATION)
        .and_then(|v| DatapathMode::parse(v))
        .unwrap_or(default)
}

/// Why a port needs the proxy whatever its policy, if it does.
pub fn proxy_only(port: &ServicePort) -> Option<&'static str> {
    if port.l7.is_some() {
        Some("L7 port (HTTP routing needs the proxy)")
    } else if port.service.proxy_protocol {
        Some("PROXY protocol header (only the proxy writes it)")
    } else {
        None
    }
}

/// Decides. `table` is `Ok(())` when the bound policy gave a slot table for
/// the port's endpoints, else why not (no `sy_table`, "no table", a fault).
pub fn choose(mode: DatapathMode, port: &ServicePort, table: Result<(), &str>) -> DatapathChoice {
    let proxy = |reason: String, refused: bool| DatapathChoice {
        datapath: Datapath::Proxy,
        reason,
        refused,
    };
    if mode == DatapathMode::Proxy {
        return proxy("asked for the proxy".into(), false);
    }
    let kernel_asked = mode == DatapathMode::Kernel;
    if let Some(why) = proxy_only(port) {
        return proxy(why.into(), kernel_asked);
    }
    match table {
        Ok(()) => DatapathChoice {
            datapath: Datapath::Kernel,
            reason: if kernel_asked {
                "asked for the kernel; the policy gave a slot table".into()
            } else {
                "auto: the policy gave a slot table".into()
            },
            refused: false,
        },
        Err(why) => proxy(
            format!("the policy gave no slot table: {why}"),
            kernel_asked,
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::catalog::{L7Protocol, ObjectRef, ServiceInfo, fixtures};

    fn port(annotation: Option<&str>, l7: bool, proxy_protocol: bool) -> ServicePort {
        let mut annotations = BTreeMap::new();
        if let Some(a) = annotation {
            annotations.insert(DATAPATH_ANNOTATION.to_owned(), a.to_owned());
        }
        ServicePort {
            id: 1,
            service: Arc::new(ServiceInfo {
                proxy_protocol,
                annotations,
                ..fixtures::info("web")
            }),
            l7: l7.then_some(L7Protocol::Http1),
            ..fixtures::port("web")
        }
    }

    #[test]
    fn auto_takes_the_kernel_when_there_is_a_table() {
        let p = port(None, false, false);
        let c = choose(requested(&p, DatapathMode::Auto), &p, Ok(()));
        assert_eq!(c.datapath, Datapath::Kernel);
        assert!(!c.refused);
        let c = choose(DatapathMode::Auto, &p, Err("no sy_table export"));
        assert_eq!(c.datapath, Datapath::Proxy);
        assert!(!c.refused);
        assert!(c.reason.contains("no sy_table export"), "{}", c.reason);
    }

    #[test]
    fn the_annotation_overrides_the_default() {
        let p = port(Some("proxy"), false, false);
        assert_eq!(requested(&p, DatapathMode::Kernel), DatapathMode::Proxy);
        let c = choose(requested(&p, DatapathMode::Kernel), &p, Ok(()));
        assert_eq!(c.datapath, Datapath::Proxy);
        let p = port(Some("kernel"), false, false);
        assert_eq!(requested(&p, DatapathMode::Proxy), DatapathMode::Kernel);
        let p = port(Some("bogus"), false, false);
        assert_eq!(requested(&p, DatapathMode::Proxy), DatapathMode::Proxy);
    }

    #[test]
    fn kernel_on_a_port_that_cannot_take_it_is_refused_with_the_reason() {
        for (p, why) in [
            (port(Some("kernel"), true, false), "L7"),
            (port(Some("kernel"), false, true), "PROXY protocol"),
        ] {
            let c = choose(requested(&p, DatapathMode::Auto), &p, Ok(()));
            assert_eq!(c.datapath, Datapath::Proxy);
            assert!(c.refused);
            assert!(c.reason.contains(why), "{}", c.reason);
        }
        let p = port(Some("kernel"), false, false);
        let c = choose(requested(&p, DatapathMode::Auto), &p, Err("a fault"));
        assert!(c.refused && c.datapath == Datapath::Proxy);
    }

    #[test]
    fn a_bad_annotation_is_a_warning_naming_the_field() {
        let mut annotations = BTreeMap::new();
        annotations.insert(DATAPATH_ANNOTATION.to_owned(), "fast".to_owned());
        let mut ck = Checker::for_object(ObjectRef::new("Service", "demo", "web"));
        assert_eq!(datapath_annotation(&annotations, &mut ck), None);
        let problems = ck.into_problems();
        assert_eq!(problems.len(), 1);
        let text = problems[0].to_string();
        assert!(
            text.contains("switchyard.dev/datapath") && text.contains("fast"),
            "{text}"
        );
    }
}
