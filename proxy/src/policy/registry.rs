//! The control plane's side of policies: the modules in the policies
//! directory (compiled once per content hash, replaced live), and the
//! binding of each Service port to a module, validated before it is
//! published. A failed load or binding leaves the previous one in force.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::binding::{BUILTIN_ROUND_ROBIN, Bindings, BoundPolicy, CLIENT_AFFINITY};
use super::engine::PolicyEngine;
use super::instance::WasmInstance;
use super::layout::{CallContext, Locality, encode_table};
use super::module::{self, ModuleError, PolicyModule};
use crate::catalog::{ServiceKey, ServicePort, ServiceTable};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

struct Loaded {
    stamp: Stamp,
    module: Arc<PolicyModule>,
}

/// A problem with a module file or a Service's binding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyProblem {
    #[error("{file}: {error}; the previous version of this module (if any) stays in force")]
    Module { file: PathBuf, error: ModuleError },
    #[error("{file}: cannot read: {error}")]
    Read { file: PathBuf, error: String },
    #[error(
        "Service {service}: annotation switchyard.dev/policy: unknown policy {name:?} (loaded: {loaded}); the Service keeps its previous policy"
    )]
    Unknown {
        service: ServiceKey,
        name: String,
        loaded: String,
    },
    #[error(
        "{file}: sha256 {hash} is not in policy.allowedSha256; the module is not loaded (the previous version, if any, stays in force)"
    )]
    Untrusted { file: PathBuf, hash: String },
    #[error(
        "Service {service} port {port:?}: {count} endpoints, more than policy.maxEndpoints ({max}) hands to a policy; the built-in round robin balances it"
    )]
    TooManyEndpoints {
        service: ServiceKey,
        port: String,
        count: usize,
        max: usize,
    },
    #[error(
        "{origin}: {count} modules, more than policy.maxModules ({max}); none of them is loaded (the modules in force stay)"
    )]
    TooManyModules {
        origin: String,
        count: usize,
        max: usize,
    },
    #[error(
        "Service {service}: policy {policy} refused the binding: {reason}; the Service keeps its previous policy"
    )]
    Rejected {
        service: ServiceKey,
        policy: String,
        reason: String,
    },
}

pub struct PolicyRegistry {
    engine: Arc<PolicyEngine>,
    dir: PathBuf,
    default: String,
    here: Locality,
    loaded: BTreeMap<String, Loaded>,
    bindings: Arc<Bindings>,
    /// Validation results per (module hash, config): a dry run is done once.
    verdicts: HashMap<(String, Arc<str>), Result<(), String>>,
    next_id: u64,
    /// `policy.allowedSha256`: when set, the only modules that may load.
    allowed: Option<BTreeSet<String>>,
    /// `policy.maxEndpoints`.
    max_endpoints: usize,
    /// Module names the policy ConfigMap holds; the directory does not
    /// override them.
    api_names: BTreeSet<String>,
    /// `policy.maxModules`.
    max_modules: usize,
    /// The rejection last reported per Service, so that a standing one
    /// becomes one status record, not one per bind.
    rejections: BTreeMap<ServiceKey, String>,
    /// The table the bindings were resolved against: a Service whose port
    /// `Arc`s are the same in the next table keeps its bindings unresolved.
    bound_table: Option<Arc<ServiceTable>>,
    /// Modules, the default or the limits changed since the last bind:
    /// the next one resolves every Service again.
    stale: bool,
    last_bind: BindStats,
}

/// What the last `bind` did, for the sync's debug timings and for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BindStats {
    /// Every Service was resolved (first bind, forced, or the modules,
    /// the default or the limits changed).
    pub full: bool,
    /// Services resolved (or dropped) by this bind.
    pub services: usize,
    /// Dry runs of a module this bind made (the others were cached).
    pub dry_runs: usize,
}

impl Stamp {
    /// Matches no file: the directory's copy is read at the next rescan.
    fn unknown() -> Self {
        Self {
            modified: None,
            len: u64::MAX,
        }
    }
}

impl PolicyRegistry {
    pub fn new(engine: Arc<PolicyEngine>, dir: &Path, default: &str, here: Locality) -> Self {
        Self {
            engine,
            dir: dir.to_owned(),
            default: default.to_owned(),
            here,
            loaded: BTreeMap::new(),
            bindings: Arc::default(),
            verdicts: HashMap::new(),
            next_id: 1,
            allowed: None,
            max_endpoints: crate::config::PolicyConfig::default().max_endpoints,
            api_names: BTreeSet::new(),
            max_modules: crate::config::PolicyConfig::default().max_modules,
            rejections: BTreeMap::new(),
            bound_table: None,
            stale: true,
            last_bind: BindStats::default(),
        }
    }

