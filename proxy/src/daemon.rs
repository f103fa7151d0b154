//! The control plane: reads the source, builds and publishes snapshots,
//! keeps nftables in step, serves probes and metrics, and stops cleanly.
//! It runs on its own small tokio runtime; the data-plane workers never
//! wait for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::admin::metrics::KindLabels;
use crate::admin::{self, Health, Metrics};
use crate::catalog::{self, NodeContext, Severity};
use crate::config::Config;
use crate::dataplane::{self, DataplaneError, IoBackend};
use crate::intercept::{InterceptError, Interceptor};
use crate::policy::{Locality, PolicyEngine, PolicyRegistry};
use crate::snapshot::SharedSnapshot;
use crate::sources::{FileSource, SourceError};

/// How often the manifest directory is re-checked besides inotify.
const MANIFEST_POLL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Intercept(#[from] InterceptError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("cannot serve {what} on {addr}: {source}")]
    Admin {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the control-plane runtime: {0}")]
    Runtime(std::io::Error),
}

/// Runs until SIGTERM or SIGINT; returns after cleaning up.
pub fn run(config: Config, node_name: String) -> Result<(), DaemonError> {
    let backend = dataplane::choose_backend(config.dataplane.io)?;
    let workers = match config.dataplane.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    tracing::info!(io = backend.name(), workers, node = %node_name, "starting");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("sy-control")
        .build()
        .map_err(DaemonError::Runtime)?;
    runtime.block_on(control(config, node_name, backend, workers))
}

async fn control(
    config: Config,
    node_name: String,
    backend: IoBackend,
    workers: usize,
) -> Result<(), DaemonError> {
    let metrics = Arc::new(Metrics::new(backend.name()));
    let health = Arc::new(Health::default());
    let admin = &config.admin;
    admin::serve_health(admin.healthz_address, health.clone())
        .await
        .map_err(|source| DaemonError::Admin {
            what: "health probes",
            addr: admin.healthz_address,
            source,
        })?;
    admin::serve_metrics(admin.metrics_address, metrics.clone())
        .await
        .map_err(|source| DaemonError::Admin {
            what: "metrics",
            addr: admin.metrics_address,
            source,
        })?;

    let snapshot = SharedSnapshot::default();
    let here = Locality {
        node: Some(node_name.clone()),
        zone: None,
    };
    let registry = match PolicyEngine::new(&config.policy) {
        Ok(engine) => Some(PolicyRegistry::new(
            engine,
            &config.policy.directory,
            &config.policy.default,
            here.clone(),
        )),
        Err(e) => {
            tracing::error!(error = %e, "WebAssembly policies are unavailable; every Service uses the built-in round robin");
            None
        }
    };
    // Listeners first: once nftables diverts a VIP, someone must answer.
    let shared = dataplane::Shared {
        cfg: config.dataplane.clone(),
        bypass_mark: config.intercept.bypass_mark,
        snapshot: snapshot.clone(),
        metrics: metrics.clone(),
        policies: registry.as_ref().map(|r| r.engine().clone()),
        here,
    };
    dataplane::start(backend, workers, &shared)?;

    let mut sync = Sync {
        source: FileSource::new(&config.source.manifests),
        policies: registry,
        node: NodeContext {
            node_name: Some(node_name),
        },
        interceptor: config
            .intercept
            .enabled
            .then(|| Interceptor::new(config.intercept.clone(), config.dataplane.listen_port)),
        snapshot,
        metrics,
    };
    let (wake_tx, mut wake_rx) = mpsc::channel(1);
    let _watch = crate::sources::file::watch(sync.source.dir(), wake_tx.clone(), MANIFEST_POLL)?;
    // The policies directory may appear later; the poll covers that.
    let _policy_watch = sync
        .policies
        .as_ref()
        .filter(|r| r.dir().is_dir())
        .and_then(|r| crate::sources::file::watch(r.dir(), wake_tx, MANIFEST_POLL).ok());
    if let Err(e) = sync.run(true) {
        sync.cleanup(&config);
        return Err(e);
    }
    health.set_ready(true);
    tracing::info!("serving");

    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Runtime)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Runtime)?;
    loop {
        tokio::select! {
            Some(()) = wake_rx.recv() => {
                if let Err(e) = sync.run(false) {
                    tracing::error!(error = %e, "sync failed; the previous state keeps serving");
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping");
    health.set_ready(false);
    sync.cleanup(&config);
    Ok(())
}

/// The pipeline from source to data plane and kernel.
struct Sync {
    source: FileSource,
    policies: Option<PolicyRegistry>,
    node: NodeContext,
    interceptor: Option<Interceptor>,
    snapshot: SharedSnapshot,
    metrics: Arc<Metrics>,
}

impl Sync {
    /// Rescans the source and, when something changed (or on the first
    /// run), publishes a new snapshot and brings nftables in step.
    fn run(&mut self, first: bool) -> Result<(), DaemonError> {
        let start = Instant::now();
        let scan = self.source.rescan()?;
        for p in &scan.problems {
            self.metrics
                .rejected_input
                .get_or_create(&KindLabels {
                    kind: "manifest".into(),
                })
                .inc();
            match p.severity {
                Severity::Error => {
                    tracing::error!(file = %p.file.display(), document = p.document, object = p.object.as_deref().unwrap_or("-"), field = %p.field, "{}; the file's last good contents stay in force", p.message)
                }
                Severity::Warning => {
                    tracing::warn!(file = %p.file.display(), document = p.document, object = p.object.as_deref().unwrap_or("-"), field = %p.field, "{}", p.message)
                }
            }
        }
        let policies_changed = self.rescan_policies();
        if !scan.changed && !policies_changed && !first {
            return Ok(());
        }
        let manifests = self.source.manifests();
        let built = catalog::build(&manifests.services, &manifests.slices, &self.node);
        for p in &built.problems {
            match p.severity {
                Severity::Error => {
                    tracing::error!(object = %p.object, field = %p.field, "{}", p.message)
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
                }
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
                    self.metrics
                        .syncs
                        .get_or_create(&KindLabels {
                            kind: "failed".into(),
                        })
                        .inc();
                    return Err(e.into());
                }
            }
        }
        self.metrics
            .syncs
            .get_or_create(&KindLabels { kind: "ok".into() })
            .inc();
        self.metrics
            .sync_duration
            .observe(start.elapsed().as_secs_f64());
        tracing::info!(
            generation,
            services = table.services.len(),
            frontends = table.frontends.len() + table.node_ports.len(),
            "service table in force"
        );
        Ok(())
    }

    /// Loads new and changed policy modules; true when any changed.
    fn rescan_policies(&mut self) -> bool {
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
        }
        if changed {
            self.metrics
                .policy_loads
                .get_or_create(&KindLabels { kind: "ok".into() })
                .inc();
        }
        changed
    }

    fn cleanup(&mut self, config: &Config) {
        let Some(interceptor) = &mut self.interceptor else {
            return;
        };
        if config.intercept.keep_table_on_exit {
            tracing::info!(table = %config.intercept.table, "keeping the nftables table for a fast restart");
            return;
        }
        if let Err(e) = interceptor.remove() {
            tracing::error!(error = %e, "cannot remove our nftables table");
        }
    }
}
