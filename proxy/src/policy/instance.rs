//! One live policy instance: a wasmtime Store owned by one worker, the
//! typed exports, and the guest buffers the host writes into. Every call is
//! armed with the epoch deadline; every guest pointer is bounds-checked.

use wasmtime::{Memory, Store, Trap, TypedFunc};

use super::engine::{HostState, PolicyEngine, guest_done, guest_running};
use super::layout::{CONTEXT_SIZE, CallContext, RECORD_SIZE};
use super::module::PolicyModule;

/// Why a policy call did not produce a usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    #[error("trapped: {0}")]
    Trap(String),
    #[error("ran past its deadline")]
    Deadline,
    #[error("answered {0}, outside the endpoint table")]
    OutOfRange(i32),
    #[error("returned a buffer outside its memory")]
    BadPointer,
    #[error("could not allocate {0} bytes")]
    Alloc(usize),
    #[error("rejected its configuration: {0}")]
    Config(String),
}

impl Fault {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Trap(_) => "trap",
            Fault::Deadline => "deadline",
            Fault::OutOfRange(_) => "out_of_range",
            Fault::BadPointer => "bad_pointer",
            Fault::Alloc(_) => "alloc",
            Fault::Config(_) => "config",
        }
    }

    /// After a trap or deadline the guest's state may be half-updated: the
    /// instance is thrown away.
    pub fn poisons(&self) -> bool {
        matches!(
            self,
            Fault::Trap(_) | Fault::Deadline | Fault::BadPointer | Fault::Alloc(_)
        )
    }
}

/// `fault` for the result of a guest call, ending the call's busy mark
/// (call sites clear it on success with `inspect`).
fn fault_done(e: wasmtime::Error) -> Fault {
    guest_done();
    fault(e)
}

fn fault(e: wasmtime::Error) -> Fault {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Fault::Deadline,
        Some(trap) => Fault::Trap(trap.to_string()),
        None => Fault::Trap(format!("{e:#}")),
    }
}

pub struct WasmInstance {
    store: Store<HostState>,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    endpoints: TypedFunc<(i32, i32), ()>,
    pick: TypedFunc<i32, i32>,
    outcome: Option<TypedFunc<(i32, i32, i64), ()>>,
    /// `sy_table` (optional; its signature is checked at load).
    table: Option<TypedFunc<(i32, i32), i32>>,
    deadline_ticks: u64,
    setup_ticks: u64,
    ctx_ptr: usize,
    /// Where the current endpoint table lives, and how many records.
    table_ptr: Option<usize>,
    count: usize,
}

