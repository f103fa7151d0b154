//! Interception with nftables: one `inet` table of our own whose sets hold
//! the service frontends. A Service change is one atomic batch of element
//! updates, never a ruleset rewrite.

mod bridge;
mod bridge_cache;
mod command;
mod element_index;
mod elements;
mod endpoint_counts;
mod hook;
#[cfg(test)]
mod incremental_tests;
pub mod kernel;
pub mod netlink;
mod routing;
mod ruleset;
mod source_ranges;
mod steer;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use command::CommandError;
use elements::Delta;
pub use elements::Elements;
pub use netlink::NetlinkError;
use netlink::{Batch, Family};

use crate::catalog::ServiceTable;
use crate::config::InterceptConfig;
use endpoint_counts::EndpointCounts;

/// How long a frontend that left the kernel datapath keeps its established
/// flows out of the proxy's TPROXY rule (conntrack's TCP established
/// timeout is longer; a flow idle past this is reset when it speaks again).
const KERNEL_DRAIN_SECONDS: u64 = 3600;

/// How long a frontend that moved proxy → kernel keeps the socket rule
/// before its kernel gate (`kmoved`): its proxied connections live on that
/// long, as a kernel flow does after the opposite move (`kdrain`).
const KERNEL_MOVED_SECONDS: u64 = 3600;

/// Kernel elements per batch when a first sync fills a fresh table: a few
/// MB of encoded changes at a time instead of ~650k at 10k frontends.
const KERNEL_FILL_BATCH: usize = 32_768;

/// The VIP frontends of `plan` the kernel executes (their tables fit).
fn kernel_fitting_vips(
    plan: &kernel::KernelPlan,
) -> impl Iterator<Item = (std::net::IpAddr, crate::catalog::Protocol, u16)> + '_ {
    plan.vips
        .iter()
        .filter(|(_, k)| k.fits())
        .map(|(&key, _)| key)
}

/// The NodePorts of `plan` the kernel executes, of either family (once
/// per family).
fn kernel_fitting_node_ports(
    plan: &kernel::KernelPlan,
) -> impl Iterator<Item = (crate::catalog::Protocol, u16)> + '_ {
    plan.node_ports
        .iter()
        .filter(|(_, k)| k.fits())
        .map(|(&(_, proto, port), _)| (proto, port))
}

#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    #[error("installing nftables table inet {table}: {source}")]
    Install { table: String, source: CommandError },
    #[error("installing policy routing (table {route_table}): {source}")]
    Routing {
        route_table: u32,
        source: CommandError,
    },
    #[error("updating nftables table inet {table}: {source}")]
    Update { table: String, source: CommandError },
    #[error("encoding an element of nftables table inet {table}: {source}")]
    Encode {
        table: String,
        source: kernel::EncodeError,
    },
    #[error("updating nftables table {table} over netlink: {source}")]
    Netlink { table: String, source: NetlinkError },
}

/// Owns our table and routing rules; knows what is installed.
#[derive(Debug)]
pub struct Interceptor {
    cfg: InterceptConfig,
    listen_port: u16,
    installed: Option<Elements>,
    bridge: bridge::Saved,
    /// Same-bridge reply steering (transparent mode only): the bridges
    /// installed in our `bridge` table (None: not installed, or a batch
    /// failed and the next sync renders it whole)...
    steer: Option<Vec<steer::Bridge>>,
    /// The bridges steered, re-read from /sys every few seconds.
    bridges: bridge_cache::BridgeCache,
    /// ...and its endpoints, updated from the Services that changed since
    /// `last` (the table of the previous sync).
    endpoints: EndpointCounts,
    last: Option<Arc<ServiceTable>>,
    transparent: bool,
    /// The table `installed` was made for: the next delta looks only at
    /// frontends whose route changed since (None: diff the sets whole).
    installed_for: Option<Arc<ServiceTable>>,
    /// Element changes go out here.
    netlink: netlink::Writer,
    /// A netlink batch may have applied in part: the next sync replaces
    /// the table whole.
    render_whole: bool,
    /// The kernel datapath: what the next sync installs.
    kernel_plan: kernel::KernelPlan,
    /// The plan installed: its elements are `kernel::elements` of it,
    /// made when a sync needs them (a whole diff), not held (~160k
    /// strings at 10k frontends, most of the peak RSS); the frontends the
    /// next plan moved (`kernel_keys`), the shared-element counts of the
    /// installed plan, and whether the last sync left all of it true.
    kernel_plan_installed: kernel::KernelPlan,
    kernel_keys: Option<kernel::KernelKeys>,
    shared: kernel::Shared,
    kernel_in_step: bool,
    /// The TCP endpoints the installed proxy sets route to, counted per
    /// frontend: what keeps an endpoint out of the reply gate `kepx`
    /// (`kernel/replies.rs`).
    proxy_endpoints: kernel::replies::ProxyEndpoints,
    /// The verdict-map elements installed, kept while their frontend is
    /// in the table (`kernel/verdicts.rs`).
    verdicts: kernel::verdicts::Verdicts,
    /// What the raw chain's fast-path sets derive from, as installed
    /// (`kernel/fast.rs`).
    fast: kernel::fast::FastPath,
    /// The raw prerouting hook: only while the proxy path has work
    /// (`hook.rs`).
    hook: hook::Hook,
}

