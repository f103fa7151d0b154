//! The Kubernetes source: kube-rs watchers on Services, EndpointSlices and
//! this node's Node object. kube-runtime's watcher lists, then watches from
//! the list's resourceVersion, asks for bookmarks, relists on 410 Gone, and
//! (with `default_backoff`) retries errors with exponential backoff and
//! jitter. While the API server is away, the store keeps the last objects,
//! so the last snapshot keeps serving.

pub mod configmap;
mod decode;
pub mod events;
mod raw;
mod store;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use ::kube::Api;
use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::core::ApiResource;
use ::kube::runtime::{WatchStreamExt, watcher};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::{mpsc, watch};

pub use decode::Kind;
pub use raw::RawObject;
pub use store::{Dirty, Key, Store};

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("{file}: cannot read kubeconfig: {source}")]
    Kubeconfig {
        file: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes client configuration (kubeconfig or in-cluster): {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// Watches running in the background, and what they have seen.
pub struct KubeSource {
    store: Arc<Mutex<Store>>,
    synced: watch::Receiver<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// For the watches and writers beside the source's own (the policy
    /// ConfigMap, Events).
    client: kube::Client,
}

impl KubeSource {
    /// Connects (lazily: no request is made here) and starts the watches.
    /// `wake` gets a message whenever the store changed.
    pub async fn start(
        kubeconfig: Option<&Path>,
        node_name: &str,
        wake: mpsc::Sender<()>,
    ) -> Result<Self, KubeError> {
        let config = match kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path).map_err(|source| KubeError::Kubeconfig {
                    file: path.to_owned(),
                    source,
                })?;
                kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                    .await
                    .map_err(|source| KubeError::Kubeconfig {
                        file: path.to_owned(),
                        source,
                    })?
            }
            None => kube::Config::infer().await?,
        };
        tracing::info!(server = %config.cluster_url, node = node_name, "watching the Kubernetes API");
        let client = kube::Client::try_from(config)?;
        let store = Arc::new(Mutex::new(Store::default()));
        let (synced_tx, synced) = watch::channel(false);
        let synced_tx = Arc::new(synced_tx);
        let mut tasks = Vec::new();
        for kind in Kind::ALL {
            let (resource, config) = match kind {
                Kind::Service => (
                    ApiResource::erase::<Service>(&()),
                    watcher::Config::default(),
                ),
                Kind::EndpointSlice => (
                    ApiResource::erase::<EndpointSlice>(&()),
                    watcher::Config::default(),
                ),
                // Only our own Node: one object, not the whole cluster's.
                Kind::Node => (
                    ApiResource::erase::<Node>(&()),
                    watcher::Config::default().fields(&format!("metadata.name={node_name}")),
                ),
            };
            let api: Api<RawObject> = Api::all_with(client.clone(), &resource);
            tasks.push(tokio::spawn(follow(
                kind,
                api,
                config,
                store.clone(),
                wake.clone(),
                synced_tx.clone(),
            )));
        }
        Ok(Self {
            store,
            synced,
            tasks,
            client,
        })
    }

    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Returns once every kind finished its first list.
    pub async fn wait_synced(&mut self) {
        // The sender lives in the tasks, which run until dropped.
        let _ = self.synced.wait_for(|s| *s).await;
    }

    /// The store, for reading; the watches wait while it is held.
    pub fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock left a consistent map behind: every
        // store update is a single insert, remove or swap.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// One kind's watch loop; runs until the source is dropped.
async fn follow(
    kind: Kind,
    api: Api<RawObject>,
    config: watcher::Config,
    store: Arc<Mutex<Store>>,
    wake: mpsc::Sender<()>,
    synced: Arc<watch::Sender<bool>>,
) {
    let stream = watcher(api, config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut failing = false;
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                if failing {
                    tracing::info!(kind = kind.name(), "watch restored");
                    failing = false;
                }
                let init_done = matches!(event, watcher::Event::InitDone);
                let (changed, all_synced) = {
                    let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
                    (s.apply_raw(kind, event), s.synced())
                };
                if init_done {
                    tracing::debug!(kind = kind.name(), "list complete");
                    if all_synced {
                        synced.send_replace(true);
                    }
                }
                if changed || init_done {
                    // A full channel already holds a wake-up: bursts coalesce.
                    let _ = wake.try_send(());
                }
            }
            Err(e) => {
                failing = true;
                tracing::warn!(kind = kind.name(), error = %e, "watch failed; retrying with backoff, the last snapshot keeps serving");
            }
        }
    }
}

/// `(API group, resource)` of every kind the source lists and watches; the
/// ClusterRole in conf/k8s/ must grant exactly these (a test checks).
pub fn watched_resources() -> Vec<(&'static str, &'static str)> {
    use k8s_openapi::Resource;
    Kind::ALL
        .iter()
        .map(|kind| match kind {
            Kind::Service => (Service::GROUP, Service::URL_PATH_SEGMENT),
            Kind::EndpointSlice => (EndpointSlice::GROUP, EndpointSlice::URL_PATH_SEGMENT),
            Kind::Node => (Node::GROUP, Node::URL_PATH_SEGMENT),
        })
        .collect()
}

/// The verbs the watches use: `list` + `watch`, and `get` for kube-rs's
/// single-object reads.
pub const VERBS: [&str; 3] = ["get", "list", "watch"];