    /// Applies `policy.allowedSha256` (empty: any module in the directory)
    /// and `policy.maxEndpoints`. Modules already loaded that the new list
    /// does not allow are dropped at the next rescan.
    pub fn set_limits(&mut self, allowed_sha256: &[String], max_endpoints: usize) {
        let allowed: BTreeSet<String> = allowed_sha256
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        self.allowed = (!allowed.is_empty()).then_some(allowed);
        self.max_endpoints = max_endpoints;
        self.stale = true;
        if let Some(allowed) = &self.allowed {
            self.loaded.retain(|_, l| allowed.contains(&l.module.hash));
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn engine(&self) -> &Arc<PolicyEngine> {
        &self.engine
    }

    pub fn modules(&self) -> impl Iterator<Item = &Arc<PolicyModule>> {
        self.loaded.values().map(|l| &l.module)
    }

    /// The policy of Services without an annotation, from the next bind on.
    pub fn set_default(&mut self, name: &str) {
        name.clone_into(&mut self.default);
        self.stale = true;
    }

    /// Makes the next rescan re-read every module file.
    pub fn invalidate(&mut self) {
        self.stale = true;
        for loaded in self.loaded.values_mut() {
            loaded.stamp = Stamp {
                modified: None,
                len: u64::MAX,
            };
        }
    }

    /// Loads new and changed `.wasm` files. Returns whether any module
    /// changed, and the problems met. A missing directory means no modules.
    pub fn rescan(&mut self) -> (bool, Vec<PolicyProblem>) {
        let mut changed = false;
        let mut problems = Vec::new();
        for (name, path, stamp) in list_modules(&self.dir) {
            if self.loaded.get(&name).is_some_and(|l| l.stamp == stamp) {
                continue;
            }
            // The ConfigMap's version of a module wins over the directory's
            // (the same ConfigMap mounted as a volume lags behind the API).
            if self.api_names.contains(&name) {
                continue;
            }
            // Checked before reading: a huge file is never read into memory.
            if stamp.len > self.engine.max_module_bytes {
                self.remember_stamp(&name, &stamp);
                problems.push(PolicyProblem::Module {
                    file: path,
                    error: ModuleError::TooLarge {
                        size: usize::try_from(stamp.len).unwrap_or(usize::MAX),
                        max: self.engine.max_module_bytes,
                    },
                });
                continue;
            }
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) => {
                    problems.push(PolicyProblem::Read {
                        file: path,
                        error: e.to_string(),
                    });
                    continue;
                }
            };
            match self.offer(&name, &path, stamp, &bytes) {
                Ok(swapped) => changed |= swapped,
                Err(problem) => problems.push(problem),
            }
        }
        (changed, problems)
    }

    /// Checks and compiles one module's bytes (`origin` names it in
    /// problems) and swaps it in; true when a module changed. Trust is
    /// decided on the exact bytes, before wasmtime compiles anything of
    /// them. A refused module leaves the previous one of that name.
    fn offer(
        &mut self,
        name: &str,
        origin: &Path,
        stamp: Stamp,
        bytes: &[u8],
    ) -> Result<bool, PolicyProblem> {
        if bytes.len() as u64 > self.engine.max_module_bytes {
            self.remember_stamp(name, &stamp);
            return Err(PolicyProblem::Module {
                file: origin.to_owned(),
                error: ModuleError::TooLarge {
                    size: bytes.len(),
                    max: self.engine.max_module_bytes,
                },
            });
        }
        let hash = module::content_hash(bytes);
        if let Some(allowed) = &self.allowed
            && !allowed.contains(&hash)
        {
            self.remember_stamp(name, &stamp);
            return Err(PolicyProblem::Untrusted {
                file: origin.to_owned(),
                hash,
            });
        }
        if let Some(loaded) = self.loaded.get_mut(name)
            && loaded.module.hash == hash
        {
            loaded.stamp = stamp;
            return Ok(false);
        }
        match module::load(&self.engine, name, bytes) {
            Ok(module) => {
                tracing::info!(policy = %name, from = %origin.display(), hash = &module.hash[..12], bytes = module.size, cached = module.from_cache, "policy module loaded");
                self.loaded.insert(
                    name.to_owned(),
                    Loaded {
                        stamp,
                        module: Arc::new(module),
                    },
                );
                self.stale = true;
                Ok(true)
            }
            Err(error) => {
                self.remember_stamp(name, &stamp);
                Err(PolicyProblem::Module {
                    file: origin.to_owned(),
                    error,
                })
            }
        }
    }