/// What one sync did, for logs and metrics.
#[derive(Debug, Clone, Copy)]
pub struct SyncStats {
    pub changed_elements: usize,
    pub took: Duration,
}

impl Interceptor {
    pub fn new(cfg: InterceptConfig, listen_port: u16, transparent: bool) -> Self {
        Self {
            cfg,
            listen_port,
            installed: None,
            bridge: bridge::Saved::default(),
            steer: None,
            bridges: bridge_cache::BridgeCache::default(),
            endpoints: EndpointCounts::default(),
            last: None,
            transparent,
            installed_for: None,
            netlink: netlink::Writer::default(),
            render_whole: false,
            kernel_plan: kernel::KernelPlan::default(),
            kernel_plan_installed: kernel::KernelPlan::default(),
            kernel_keys: None,
            shared: kernel::Shared::default(),
            kernel_in_step: false,
            proxy_endpoints: kernel::replies::ProxyEndpoints::default(),
            verdicts: kernel::verdicts::Verdicts::default(),
            fast: kernel::fast::FastPath::default(),
            hook: hook::Hook::default(),
        }
    }

    /// The kernel-path frontends the next `sync` installs. Frontends that
    /// leave the kernel path are drained (`kdrain`): their established
    /// flows stay with conntrack.
    pub fn set_kernel_plan(&mut self, mut plan: kernel::KernelPlan) {
        // `dataplane.transparent: false` promises backends the node's
        // address, whichever path a connection takes.
        if !self.transparent {
            let masquerade = |mut k: kernel::KernelPort| {
                k.masquerade = true;
                k
            };
            plan.vips = plan
                .vips
                .into_iter()
                .map(|(key, k)| (key, masquerade(k)))
                .collect();
            plan.node_ports = plan
                .node_ports
                .into_iter()
                .map(|(key, k)| (key, masquerade(k)))
                .collect();
        }
        self.kernel_plan = plan;
    }

    /// The plan keys the planner moved for the next `sync` (`None`: it
    /// planned whole, and the next sync diffs the sets whole).
    pub fn set_kernel_keys(&mut self, keys: Option<kernel::KernelKeys>) {
        self.kernel_keys = keys;
    }

    /// The bridge table's part of a sync: a full render when the bridges
    /// changed (or a batch failed), element updates otherwise; and the
    /// bridges it installs. A render of a table not there yet is its
    /// skeleton, the endpoints going over netlink.
    fn steering_batch(
        &mut self,
        table: &ServiceTable,
    ) -> (String, Batch, Option<Vec<steer::Bridge>>) {
        if !self.transparent {
            return (String::new(), Batch::default(), None);
        }
        let bridges = self.bridges.get();
        // Only the bridges' own subnets' endpoints are steered (see
        // endpoint_counts.rs); other bridges mean counting again, and a
        // render of the table whole (they differ from those installed).
        let nets: Vec<_> = bridges
            .iter()
            .flat_map(|b| b.nets.iter().copied())
            .collect();
        let old = match self.endpoints.set_nets(nets) {
            true => None,
            false => self.last.as_deref(),
        };
        let change = self.endpoints.update(old, table);
        let unchanged = self.steer.as_ref() == Some(&bridges);
        let fresh = !unchanged && !self.table_exists(Family::Bridge);
        let name = &self.cfg.table;
        let (text, delta) = match (unchanged, fresh) {
            (true, _) => (
                String::new(),
                steer::diff_batch(name, &change.removed, &change.added),
            ),
            (false, true) => {
                let all: Vec<_> = self.endpoints.keys().into_iter().collect();
                (
                    steer::render(name, &bridges, &Default::default()),
                    steer::diff_batch(name, &[], &all),
                )
            }
            (false, false) => (
                steer::render(name, &bridges, &self.endpoints.keys()),
                Batch::default(),
            ),
        };
        (text, delta, Some(bridges))
    }

