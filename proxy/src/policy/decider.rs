//! The per-worker decision maker. For each Service port and scope it keeps
//! the live statistics, the Wasm instance of the bound module (and of the
//! module bound before it, for fallback), and a native round robin. A Wasm
//! fault never fails a connection: the previous module, then the round
//! robin, answer instead.
//!
//! A connection is balanced only over the endpoints of its frontend's IP
//! family (`catalog::family_range`): the state, the table a policy sees and
//! its indices are per (Service port, scope, family); the indices handed
//! out and taken back are into the route's whole list.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::binding::BoundPolicy;
use super::engine::PolicyEngine;
use super::instance::{Fault, WasmInstance};
use super::layout::{CallContext, Locality, encode_table};
use super::stats::LiveStats;
use crate::admin::Metrics;
use crate::admin::metrics::{DECISION_SAMPLE, PolicyFaultLabels, PolicyLabels};
use crate::catalog::{Endpoint, Route, Scope, family_range, is_v6};

/// A module that faults this often within its last [`FAULT_WINDOW`]
/// decisions is disabled for that Service port (a flapping module is as bad
/// as a dead one).
pub const MAX_FAULTS: u32 = 5;
pub const FAULT_WINDOW: u32 = 32;
/// Port states unused for this many snapshot generations are dropped.
const STALE_GENERATIONS: u64 = 16;

/// What the data plane knows when it asks for an endpoint.
#[derive(Debug)]
pub struct PickRequest<'a> {
    pub route: &'a Route,
    pub binding: Option<&'a Arc<BoundPolicy>>,
    pub generation: u64,
    pub client: SocketAddr,
    pub frontend: SocketAddr,
    /// Endpoint indices that already failed for this connection.
    pub tried: &'a [usize],
}

/// Who made a decision, so that its outcome reaches the same module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecidedBy {
    Current,
    Previous,
    Builtin,
}

#[derive(Debug, Clone, Copy)]
pub struct Decision {
    pub index: usize,
    pub by: DecidedBy,
    table_version: u64,
}

/// How a connect attempt to a picked endpoint ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Connected { latency: Duration },
    Failed { after: Duration },
}

struct Slot {
    binding: Arc<BoundPolicy>,
    instance: Option<WasmInstance>,
    /// Table version the instance holds.
    table_version: u64,
}

struct PortState {
    /// The route's whole list, to notice a new one.
    source: Arc<[Endpoint]>,
    /// Where this family starts in it.
    offset: usize,
    /// This family's endpoints, what the policy's table holds.
    endpoints: Arc<[Endpoint]>,
    table: Vec<u8>,
    table_version: u64,
    stats: Vec<LiveStats>,
    cursor: usize,
    current: Option<Slot>,
    previous: Option<Slot>,
    /// The last 32 decisions of the current module, 1 bits for faults.
    fault_window: u32,
    disabled: bool,
    last_generation: u64,
}

pub struct Decider {
    engine: Option<Arc<PolicyEngine>>,
    here: Locality,
    metrics: Arc<Metrics>,
    /// By Service port, scope and family (true for IPv6).
    states: HashMap<(u64, Scope, bool), PortState>,
    generation: u64,
    started: Instant,
    /// Counts decisions; one in `DECISION_SAMPLE` is timed.
    sample: u32,
}

impl Decider {
    pub fn new(engine: Option<Arc<PolicyEngine>>, here: Locality, metrics: Arc<Metrics>) -> Self {
        Self {
            engine,
            here,
            metrics,
            states: HashMap::new(),
            generation: 0,
            started: Instant::now(),
            sample: 0,
        }
    }

    fn now_ns(&self) -> u64 {
        match &self.engine {
            Some(engine) => engine.now_ns(),
            None => self.started.elapsed().as_nanos() as u64,
        }
    }

    /// Chooses an endpoint index into `req.route.endpoints()`, among the
    /// endpoints of the frontend's family.
    pub fn pick(&mut self, req: &PickRequest<'_>) -> Option<Decision> {
        self.decide(req, None)
    }

