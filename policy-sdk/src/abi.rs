//! The wasm32 side of ABI v1: the `switchyard` imports and the runtime
//! behind the exports [`crate::export_policy!`] emits. This is the only file
//! of the SDK with `unsafe` code, and it is compiled for wasm32 only.
//!
//! Soundness rests on three facts:
//!
//! * wasm32-unknown-unknown without the `atomics` feature is
//!   single-threaded, so a `RefCell` in a `static` is never shared between
//!   threads ([`Global`]).
//! * Every pointer the host hands back (config, table, context) is checked
//!   against the list of live blocks `sy_alloc` made, with their sizes, before
//!   a slice is formed over it; an unknown pointer is never dereferenced.
//! * The host writes guest memory only between calls (ABI.md), and a slice
//!   over host-written memory never outlives the export call that formed it
//!   ([`with_bytes`]). So no Rust reference observes a write.

use std::alloc::{Layout, alloc as raw_alloc, dealloc};
use std::cell::RefCell;

use crate::{ABI_VERSION, CONTEXT_SIZE, Context, Driver, Endpoints, Outcome, Policy};

#[cfg(target_feature = "atomics")]
compile_error!(
    "switchyard policies are single-threaded modules: build without the `atomics` target feature"
);

#[link(wasm_import_module = "switchyard")]
unsafe extern "C" {
    #[link_name = "now_ns"]
    safe fn host_now_ns() -> i64;
    #[link_name = "random_u64"]
    safe fn host_random_u64() -> i64;
    #[link_name = "log"]
    fn host_log(level: i32, ptr: *const u8, len: usize);
    #[link_name = "set_error"]
    fn host_set_error(ptr: *const u8, len: usize);
    #[link_name = "request_attr"]
    fn host_request_attr(
        kind: i32,
        name_ptr: *const u8,
        name_len: usize,
        out_ptr: *mut u8,
        out_cap: usize,
    ) -> i32;
}

pub fn now_ns() -> u64 {
    host_now_ns() as u64
}

pub fn random_u64() -> u64 {
    host_random_u64() as u64
}

pub fn log(level: i32, message: &str) {
    // SAFETY: the pointer and length describe a live `&str`; the host only
    // reads them during the call.
    unsafe { host_log(level, message.as_ptr(), message.len()) }
}

fn set_error(message: &str) {
    // SAFETY: as for `log`.
    unsafe { host_set_error(message.as_ptr(), message.len()) }
}

pub fn request_attr(kind: i32, name: &[u8], out: &mut [u8]) -> i32 {
    let cap = out.len().min(i32::MAX as usize);
    // SAFETY: `name` is readable for its length and `out` writable for
    // `cap` bytes during the call; the host writes at most `cap` bytes.
    unsafe { host_request_attr(kind, name.as_ptr(), name.len(), out.as_mut_ptr(), cap) }
}

/// A `static` cell for single-threaded wasm.
struct Global<T>(RefCell<T>);

// SAFETY: wasm32 without `atomics` (checked above) has exactly one thread,
// so the cell is never accessed concurrently.
unsafe impl<T> Sync for Global<T> {}

/// Alignment of every `sy_alloc` block (ABI.md).
const ALIGN: usize = 8;

#[derive(Clone, Copy)]
struct Table {
    ptr: usize,
    size: usize,
    count: usize,
}

struct Buffers {
    /// Blocks `sy_alloc` handed out and not yet freed: (pointer, size).
    /// Only a handful are alive at once (context, table, a new table).
    live: Vec<(usize, usize)>,
    table: Option<Table>,
    /// The context pointer last validated (the host allocates it once).
    ctx: Option<usize>,
    /// The last slot buffer `sy_table` filled: the host reads it after the
    /// call, so it is freed only at the next `sy_table`.
    slots: Option<usize>,
}

impl Buffers {
    fn size_of(&self, ptr: usize) -> Option<usize> {
        self.live
            .iter()
            .find(|(p, _)| *p == ptr)
            .map(|(_, size)| *size)
    }
}

static BUFFERS: Global<Buffers> = Global(RefCell::new(Buffers {
    live: Vec::new(),
    table: None,
    ctx: None,
    slots: None,
}));
static POLICY: Global<Option<Box<dyn Driver>>> = Global(RefCell::new(None));