    /// Applies the modules of the policy ConfigMap (`origin` names it):
    /// each is checked as a file would be, and a bad one is refused while
    /// the previous one of that name keeps serving. `None` (no ConfigMap)
    /// hands every name back to the directory. A set larger than
    /// `policy.maxModules` is refused whole.
    pub fn apply_api_modules(
        &mut self,
        origin: &str,
        modules: Option<&BTreeMap<String, Arc<[u8]>>>,
    ) -> (bool, Vec<PolicyProblem>) {
        let Some(modules) = modules else {
            if !self.api_names.is_empty() {
                tracing::info!(%origin, "policy ConfigMap absent; modules come from the policy directory");
                self.api_names.clear();
                self.invalidate();
            }
            return (false, Vec::new());
        };
        if modules.len() > self.max_modules {
            return (
                false,
                vec![PolicyProblem::TooManyModules {
                    origin: origin.to_owned(),
                    count: modules.len(),
                    max: self.max_modules,
                }],
            );
        }
        let released: Vec<String> = self
            .api_names
            .iter()
            .filter(|n| !modules.contains_key(*n))
            .cloned()
            .collect();
        self.api_names = modules.keys().cloned().collect();
        if !released.is_empty() {
            // Names the ConfigMap no longer holds: the directory's copy, if
            // any, is read again at the next rescan; until then (or without
            // one) the module in force stays.
            for name in released {
                self.remember_stamp(&name, &Stamp::unknown());
            }
        }
        let mut changed = false;
        let mut problems = Vec::new();
        for (name, bytes) in modules {
            let key = Path::new(origin).join(format!("{name}.wasm"));
            match self.offer(name, &key, Stamp::unknown(), bytes) {
                Ok(swapped) => changed |= swapped,
                Err(problem) => problems.push(problem),
            }
        }
        (changed, problems)
    }

    /// `policy.maxModules`.
    pub fn set_max_modules(&mut self, max: usize) {
        self.max_modules = max;
    }

    /// Remembers a refused file's stamp so that the same bad file is
    /// reported once, not at every poll.
    fn remember_stamp(&mut self, name: &str, stamp: &Stamp) {
        if let Some(loaded) = self.loaded.get_mut(name) {
            loaded.stamp = stamp.clone();
        }
    }

    /// Binds every Service port of `table` to its module, reusing bindings
    /// that did not change and validating the ones that did. Every
    /// Service is resolved; `bind_changed` resolves only what changed.
    pub fn bind(&mut self, table: &ServiceTable) -> (Arc<Bindings>, Vec<PolicyProblem>) {
        let problems = self.bind_all(table);
        // Not kept as an `Arc`: the next `bind_changed` resolves everything.
        self.bound_table = None;
        (self.bindings.clone(), problems)
    }

    /// `bind`, but only the Services whose translation changed since the
    /// last bind (their port `Arc`s are not the previous table's) are
    /// resolved again, unless `full` is asked or the modules, the default
    /// or the limits changed.
    pub fn bind_changed(
        &mut self,
        table: &Arc<ServiceTable>,
        full: bool,
    ) -> (Arc<Bindings>, Vec<PolicyProblem>) {
        let previous = match self.bound_table.take() {
            Some(previous) if !full && !self.stale => previous,
            _ => {
                let problems = self.bind_all(table);
                self.bound_table = Some(table.clone());
                return (self.bindings.clone(), problems);
            }
        };
        let mut pass = Pass::default();
        let changed = super::changed_services::between(&previous, table);
        let mut next: Option<Bindings> = None;
        for key in &changed {
            let before = previous.services.get(key).map(Vec::as_slice).unwrap_or(&[]);
            let after = table.services.get(key).map(Vec::as_slice).unwrap_or(&[]);
            let mut resolved = Bindings::new();
            self.bind_service(key, after, &mut resolved, &mut pass);
            let same = before.len() == after.len()
                && resolved.len()
                    == before
                        .iter()
                        .filter(|p| self.bindings.contains_key(&p.id))
                        .count()
                && resolved.iter().all(|(id, bound)| {
                    self.bindings
                        .get(id)
                        .is_some_and(|previous| Arc::ptr_eq(previous, bound))
                });
            if same {
                continue;
            }
            // The map is copied once, and only when a binding moved.
            let next = next.get_or_insert_with(|| (*self.bindings).clone());
            for port in before {
                next.remove(&port.id);
            }
            next.extend(resolved);
        }
        self.update_rejections(&changed, pass.rejections);
        if let Some(next) = next {
            self.bindings = Arc::new(next);
        }
        self.bound_table = Some(table.clone());
        self.last_bind = BindStats {
            full: false,
            services: changed.len(),
            dry_runs: pass.dry_runs,
        };
        (self.bindings.clone(), pass.problems)
    }

