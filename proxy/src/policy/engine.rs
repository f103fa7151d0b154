//! The wasmtime engine all policy modules share: Cranelift, epoch
//! interruption driven by one ticker thread (far cheaper per call than fuel
//! metering), and the host functions of ABI v1.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wasmtime::{
    Caller, Config, Engine, Linker, Module, OptLevel, Store, StoreLimits, StoreLimitsBuilder,
    UpdateDeadline,
};

use super::cache::{CacheMiss, ModuleCache};
use crate::config::PolicyConfig;

/// Longest message kept from `set_error`.
const MAX_ERROR_BYTES: usize = 1024;
/// Log lines a policy instance may emit per second.
const LOG_LINES_PER_SEC: u32 = 10;

/// Per-instance host state.
pub struct HostState {
    pub limits: StoreLimits,
    /// Set by the guest's `set_error` before it rejects a config.
    pub error: Option<String>,
    pub policy: Arc<str>,
    pub rng: fastrand::Rng,
    log_window: Instant,
    log_lines: u32,
    /// Thread CPU time when the current call first passed its deadline, and
    /// how often it was given more time since (see `deadline_reached`).
    probe: Option<(u64, u32)>,
    /// The HTTP request being routed, moved in for the length of one L7
    /// `sy_pick` (a move, not a copy) so `request_attr` can read it.
    pub request: Option<hyper::http::request::Parts>,
}

impl HostState {
    pub fn new(policy: Arc<str>, memory_limit: usize) -> Self {
        Self {
            limits: StoreLimitsBuilder::new()
                .memory_size(memory_limit)
                .instances(1)
                .memories(1)
                .tables(4)
                .table_elements(65536)
                .build(),
            error: None,
            policy,
            rng: fastrand::Rng::new(),
            log_window: Instant::now(),
            log_lines: 0,
            probe: None,
            request: None,
        }
    }

    /// Forgets the deadline probe of the previous call.
    pub fn new_call(&mut self) {
        self.probe = None;
    }

    fn allow_log(&mut self) -> bool {
        if self.log_window.elapsed() >= Duration::from_secs(1) {
            self.log_window = Instant::now();
            self.log_lines = 0;
        }
        self.log_lines += 1;
        self.log_lines <= LOG_LINES_PER_SEC
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot create the WebAssembly engine: {0}")]
    Create(wasmtime::Error),
    #[error("cannot define host function {name}: {source}")]
    Link {
        name: &'static str,
        source: wasmtime::Error,
    },
}

/// Times a call past its deadline may be given another tick because its
/// thread was not running (about 50 ms of wall time at the default tick).
const MAX_EXTENSIONS: u32 = 1000;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a pointer to a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Epochs count wall time, but a worker preempted in the middle of a call
/// (a busy node has other work) has not spent it. When a call passes its
/// deadline, look at the thread's CPU clock: give the call one more tick,
/// and stop it only if it kept the CPU busy for most of that tick — a
/// module that loops does, a preempted one does not.
fn deadline_reached(state: &mut HostState, tick_ns: u64) -> UpdateDeadline {
    let now = thread_cpu_ns();
    match state.probe {
        None => {
            state.probe = Some((now, 0));
            UpdateDeadline::Continue(1)
        }
        Some((last, extensions)) => {
            if now.saturating_sub(last) >= tick_ns / 2 || extensions >= MAX_EXTENSIONS {
                UpdateDeadline::Interrupt
            } else {
                state.probe = Some((now, extensions + 1));
                UpdateDeadline::Continue(1)
            }
        }
    }
}

/// Shared by every worker; `Engine` and `Linker` are `Send + Sync`.
pub struct PolicyEngine {
    pub engine: Engine,
    pub linker: Linker<HostState>,
    /// Epoch ticks a decision may run (the deadline).
    pub deadline_ticks: u64,
    /// Epoch ticks set-up calls may run.
    pub setup_ticks: u64,
    pub memory_limit: usize,
    pub max_module_bytes: u64,
    pub epoch_start: Instant,
    tick: Duration,
    stop: Arc<AtomicBool>,
    /// `policy.cacheDir`: compiled modules kept across restarts.
    cache: Option<ModuleCache>,
    /// Modules taken from the cache, and compiled because it had none.
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    /// The last modules compiled in this process, newest first: a rollback
    /// or a canary flipped back and forth swaps without Cranelift (a
    /// compile was most of a table swap's time,
    /// bench/results/2026-12-06-kernel-2.md).
    recent: std::sync::Mutex<std::collections::VecDeque<([u8; 32], Module)>>,
}

/// Compiled modules kept in memory (a `Module` is a handle to its code).
const RECENT_MODULES: usize = 8;

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("deadline_ticks", &self.deadline_ticks)
            .finish()
    }
}

