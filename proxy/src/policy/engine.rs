//! The wasmtime engine all policy modules share: Cranelift, epoch
//! interruption driven by one ticker thread (far cheaper per call than fuel
//! metering), and the host functions of ABI v1.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::{
    Caller, Config, Engine, Linker, OptLevel, Store, StoreLimits, StoreLimitsBuilder,
    UpdateDeadline,
};

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
}

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
        }))
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

/// One flag per thread that runs guest code, each on its own cache line so
/// that workers never share one.
#[repr(align(64))]
struct Busy(AtomicBool);

const BUSY_SLOTS: usize = 64;
static BUSY: [Busy; BUSY_SLOTS] = [const { Busy(AtomicBool::new(false)) }; BUSY_SLOTS];
static NEXT_SLOT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

thread_local! {
    static SLOT: usize = NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % BUSY_SLOTS;
}

/// Marks this thread as running guest code until `guest_done`, so that the
/// ticker ticks at deadline pace only while someone can miss a deadline.
pub fn guest_running() {
    SLOT.with(|&slot| BUSY[slot].0.store(true, Ordering::Relaxed));
}

pub fn guest_done() {
    SLOT.with(|&slot| BUSY[slot].0.store(false, Ordering::Relaxed));
}

fn any_guest_running() -> bool {
    BUSY.iter().any(|b| b.0.load(Ordering::Relaxed))
}

/// Tick pace while no guest code runs: a node without policy calls should
/// not wake a thread tens of thousands of times a second.
const IDLE_TICK: Duration = Duration::from_millis(1);

fn spawn_ticker(engine: Engine, tick: Duration, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("sy-policy-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // A call that starts during an idle sleep gets its deadline
                // late (by at most IDLE_TICK), never early.
                std::thread::sleep(if any_guest_running() {
                    tick
                } else {
                    IDLE_TICK.max(tick)
                });
                engine.increment_epoch();
            }
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
            // L4 connections have no request attributes.
            |_: Caller<'_, HostState>,
             _kind: i32,
             _name_ptr: i32,
             _name_len: i32,
             _out_ptr: i32,
             _out_cap: i32|
             -> i32 { -1 },
        )
        .map_err(err("request_attr"))?;
    Ok(linker)
}
