//! The control plane: reads the source, builds and publishes snapshots,
//! keeps nftables in step, serves probes and metrics, and stops cleanly.
//! It runs on its own small tokio runtime; the data-plane workers never
//! wait for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

mod incremental;
mod reconfigure;
mod sync;

pub use reconfigure::Loader;

use crate::admin::{self, AdminState, Health, Metrics, PolicySummary, ReloadAnswer};
use crate::catalog::NodeContext;
use crate::config::SourceKind;
use crate::config::{Config, ConfigError};
use crate::dataplane::{self, DataplaneError, IoBackend};
use crate::intercept::{InterceptError, Interceptor};
use crate::policy::{Locality, PolicyEngine, PolicyRegistry};
use crate::snapshot::SharedSnapshot;
use crate::sources::kube::{KubeError, KubeSource};
use crate::sources::{FileSource, Source, SourceError};
use reconfigure::ConfigSource;
use sync::Sync;

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
    #[error(transparent)]
    Kube(#[from] KubeError),
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
/// Runs until SIGTERM or SIGINT. `config_path` and `loader` let a reload
/// re-read the config file with the command-line flags applied again.
pub fn run(
    config: Config,
    node_name: String,
    config_path: Option<std::path::PathBuf>,
    loader: Loader,
) -> Result<(), DaemonError> {
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
    let source = ConfigSource::new(config_path, loader);
    runtime.block_on(control(config, source, node_name, backend, workers))
}

async fn control(
    mut config: Config,
    mut config_source: ConfigSource,
    node_name: String,
    backend: IoBackend,
    workers: usize,
) -> Result<(), DaemonError> {
    let metrics = Arc::new(Metrics::new(backend.name()));
    let health = Arc::new(Health::default());
    let snapshot = SharedSnapshot::default();
    let mut health_check_ports =
        admin::HealthCheckPorts::new(health.clone(), snapshot.clone(), Some(node_name.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let active = Arc::new(AtomicUsize::new(0));
    let summary = Arc::new(PolicySummary::default());
    let (reload_tx, mut reload_rx) = mpsc::channel::<tokio::sync::oneshot::Sender<ReloadAnswer>>(4);
    let admin = &config.admin;
    admin::serve_health(admin.healthz_address, health.clone())
        .await
        .map_err(|source| DaemonError::Admin {
            what: "health probes",
            addr: admin.healthz_address,
            source,
        })?;
    let state = Arc::new(AdminState {
        metrics: metrics.clone(),
        snapshot: snapshot.clone(),
        policies: summary.clone(),
        reload: reload_tx,
    });
    admin::serve_admin(admin.metrics_address, state)
        .await
        .map_err(|source| DaemonError::Admin {
            what: "metrics and admin API",
            addr: admin.metrics_address,
            source,
        })?;

    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Runtime)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Runtime)?;
    let (wake_tx, mut wake_rx) = mpsc::channel(1);
    // The watch source must finish its first list before anything is
    // installed: a half-listed cluster would drop Services that exist.
    let (source, zone) = match config.source.kind {
        SourceKind::File => (
            Source::File(
                FileSource::new(&config.source.manifests)
                    .with_max_bytes(config.source.max_manifest_bytes),
            ),
            None,
        ),
        SourceKind::Kubernetes => {
            let mut kube = KubeSource::start(
                config.source.kubeconfig.as_deref(),
                &node_name,
                wake_tx.clone(),
            )
            .await?;
            tokio::select! {
                () = kube.wait_synced() => {}
                _ = term.recv() => return Ok(()),
                _ = int.recv() => return Ok(()),
            }
            let zone = kube.lock().node_zone();
            tracing::info!(
                zone = zone.as_deref().unwrap_or("-"),
                "first list of Services, EndpointSlices and this Node complete"
            );
            (Source::Kube(kube), zone)
        }
    };
    let here = Locality {
        node: Some(node_name.clone()),
        zone,
    };
    // Policy status records: to the log and /debug/policies, and with the
    // kubernetes source as Events on the Service.
    if let Some(records) = crate::policy::events::install() {
        let writer = match &source {
            Source::Kube(kube) => Some(crate::sources::kube::events::EventWriter::new(
                kube.client(),
                &node_name,
            )),
            Source::File(_) => None,
        };
        tokio::spawn(crate::policy::events::run(records, writer));
    }
    let registry = match PolicyEngine::new(&config.policy) {
        Ok(engine) => {
            let mut registry = PolicyRegistry::new(
                engine,
                &config.policy.directory,
                &config.policy.default,
                here.clone(),
            );
            registry.set_limits(&config.policy.allowed_sha256, config.policy.max_endpoints);
            registry.set_max_modules(config.policy.max_modules);
            Some(registry)
        }
        Err(e) => {
            tracing::error!(error = %e, "WebAssembly policies are unavailable; every Service uses the built-in round robin");
            None
        }
    };
    let policy_configmap = match (&source, &config.policy.config_map) {
        (Source::Kube(kube), Some(cm)) if registry.is_some() => {
            Some(policy_configmap(kube, cm, wake_tx.clone()).await)
        }
        (Source::File(_), Some(cm)) => {
            tracing::warn!(namespace = %cm.namespace, name = %cm.name, "policy.configMap is read only with source.kind: kubernetes; modules come from policy.directory");
            None
        }
        _ => None,
    };
    let kernel_tables = crate::policy::kernel_tables::TableCache::new(
        registry.as_ref().map(|r| r.engine().clone()),
        here.clone(),
    );
    // Listeners first: once nftables diverts a VIP, someone must answer.
    let shared = dataplane::Shared {
        cfg: config.dataplane.clone(),
        bypass_mark: config.intercept.bypass_mark,
        snapshot: snapshot.clone(),
        metrics: metrics.clone(),
        policies: registry.as_ref().map(|r| r.engine().clone()),
        here,
        stop: stop_rx,
        active: active.clone(),
    };
    dataplane::start(backend, workers, &shared)?;

    let mut sync = Sync {
        source,
        translations: Default::default(),
        rebuild_all: true,
        policies: registry,
        node: NodeContext {
            node_name: Some(node_name),
            ..NodeContext::default()
        },
        interceptor: config.intercept.enabled.then(|| {
            Interceptor::new(
                config.intercept.clone(),
                config.dataplane.listen_port,
                config.dataplane.transparent,
            )
        }),
        snapshot,
        metrics,
        summary,
        policy_configmap,
        kernel_tables,
        planner: crate::intercept::kernel::Planner::default(),
        datapath: config.dataplane.datapath,
    };
    let _watch = match &sync.source {
        Source::File(files) => Some(crate::sources::file::watch(
            files.dir(),
            wake_tx.clone(),
            MANIFEST_POLL,
            Some(files.changes()),
        )?),
        Source::Kube(_) => None,
    };
    // The policies directory may appear later; the poll covers that.
    let _policy_watch = sync
        .policies
        .as_ref()
        .filter(|r| r.dir().is_dir())
        .and_then(|r| {
            crate::sources::file::watch(r.dir(), wake_tx.clone(), MANIFEST_POLL, None).ok()
        });
    let _config_watch = config_source
        .path
        .as_ref()
        .and_then(|p| p.parent())
        .map(|dir| {
            if dir.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                dir
            }
        })
        .and_then(|dir| crate::sources::file::watch(dir, wake_tx, MANIFEST_POLL, None).ok());
    if let Err(e) = sync.run(true) {
        sync.cleanup(config.intercept.keep_table_on_exit, &config.intercept.table);
        return Err(e);
    }
    health.synced(sync.node.ineligible.clone());
    health_check_ports.reconcile(
        &sync.snapshot.load().table,
        &config.intercept.node_port_addresses,
    );
    health.set_ready(true);
    tracing::info!("serving");

    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Runtime)?;
    loop {
        tokio::select! {
            Some(()) = wake_rx.recv() => {
                if config_source.changed() {
                    reload(&mut sync, &config_source, &mut config, "config file changed");
                } else {
                    match sync.run(false) {
                        Ok(_) => health.synced(sync.node.ineligible.clone()),
                        Err(e) => {
                            health.sync_failed();
                            tracing::error!(error = %e, "sync failed; the previous state keeps serving");
                        }
                    }
                }
            }
            Some(reply) = reload_rx.recv() => {
                let _ = reply.send(reload(&mut sync, &config_source, &mut config, "POST /reload"));
            }
            _ = hup.recv() => {
                reload(&mut sync, &config_source, &mut config, "SIGHUP");
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        health_check_ports.reconcile(
            &sync.snapshot.load().table,
            &config.intercept.node_port_addresses,
        );
    }
    health.set_ready(false);
    let open = active.load(Ordering::Relaxed);
    tracing::info!(open, drain_timeout = %config.dataplane.drain_timeout, "stopping: listeners close, open connections may finish");
    let _ = stop_tx.send(true);
    if !config.intercept.keep_table_on_exit {
        sync.reject_new_connections();
    }
    drain(&active, config.dataplane.drain_timeout.0).await;
    sync.cleanup(config.intercept.keep_table_on_exit, &config.intercept.table);
    Ok(())
}

/// How long the start waits for the policy ConfigMap's first list before
/// it goes on with the directory's modules (the watch keeps trying).
const POLICY_CONFIGMAP_FIRST_LIST: Duration = Duration::from_secs(5);

/// Starts the watch on the policy ConfigMap and waits (bounded) for its
/// first list, so that Services are bound to the cluster's modules from the
/// first snapshot on.
async fn policy_configmap(
    kube: &KubeSource,
    cm: &crate::config::ConfigMapRef,
    wake: mpsc::Sender<()>,
) -> crate::sources::kube::configmap::ConfigMapWatch {
    let mut watch = crate::sources::kube::configmap::ConfigMapWatch::start(kube.client(), cm, wake);
    if tokio::time::timeout(POLICY_CONFIGMAP_FIRST_LIST, watch.wait_synced())
        .await
        .is_err()
    {
        tracing::warn!(origin = %watch.origin, "policy ConfigMap not listed yet; starting with the policy directory's modules");
    }
    watch
}

/// Waits until no connection is open, or the timeout.
async fn drain(active: &AtomicUsize, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        let open = active.load(Ordering::Relaxed);
        if open == 0 {
            tracing::info!("all connections finished");
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                open,
                "drain timeout reached; closing the connections still open"
            );
            return;
        }
        tick.tick().await;
    }
}