impl Drop for PolicyEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl PolicyEngine {
    pub fn new(cfg: &PolicyConfig) -> Result<Arc<Self>, EngineError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.cranelift_opt_level(OptLevel::Speed);
        // Policies are small; a deep guest stack only hides runaway recursion.
        config.max_wasm_stack(256 << 10);
        let engine = Engine::new(&config).map_err(EngineError::Create)?;
        let epoch_start = Instant::now();
        let linker = link(&engine, epoch_start)?;
        // A tick every half deadline, and three ticks allowed: a call is
        // stopped between one and one and a half deadlines after it started
        // (a tick may fall right after the deadline was armed).
        let tick = (cfg.deadline.0 / 2).max(Duration::from_micros(5));
        let stop = Arc::new(AtomicBool::new(false));
        spawn_ticker(engine.clone(), tick, stop.clone());
        let cache = cfg
            .cache_dir
            .as_deref()
            .map(|dir| ModuleCache::new(dir, &engine));
        Ok(Arc::new(Self {
            engine,
            linker,
            deadline_ticks: 3,
            setup_ticks: (cfg.setup_deadline.0.as_nanos() / tick.as_nanos().max(1)).max(2) as u64,
            memory_limit: cfg.memory_limit,
            max_module_bytes: cfg.max_module_bytes,
            epoch_start,
            tick,
            stop,
            cache,
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            recent: std::sync::Mutex::default(),
        }))
    }

    /// Compiles `bytes` (whose sha256 is `sha256`), or takes the compiled
    /// code from memory (one of the last modules compiled) or from the
    /// disk cache. A cache that cannot be read or written costs compile
    /// time, never the module. The flag says whether the code came from
    /// memory or the cache.
    pub fn compile(
        &self,
        bytes: &[u8],
        sha256: &[u8; 32],
    ) -> Result<(Module, bool), wasmtime::Error> {
        if let Some(module) = self.recent(sha256) {
            return Ok((module, true));
        }
        let compiled = self.compile_or_load(bytes, sha256)?;
        if let Ok(mut recent) = self.recent.lock() {
            recent.push_front((*sha256, compiled.0.clone()));
            recent.truncate(RECENT_MODULES);
        }
        Ok(compiled)
    }

    /// A module compiled lately, moved to the front.
    fn recent(&self, sha256: &[u8; 32]) -> Option<Module> {
        let mut recent = self.recent.lock().ok()?;
        let at = recent.iter().position(|(sha, _)| sha == sha256)?;
        let entry = recent.remove(at)?;
        let module = entry.1.clone();
        recent.push_front(entry);
        Some(module)
    }

    fn compile_or_load(
        &self,
        bytes: &[u8],
        sha256: &[u8; 32],
    ) -> Result<(Module, bool), wasmtime::Error> {
        let Some(cache) = &self.cache else {
            return Ok((Module::new(&self.engine, bytes)?, false));
        };
        match cache.load(&self.engine, sha256) {
            Ok(module) => {
                self.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok((module, true));
            }
            Err(CacheMiss::Absent) => {}
            Err(miss) => {
                tracing::warn!(entry = %cache.path_for(sha256).display(), reason = %miss, "compiled-module cache entry not used; compiling again");
            }
        }
        self.cache_misses.fetch_add(1, Ordering::Relaxed);
        let module = Module::new(&self.engine, bytes)?;
        if let Err(e) = cache.store(&module, sha256) {
            tracing::warn!(dir = %cache.dir().display(), error = %e, "cannot write the compiled-module cache; the next restart compiles this module again");
        }
        Ok((module, false))
    }

    /// A store for one instance: memory cap, set-up deadline armed, and the
    /// CPU-time check at the deadline.
    pub fn new_store(&self, policy: Arc<str>) -> Store<HostState> {
        let mut store = Store::new(&self.engine, HostState::new(policy, self.memory_limit));
        store.limiter(|s| &mut s.limits);
        let tick_ns = self.tick.as_nanos() as u64;
        store.epoch_deadline_callback(move |mut ctx| Ok(deadline_reached(ctx.data_mut(), tick_ns)));
        store.set_epoch_deadline(self.setup_ticks);
        store
    }

    /// `now_ns` of the ABI: monotonic since the engine started.
    pub fn now_ns(&self) -> u64 {
        self.epoch_start.elapsed().as_nanos() as u64
    }
}