    fn bind_all(&mut self, table: &ServiceTable) -> Vec<PolicyProblem> {
        let mut pass = Pass::default();
        let mut next = Bindings::new();
        for (key, ports) in &table.services {
            self.bind_service(key, ports, &mut next, &mut pass);
        }
        self.report_rejections(pass.rejections);
        self.bindings = Arc::new(next);
        self.stale = false;
        self.last_bind = BindStats {
            full: true,
            services: table.services.len(),
            dry_runs: pass.dry_runs,
        };
        pass.problems
    }

    /// The bindings in force.
    pub fn bindings(&self) -> &Arc<Bindings> {
        &self.bindings
    }

    /// What the last `bind` did.
    pub fn last_bind(&self) -> BindStats {
        self.last_bind
    }

    /// Resolves one Service's ports into `next`; a Service whose policy is
    /// unknown or refused keeps its previous bindings.
    fn bind_service(
        &mut self,
        key: &ServiceKey,
        ports: &[Arc<ServicePort>],
        next: &mut Bindings,
        pass: &mut Pass,
    ) {
        let Some(info) = ports.first().map(|p| &p.service) else {
            return;
        };
        // sessionAffinity: ClientIP is kept by the client-affinity
        // module, unless the Service names a policy of its own.
        let (name, config) = match (&info.policy, info.affinity_timeout) {
            (Some(policy), _) => (
                policy.clone(),
                info.policy_config.clone().unwrap_or_else(|| "{}".into()),
            ),
            (None, Some(timeout)) => (
                CLIENT_AFFINITY.to_owned(),
                format!("{{\"timeoutSeconds\": {}}}", timeout.as_secs()),
            ),
            (None, None) => (self.default.clone(), "{}".to_owned()),
        };
        let name = name.as_str();
        let module = match self.loaded.get(name) {
            Some(l) => l.module.clone(),
            None => {
                let silent =
                    name == BUILTIN_ROUND_ROBIN || (info.policy.is_none() && name == self.default);
                if !silent {
                    let loaded = self.loaded.keys().cloned().collect::<Vec<_>>().join(", ");
                    pass.rejections.insert(
                        key.clone(),
                        (
                            name.to_owned(),
                            format!("unknown policy (loaded: {loaded})"),
                        ),
                    );
                    pass.problems.push(PolicyProblem::Unknown {
                        service: key.clone(),
                        name: name.to_owned(),
                        loaded,
                    });
                    self.keep_previous(ports, next);
                }
                return;
            }
        };
        let config: Arc<str> = Arc::from(config);
        let mut newly_bound = false;
        for port in ports {
            // A policy gets the whole endpoint table in its memory and
            // may precompute over it; past the cap, the native round
            // robin (no table) balances the port instead.
            let count = port.internal.len().max(port.external.len());
            if count > self.max_endpoints {
                pass.problems.push(PolicyProblem::TooManyEndpoints {
                    service: key.clone(),
                    port: port.name.clone(),
                    count,
                    max: self.max_endpoints,
                });
                continue;
            }
            match self.bind_port(key, port, &module, &config, &mut pass.dry_runs) {
                Ok(bound) => {
                    newly_bound |= self.bindings.get(&port.id).map(|b| b.id) != Some(bound.id);
                    next.insert(port.id, bound);
                }
                Err(reason) => {
                    pass.rejections
                        .insert(key.clone(), (name.to_owned(), reason.clone()));
                    pass.problems.push(PolicyProblem::Rejected {
                        service: key.clone(),
                        policy: name.to_owned(),
                        reason,
                    });
                    for port in ports {
                        next.remove(&port.id);
                    }
                    self.keep_previous(ports, next);
                    newly_bound = false;
                    break;
                }
            }
        }
        // Reported for Services that ask for a policy: the default
        // binding of every other Service would be one record per
        // Service per node at every start.
        if newly_bound && info.policy.is_some() {
            super::events::policy_bound(key, name, &module.hash);
        }
    }

