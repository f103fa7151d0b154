//! The pipeline from sources to data plane and kernel: rescan, build the
//! table, bind policies, publish the snapshot, bring nftables in step.

use std::sync::Arc;
use std::time::Instant;

use crate::admin::metrics::KindLabels;
use crate::admin::{Metrics, PolicySummary};
use crate::catalog::{BuildOutput, NodeContext, Problem, Severity};
use crate::intercept::{InterceptError, Interceptor};
use crate::policy::{ModuleError, PolicyProblem, PolicyRegistry};
use crate::snapshot::SharedSnapshot;
use crate::sources::Source;
use crate::sources::kube::Dirty;

use super::DaemonError;
use super::incremental::Translations;

/// What one sync did, for the reload answer.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Problems met, each naming file, object and field.
    pub problems: Vec<String>,
    /// The generation published, if anything changed.
    pub generation: Option<u64>,
}

/// What a source read yields: the table built, whether every Service was
/// translated again, and the trigger times of the slice changes in it.
struct Read {
    built: BuildOutput,
    full: bool,
    triggers: Vec<std::time::SystemTime>,
}

pub struct Sync {
    pub source: Source,
    /// Cached per-Service translations.
    pub translations: Translations,
    /// The next sync re-translates every Service.
    pub rebuild_all: bool,
    pub policies: Option<PolicyRegistry>,
    pub node: NodeContext,
    pub interceptor: Option<Interceptor>,
    pub snapshot: SharedSnapshot,
    pub metrics: Arc<Metrics>,
    pub summary: Arc<PolicySummary>,
    /// `policy.configMap`: modules from the API (kubernetes source only).
    pub policy_configmap: Option<crate::sources::kube::configmap::ConfigMapWatch>,
    /// Slot tables of the kernel datapath, kept between syncs.
    pub kernel_tables: crate::policy::kernel_tables::TableCache,
    /// The kernel datapath's plan, kept between syncs.
    pub planner: crate::intercept::kernel::Planner,
    /// `dataplane.datapath`.
    pub datapath: crate::catalog::datapath::DatapathMode,
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
        let built = if matches!(self.source, Source::File(_)) {
            self.read_files(force, &mut report)?
        } else {
            self.read_watch(force, &mut report)
        };
        let Some(Read {
            built,
            full,
            triggers,
        }) = built
        else {
            return Ok(report);
        };
        for p in &built.problems {
            log_problem(p, &mut report);
        }
        let built_at = start.elapsed();
        let table = Arc::new(built.table);
        let mut bind_stats = crate::policy::BindStats::default();
        let bindings = match &mut self.policies {
            Some(registry) => {
                let previous = registry.bindings().clone();
                // A forced sync (a reload) resolves every Service again, so
                // that its answer names every standing binding problem.
                let (bindings, problems) = registry.bind_changed(&table, force || full);
                bind_stats = registry.last_bind();
                for p in problems {
                    if matches!(p, PolicyProblem::TooManyEndpoints { .. }) {
                        crate::logging::limit_reached(&self.metrics, "policy_endpoints", || {});
                    }
                    self.metrics
                        .rejected_input
                        .get_or_create(&KindLabels {
                            kind: "policy-binding".into(),
                        })
                        .inc();
                    tracing::error!("{p}");
                    report.problems.push(format!("error: {p}"));
                }
                // Walks every binding: only when one moved or the modules did.
                if bind_stats.full || !Arc::ptr_eq(&previous, &bindings) {
                    self.summary.publish(registry, &bindings);
                }
                bindings
            }
            None => Arc::default(),
        };
        let bound_at = start.elapsed();
        let bindings_for_kernel = bindings.clone();
        let generation = self.snapshot.publish(table.clone(), bindings);
        let published_at = start.elapsed();
        if let Some(interceptor) = &mut self.interceptor {
            // Only the changed Services' ports are decided again, unless
            // every binding may have moved.
            self.planner.update(
                &table,
                &bindings_for_kernel,
                bind_stats.full || force || full,
                &mut self.kernel_tables,
                self.datapath,
            );
            let (kernel, proxy) = self.planner.counts();
            for (datapath, n) in [("kernel", kernel), ("proxy", proxy)] {
                self.metrics
                    .service_ports
                    .get_or_create(&crate::admin::metrics::DatapathLabels {
                        datapath: datapath.into(),
                    })
                    .set(n as i64);
            }
            self.summary
                .publish_datapaths(self.planner.choices().clone());
            interceptor.set_kernel_plan(self.planner.plan().clone());
            interceptor.set_kernel_keys(self.planner.keys().cloned());
            let planned_at = start.elapsed();
            match interceptor.sync(&table) {
                Ok(stats) => {
                    self.metrics
                        .nft_batch_duration
                        .observe(stats.took.as_secs_f64());
                    tracing::debug!(
                        planned_us = planned_at.as_micros() as u64,
                        changed = stats.changed_elements,
                        took_us = stats.took.as_micros() as u64,
                        "nftables in step"
                    );
                }
                Err(e) => {
                    if matches!(e, InterceptError::Netlink { .. }) {
                        self.metrics.netlink_failures.inc();
                    }
                    self.count(&self.metrics.syncs, "failed");
                    return Err(e.into());
                }
            }
        }
        self.count(&self.metrics.syncs, "ok");
        let took = start.elapsed();
        self.metrics.sync_duration.observe(took.as_secs_f64());
        let split = if full {
            &self.metrics.sync_full_duration
        } else {
            &self.metrics.sync_partial_duration
        };
        split.observe(took.as_secs_f64());
        let now = std::time::SystemTime::now();
        for t in triggers {
            // A trigger time ahead of our clock (skew) says nothing.
            if let Ok(latency) = now.duration_since(t) {
                self.metrics
                    .network_programming_duration
                    .observe(latency.as_secs_f64());
            }
        }
        // Where a sync's time goes, cumulative from its start: read and
        // build, policy binding, snapshot publish, nftables.
        tracing::debug!(
            built_us = built_at.as_micros() as u64,
            bound_us = bound_at.as_micros() as u64,
            rebound = bind_stats.services,
            rebound_all = bind_stats.full,
            dry_runs = bind_stats.dry_runs,
            published_us = published_at.as_micros() as u64,
            done_us = took.as_micros() as u64,
            "sync timings"
        );
        tracing::info!(
            generation,
            services = table.services.len(),
            frontends = table.frontends.len() + table.node_ports.len(),
            "service table in force"
        );
        report.generation = Some(generation);
        Ok(report)
    }

    /// The file source: rescan, and on a change a full build.
    fn read_files(
        &mut self,
        force: bool,
        report: &mut SyncReport,
    ) -> Result<Option<Read>, DaemonError> {
        let Source::File(files) = &mut self.source else {
            return Ok(None);
        };
        let scan = files.rescan()?;
        for _ in 0..scan.too_large {
            crate::logging::limit_reached(&self.metrics, "manifest_bytes", || {});
        }
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
        let rescanned = Instant::now();
        let policies_changed = self.rescan_policies(report);
        let policies_us = rescanned.elapsed().as_micros() as u64;
        if !scan.changed && !policies_changed && !force {
            return Ok(None);
        }
        // A change's read, phase by phase (each its own duration): what a
        // slow change spent its time on.
        let t = scan.timings;
        tracing::debug!(
            files = t.files_read,
            listed_us = t.listed.as_micros() as u64,
            parsed_us = t.parsed.as_micros() as u64,
            indexed_us = t.indexed.as_micros() as u64,
            policies_us,
            touched = scan.touched.len(),
            "file source read"
        );
        let Source::File(files) = &self.source else {
            return Ok(None);
        };
        let name = self.node.node_name.clone();
        let node = crate::catalog::node_context(name.clone(), files.node(name.as_deref()));
        // The zone decides topology hints in every Service.
        let zone_changed = node.zone != self.node.zone;
        self.node = node;
        // Only the Services the changed files touched are translated again,
        // unless everything must be (the first sync, a forced reload).
        // Taken whatever `force` says: behind a short-circuit it stayed
        // set after the first (forced) sync and made the next one whole.
        let rebuild_all = std::mem::take(&mut self.rebuild_all);
        let dirty = Dirty {
            all: force || zone_changed || rebuild_all,
            services: scan.touched,
        };
        Ok(Some(Read {
            built: self.translations.rebuild(files.index(), &dirty, &self.node),
            full: dirty.all,
            triggers: Vec::new(),
        }))
    }

    /// The watch source: re-translate only the Services that changed.
    fn read_watch(&mut self, force: bool, report: &mut SyncReport) -> Option<Read> {
        let policies_changed = self.rescan_policies(report);
        let Source::Kube(kube) = &self.source else {
            return None;
        };
        let mut store = kube.lock();
        let mut dirty = store.take_dirty();
        let rejected = store.take_problems();
        let triggers = store.take_triggers();
        dirty.all |= std::mem::take(&mut self.rebuild_all);
        for p in &rejected {
            if p.severity == Severity::Error {
                self.count(&self.metrics.rejected_input, "object");
            }
            log_problem(p, report);
        }
        let node = crate::catalog::node_context(self.node.node_name.clone(), store.node());
        let node_changed = node != self.node;
        // The zone decides topology hints in every Service.
        dirty.all |= node.zone != self.node.zone;
        self.node = node;
        if dirty.is_empty() && !policies_changed && !node_changed && !force {
            return None;
        }
        Some(Read {
            built: self.translations.rebuild(&*store, &dirty, &self.node),
            full: dirty.all,
            triggers,
        })
    }

    /// Loads new and changed policy modules; true when any changed.
    fn rescan_policies(&mut self, report: &mut SyncReport) -> bool {
        let Some(registry) = &mut self.policies else {
            return false;
        };
        let (mut changed, mut problems) = registry.rescan();
        if let Some(set) = self.policy_configmap.as_mut().and_then(|w| w.take_change()) {
            let origin = self
                .policy_configmap
                .as_ref()
                .map_or("", |w| w.origin.as_str());
            for key in &set.ignored {
                tracing::warn!(%origin, key, "policy ConfigMap key is not a module (binaryData keys <name>.wasm are); ignored");
            }
            let (api_changed, api_problems) =
                registry.apply_api_modules(origin, set.modules.as_ref());
            changed |= api_changed;
            problems.extend(api_problems);
        }
        for p in problems {
            if matches!(
                p,
                PolicyProblem::Module {
                    error: ModuleError::TooLarge { .. },
                    ..
                }
            ) {
                crate::logging::limit_reached(&self.metrics, "module_bytes", || {});
            }
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

    /// Applies a reloaded `policy.allowedSha256` / `policy.maxEndpoints`;
    /// the caller's forced sync then re-reads every module against it.
    pub fn set_policy_limits(&mut self, allowed_sha256: &[String], max_endpoints: usize) {
        if let Some(registry) = &mut self.policies {
            registry.set_limits(allowed_sha256, max_endpoints);
        }
    }

    pub fn set_default_policy(&mut self, name: &str) {
        if let Some(registry) = &mut self.policies {
            registry.set_default(name);
        }
    }

    /// Forgets what was read, so that the next run re-reads every file.
    pub fn invalidate(&mut self) {
        match &mut self.source {
            Source::File(files) => files.invalidate(),
            Source::Kube(_) => self.rebuild_all = true,
        }
        if let Some(registry) = &mut self.policies {
            registry.invalidate();
        }
        if let Some(watch) = &mut self.policy_configmap {
            watch.forget_applied();
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

fn log_problem(p: &Problem, report: &mut SyncReport) {
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