    /// Whether a table of ours is in the kernel; when unsure, yes (the
    /// atomic replacement is right either way, only slower).
    fn table_exists(&mut self, family: Family) -> bool {
        self.netlink
            .table_exists(family, &self.cfg.table)
            .unwrap_or(true)
    }

    /// Makes the kernel match `table`. The first call (and the first after
    /// a failure that left the kernel's state unknown) replaces any stale
    /// table with one `nft -f` and installs routing; later calls send only
    /// element changes, as one netlink batch: no process starts on the
    /// change path.
    pub fn sync(&mut self, table: &Arc<ServiceTable>) -> Result<SyncStats, InterceptError> {
        let out = self.sync_inner(table);
        if out.is_err() {
            self.recount();
        }
        out
    }

    /// After a failed sync: the counts a step moved in place, again from
    /// what is installed (O(n), failures only).
    fn recount(&mut self) {
        self.shared = kernel::Shared::of(&self.kernel_plan_installed);
        self.proxy_endpoints = match (&self.installed_for, &self.installed) {
            (Some(table), Some(have)) => kernel::replies::ProxyEndpoints::of(table, have),
            _ => kernel::replies::ProxyEndpoints::default(),
        };
    }

    fn sync_inner(&mut self, table: &Arc<ServiceTable>) -> Result<SyncStats, InterceptError> {
        let start = Instant::now();
        let full = || {
            Elements::from_table(table)
                .with_node_addresses(&self.cfg.node_port_addresses, table)
                .without_kernel(&self.kernel_plan)
        };
        // With kernel-datapath frontends, a sync whose table was patched
        // from the one installed (and whose plan moved only the frontends
        // the planner names) steps the touched frontends: their proxy sets
        // and their kernel elements. Otherwise it diffs the sets whole (in
        // process: still one netlink batch, no `nft`). Without kernel
        // frontends a sync takes the route delta, source ranges included.
        let kernel_keys = self.kernel_keys.take();
        let kernel_any = !self.kernel_plan.is_empty()
            || !self.kernel_plan_installed.is_empty()
            || !self.verdicts.is_empty();
        let kernel_step = kernel_any
            && self.kernel_in_step
            && kernel_keys.is_some()
            && self.installed.is_some()
            && !self.render_whole
            && self
                .installed_for
                .as_ref()
                .is_some_and(|base| table.changed_since(base).is_some());
        // The kernel elements of a whole diff or render, new and
        // installed (a first fill into a fresh table streams them from the
        // plan instead, a step makes only the touched frontends').
        let mut kernel_want: Option<kernel::KernelElements> = None;
        let mut kernel_have: Option<kernel::KernelElements> = None;
        let whole_diff = kernel_any && !kernel_step;
        // The kernel part of a step, once the kernel accepted it.
        let mut kernel_stepped: Option<kernel::Step> = None;
        // A first install into a fresh table sends the kernel elements
        // after the rest, in bounded batches (`fill_kernel`).
        let mut fill_kernel = false;
        let mut text = String::new();
        let mut delta = Batch::default();
        // After a whole render in text: what the fast-path sets derive from
        // (`kernel/fast.rs`), as netlink changes to follow.
        let mut rebuild: Option<Batch> = None;
        // Whether a whole render carries the raw prerouting hook (`None`:
        // no render; the hook is added ahead of a delta that needs it).
        let mut hooked: Option<bool> = None;
        // On success: the whole new contents, or a delta to the installed.
        let mut fresh: Option<Elements> = None;
        let mut step: Option<Delta> = None;
        // The proxy path's endpoints and the kernel's shared counts after
        // this sync (a whole one's), kept once the kernel took the batch.
        // (A step moves both in place.)
        let mut proxy_next: Option<kernel::replies::ProxyEndpoints> = None;
        let mut shared_next: Option<kernel::Shared> = None;
        let mut verdicts_next: Option<kernel::verdicts::Verdicts> = None;
        let changed = match (&self.installed, &self.installed_for) {
            (None, _) => {
                if self.cfg.disable_bridge_netfilter {
                    self.bridge = bridge::disable();
                }
                routing::install(&self.cfg).map_err(|source| InterceptError::Routing {
                    route_table: self.cfg.route_table,
                    source,
                })?;
                let want = full();
                hooked = Some(self.hook.wants(hook::needs(&want), start));
                let proxy = kernel::replies::ProxyEndpoints::of(table, &want);
                let shared = kernel::Shared::of(&self.kernel_plan);
                let replies = kernel::replies::gate_elements(&shared, &proxy);
                if self.table_exists(Family::Inet) {
                    text =
                        ruleset::render(&self.cfg, self.listen_port, &want, hooked == Some(true));
                    let k = kernel_want.insert(kernel::elements(&self.kernel_plan));
                    k.elements.extend(replies);
                    text.push_str(
                        &k.diff_commands(&kernel::KernelElements::default(), &self.cfg.table),
                    );
                    rebuild = Some(self.fast_rebuild(k, &want)?);
                } else {
                    // Nothing of ours to replace: the skeleton by nft, the
                    // elements over netlink (nft parsing 10k elements was
                    // most of the first sync at scale).
                    text = ruleset::render(
                        &self.cfg,
                        self.listen_port,
                        &Elements::default(),
                        hooked == Some(true),
                    );
                    delta = want.diff_batch(&Elements::default(), &self.cfg.table);
                    let replies = kernel::KernelElements { elements: replies };
                    delta.extend(self.kernel_batch(&replies, &kernel::KernelElements::default())?);
                    fill_kernel = true;
                }
                proxy_next = Some(proxy);
                shared_next = Some(shared);
                verdicts_next = Some(kernel::verdicts::Verdicts::of(&self.kernel_plan));
                let n = want.len();
                fresh = Some(want);
                n
            }
            (Some(_), _) if self.render_whole => {
                let want = full();
                hooked = Some(self.hook.wants(hook::needs(&want), start));
                text = ruleset::render(&self.cfg, self.listen_port, &want, hooked == Some(true));
                kernel_have = Some(kernel::elements(&self.kernel_plan_installed));
                let proxy = kernel::replies::ProxyEndpoints::of(table, &want);
                let shared = kernel::Shared::of(&self.kernel_plan);
                let k = kernel_want.insert(kernel::elements(&self.kernel_plan));
                k.elements
                    .extend(kernel::replies::gate_elements(&shared, &proxy));
                proxy_next = Some(proxy);
                shared_next = Some(shared);
                verdicts_next = Some(kernel::verdicts::Verdicts::of(&self.kernel_plan));
                text.push_str(
                    &k.diff_commands(&kernel::KernelElements::default(), &self.cfg.table),
                );
                rebuild = Some(self.fast_rebuild(k, &want)?);
                let n = want.len();
                fresh = Some(want);
                n
            }
            (Some(have), _) if whole_diff => {
                let want = full();
                delta = want.diff_batch(have, &self.cfg.table);
                let mut k_have = kernel::elements(&self.kernel_plan_installed);
                let mut k_want = kernel::elements(&self.kernel_plan);
                let proxy = kernel::replies::ProxyEndpoints::of(table, &want);
                let shared = kernel::Shared::of(&self.kernel_plan);
                k_have.elements.extend(kernel::replies::gate_elements(
                    &self.shared,
                    &self.proxy_endpoints,
                ));
                k_want
                    .elements
                    .extend(kernel::replies::gate_elements(&shared, &proxy));
                verdicts_next = Some(self.verdicts.whole(
                    &self.kernel_plan,
                    table,
                    &mut k_have.elements,
                    &mut k_want.elements,
                ));
                delta.extend(self.kernel_batch(&k_want, &k_have)?);
                // Endpoints the proxy path left keep the socket rule for
                // their proxied connections (see kernel/replies.rs).
                delta.extend(kernel::replies::moved_batch(
                    &self.cfg.table,
                    self.proxy_endpoints.left(&proxy),
                    KERNEL_MOVED_SECONDS,
                ));
                proxy_next = Some(proxy);
                shared_next = Some(shared);
                kernel_have = Some(k_have);
                kernel_want = Some(k_want);
                // Kernel frontends that went to the proxy keep their
                // established flows (see ruleset.rs, kdrain).
                let left: Vec<_> = self
                    .kernel_installed_vips()
                    .filter(|k| want.vips.contains(k))
                    .collect();
                delta.extend(kernel::drain_batch(
                    &self.cfg.table,
                    left,
                    KERNEL_DRAIN_SECONDS,
                ));
                let left: Vec<_> = self
                    .kernel_installed_node_ports()
                    .filter(|k| want.node_ports.contains(k))
                    .collect();
                delta.extend(kernel::drain_node_port_batch(
                    &self.cfg.table,
                    left,
                    KERNEL_DRAIN_SECONDS,
                ));
                // Proxy frontends that went to the kernel keep their
                // proxied connections (see ruleset.rs, kmoved).
                let came: Vec<_> = kernel_fitting_vips(&self.kernel_plan)
                    .filter(|k| have.vips.contains(k))
                    .collect();
                delta.extend(kernel::moved_batch(
                    &self.cfg.table,
                    came,
                    KERNEL_MOVED_SECONDS,
                ));
                let came: std::collections::BTreeSet<_> =
                    kernel_fitting_node_ports(&self.kernel_plan)
                        .filter(|k| have.node_ports.contains(k))
                        .collect();
                delta.extend(kernel::moved_node_port_batch(
                    &self.cfg.table,
                    came,
                    KERNEL_MOVED_SECONDS,
                ));
                fresh = Some(want);
                delta.len()
            }
            (Some(have), Some(base)) if kernel_step => {
                let d = have.delta(
                    base,
                    table,
                    &self.cfg.node_port_addresses,
                    Some(&self.kernel_plan),
                );
                let keys = kernel_keys.unwrap_or_default();
                // The reply gate moves with the kernel step (see
                // kernel/replies.rs); `kernel_step` holds a change record.
                let none = crate::catalog::TableChange::default();
                let change = table.changed_since(base).unwrap_or(&none);
                let (mut k, gone) = kernel::replies::gate_step(
                    &mut self.proxy_endpoints,
                    &mut self.shared,
                    (base, table, change),
                    (have, &d),
                    (&self.kernel_plan_installed, &self.kernel_plan, &keys),
                );
                verdicts_next = Some(self.verdicts.step(
                    &self.kernel_plan,
                    &keys,
                    table,
                    &mut k.have.elements,
                    &mut k.want.elements,
                ));
                let kernel_batch = self.kernel_batch(&k.want, &k.have)?;
                let moved_endpoints =
                    kernel::replies::moved_batch(&self.cfg.table, gone, KERNEL_MOVED_SECONDS);
                delta = d.batch(&self.cfg.table);
                delta.extend(kernel_batch);
                delta.extend(moved_endpoints);
                // Kernel frontends that went to the proxy keep their
                // established flows (see ruleset.rs, kdrain).
                let diverted = |key: &(std::net::IpAddr, crate::catalog::Protocol, u16)| {
                    d.added.vips.contains(key)
                        || (have.vips.contains(key) && !d.removed.vips.contains(key))
                };
                let left: Vec<_> = keys
                    .vips
                    .iter()
                    .filter(|key| {
                        self.kernel_plan_installed
                            .vips
                            .get(*key)
                            .is_some_and(|k| k.fits())
                    })
                    .filter(|key| diverted(key))
                    .copied()
                    .collect();
                delta.extend(kernel::drain_batch(
                    &self.cfg.table,
                    left,
                    KERNEL_DRAIN_SECONDS,
                ));
                let node_port_diverted = |key: &(crate::catalog::Protocol, u16)| {
                    d.added.node_ports.contains(key)
                        || (have.node_ports.contains(key) && !d.removed.node_ports.contains(key))
                };
                let left: std::collections::BTreeSet<_> = keys
                    .node_ports
                    .iter()
                    .filter(|key| {
                        self.kernel_plan_installed
                            .node_ports
                            .get(*key)
                            .is_some_and(|k| k.fits())
                    })
                    .map(|&(_, proto, port)| (proto, port))
                    .filter(|key| node_port_diverted(key))
                    .collect();
                delta.extend(kernel::drain_node_port_batch(
                    &self.cfg.table,
                    left,
                    KERNEL_DRAIN_SECONDS,
                ));
                // Proxy frontends that went to the kernel keep their
                // proxied connections (see ruleset.rs, kmoved).
                let came: Vec<_> = keys
                    .vips
                    .iter()
                    .filter(|key| self.kernel_plan.vips.get(*key).is_some_and(|k| k.fits()))
                    .filter(|key| have.vips.contains(*key))
                    .copied()
                    .collect();
                delta.extend(kernel::moved_batch(
                    &self.cfg.table,
                    came,
                    KERNEL_MOVED_SECONDS,
                ));
                let came: std::collections::BTreeSet<_> = keys
                    .node_ports
                    .iter()
                    .filter(|key| {
                        self.kernel_plan
                            .node_ports
                            .get(*key)
                            .is_some_and(|k| k.fits())
                    })
                    .map(|&(_, proto, port)| (proto, port))
                    .filter(|key| have.node_ports.contains(key))
                    .collect();
                delta.extend(kernel::moved_node_port_batch(
                    &self.cfg.table,
                    came,
                    KERNEL_MOVED_SECONDS,
                ));
                kernel_stepped = Some(k);
                step = Some(d);
                delta.len()
            }
            (Some(have), Some(base)) => {
                let d = have.delta(base, table, &self.cfg.node_port_addresses, None);
                delta = d.batch(&self.cfg.table);
                // No kernel frontends, so no reply gate; the proxy path's
                // endpoints are still counted for when there are.
                let (_, gone) =
                    step_proxy_endpoints(&mut self.proxy_endpoints, base, table, have, &d);
                delta.extend(kernel::replies::moved_batch(
                    &self.cfg.table,
                    gone,
                    KERNEL_MOVED_SECONDS,
                ));
                step = Some(d);
                delta.len()
            }
            (Some(have), None) => {
                let want = full();
                delta = want.diff_batch(have, &self.cfg.table);
                let proxy = kernel::replies::ProxyEndpoints::of(table, &want);
                delta.extend(kernel::replies::moved_batch(
                    &self.cfg.table,
                    self.proxy_endpoints.left(&proxy),
                    KERNEL_MOVED_SECONDS,
                ));
                proxy_next = Some(proxy);
                fresh = Some(want);
                delta.len()
            }
        };
        let diffed = start.elapsed();
        // Our inet table is created anew from text (its sets empty).
        let recreated = !text.is_empty();
        let (steer_text, steer_delta, bridges) = self.steering_batch(table);
        text.push_str(&steer_text);
        delta.extend(steer_delta);
        self.last = Some(table.clone());
        let steered = start.elapsed();
        let applied = self.apply(&text, &delta, recreated, hooked, rebuild.as_ref());
        let netlink_elements = delta.len();
        drop(delta);
        let nft_took = applied.as_ref().map_or(Duration::ZERO, |&d| d);
        let filled = Instant::now();
        let applied = match applied {
            Ok(_) if fill_kernel => self.fill_kernel(),
            other => other.map(|_| ()),
        };
        tracing::debug!(
            diffed_us = diffed.as_micros() as u64,
            steered_us = steered.as_micros() as u64,
            apply_us = (start.elapsed() - steered).as_micros() as u64,
            nft_us = nft_took.as_micros() as u64,
            kernel_fill_us = fill_kernel.then(|| filled.elapsed().as_micros() as u64),
            nft_bytes = text.len(),
            netlink_elements,
            kernel_step,
            proxy_endpoints = proxy_next
                .as_ref()
                .map_or(self.proxy_endpoints.len(), |p| p.len()),
            "nftables sync timings"
        );
        if let Err(e) = applied {
            // The installed elements are still those of `installed_for`
            // (or unknown: rendered whole next time).
            // Nothing of the batch applied (or, over netlink, maybe part
            // of it); the endpoint counts already moved on, so the bridge
            // table is rendered whole next time.
            self.steer = None;
            self.bridges.forget();
            self.kernel_in_step = false;
            if let InterceptError::Netlink { source, .. } = &e
                && source.state_unknown()
            {
                self.render_whole = true;
            }
            return Err(e);
        }
        match (fresh, step, &mut self.installed) {
            (Some(want), _, _) => self.installed = Some(want),
            (None, Some(d), Some(have)) => have.apply(&d),
            _ => {}
        }
        match kernel_stepped {
            Some(k) => {
                let stale = kernel::conntrack::removed_udp_endpoints(&k.have, &k.want);
                kernel::conntrack::delete(&stale);
            }
            None => {
                if let (Some(have), Some(want)) = (&kernel_have, &kernel_want) {
                    let stale = kernel::conntrack::removed_udp_endpoints(have, want);
                    kernel::conntrack::delete(&stale);
                }
                self.shared = shared_next.unwrap_or_else(|| kernel::Shared::of(&self.kernel_plan));
            }
        }
        if let Some(proxy) = proxy_next {
            self.proxy_endpoints = proxy;
        }
        if let Some(verdicts) = verdicts_next {
            self.verdicts = verdicts;
        }
        self.kernel_plan_installed = self.kernel_plan.clone();
        self.kernel_in_step = true;
        // The installed sets are those of this table and plan, whichever
        // way they got there: the next sync can step from them.
        self.installed_for = Some(table.clone());
        self.render_whole = false;
        self.steer = bridges;
        self.settle_hook();
        Ok(SyncStats {
            changed_elements: changed,
            took: start.elapsed(),
        })
    }