    /// Chooses an endpoint for one HTTP request (context `mode` 1). The
    /// request head is lent to the policy for the call (`request_attr`)
    /// and is back in `request` when this returns.
    pub fn pick_request(
        &mut self,
        req: &PickRequest<'_>,
        request: &mut Option<hyper::http::request::Parts>,
    ) -> Option<Decision> {
        self.decide(req, Some(request))
    }

    fn decide(
        &mut self,
        req: &PickRequest<'_>,
        mut request: Option<&mut Option<hyper::http::request::Parts>>,
    ) -> Option<Decision> {
        if req.generation != self.generation {
            self.generation = req.generation;
            self.prune();
        }
        let all = req.route.endpoints();
        let range = family_range(all, req.frontend.ip());
        if range.is_empty() {
            return None;
        }
        let now_ns = self.now_ns();
        let key = (req.route.port.id, req.route.scope, is_v6(req.frontend.ip()));
        let state = self
            .states
            .entry(key)
            .or_insert_with(|| PortState::new(range.len()));
        state.last_generation = req.generation;
        if !Arc::ptr_eq(&state.source, all) {
            state.source = all.clone();
            state.offset = range.start;
            let family: Arc<[Endpoint]> = if range.len() == all.len() {
                all.clone()
            } else {
                Arc::from(&all[range.clone()])
            };
            state.refresh_endpoints(&family, &self.here);
        }
        state.refresh_binding(req.binding);
        let offset = state.offset;
        // Indices within the family; empty (no allocation) on a first try.
        let tried_here: Vec<usize> = req
            .tried
            .iter()
            .filter_map(|&i| i.checked_sub(offset))
            .filter(|&i| i < range.len())
            .collect();
        let tried = tried_here
            .iter()
            .filter(|&&i| i < 64)
            .fold(0u64, |m, &i| m | 1 << i);
        let ctx = CallContext {
            l7: request.is_some(),
            client: req.client,
            frontend: req.frontend,
            attempt: req.tried.len() as u16,
            now_ns,
            tried,
            count: range.len() as u32,
        };
        if let Some(engine) = &self.engine {
            for by in [DecidedBy::Current, DecidedBy::Previous] {
                if by == DecidedBy::Current && state.disabled {
                    continue;
                }
                self.sample = self.sample.wrapping_add(1);
                let timed = self
                    .sample
                    .is_multiple_of(DECISION_SAMPLE)
                    .then(Instant::now);
                let answer = state.ask(engine, by, &ctx, request.as_deref_mut());
                if let (Some(start), Some(slot)) = (timed, state.slot(by)) {
                    let labels = PolicyLabels {
                        policy: slot.binding.module.name.to_string(),
                    };
                    self.metrics
                        .policy_decision
                        .get_or_create(&labels)
                        .observe(start.elapsed().as_secs_f64());
                }
                match answer {
                    Some(Ok(Some(index))) if !tried_here.contains(&index) => {
                        if by == DecidedBy::Current {
                            state.fault_window <<= 1;
                        }
                        return Some(Decision {
                            index: offset + index,
                            by,
                            table_version: state.table_version,
                        });
                    }
                    // "No choice", or an endpoint that already failed: the
                    // next decision maker answers.
                    Some(Ok(_)) => count_fallback(&self.metrics, state, by, "no_choice"),
                    Some(Err(fault)) => count_fault(&self.metrics, state, by, &fault),
                    None => {}
                }
            }
        }
        let index = state.round_robin(&tried_here)?;
        Some(Decision {
            index: offset + index,
            by: DecidedBy::Builtin,
            table_version: state.table_version,
        })
    }

    /// Records how a connect attempt went and tells the module that chose.
    pub fn outcome(
        &mut self,
        req: &PickRequest<'_>,
        decision: Decision,
        addr: SocketAddr,
        outcome: Outcome,
    ) {
        let key = (req.route.port.id, req.route.scope, is_v6(addr.ip()));
        let now = Instant::now();
        let now_ms = (self.now_ns() / 1_000_000) as u32;
        let Some(state) = self.states.get_mut(&key) else {
            return;
        };
        let Some(index) = state.index_of(decision, addr) else {
            return;
        };
        let (failed, latency) = match outcome {
            Outcome::Connected { latency } => {
                state.stats[index].connected(latency, now);
                (false, latency)
            }
            Outcome::Failed { after } => {
                state.stats[index].failed(now, now_ms);
                (true, after)
            }
        };
        state.mirror(index);
        let version = state.table_version;
        if decision.by != DecidedBy::Builtin
            && let Some(slot) = state.slot_mut(decision.by)
            && let Some(instance) = &mut slot.instance
            && slot.table_version == version
            && let Err(fault) = instance.outcome(index, failed, latency.as_nanos() as u64)
        {
            count_fault(&self.metrics, state, decision.by, &fault);
        }
    }