/// One worker thread's slot: whether guest code runs on it now, and how
/// many calls it has started (written only by its owner). Cache-line
/// aligned so that workers never share one.
#[repr(align(64))]
struct Slot {
    busy: AtomicBool,
    calls: AtomicU64,
}

const SLOTS: usize = 64;
static SLOT_TABLE: [Slot; SLOTS] = [const {
    Slot {
        busy: AtomicBool::new(false),
        calls: AtomicU64::new(0),
    }
}; SLOTS];
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);
/// Tickers asleep until the next guest call (see `spawn_ticker`).
static PARKED: AtomicUsize = AtomicUsize::new(0);
static TICKERS: Mutex<Vec<std::thread::Thread>> = Mutex::new(Vec::new());

thread_local! {
    static SLOT: usize = NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % SLOTS;
}

/// Marks this thread as running guest code until `guest_done`, so that the
/// ticker ticks at deadline pace only while someone can miss a deadline,
/// and wakes a ticker that parked for lack of calls.
pub fn guest_running() {
    SLOT.with(|&i| {
        let slot = &SLOT_TABLE[i];
        slot.calls.store(
            slot.calls.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
        // SeqCst pairs with the ticker's: either it sees this call, or
        // this call sees it parked and wakes it.
        slot.busy.store(true, Ordering::SeqCst);
    });
    if PARKED.load(Ordering::SeqCst) > 0 {
        wake_tickers();
    }
}

pub fn guest_done() {
    SLOT.with(|&i| SLOT_TABLE[i].busy.store(false, Ordering::Release));
}

fn any_guest_running() -> bool {
    SLOT_TABLE.iter().any(|s| s.busy.load(Ordering::SeqCst))
}

fn calls_started() -> u64 {
    SLOT_TABLE.iter().fold(0u64, |sum, s| {
        sum.wrapping_add(s.calls.load(Ordering::Relaxed))
    })
}

fn wake_tickers() {
    let tickers = TICKERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for t in tickers.iter() {
        t.unpark();
    }
}

/// Tick pace while no guest code runs at the moment of the tick.
const IDLE_TICK: Duration = Duration::from_millis(1);
/// Idle ticks without a single call after which the ticker parks: a node
/// whose Services use only built-in policies, or that is quiet, should not
/// wake a thread a thousand times a second on the proxy's core.
const PARK_AFTER_IDLE_TICKS: u32 = 200;
/// A parked ticker still looks at its stop flag this often.
const PARK_TIMEOUT: Duration = Duration::from_secs(1);

fn spawn_ticker(engine: Engine, tick: Duration, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("sy-policy-epoch".into())
        .spawn(move || {
            let me = std::thread::current();
            TICKERS
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(me.clone());
            let (mut seen, mut idle) = (calls_started(), 0u32);
            while !stop.load(Ordering::Relaxed) {
                // A call that starts during an idle sleep gets its deadline
                // late (by at most IDLE_TICK), never early.
                std::thread::sleep(if any_guest_running() {
                    tick
                } else {
                    IDLE_TICK.max(tick)
                });
                engine.increment_epoch();
                let calls = calls_started();
                idle = if calls == seen && !any_guest_running() {
                    idle + 1
                } else {
                    0
                };
                seen = calls;
                if idle >= PARK_AFTER_IDLE_TICKS {
                    PARKED.fetch_add(1, Ordering::SeqCst);
                    // Looked at again after announcing the park: a call
                    // that began before it was visible is seen here.
                    if !any_guest_running() && calls_started() == seen {
                        std::thread::park_timeout(PARK_TIMEOUT);
                    }
                    PARKED.fetch_sub(1, Ordering::SeqCst);
                    idle = 0;
                    seen = calls_started();
                    // The call that woke us armed its deadline against the
                    // epoch we parked at; move on from there.
                    engine.increment_epoch();
                }
            }
            TICKERS
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .retain(|t| t.id() != me.id());
        });
    if let Err(e) = spawned {
        // Without the ticker no deadline fires; say so loudly.
        tracing::error!(error = %e, "cannot start the policy deadline ticker; looping policies will not be stopped");
    }
}

/// Reads `len` bytes at `ptr` from the caller's exported memory.
fn guest_bytes(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    len: i32,
    max: usize,
) -> Option<Vec<u8>> {
    let memory = caller.get_export("memory")?.into_memory()?;
    let data = memory.data(&caller);
    let start = usize::try_from(ptr).ok()?;
    let len = usize::try_from(len).ok()?.min(max);
    data.get(start..start.checked_add(len)?).map(<[u8]>::to_vec)
}

/// `request_attr`: -1 when there is no request (L4) or no such attribute,
/// or when a pointer is outside guest memory; else the full length, with
/// up to `out_cap` bytes copied. Reads the name and writes the value in
/// guest memory directly, and the value from the request the worker moved
/// into the store: nothing is allocated.
fn request_attr(
    caller: &mut Caller<'_, HostState>,
    kind: i32,
    (name_ptr, name_len): (i32, i32),
    (out_ptr, out_cap): (i32, i32),
) -> i32 {
    let Some(memory) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
        return -1;
    };
    let (data, state) = memory.data_and_store_mut(caller);
    let Some(parts) = state.request.as_ref() else {
        return -1;
    };
    let range = |ptr: i32, len: i32| {
        let start = usize::try_from(ptr).ok()?;
        let len = usize::try_from(len).ok()?;
        Some(start..start.checked_add(len)?)
    };
    let Some(name) = range(name_ptr, name_len).and_then(|r| data.get(r)) else {
        return -1;
    };
    let Some(value) = crate::l7::attrs::lookup(parts, kind, name) else {
        return -1;
    };
    let Ok(len) = i32::try_from(value.len()) else {
        return -1;
    };
    if out_cap != 0 {
        let cap = usize::try_from(out_cap).unwrap_or(0).min(value.len());
        let Some(out) = range(out_ptr, cap as i32).and_then(|r| data.get_mut(r)) else {
            return -1;
        };
        crate::l7::attrs::copy_out(value, out);
    }
    len
}

