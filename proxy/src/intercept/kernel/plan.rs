//! Which Service ports the kernel executes, and with what: the datapath
//! choice of every port (annotation, `dataplane.datapath`, what the port
//! needs, whether its policy gave tables that fit the rules) and the
//! [`KernelPlan`] of the ports on the kernel path.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::elements::{KernelPlan, KernelPort};
use super::step::KernelKeys;
use crate::catalog::datapath::{Datapath, DatapathChoice, DatapathMode, choose, requested};
use crate::catalog::{Frontend, Protocol, Route, Scope, ServicePort, ServiceTable};
use crate::policy::Bindings;
use crate::policy::kernel_tables::TableCache;

/// Every port's choice, by `ServicePort::id`; persistent, as the
/// planner publishes it at every sync.
pub type Choices = imbl::OrdMap<u64, DatapathChoice>;

/// One frontend of a port: a VIP, or a NodePort of one family.
#[derive(Clone, Copy)]
enum Target {
    Vip(std::net::IpAddr, Protocol, u16, Scope),
    NodePort(bool, Protocol, u16),
}

/// A port's frontends, grouped from the table (all of it, or the keys a
/// patch touched).
type ByPort<'a> = HashMap<u64, (&'a Route, Vec<Target>)>;

fn group_vip<'a>(by_port: &mut ByPort<'a>, f: &Frontend, route: &'a Route) {
    by_port
        .entry(route.port.id)
        .or_insert((route, Vec::new()))
        .1
        .push(Target::Vip(f.ip, f.protocol, f.port, route.scope));
}

fn group_node_port<'a>(by_port: &mut ByPort<'a>, (proto, port): (Protocol, u16), route: &'a Route) {
    let entry = by_port.entry(route.port.id).or_insert((route, Vec::new()));
    for v6 in [false, true] {
        entry.1.push(Target::NodePort(v6, proto, port));
    }
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
    let mut by_port = ByPort::new();
    for (f, route) in &table.frontends {
        group_vip(&mut by_port, f, route);
    }
    for (&key, route) in &table.node_ports {
        group_node_port(&mut by_port, key, route);
    }
    let mut out = KernelPlan::default();
    let mut choices = Choices::new();
    for (id, (route, targets)) in by_port {
        let (choice, ports) = decide(&route.port, &targets, bindings, cache, default, previous);
        place(&mut out, ports);
        choices.insert(id, choice);
    }
    cache.sweep();
    (out, choices)
}

/// Puts a kernel-path port's frontends in the plan.
fn place(out: &mut KernelPlan, ports: Vec<(Target, KernelPort)>) {
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

/// One port's choice, and its frontends' kernel tables when the choice
/// is the kernel (none otherwise).
fn decide(
    port: &Arc<ServicePort>,
    targets: &[Target],
    bindings: &Bindings,
    cache: &mut TableCache,
    default: DatapathMode,
    previous: &Choices,
) -> (DatapathChoice, Vec<(Target, KernelPort)>) {
    let mode = requested(port, default);
    let mut ports = Vec::new();
    let mut refusal: Option<String> = None;
    if mode != DatapathMode::Proxy && crate::catalog::datapath::proxy_only(port).is_none() {
        for target in targets {
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
    if choice.refused && previous.get(&port.id) != Some(&choice) {
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
    if choice.datapath != crate::catalog::datapath::Datapath::Kernel {
        ports.clear();
    }
    (choice, ports)
}

/// The plan kept between syncs. When the table was patched from the one
/// planned last and no binding moved but those of the changed Services,
/// only the changed Services' ports are decided again; otherwise every
/// port is ([`plan`]).
#[derive(Debug, Default)]
pub struct Planner {
    last: Option<Arc<ServiceTable>>,
    plan: KernelPlan,
    choices: Choices,
    /// Ports on the kernel path now, of all with a choice.
    kernel_ports: usize,
    /// The plan keys the last update touched; `None`: it planned whole.
    keys: Option<KernelKeys>,
}

impl Planner {
    /// Brings the plan in step with `table`. `rebound_all`: every binding
    /// may have moved (modules, default policy or limits changed).
    pub fn update(
        &mut self,
        table: &Arc<ServiceTable>,
        bindings: &Bindings,
        rebound_all: bool,
        cache: &mut TableCache,
        default: DatapathMode,
    ) {
        let last = self.last.replace(table.clone());
        let change = match &last {
            Some(last) if !rebound_all => table.changed_since(last),
            _ => None,
        };
        let (Some(change), Some(last)) = (change, &last) else {
            self.keys = None;
            let (plan, choices) = plan(table, bindings, cache, default, &self.choices);
            self.plan = plan;
            self.choices = choices;
            self.kernel_ports = self
                .choices
                .values()
                .filter(|c| c.datapath == Datapath::Kernel)
                .count();
            return;
        };
        let previous = self.choices.clone();
        self.keys = Some(KernelKeys {
            vips: change
                .frontends
                .iter()
                .map(|f| (f.ip, f.protocol, f.port))
                .collect(),
            node_ports: change
                .node_ports
                .iter()
                .flat_map(|&(proto, port)| [(false, proto, port), (true, proto, port)])
                .collect(),
        });
        let mut gone: HashSet<u64> = HashSet::new();
        for port in change
            .services
            .iter()
            .filter_map(|key| last.services.get(key))
            .flatten()
        {
            gone.insert(port.id);
            if let Some(choice) = self.choices.remove(&port.id)
                && choice.datapath == Datapath::Kernel
            {
                self.kernel_ports -= 1;
            }
        }
        // Every frontend of a changed Service, before and after, is in the
        // change record, and no other Service holds one of them.
        for f in &change.frontends {
            self.plan.vips.remove(&(f.ip, f.protocol, f.port));
        }
        for &(proto, port) in &change.node_ports {
            for v6 in [false, true] {
                self.plan.node_ports.remove(&(v6, proto, port));
            }
        }
        let mut by_port = ByPort::new();
        for f in &change.frontends {
            if let Some(route) = table.frontends.get(f) {
                group_vip(&mut by_port, f, route);
            }
        }
        for &key in &change.node_ports {
            if let Some(route) = table.node_ports.get(&key) {
                group_node_port(&mut by_port, key, route);
            }
        }
        for (id, (route, targets)) in by_port {
            gone.remove(&id);
            let (choice, ports) =
                decide(&route.port, &targets, bindings, cache, default, &previous);
            if choice.datapath == Datapath::Kernel {
                self.kernel_ports += 1;
            }
            place(&mut self.plan, ports);
            self.choices.insert(id, choice);
        }
        cache.forget_ports(&gone);
    }

    /// The plan keys the last update touched; `None` when it planned
    /// every port.
    pub fn keys(&self) -> Option<&KernelKeys> {
        self.keys.as_ref()
    }

    /// The kernel-path frontends.
    pub fn plan(&self) -> &KernelPlan {
        &self.plan
    }

    /// Every port's choice (a persistent map: cloning it is cheap).
    pub fn choices(&self) -> &Choices {
        &self.choices
    }

    /// How many ports run on the kernel path, and on the proxy.
    pub fn counts(&self) -> (usize, usize) {
        (self.kernel_ports, self.choices.len() - self.kernel_ports)
    }
}