fn ptr_arg(value: i32) -> usize {
    value as u32 as usize
}

/// Runs `f` over `len` bytes at `ptr`, which must lie inside a live block.
fn with_bytes<R>(ptr: usize, len: usize, f: impl FnOnce(&[u8]) -> R) -> R {
    let inside = {
        let buffers = BUFFERS.0.borrow();
        buffers.live.iter().any(|&(p, size)| {
            ptr >= p
                && ptr
                    .checked_add(len)
                    .is_some_and(|end| p.checked_add(size).is_some_and(|limit| end <= limit))
        })
    };
    if !inside || len == 0 {
        return f(&[]);
    }
    // SAFETY: `[ptr, ptr + len)` lies inside a block `sy_alloc` made with
    // the global allocator and that is not freed yet (it is in `live`); the
    // host initialised it before handing it over and writes it only between
    // calls, while this reference lives only for this call (`f` cannot leak
    // it: its lifetime is higher-ranked).
    let bytes = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
    f(bytes)
}

fn free(ptr: usize) {
    let size = {
        let mut buffers = BUFFERS.0.borrow_mut();
        let Some(at) = buffers.live.iter().position(|(p, _)| *p == ptr) else {
            return;
        };
        let (_, size) = buffers.live.swap_remove(at);
        if buffers.ctx == Some(ptr) {
            buffers.ctx = None;
        }
        size
    };
    // A block in `live` was made with exactly this layout.
    let Ok(layout) = Layout::from_size_align(size, ALIGN) else {
        return;
    };
    // SAFETY: `ptr` came from `raw_alloc(layout)` and was still live (it was
    // in the list, removed just now, so it is freed once).
    unsafe { dealloc(ptr as *mut u8, layout) }
}

/// `sy_abi_version`: [`ABI_VERSION`].
pub fn abi_version() -> i32 {
    ABI_VERSION
}

/// `sy_alloc`: `size` bytes aligned to 8 from the global allocator; 0 when
/// impossible. `size == 0` still gets a real (1-byte) block, so 0 always
/// means failure.
pub fn alloc(size: i32) -> i32 {
    let Ok(size) = usize::try_from(size) else {
        return 0;
    };
    let Ok(layout) = Layout::from_size_align(size.max(1), ALIGN) else {
        return 0;
    };
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { raw_alloc(layout) };
    if ptr.is_null() {
        return 0;
    }
    BUFFERS
        .0
        .borrow_mut()
        .live
        .push((ptr as usize, layout.size()));
    ptr as usize as i32
}

/// `sy_init`: builds the policy from the config, then frees the config.
pub fn init<P: Policy>(config_ptr: i32, config_len: i32) -> i32 {
    let ptr = ptr_arg(config_ptr);
    let result = match usize::try_from(config_len) {
        Ok(0) => P::new(b""),
        Ok(len)
            if BUFFERS
                .0
                .borrow()
                .size_of(ptr)
                .is_some_and(|size| len <= size) =>
        {
            with_bytes(ptr, len, P::new)
        }
        _ => Err("sy_init: the configuration is not inside a buffer from sy_alloc".to_owned()),
    };
    free(ptr);
    match result {
        Ok(policy) => {
            let mut policy: Box<dyn Driver> = Box::new(policy);
            // ABI.md calls sy_init first; should a table already be there,
            // the policy still gets to see it.
            if BUFFERS.0.borrow().table.is_some() {
                with_table(now_ns(), |endpoints| policy.endpoints_changed(endpoints));
            }
            *POLICY.0.borrow_mut() = Some(policy);
            0
        }
        Err(message) => {
            *POLICY.0.borrow_mut() = None;
            set_error(&message);
            1
        }
    }
}

