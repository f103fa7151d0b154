//! Policy modules from the API: a watch on one ConfigMap (by name, so that
//! the RBAC can grant that one object only), whose `binaryData` keys
//! `<name>.wasm` are modules. The kubelet refreshes a ConfigMap volume only
//! every sync period plus its cache TTL (about a minute); the watch brings
//! a change within the watch latency. Validation is the registry's: this
//! only delivers the latest set of bytes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ::kube::Api;
use ::kube::runtime::{WatchStreamExt, watcher};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use tokio::sync::{mpsc, watch};

use crate::config::ConfigMapRef;

/// The latest contents of the ConfigMap, as the watch saw it.
#[derive(Debug, Default, Clone)]
pub struct ModuleSet {
    /// Bumped at every change; the sync applies a generation once.
    pub generation: u64,
    /// Module name (key without `.wasm`) → bytes. `None`: the ConfigMap
    /// does not exist (or was deleted): the directory decides.
    pub modules: Option<BTreeMap<String, Arc<[u8]>>>,
    /// Keys that are not modules, named for the log.
    pub ignored: Vec<String>,
}

/// The running watch; dropped, it stops.
pub struct ConfigMapWatch {
    pub origin: String,
    state: Arc<Mutex<ModuleSet>>,
    synced: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
    /// The generation the sync applied last.
    applied: u64,
}

impl Drop for ConfigMapWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ConfigMapWatch {
    /// Starts watching `cm`; `wake` gets a message at every change.
    pub fn start(client: kube::Client, cm: &ConfigMapRef, wake: mpsc::Sender<()>) -> Self {
        let api: Api<ConfigMap> = Api::namespaced(client, &cm.namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={}", cm.name));
        let state = Arc::new(Mutex::new(ModuleSet::default()));
        let (synced_tx, synced) = watch::channel(false);
        let origin = format!("configmap/{}/{}", cm.namespace, cm.name);
        let task = tokio::spawn(follow(
            api,
            config,
            origin.clone(),
            state.clone(),
            wake,
            synced_tx,
        ));
        Self {
            origin,
            state,
            synced,
            task,
            applied: 0,
        }
    }

    /// Returns once the first list is complete.
    pub async fn wait_synced(&mut self) {
        let _ = self.synced.wait_for(|s| *s).await;
    }

    /// The set, once per change (and never before the first list).
    pub fn take_change(&mut self) -> Option<ModuleSet> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.generation <= self.applied {
            return None;
        }
        self.applied = state.generation;
        Some(state.clone())
    }

    /// Makes the next `take_change` return the set again (a reload).
    pub fn forget_applied(&mut self) {
        self.applied = 0;
    }
}

/// Splits a ConfigMap into modules and ignored keys.
pub fn modules_of(cm: &ConfigMap) -> (BTreeMap<String, Arc<[u8]>>, Vec<String>) {
    let mut modules = BTreeMap::new();
    let mut ignored = Vec::new();
    for (key, bytes) in cm.binary_data.iter().flatten() {
        match key.strip_suffix(".wasm").filter(|n| !n.is_empty()) {
            Some(name) => {
                modules.insert(name.to_owned(), Arc::from(bytes.0.as_slice()));
            }
            None => ignored.push(format!("binaryData.{key}")),
        }
    }
    ignored.extend(cm.data.iter().flatten().map(|(k, _)| format!("data.{k}")));
    (modules, ignored)
}

async fn follow(
    api: Api<ConfigMap>,
    config: watcher::Config,
    origin: String,
    state: Arc<Mutex<ModuleSet>>,
    wake: mpsc::Sender<()>,
    synced: watch::Sender<bool>,
) {
    let stream = watcher(api, config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut failing = false;
    // What a list in progress has seen: a relist that finds no object means
    // it was deleted while the watch was down.
    let mut listing: Option<Option<ConfigMap>> = None;
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(event) => event,
            Err(e) => {
                failing = true;
                tracing::warn!(%origin, error = %e, "policy ConfigMap watch failed; retrying with backoff, the modules in force keep serving");
                continue;
            }
        };
        if std::mem::take(&mut failing) {
            tracing::info!(%origin, "policy ConfigMap watch restored");
        }
        let next = match event {
            watcher::Event::Init => {
                listing = Some(None);
                continue;
            }
            watcher::Event::InitApply(cm) => {
                listing = Some(Some(cm));
                continue;
            }
            watcher::Event::InitDone => listing.take().flatten(),
            watcher::Event::Apply(cm) => Some(cm),
            watcher::Event::Delete(_) => None,
        };
        {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            s.generation += 1;
            match &next {
                Some(cm) => {
                    let (modules, ignored) = modules_of(cm);
                    s.modules = Some(modules);
                    s.ignored = ignored;
                }
                None => {
                    s.modules = None;
                    s.ignored.clear();
                }
            }
        }
        synced.send_replace(true);
        let _ = wake.try_send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    #[test]
    fn wasm_keys_are_modules_and_the_rest_is_named() {
        let cm = ConfigMap {
            binary_data: Some(BTreeMap::from([
                ("maglev.wasm".to_owned(), ByteString(b"\0asm".to_vec())),
                ("notes.txt".to_owned(), ByteString(b"x".to_vec())),
                (".wasm".to_owned(), ByteString(b"x".to_vec())),
            ])),
            data: Some(BTreeMap::from([("readme".to_owned(), "hi".to_owned())])),
            ..Default::default()
        };
        let (modules, ignored) = modules_of(&cm);
        assert_eq!(modules.keys().collect::<Vec<_>>(), ["maglev"]);
        assert_eq!(&*modules["maglev"], b"\0asm");
        assert_eq!(
            ignored,
            ["binaryData..wasm", "binaryData.notes.txt", "data.readme"]
        );
    }
}