    /// A status record for each rejection that is new or changed since
    /// the previous bind.
    fn report_rejections(&mut self, now: BTreeMap<ServiceKey, (String, String)>) {
        let mut next = BTreeMap::new();
        for (service, (policy, reason)) in now {
            if self.rejections.get(&service) != Some(&reason) {
                super::events::policy_rejected(&service, &policy, &reason);
            }
            next.insert(service, reason);
        }
        self.rejections = next;
    }

    /// `report_rejections` for the Services an incremental bind resolved:
    /// the others' standing rejections stay as they were.
    fn update_rejections(
        &mut self,
        resolved: &[ServiceKey],
        mut now: BTreeMap<ServiceKey, (String, String)>,
    ) {
        for service in resolved {
            match now.remove(service) {
                Some((policy, reason)) => {
                    if self.rejections.get(service) != Some(&reason) {
                        super::events::policy_rejected(service, &policy, &reason);
                    }
                    self.rejections.insert(service.clone(), reason);
                }
                None => {
                    self.rejections.remove(service);
                }
            }
        }
    }

    fn keep_previous(&self, ports: &[Arc<ServicePort>], next: &mut Bindings) {
        for port in ports {
            if let Some(previous) = self.bindings.get(&port.id) {
                next.insert(port.id, previous.clone());
            }
        }
    }

    fn bind_port(
        &mut self,
        key: &ServiceKey,
        port: &ServicePort,
        module: &Arc<PolicyModule>,
        config: &Arc<str>,
        dry_runs: &mut usize,
    ) -> Result<Arc<BoundPolicy>, String> {
        if let Some(previous) = self.bindings.get(&port.id)
            && previous.module.hash == module.hash
            && previous.module.name == module.name
            && previous.config == *config
        {
            return Ok(previous.clone());
        }
        let verdict_key = (module.hash.clone(), config.clone());
        let verdict = match self.verdicts.get(&verdict_key) {
            Some(v) => v.clone(),
            None => {
                *dry_runs += 1;
                let v = dry_run(&self.engine, module, config, port, &self.here);
                if self.verdicts.len() > 4096 {
                    self.verdicts.clear();
                }
                self.verdicts.insert(verdict_key, v.clone());
                v
            }
        };
        verdict?;
        let id = self.next_id;
        self.next_id += 1;
        Ok(Arc::new(BoundPolicy {
            id,
            service: key.clone(),
            module: module.clone(),
            config: config.clone(),
        }))
    }
}

/// What one bind collects across Services.
#[derive(Default)]
struct Pass {
    problems: Vec<PolicyProblem>,
    rejections: BTreeMap<ServiceKey, (String, String)>,
    dry_runs: usize,
}

/// Instantiates with the config, hands over the live endpoints and asks for
/// one decision: a module that cannot do that is never bound.
pub fn dry_run(
    engine: &PolicyEngine,
    module: &PolicyModule,
    config: &str,
    port: &ServicePort,
    here: &Locality,
) -> Result<(), String> {
    let mut instance = WasmInstance::new(engine, module, config).map_err(|f| f.to_string())?;
    let endpoints = &port.internal;
    instance
        .set_endpoints(&encode_table(endpoints, here), endpoints.len())
        .map_err(|f| format!("on its endpoint table: {f}"))?;
    if endpoints.is_empty() {
        return Ok(());
    }
    let client = std::net::SocketAddr::from(([127, 0, 0, 1], 40000));
    let ctx = CallContext {
        l7: false,
        client,
        frontend: client,
        attempt: 0,
        now_ns: engine.now_ns(),
        tried: 0,
        count: endpoints.len() as u32,
    };
    instance
        .pick(&ctx)
        .map(drop)
        .map_err(|f| format!("on a trial pick: {f}"))
}

fn list_modules(dir: &Path) -> Vec<(String, PathBuf, Stamp)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("wasm") {
            continue;
        }
        let Some(name) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|n| !n.starts_with('.'))
        else {
            continue;
        };
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_file() {
            out.push((
                name.to_owned(),
                path.clone(),
                Stamp {
                    modified: meta.modified().ok(),
                    len: meta.len(),
                },
            ));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
