//! The pipeline from sources to data plane and kernel: rescan, build the
//! table, bind policies, publish the snapshot, bring nftables in step.

use std::sync::Arc;
use std::time::Instant;

use crate::admin::metrics::KindLabels;
use crate::admin::{Metrics, PolicySummary};
use crate::catalog::{self, NodeContext, Severity};
use crate::intercept::Interceptor;
use crate::policy::PolicyRegistry;
use crate::snapshot::SharedSnapshot;
use crate::sources::FileSource;

use super::DaemonError;

/// What one sync did, for the reload answer.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Problems met, each naming file, object and field.
    pub problems: Vec<String>,
    /// The generation published, if anything changed.
    pub generation: Option<u64>,
}

pub struct Sync {
    pub source: FileSource,
    pub policies: Option<PolicyRegistry>,
    pub node: NodeContext,
    pub interceptor: Option<Interceptor>,
    pub snapshot: SharedSnapshot,
    pub metrics: Arc<Metrics>,
    pub summary: Arc<PolicySummary>,
}

impl Sync {
    fn count(
        &self,
        family: &prometheus_client::metrics::family::Family<
            KindLabels,
            prometheus_client::metrics::counter::Counter,
        >,
        kind: &str,
    ) {
        family
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    /// Rescans the sources and, when something changed (or `force`),
    /// publishes a new snapshot and brings nftables in step.
    pub fn run(&mut self, force: bool) -> Result<SyncReport, DaemonError> {
        let start = Instant::now();
        let mut report = SyncReport::default();
        let scan = self.source.rescan()?;
        for p in &scan.problems {
            self.count(&self.metrics.rejected_input, "manifest");
            let object = p.object.as_deref().unwrap_or("-");
            match p.severity {
                Severity::Error => {
                    tracing::error!(file = %p.file.display(), document = p.document, object, field = %p.field, "{}; the file's last good contents stay in force", p.message);
                    report.problems.push(format!("error: {p}"));
                }
                Severity::Warning => {
                    tracing::warn!(file = %p.file.display(), document = p.document, object, field = %p.field, "{}", p.message);
                }
            }
        }
        let policies_changed = self.rescan_policies(&mut report);
        if !scan.changed && !policies_changed && !force {
            return Ok(report);
        }
        let manifests = self.source.manifests();
        let built = catalog::build(&manifests.services, &manifests.slices, &self.node);
        for p in &built.problems {
            match p.severity {
                Severity::Error => {
                    tracing::error!(object = %p.object, field = %p.field, "{}", p.message);
                    report.problems.push(format!("error: {p}"));
                }
                Severity::Warning => {
                    tracing::warn!(object = %p.object, field = %p.field, "{}", p.message)
                }
            }
        }
        let table = Arc::new(built.table);
        let bindings = match &mut self.policies {
            Some(registry) => {
                let (bindings, problems) = registry.bind(&table);
                for p in problems {
                    self.metrics
                        .rejected_input
                        .get_or_create(&KindLabels {
                            kind: "policy-binding".into(),
                        })
                        .inc();
                    tracing::error!("{p}");
                    report.problems.push(format!("error: {p}"));
                }
                self.summary.publish(registry, &bindings);
                bindings
            }
            None => Arc::default(),
        };
        let generation = self.snapshot.publish(table.clone(), bindings);
        if let Some(interceptor) = &mut self.interceptor {
            match interceptor.sync(&table) {
                Ok(stats) => {
                    self.metrics
                        .nft_batch_duration
                        .observe(stats.took.as_secs_f64());
                    tracing::debug!(
                        changed = stats.changed_elements,
                        took_us = stats.took.as_micros() as u64,
                        "nftables in step"
                    );
                }
                Err(e) => {
                    self.count(&self.metrics.syncs, "failed");
                    return Err(e.into());
                }
            }
        }
        self.count(&self.metrics.syncs, "ok");
        self.metrics
            .sync_duration
            .observe(start.elapsed().as_secs_f64());
        tracing::info!(
            generation,
            services = table.services.len(),
            frontends = table.frontends.len() + table.node_ports.len(),
            "service table in force"
        );
        report.generation = Some(generation);
        Ok(report)
    }

    /// Loads new and changed policy modules; true when any changed.
    fn rescan_policies(&mut self, report: &mut SyncReport) -> bool {
        let Some(registry) = &mut self.policies else {
            return false;
        };
        let (changed, problems) = registry.rescan();
        for p in problems {
            self.metrics
                .policy_loads
                .get_or_create(&KindLabels {
                    kind: "failed".into(),
                })
                .inc();
            tracing::error!("{p}");
            report.problems.push(format!("error: {p}"));
        }
        if changed {
            self.metrics
                .policy_loads
                .get_or_create(&KindLabels { kind: "ok".into() })
                .inc();
        }
        changed
    }

    pub fn set_default_policy(&mut self, name: &str) {
        if let Some(registry) = &mut self.policies {
            registry.set_default(name);
        }
    }

    /// Forgets what was read, so that the next run re-reads every file.
    pub fn invalidate(&mut self) {
        self.source.invalidate();
        if let Some(registry) = &mut self.policies {
            registry.invalidate();
        }
    }

    /// Refuses new connections while open ones drain (see
    /// `Interceptor::reject_everything`).
    pub fn reject_new_connections(&mut self) {
        if let Some(interceptor) = &mut self.interceptor
            && let Err(e) = interceptor.reject_everything()
        {
            tracing::warn!(error = %e, "cannot switch frontends to reject while draining");
        }
    }

    pub fn cleanup(&mut self, keep_table: bool, table_name: &str) {
        let Some(interceptor) = &mut self.interceptor else {
            return;
        };
        if keep_table {
            tracing::info!(table = %table_name, "keeping the nftables table for a fast restart");
            return;
        }
        if let Err(e) = interceptor.remove() {
            tracing::error!(error = %e, "cannot remove our nftables table");
        }
    }
}