/// Re-reads the config file, every manifest and every policy module, and
/// applies what validates.
fn reload(
    sync: &mut Sync,
    source: &ConfigSource,
    config: &mut Config,
    trigger: &str,
) -> ReloadAnswer {
    tracing::info!(trigger, "reloading");
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    match source.reload(config) {
        Ok(change) => {
            if let Some(default) = change.policy_default {
                tracing::info!(%default, "policy.default changed");
                sync.set_default_policy(&default);
                notes.push(format!("policy.default is now {default}"));
            }
            if let Some((allowed, max_endpoints)) = change.policy_limits {
                tracing::info!(
                    allowed = allowed.len(),
                    max_endpoints,
                    "policy.allowedSha256 / policy.maxEndpoints changed"
                );
                sync.set_policy_limits(&allowed, max_endpoints);
                notes.push(format!(
                    "policy.allowedSha256 ({} hashes) and policy.maxEndpoints ({max_endpoints}) applied",
                    allowed.len()
                ));
            }
            for section in change.needs_restart {
                tracing::warn!(
                    section,
                    "config changed in a setting that takes effect only after a restart"
                );
                notes.push(format!("{section}: changed; takes effect after a restart"));
            }
        }
        Err(e) => {
            if matches!(e, ConfigError::TooLarge { .. }) {
                crate::logging::limit_reached(&sync.metrics, "config_bytes", || {});
            }
            sync.metrics
                .rejected_input
                .get_or_create(&crate::admin::metrics::KindLabels {
                    kind: "config".into(),
                })
                .inc();
            tracing::error!(error = %e, "config rejected; the running config stays in force");
            problems.push(format!("error: {e}"));
        }
    }
    sync.invalidate();
    match sync.run(true) {
        Ok(report) => problems.extend(report.problems),
        Err(e) => problems.push(format!("error: {e}")),
    }
    let mut body = String::new();
    for note in &notes {
        body.push_str(note);
        body.push('\n');
    }
    if problems.is_empty() {
        body.push_str(&format!(
            "reloaded: generation {}\n",
            sync.snapshot.load().generation
        ));
        (true, body)
    } else {
        body.push_str("reload applied what validated; rejected (the previous state of each stays in force):\n");
        for p in problems {
            body.push_str(&p);
            body.push('\n');
        }
        (false, body)
    }
}