    /// A proxied connection to `addr`, chosen by `decision`, ended.
    pub fn release(&mut self, route: &Route, decision: Decision, addr: SocketAddr) {
        let key = (route.port.id, route.scope, is_v6(addr.ip()));
        let Some(state) = self.states.get_mut(&key) else {
            return;
        };
        if let Some(index) = state.index_of(decision, addr) {
            state.stats[index].closed();
            state.mirror(index);
        }
    }

    fn prune(&mut self) {
        let generation = self.generation;
        self.states.retain(|_, s| {
            s.last_generation + STALE_GENERATIONS >= generation
                || s.stats.iter().any(|st| st.active > 0)
        });
    }
}

fn count_fallback(metrics: &Metrics, state: &PortState, by: DecidedBy, kind: &str) {
    if let Some(slot) = state.slot(by) {
        let labels = PolicyFaultLabels {
            policy: slot.binding.module.name.to_string(),
            kind: kind.to_owned(),
        };
        metrics.policy_fallbacks.get_or_create(&labels).inc();
    }
}

fn count_fault(metrics: &Metrics, state: &mut PortState, by: DecidedBy, fault: &Fault) {
    let Some(slot) = state.slot_mut(by) else {
        return;
    };
    let policy = slot.binding.module.name.to_string();
    if fault.poisons() {
        slot.instance = None;
    }
    let service = slot.binding.service.clone();
    let labels = PolicyFaultLabels {
        policy: policy.clone(),
        kind: fault.kind().to_owned(),
    };
    metrics.policy_faults.get_or_create(&labels).inc();
    metrics.policy_fallbacks.get_or_create(&labels).inc();
    crate::logging::rate_limited_warn(
        &format!("policy-fault:{policy}"),
        || tracing::warn!(%policy, %service, error = %fault, "policy fault; the decision fell back"),
    );
    if by == DecidedBy::Current {
        state.fault_window = state.fault_window << 1 | 1;
        let faults = state.fault_window.count_ones();
        if faults >= MAX_FAULTS && !state.disabled {
            state.disabled = true;
            metrics
                .policy_disabled
                .get_or_create(&PolicyLabels {
                    policy: policy.clone(),
                })
                .inc();
            tracing::error!(%policy, %service, faults, window = FAULT_WINDOW, "policy disabled for this Service after repeated faults; it stays off until the module or the binding changes");
            super::events::policy_disabled(&service, &policy, faults);
        }
    }
}

impl PortState {
    fn new(count: usize) -> Self {
        Self {
            source: Arc::from(Vec::new()),
            offset: 0,
            endpoints: Arc::from(Vec::new()),
            table: Vec::new(),
            table_version: 0,
            stats: Vec::new(),
            cursor: fastrand::usize(..count.max(1)),
            current: None,
            previous: None,
            fault_window: 0,
            disabled: false,
            last_generation: 0,
        }
    }

    /// Adopts a new endpoint list; statistics follow endpoints by address.
    fn refresh_endpoints(&mut self, endpoints: &Arc<[Endpoint]>, here: &Locality) {
        if Arc::ptr_eq(&self.endpoints, endpoints) {
            return;
        }
        if *self.endpoints == **endpoints && self.table_version > 0 {
            self.endpoints = endpoints.clone();
            return;
        }
        let old: HashMap<SocketAddr, LiveStats> = self
            .endpoints
            .iter()
            .map(|e| e.addr)
            .zip(self.stats.iter().copied())
            .collect();
        self.stats = endpoints
            .iter()
            .map(|e| old.get(&e.addr).copied().unwrap_or_default())
            .collect();
        self.endpoints = endpoints.clone();
        self.table = encode_table(endpoints, here);
        self.table_version += 1;
    }