fn with_table<R>(now_ns: u64, f: impl FnOnce(&Endpoints<'_>) -> R) -> R {
    let table = BUFFERS.0.borrow().table;
    match table {
        Some(t) => with_bytes(t.ptr, t.size, |bytes| {
            f(&Endpoints::new(bytes, t.count, now_ns))
        }),
        None => f(&Endpoints::empty()),
    }
}

/// `sy_endpoints`: takes the new table, frees the previous one, tells the
/// policy.
pub fn endpoints(table_ptr: i32, count: i32) {
    let ptr = ptr_arg(table_ptr);
    let count = usize::try_from(count).unwrap_or(0);
    let (previous, known) = {
        let mut buffers = BUFFERS.0.borrow_mut();
        let size = buffers.size_of(ptr);
        let new = size.map(|size| Table { ptr, size, count });
        (std::mem::replace(&mut buffers.table, new), size.is_some())
    };
    if let Some(previous) = previous
        && previous.ptr != ptr
    {
        free(previous.ptr);
    }
    if !known && count > 0 {
        log(
            0,
            "sy_endpoints: the table is not a buffer from sy_alloc; treating the set as empty",
        );
    }
    let mut policy = POLICY.0.borrow_mut();
    if let Some(policy) = policy.as_mut() {
        with_table(now_ns(), |endpoints| policy.endpoints_changed(endpoints));
    }
}

/// `sy_pick`: decodes the context, asks the policy, checks the answer.
pub fn pick(ctx_ptr: i32) -> i32 {
    let ptr = ptr_arg(ctx_ptr);
    let valid = {
        let mut buffers = BUFFERS.0.borrow_mut();
        if buffers.ctx != Some(ptr)
            && buffers
                .size_of(ptr)
                .is_some_and(|size| size >= CONTEXT_SIZE)
        {
            buffers.ctx = Some(ptr);
        }
        buffers.ctx == Some(ptr)
    };
    if !valid {
        return -1;
    }
    let ctx = with_bytes(ptr, CONTEXT_SIZE, Context::from_bytes);
    let mut policy = POLICY.0.borrow_mut();
    let Some(policy) = policy.as_mut() else {
        return -1;
    };
    with_table(ctx.now_ns(), |endpoints| {
        crate::pick_result(policy.pick(&ctx, endpoints), endpoints.len())
    })
}

/// `sy_outcome`: forwards results for indices of the current table.
pub fn outcome(index: i32, result: i32, latency_ns: i64) {
    let Some(outcome) = Outcome::from_abi(result, latency_ns) else {
        return;
    };
    let count = BUFFERS
        .0
        .borrow()
        .table
        .map_or(0, |t| t.count.min(t.size / crate::RECORD_SIZE));
    let Ok(index) = usize::try_from(index) else {
        return;
    };
    if index >= count {
        return;
    }
    if let Some(policy) = POLICY.0.borrow_mut().as_mut() {
        policy.outcome(index, outcome);
    }
}

/// `sy_table`: asks the policy for a slot table and writes it, one
/// little-endian u32 per slot, into the host's buffer. Returns the key
/// (ABI.md), or 0 for "no table" (also for a buffer that is not ours, an
/// empty set, or an index the policy wrote out of range).
pub fn table(slots_ptr: i32, slots: i32) -> i32 {
    let ptr = ptr_arg(slots_ptr);
    let previous = std::mem::replace(&mut BUFFERS.0.borrow_mut().slots, Some(ptr));
    if let Some(previous) = previous
        && previous != ptr
    {
        free(previous);
    }
    let Ok(n) = usize::try_from(slots) else {
        return 0;
    };
    let Some(bytes) = n.checked_mul(4) else {
        return 0;
    };
    if n == 0
        || !BUFFERS
            .0
            .borrow()
            .size_of(ptr)
            .is_some_and(|size| bytes <= size)
    {
        return 0;
    }
    let mut filled = vec![u32::MAX; n];
    let key = {
        let mut policy = POLICY.0.borrow_mut();
        let Some(policy) = policy.as_mut() else {
            return 0;
        };
        with_table(now_ns(), |endpoints| {
            let key = if endpoints.is_empty() {
                None
            } else {
                policy.table(endpoints, &mut filled)
            };
            key.filter(|_| filled.iter().all(|&i| (i as usize) < endpoints.len()))
        })
    };
    let Some(key) = key else {
        return 0;
    };
    // SAFETY: `[ptr, ptr + bytes)` lies inside a live block from `sy_alloc`
    // (checked above, and nothing freed it since); no other reference to it
    // exists during this call, and the host reads it only after the call.
    let out = unsafe { std::slice::from_raw_parts_mut(ptr as *mut u8, bytes) };
    for (chunk, index) in out.chunks_exact_mut(4).zip(&filled) {
        chunk.copy_from_slice(&index.to_le_bytes());
    }
    key.to_abi()
}