fn link(engine: &Engine, start: Instant) -> Result<Linker<HostState>, EngineError> {
    let mut linker = Linker::new(engine);
    let err = |name| move |source| EngineError::Link { name, source };
    linker
        .func_wrap("switchyard", "now_ns", move || {
            start.elapsed().as_nanos() as i64
        })
        .map_err(err("now_ns"))?;
    linker
        .func_wrap(
            "switchyard",
            "random_u64",
            |mut caller: Caller<'_, HostState>| caller.data_mut().rng.u64(..) as i64,
        )
        .map_err(err("random_u64"))?;
    linker
        .func_wrap(
            "switchyard",
            "log",
            |mut caller: Caller<'_, HostState>, level: i32, ptr: i32, len: i32| {
                if !caller.data_mut().allow_log() {
                    return;
                }
                let text = guest_bytes(&mut caller, ptr, len, 4096).unwrap_or_default();
                let text = String::from_utf8_lossy(&text);
                let policy = caller.data().policy.clone();
                match level {
                    0 => tracing::error!(%policy, "policy says: {text}"),
                    1 => tracing::warn!(%policy, "policy says: {text}"),
                    2 => tracing::info!(%policy, "policy says: {text}"),
                    _ => tracing::debug!(%policy, "policy says: {text}"),
                }
            },
        )
        .map_err(err("log"))?;
    linker
        .func_wrap(
            "switchyard",
            "set_error",
            |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| {
                let text = guest_bytes(&mut caller, ptr, len, MAX_ERROR_BYTES).unwrap_or_default();
                caller.data_mut().error = Some(String::from_utf8_lossy(&text).into_owned());
            },
        )
        .map_err(err("set_error"))?;
    linker
        .func_wrap(
            "switchyard",
            "request_attr",
            |mut caller: Caller<'_, HostState>,
             kind: i32,
             name_ptr: i32,
             name_len: i32,
             out_ptr: i32,
             out_cap: i32|
             -> i32 {
                request_attr(&mut caller, kind, (name_ptr, name_len), (out_ptr, out_cap))
            },
        )
        .map_err(err("request_attr"))?;
    Ok(linker)
}