impl WasmInstance {
    /// Instantiates and hands over the configuration (`sy_init`).
    pub fn new(engine: &PolicyEngine, module: &PolicyModule, config: &str) -> Result<Self, Fault> {
        let mut store = engine.new_store(module.name.clone());
        let instance = module
            .pre
            .instantiate(&mut store)
            .map_err(fault_done)
            .inspect(|_| guest_done())?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| Fault::Trap("no exported memory".into()))?;
        let alloc = instance
            .get_typed_func(&mut store, "sy_alloc")
            .map_err(fault_done)
            .inspect(|_| guest_done())?;
        let init: TypedFunc<(i32, i32), i32> = instance
            .get_typed_func(&mut store, "sy_init")
            .map_err(fault_done)
            .inspect(|_| guest_done())?;
        let endpoints = instance
            .get_typed_func(&mut store, "sy_endpoints")
            .map_err(fault_done)
            .inspect(|_| guest_done())?;
        let pick = instance
            .get_typed_func(&mut store, "sy_pick")
            .map_err(fault_done)
            .inspect(|_| guest_done())?;
        let outcome = if module.has_outcome {
            Some(
                instance
                    .get_typed_func(&mut store, "sy_outcome")
                    .map_err(fault_done)
                    .inspect(|_| guest_done())?,
            )
        } else {
            None
        };
        let table = instance.get_typed_func(&mut store, "sy_table").ok();
        guest_done();
        let mut this = Self {
            store,
            memory,
            alloc,
            endpoints,
            pick,
            outcome,
            table,
            deadline_ticks: engine.deadline_ticks,
            setup_ticks: engine.setup_ticks,
            ctx_ptr: 0,
            table_ptr: None,
            count: 0,
        };
        let config_ptr = this.write_new(config.as_bytes())?;
        this.arm_setup();
        let accepted = init
            .call(&mut this.store, (config_ptr as i32, config.len() as i32))
            .map_err(fault_done)
            .inspect(|_| guest_done())?;
        if accepted != 0 {
            let why = this
                .store
                .data_mut()
                .error
                .take()
                .unwrap_or_else(|| format!("sy_init returned {accepted}"));
            return Err(Fault::Config(why));
        }
        this.ctx_ptr = this.guest_alloc(CONTEXT_SIZE)?;
        Ok(this)
    }

    /// Arms the decision deadline.
    fn arm(&mut self) {
        guest_running();
        self.store.data_mut().new_call();
        self.store.set_epoch_deadline(self.deadline_ticks);
    }

    /// Arms the (longer) set-up deadline.
    fn arm_setup(&mut self) {
        guest_running();
        self.store.data_mut().new_call();
        self.store.set_epoch_deadline(self.setup_ticks);
    }

    fn guest_alloc(&mut self, size: usize) -> Result<usize, Fault> {
        self.arm_setup();
        let size_i32 = i32::try_from(size).map_err(|_| Fault::Alloc(size))?;
        let ptr = self
            .alloc
            .call(&mut self.store, size_i32)
            .map_err(fault_done)
            .inspect(|_| guest_done())?;
        let ptr = usize::try_from(ptr).map_err(|_| Fault::Alloc(size))?;
        if ptr == 0 {
            return Err(Fault::Alloc(size));
        }
        let end = ptr.checked_add(size).ok_or(Fault::BadPointer)?;
        if end > self.memory.data_size(&self.store) {
            return Err(Fault::BadPointer);
        }
        Ok(ptr)
    }

    /// Allocates guest memory for `bytes` and copies them in.
    fn write_new(&mut self, bytes: &[u8]) -> Result<usize, Fault> {
        let ptr = self.guest_alloc(bytes.len().max(1))?;
        self.write_at(ptr, bytes)?;
        Ok(ptr)
    }

    fn write_at(&mut self, ptr: usize, bytes: &[u8]) -> Result<(), Fault> {
        let data = self.memory.data_mut(&mut self.store);
        let end = ptr.checked_add(bytes.len()).ok_or(Fault::BadPointer)?;
        data.get_mut(ptr..end)
            .ok_or(Fault::BadPointer)?
            .copy_from_slice(bytes);
        Ok(())
    }

    /// Hands over a new endpoint table (`sy_endpoints`).
    pub fn set_endpoints(&mut self, table: &[u8], count: usize) -> Result<(), Fault> {
        let ptr = self.write_new(table)?;
        self.arm_setup();
        self.endpoints
            .call(&mut self.store, (ptr as i32, count as i32))
            .map_err(fault_done)
            .inspect(|_| guest_done())?;
        self.table_ptr = Some(ptr);
        self.count = count;
        Ok(())
    }

    pub fn has_table(&self) -> bool {
        self.table_ptr.is_some()
    }

    /// Updates one record's live field in place (no call into the guest).
    pub fn write_live(&mut self, index: usize, offset: usize, bytes: &[u8]) {
        let Some(table) = self.table_ptr else { return };
        if index < self.count {
            let _ = self.write_at(table + index * RECORD_SIZE + offset, bytes);
        }
    }

    /// One decision: `Ok(None)` is the guest's "no choice".
    pub fn pick(&mut self, ctx: &CallContext) -> Result<Option<usize>, Fault> {
        self.pick_request(ctx, None)
    }

    /// One decision about an HTTP request: `request` is moved into the
    /// store for the call (where `request_attr` reads it) and back out,
    /// whatever the call did.
    pub fn pick_request(
        &mut self,
        ctx: &CallContext,
        request: Option<&mut Option<hyper::http::request::Parts>>,
    ) -> Result<Option<usize>, Fault> {
        self.write_at(self.ctx_ptr, &ctx.encode())?;
        self.arm();
        let mut mounted = request;
        if let Some(r) = mounted.as_deref_mut() {
            self.store.data_mut().request = r.take();
        }
        let answer = self.pick.call(&mut self.store, self.ctx_ptr as i32);
        if let Some(r) = mounted {
            *r = self.store.data_mut().request.take();
        }
        let answer = answer.map_err(fault_done).inspect(|_| guest_done())?;
        match answer {
            -1 => Ok(None),
            i if i >= 0 && (i as usize) < self.count => Ok(Some(i as usize)),
            other => Err(Fault::OutOfRange(other)),
        }
    }

    pub fn outcome(&mut self, index: usize, failed: bool, latency_ns: u64) -> Result<(), Fault> {
        let Some(outcome) = self.outcome.clone() else {
            return Ok(());
        };
        self.arm();
        outcome
            .call(
                &mut self.store,
                (index as i32, i32::from(failed), latency_ns as i64),
            )
            .map_err(fault_done)
            .inspect(|_| guest_done())
    }

    /// The kernel datapath's slot table (`sy_table`) for the current
    /// endpoint set, under the set-up deadline: `None` when the module has
    /// no such export, else its result and the raw slots (`slots` × 4
    /// bytes, pre-filled with 0xFF so that an unfilled slot shows).
    pub fn table(&mut self, slots: usize) -> Result<Option<(i32, Vec<u8>)>, Fault> {
        let Some(table) = self.table.clone() else {
            return Ok(None);
        };
        let bytes = slots.checked_mul(4).ok_or(Fault::Alloc(usize::MAX))?;
        let ptr = self.write_new(&vec![0xFF; bytes])?;
        self.arm_setup();
        let slots_i32 = i32::try_from(slots).map_err(|_| Fault::Alloc(bytes))?;
        let key = table
            .call(&mut self.store, (ptr as i32, slots_i32))
            .map_err(fault_done)
            .inspect(|_| guest_done())?;
        let data = self.memory.data(&self.store);
        let raw = data.get(ptr..ptr + bytes).ok_or(Fault::BadPointer)?;
        Ok(Some((key, raw.to_vec())))
    }
}
