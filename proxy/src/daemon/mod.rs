//! The control plane: reads the source, builds and publishes snapshots,
//! keeps nftables in step, serves probes and metrics, and stops cleanly.
//! It runs on its own small tokio runtime; the data-plane workers never
//! wait for it.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

mod sync;

use crate::admin::{self, AdminState, Health, Metrics, PolicySummary, ReloadAnswer};
use crate::catalog::NodeContext;
use crate::config::Config;
use crate::dataplane::{self, DataplaneError, IoBackend};
use crate::intercept::{InterceptError, Interceptor};
use crate::policy::{Locality, PolicyEngine, PolicyRegistry};
use crate::snapshot::SharedSnapshot;
use crate::sources::{FileSource, SourceError};
use sync::{Sync, SyncReport};

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
    let snapshot = SharedSnapshot::default();
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
        summary,
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
        sync.cleanup(config.intercept.keep_table_on_exit, &config.intercept.table);
        return Err(e);
    }
    health.set_ready(true);
    tracing::info!("serving");

    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Runtime)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Runtime)?;
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Runtime)?;
    loop {
        tokio::select! {
            Some(()) = wake_rx.recv() => {
                if let Err(e) = sync.run(false) {
                    tracing::error!(error = %e, "sync failed; the previous state keeps serving");
                }
            }
            Some(reply) = reload_rx.recv() => {
                let _ = reply.send(reload(&mut sync, "POST /reload"));
            }
            _ = hup.recv() => {
                reload(&mut sync, "SIGHUP");
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping");
    health.set_ready(false);
    sync.cleanup(config.intercept.keep_table_on_exit, &config.intercept.table);
    Ok(())
}

/// Re-reads every manifest and policy module and applies what validates.
fn reload(sync: &mut Sync, trigger: &str) -> ReloadAnswer {
    tracing::info!(trigger, "reloading");
    sync.invalidate();
    match sync.run(true) {
        Ok(SyncReport {
            problems,
            generation,
        }) if problems.is_empty() => (
            true,
            format!("reloaded: generation {}\n", generation.unwrap_or_default()),
        ),
        Ok(SyncReport { problems, .. }) => {
            let mut body = String::from(
                "reload applied what validated; rejected (the previous state of each stays in force):\n",
            );
            for p in problems {
                body.push_str(&p);
                body.push('\n');
            }
            (false, body)
        }
        Err(e) => (
            false,
            format!("reload failed; the previous state keeps serving: {e}\n"),
        ),
    }
}