    /// The kernel datapath's element changes from `have` to `want`.
    fn kernel_batch(
        &self,
        want: &kernel::KernelElements,
        have: &kernel::KernelElements,
    ) -> Result<Batch, InterceptError> {
        want.diff_batch(have, &self.cfg.table)
            .map_err(|source| InterceptError::Encode {
                table: self.cfg.table.clone(),
                source,
            })
    }

    /// Adds every kernel element to a table that has none, in batches of
    /// a bounded size (each atomic; the table is not serving yet, and a
    /// failure leaves `installed` unset, so the next sync replaces the
    /// table whole).
    fn fill_kernel(&mut self) -> Result<(), InterceptError> {
        let table = self.cfg.table.clone();
        // The plan is a persistent map: the copy shares its entries.
        let plan = self.kernel_plan.clone();
        for batch in kernel::fill_batches(&plan, &table, KERNEL_FILL_BATCH) {
            let batch = batch.map_err(|source| InterceptError::Encode {
                table: table.clone(),
                source,
            })?;
            self.apply_elements(&batch)?;
        }
        Ok(())
    }

    /// `nft -f` for a full render, then the netlink batch of element
    /// changes. Returns how long `nft` took (the sync's timings).
    /// `hooked`: whether `text` renders our table with the raw prerouting
    /// hook (`None`: it does not render it; the hook is added ahead of a
    /// delta that needs it, `hook.rs`).
    fn apply(
        &mut self,
        text: &str,
        delta: &Batch,
        recreated: bool,
        hooked: Option<bool>,
        rebuild: Option<&Batch>,
    ) -> Result<Duration, InterceptError> {
        let nft_start = Instant::now();
        if !text.is_empty() {
            self.nft(text)?;
        }
        match hooked {
            Some(hooked) => self.hook.set_installed(hooked),
            None if !self.hook.installed() && hook::adds_work(delta) => {
                let chain = ruleset::raw_hook(&self.cfg);
                self.nft(&hook::add_batch(&self.cfg.table, &chain))?;
                self.hook.set_installed(true);
                tracing::info!(
                    table = %self.cfg.table,
                    "raw prerouting hook added: a Service port is on the proxy path"
                );
            }
            None => {}
        }
        let nft_took = nft_start.elapsed();
        if recreated {
            self.fast.reset();
        }
        if let Some(rebuild) = rebuild {
            // The text put these elements in; the fast sets follow them.
            self.send_following_fast(rebuild, false)?;
        }
        self.apply_elements(delta)?;
        Ok(nft_took)
    }

