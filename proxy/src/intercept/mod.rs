//! Interception with nftables: one `inet` table of our own whose sets hold
//! the service frontends. A Service change is one atomic batch of element
//! updates, never a ruleset rewrite.

mod bridge;
mod command;
mod elements;
mod endpoint_counts;
pub mod kernel;
mod routing;
mod ruleset;
mod source_ranges;
mod steer;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use command::CommandError;
pub use elements::Elements;

use crate::catalog::ServiceTable;
use crate::config::InterceptConfig;
use endpoint_counts::EndpointCounts;

/// How long a frontend that left the kernel datapath keeps its established
/// flows out of the proxy's TPROXY rule (conntrack's TCP established
/// timeout is longer; a flow idle past this is reset when it speaks again).
const KERNEL_DRAIN_SECONDS: u64 = 3600;

/// Parses an `addr . proto . port` element key back.
fn parse_vip(key: &str) -> Option<(std::net::IpAddr, crate::catalog::Protocol, u16)> {
    let mut parts = key.split(" . ");
    let ip = parts.next()?.parse().ok()?;
    let proto = match parts.next()? {
        "tcp" => crate::catalog::Protocol::Tcp,
        "udp" => crate::catalog::Protocol::Udp,
        _ => return None,
    };
    let port = parts.next()?.parse().ok()?;
    Some((ip, proto, port))
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
    /// ...and its endpoints, updated from the Services that changed since
    /// `last` (the table of the previous sync).
    endpoints: EndpointCounts,
    last: Option<Arc<ServiceTable>>,
    transparent: bool,
    /// The kernel datapath: what the next sync installs, what is installed.
    kernel_plan: kernel::KernelPlan,
    kernel_installed: kernel::KernelElements,
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
            endpoints: EndpointCounts::default(),
            last: None,
            transparent,
            kernel_plan: kernel::KernelPlan::default(),
            kernel_installed: kernel::KernelElements::default(),
        }
    }

    /// The kernel-path frontends the next `sync` installs. Frontends that
    /// leave the kernel path are drained (`kdrain`): their established
    /// flows stay with conntrack.
    pub fn set_kernel_plan(&mut self, mut plan: kernel::KernelPlan) {
        // `dataplane.transparent: false` promises backends the node's
        // address, whichever path a connection takes.
        if !self.transparent {
            for k in plan.vips.values_mut().chain(plan.node_ports.values_mut()) {
                k.masquerade = true;
            }
        }
        self.kernel_plan = plan;
    }

    /// The bridge table's part of a batch: a full render when the bridges
    /// changed (or a batch failed), element updates otherwise; and the
    /// bridges it installs.
    fn steering_batch(&mut self, table: &ServiceTable) -> (String, Option<Vec<steer::Bridge>>) {
        if !self.transparent {
            return (String::new(), None);
        }
        let bridges = steer::bridges();
        let change = self.endpoints.update(self.last.as_deref(), table);
        let name = &self.cfg.table;
        let batch = match &self.steer {
            Some(had) if *had == bridges => steer::diff(name, &change.removed, &change.added),
            _ => steer::render(name, &bridges, &self.endpoints.keys()),
        };
        (batch, Some(bridges))
    }

    /// Makes the kernel match `table` with one `nft -f` (a process start is
    /// most of what a one-endpoint change costs): the first call replaces
    /// any stale tables and installs routing; later calls send only element
    /// changes.
    pub fn sync(&mut self, table: &Arc<ServiceTable>) -> Result<SyncStats, InterceptError> {
        let start = Instant::now();
        let want = Elements::from_table(table)
            .with_node_addresses(&self.cfg.node_port_addresses, table)
            .without_kernel(&self.kernel_plan);
        let kernel_want = kernel::elements(&self.kernel_plan);
        let (mut batch, changed) = match &self.installed {
            None => {
                if self.cfg.disable_bridge_netfilter {
                    self.bridge = bridge::disable();
                }
                routing::install(&self.cfg).map_err(|source| InterceptError::Routing {
                    route_table: self.cfg.route_table,
                    source,
                })?;
                let mut batch = ruleset::render(&self.cfg, self.listen_port, &want);
                batch.push_str(
                    &kernel_want.diff_commands(&kernel::KernelElements::default(), &self.cfg.table),
                );
                (batch, want.len() + kernel_want.len())
            }
            Some(have) => {
                let mut batch = want.diff_commands(have, &self.cfg.table);
                batch.push_str(&kernel_want.diff_commands(&self.kernel_installed, &self.cfg.table));
                // Kernel frontends that went to the proxy keep their
                // established flows (see ruleset.rs, kdrain).
                batch.push_str(&kernel::drain_commands(
                    &self.cfg.table,
                    self.kernel_installed_vips()
                        .filter(|k| want.vips.contains(k)),
                    KERNEL_DRAIN_SECONDS,
                ));
                batch.push_str(&kernel::drain_node_port_commands(
                    &self.cfg.table,
                    self.kernel_installed_node_ports()
                        .filter(|k| want.node_ports.contains(k)),
                    KERNEL_DRAIN_SECONDS,
                ));
                let changed = batch.lines().count();
                (batch, changed)
            }
        };
        let diffed = start.elapsed();
        let (steering, bridges) = self.steering_batch(table);
        batch.push_str(&steering);
        self.last = Some(table.clone());
        let steered = start.elapsed();
        let applied = if batch.is_empty() {
            Ok(())
        } else {
            command::nft_batch(&batch)
        };
        tracing::debug!(
            diffed_us = diffed.as_micros() as u64,
            steered_us = steered.as_micros() as u64,
            nft_us = (start.elapsed() - steered).as_micros() as u64,
            batch_bytes = batch.len(),
            "nftables sync timings"
        );
        if let Err(source) = applied {
            // Nothing of the batch applied; the endpoint counts already
            // moved on, so the bridge table is rendered whole next time.
            self.steer = None;
            let table = self.cfg.table.clone();
            return Err(match self.installed {
                None => InterceptError::Install { table, source },
                Some(_) => InterceptError::Update { table, source },
            });
        }
        self.installed = Some(want);
        let stale = kernel::conntrack::removed_udp_endpoints(&self.kernel_installed, &kernel_want);
        kernel::conntrack::delete(&stale);
        self.kernel_installed = kernel_want;
        self.steer = bridges;
        Ok(SyncStats {
            changed_elements: changed,
            took: start.elapsed(),
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
        let batch = want.diff_commands(have, &self.cfg.table);
        if !batch.is_empty() {
            command::nft_batch(&batch).map_err(|source| InterceptError::Update {
                table: self.cfg.table.clone(),
                source,
            })?;
        }
        self.installed = Some(want);
        Ok(())
    }

    /// The VIP frontends the kernel datapath serves now.
    fn kernel_installed_vips(
        &self,
    ) -> impl Iterator<Item = (std::net::IpAddr, crate::catalog::Protocol, u16)> + '_ {
        self.kernel_installed
            .elements
            .iter()
            .filter(|e| e.set.starts_with("kfront"))
            .filter_map(|e| parse_vip(&e.key))
    }

    /// The NodePorts the kernel datapath serves now.
    fn kernel_installed_node_ports(
        &self,
    ) -> impl Iterator<Item = (crate::catalog::Protocol, u16)> + '_ {
        self.kernel_installed
            .elements
            .iter()
            .filter(|e| e.set == "knp4" || e.set == "knp6")
            .filter_map(|e| {
                let (proto, port) = e.key.split_once(" . ")?;
                let proto = match proto {
                    "tcp" => crate::catalog::Protocol::Tcp,
                    "udp" => crate::catalog::Protocol::Udp,
                    _ => return None,
                };
                Some((proto, port.parse().ok()?))
            })
    }

    pub fn is_installed(&self) -> bool {
        self.installed.is_some()
    }

    /// Removes our table and routing; what others installed is untouched.
    pub fn remove(&mut self) -> Result<(), InterceptError> {
        routing::remove(&self.cfg);
        self.bridge.restore();
        self.installed = None;
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
