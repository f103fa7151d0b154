//! Which Service ports the kernel executes, and with what: the datapath
//! choice of every port (annotation, `dataplane.datapath`, what the port
//! needs, whether its policy gave tables that fit the rules) and the
//! [`KernelPlan`] of the ports on the kernel path.

use std::collections::{BTreeMap, HashMap};

use super::elements::{KernelPlan, KernelPort};
use crate::catalog::datapath::{DatapathChoice, DatapathMode, choose, requested};
use crate::catalog::{Protocol, Route, Scope, ServiceTable};
use crate::policy::Bindings;
use crate::policy::kernel_tables::TableCache;

/// Every port's choice, by `ServicePort::id`.
pub type Choices = BTreeMap<u64, DatapathChoice>;

/// One frontend of a port: a VIP, or a NodePort of one family.
#[derive(Clone, Copy)]
enum Target {
    Vip(std::net::IpAddr, Protocol, u16, Scope),
    NodePort(bool, Protocol, u16),
}

/// Decides every port and builds the plan. A port goes to the kernel only
/// when every frontend it has endpoints on gets a table that fits.
pub fn plan(
    table: &ServiceTable,
    bindings: &Bindings,
    cache: &mut TableCache,
    default: DatapathMode,
    previous: &Choices,
) -> (KernelPlan, Choices) {
    let mut by_port: HashMap<u64, (&Route, Vec<Target>)> = HashMap::new();
    for (f, route) in &table.frontends {
        by_port
            .entry(route.port.id)
            .or_insert((route, Vec::new()))
            .1
            .push(Target::Vip(f.ip, f.protocol, f.port, route.scope));
    }
    for (&(proto, port), route) in &table.node_ports {
        let entry = by_port.entry(route.port.id).or_insert((route, Vec::new()));
        for v6 in [false, true] {
            entry.1.push(Target::NodePort(v6, proto, port));
        }
    }
    let mut out = KernelPlan::default();
    let mut choices = Choices::new();
    for (id, (route, targets)) in by_port {
        let port = &route.port;
        let mode = requested(port, default);
        let mut ports = Vec::new();
        let mut refusal: Option<String> = None;
        if mode != DatapathMode::Proxy && crate::catalog::datapath::proxy_only(port).is_none() {
            for target in &targets {
                let (scope, v6) = match *target {
                    Target::Vip(ip, _, _, scope) => (scope, ip.is_ipv6()),
                    Target::NodePort(v6, _, _) => (Scope::External, v6),
                };
                match cache.get(bindings, port, scope, v6) {
                    Ok(Some(t)) => {
                        let k = KernelPort {
                            table: t.table,
                            endpoints: t.endpoints,
                            masquerade: scope == Scope::External && !port.service.external_local,
                        };
                        if !k.fits() {
                            refusal = Some(format!(
                                "a table of {} slots ({} endpoints) is past what the kernel rules hold",
                                k.table.slots.len(),
                                k.endpoints.len()
                            ));
                            break;
                        }
                        ports.push((*target, k));
                    }
                    // No endpoints of this family/scope: the frontend
                    // rejects (or has nothing to reach), whatever the path.
                    Ok(None) if port.endpoints(scope).iter().all(|e| e.addr.is_ipv6() != v6) => {}
                    Ok(None) => {
                        refusal = Some("no sy_table export, or it answered \"no table\"".into());
                        break;
                    }
                    Err(fault) => {
                        refusal = Some(fault);
                        break;
                    }
                }
            }
        }
        let verdict = match &refusal {
            Some(why) => Err(why.as_str()),
            None if ports.is_empty() => Err("no endpoints to build a table over"),
            None => Ok(()),
        };
        let choice = choose(mode, port, verdict);
        // Once per change of the port's choice, not at every sync.
        if choice.refused && previous.get(&id) != Some(&choice) {
            tracing::warn!(
                service = %port.service.key,
                port = %port.name,
                "switchyard.dev/datapath: kernel refused, the port runs on the proxy: {}",
                choice.reason
            );
            let policy = bindings
                .get(&port.id)
                .map_or("round-robin (built-in)", |b| &*b.module.name);
            crate::policy::events::datapath_fallback(&port.service.key, policy, &choice.reason);
        }
        if choice.datapath == crate::catalog::datapath::Datapath::Kernel {
            for (target, k) in ports {
                match target {
                    Target::Vip(ip, proto, p, _) => {
                        out.vips.insert((ip, proto, p), k);
                    }
                    Target::NodePort(v6, proto, p) => {
                        out.node_ports.insert((v6, proto, p), k);
                    }
                }
            }
        }
        choices.insert(id, choice);
    }
    cache.sweep();
    (out, choices)
}