    fn nft(&self, text: &str) -> Result<(), InterceptError> {
        let table = &self.cfg.table;
        command::nft_batch(text).map_err(|source| match self.installed {
            None => InterceptError::Install {
                table: table.clone(),
                source,
            },
            Some(_) => InterceptError::Update {
                table: table.clone(),
                source,
            },
        })
    }

    /// After a sync: the raw prerouting hook goes once the proxy path has
    /// had no work for the linger (`hook.rs`). A failure leaves it in
    /// place, which costs CPU only; the next sync tries again.
    fn settle_hook(&mut self) {
        let need = self.installed.as_ref().is_some_and(hook::needs);
        if !self.hook.synced(need, Instant::now()) {
            return;
        }
        match command::nft_batch(&hook::delete_batch(&self.cfg.table)) {
            Ok(()) => {
                self.hook.set_installed(false);
                tracing::info!(
                    table = %self.cfg.table,
                    "raw prerouting hook removed: no Service port on the proxy path"
                );
            }
            // Every sync tries again: one warning a while, not one a sync.
            Err(e) => crate::logging::rate_limited_warn("intercept:hook", || {
                tracing::warn!(
                    table = %self.cfg.table,
                    error = %e,
                    "cannot remove the raw prerouting hook; it stays"
                )
            }),
        }
    }