    fn refresh_binding(&mut self, binding: Option<&Arc<BoundPolicy>>) {
        let current_id = self.current.as_ref().map(|s| s.binding.id);
        if current_id == binding.map(|b| b.id) {
            return;
        }
        self.previous = self.current.take();
        self.current = binding.map(|b| Slot {
            binding: b.clone(),
            instance: None,
            table_version: 0,
        });
        self.fault_window = 0;
        self.disabled = false;
    }

    fn slot(&self, by: DecidedBy) -> Option<&Slot> {
        match by {
            DecidedBy::Current => self.current.as_ref(),
            DecidedBy::Previous => self.previous.as_ref(),
            DecidedBy::Builtin => None,
        }
    }

    fn slot_mut(&mut self, by: DecidedBy) -> Option<&mut Slot> {
        match by {
            DecidedBy::Current => self.current.as_mut(),
            DecidedBy::Previous => self.previous.as_mut(),
            DecidedBy::Builtin => None,
        }
    }

    /// Asks one slot's module; `None` when there is no such slot.
    fn ask(
        &mut self,
        engine: &PolicyEngine,
        by: DecidedBy,
        ctx: &CallContext,
        request: Option<&mut Option<hyper::http::request::Parts>>,
    ) -> Option<Result<Option<usize>, Fault>> {
        let (table, version, count) = (&self.table, self.table_version, self.endpoints.len());
        let stats = &self.stats;
        let slot = match by {
            DecidedBy::Current => self.current.as_mut()?,
            DecidedBy::Previous => self.previous.as_mut()?,
            DecidedBy::Builtin => return None,
        };
        Some(slot.decide(engine, (table, version, count), stats, ctx, request))
    }

    fn round_robin(&mut self, tried: &[usize]) -> Option<usize> {
        let len = self.endpoints.len();
        for _ in 0..len {
            let index = self.cursor % len;
            self.cursor = self.cursor.wrapping_add(1);
            if !tried.contains(&index) {
                return Some(index);
            }
        }
        None
    }

    /// The family index of a decision's endpoint (`decision.index` is into
    /// the route's whole list).
    fn index_of(&self, decision: Decision, addr: SocketAddr) -> Option<usize> {
        let local = decision.index.checked_sub(self.offset);
        if decision.table_version == self.table_version
            && let Some(local) = local.filter(|&i| i < self.endpoints.len())
            && self.endpoints[local].addr == addr
        {
            return Some(local);
        }
        self.endpoints.iter().position(|e| e.addr == addr)
    }

    /// Copies one endpoint's statistics into every instance's table.
    fn mirror(&mut self, index: usize) {
        let fields = self.stats[index].fields();
        let version = self.table_version;
        for slot in [self.current.as_mut(), self.previous.as_mut()]
            .into_iter()
            .flatten()
        {
            if let Some(instance) = &mut slot.instance
                && slot.table_version == version
            {
                for (offset, bytes, len) in &fields {
                    instance.write_live(index, *offset, &bytes[..*len]);
                }
            }
        }
    }
}

impl Slot {
    fn decide(
        &mut self,
        engine: &PolicyEngine,
        (table, version, count): (&[u8], u64, usize),
        stats: &[LiveStats],
        ctx: &CallContext,
        request: Option<&mut Option<hyper::http::request::Parts>>,
    ) -> Result<Option<usize>, Fault> {
        if self.instance.is_none() {
            self.instance = Some(WasmInstance::new(
                engine,
                &self.binding.module,
                &self.binding.config,
            )?);
            self.table_version = 0;
        }
        let Some(instance) = self.instance.as_mut() else {
            return Ok(None);
        };
        if self.table_version != version || !instance.has_table() {
            instance.set_endpoints(table, count)?;
            for (index, st) in stats.iter().enumerate() {
                for (offset, bytes, len) in st.fields() {
                    instance.write_live(index, offset, &bytes[..len]);
                }
            }
            self.table_version = version;
        }
        instance.pick_request(ctx, request)
    }
}