    /// What the fast-path sets derive from in a whole render (`kvip`,
    /// `kepx`, `lbsr`), as the netlink additions a fresh table would take.
    fn fast_rebuild(
        &self,
        kernel: &kernel::KernelElements,
        want: &Elements,
    ) -> Result<Batch, InterceptError> {
        let keys = kernel::KernelElements {
            elements: kernel
                .elements
                .iter()
                .filter(|e| kernel::fast::derives_from(e.set))
                .cloned()
                .collect(),
        };
        let mut batch = self.kernel_batch(&keys, &kernel::KernelElements::default())?;
        batch.extend(
            want.source_ranges
                .additions_batch(&Default::default(), &self.cfg.table),
        );
        Ok(batch)
    }

    /// The fast-path sets may no longer be what we think: the next sync
    /// renders the table whole (and the sets from scratch).
    fn fast_lost(&mut self) {
        self.fast.reset();
        self.render_whole = true;
    }

    fn netlink_apply(&mut self, batch: &Batch) -> Result<usize, InterceptError> {
        self.netlink
            .apply(batch)
            .map_err(|source| InterceptError::Netlink {
                table: self.cfg.table.clone(),
                source,
            })
    }

    /// Moves every frontend to the reject sets: while the process drains
    /// before exit, new connections are refused at once instead of being
    /// diverted to listeners that are gone.
    pub fn reject_everything(&mut self) -> Result<(), InterceptError> {
        let Some(have) = &self.installed else {
            return Ok(());
        };
        let mut want = have.clone();
        want.vips_no_endpoints
            .extend(std::mem::take(&mut want.vips));
        want.node_ports_no_endpoints
            .extend(std::mem::take(&mut want.node_ports));
        let batch = want.diff_batch(have, &self.cfg.table);
        self.apply_elements(&batch)?;
        self.installed = Some(want);
        // The elements no longer match any table: diff whole next time.
        self.installed_for = None;
        Ok(())
    }

    /// Sends set or map element changes of other features (kernel datapath
    /// maps, source ranges) over the same socket, as one more atomic batch.
    /// The fast-path sets (`kernel/fast.rs`) follow: what leaves them goes
    /// first, what joins them last, each in a transaction of its own, so
    /// they never hold more than the gate would accept at once.
    pub fn apply_elements(&mut self, batch: &Batch) -> Result<usize, InterceptError> {
        self.send_following_fast(batch, true)
    }

    /// `batch` (sent here if `send`; else the kernel holds it already, from
    /// a whole render) and the fast-set changes that follow it.
    fn send_following_fast(&mut self, batch: &Batch, send: bool) -> Result<usize, InterceptError> {
        let step = self.fast.follow(batch, Instant::now());
        let table = self.cfg.table.clone();
        let result = (|| {
            for gone in step.deletions(&table) {
                self.netlink_apply(&gone)?;
            }
            let n = if send { self.netlink_apply(batch)? } else { 0 };
            for new in step.additions(&table) {
                self.netlink_apply(&new)?;
            }
            Ok(n)
        })();
        match result {
            Ok(n) => {
                self.fast.commit(step);
                Ok(n)
            }
            Err(e) => {
                self.fast_lost();
                Err(e)
            }
        }
    }

    /// The VIP frontends the kernel datapath serves now.
    fn kernel_installed_vips(
        &self,
    ) -> impl Iterator<Item = (std::net::IpAddr, crate::catalog::Protocol, u16)> + '_ {
        kernel_fitting_vips(&self.kernel_plan_installed)
    }

    /// The NodePorts the kernel datapath serves now (of either family).
    fn kernel_installed_node_ports(
        &self,
    ) -> impl Iterator<Item = (crate::catalog::Protocol, u16)> + '_ {
        kernel_fitting_node_ports(&self.kernel_plan_installed)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
    }

    pub fn is_installed(&self) -> bool {
        self.installed.is_some()
    }

    /// Removes our table and routing; what others installed is untouched.
    pub fn remove(&mut self) -> Result<(), InterceptError> {
        routing::remove(&self.cfg);
        self.bridge.restore();
        self.installed = None;
        self.installed_for = None;
        // Nothing of the kernel datapath is installed either.
        self.kernel_plan_installed = kernel::KernelPlan::default();
        self.shared = kernel::Shared::default();
        self.kernel_in_step = false;
        self.proxy_endpoints = kernel::replies::ProxyEndpoints::default();
        self.verdicts = kernel::verdicts::Verdicts::default();
        self.fast.reset();
        self.hook.reset();
        if self.steer.take().is_some() {
            let _ = command::nft_batch(&steer::remove(&self.cfg.table));
        }
        let batch = format!(
            "table inet {t} {{}}\ndelete table inet {t}\n",
            t = self.cfg.table
        );
        command::nft_batch(&batch).map_err(|source| InterceptError::Update {
            table: self.cfg.table.clone(),
            source,
        })
    }
}

/// Steps the proxy path's endpoint counts by `d` from `base` (installed
/// as `have`) to `table`: the endpoints touched and those no longer
/// counted (all of them counted again when `table` was not patched from
/// `base`).
fn step_proxy_endpoints(
    counts: &mut kernel::replies::ProxyEndpoints,
    base: &ServiceTable,
    table: &ServiceTable,
    have: &Elements,
    d: &Delta,
) -> (Vec<std::net::SocketAddr>, Vec<std::net::SocketAddr>) {
    match table.changed_since(base) {
        Some(change) => counts.step(base, table, change, have, d),
        None => {
            let mut after = have.clone();
            after.apply(d);
            let next = kernel::replies::ProxyEndpoints::of(table, &after);
            let gone: Vec<_> = counts.left(&next).collect();
            *counts = next;
            (gone.clone(), gone)
        }
    }
}
