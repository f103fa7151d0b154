//! The native test harness: drive a [`Policy`] in `cargo test` the way the
//! host drives the module, through the same byte layouts (the harness
//! encodes real ABI tables and context records, and the policy reads them
//! through the same [`Endpoints`] / [`Context`] views as on wasm32).
//!
//! ```
//! use switchyard_policy::testing::{Call, EndpointSpec, Harness};
//! # use switchyard_policy::{Context, Endpoints, Policy};
//! # struct Rr(usize);
//! # impl Policy for Rr {
//! #     fn new(_: &[u8]) -> Result<Self, String> { Ok(Rr(0)) }
//! #     fn pick(&mut self, _: &Context, e: &Endpoints<'_>) -> Option<usize> {
//! #         self.0 += 1; Some(self.0 % e.len())
//! #     }
//! # }
//! let mut h = Harness::<Rr>::with_endpoints("{}", &EndpointSpec::many(4));
//! h.set_active(2, 10); // live stats, as the host would write them
//! let d = h.distribution(400, |i| Call::nth_client(i));
//! assert_eq!(d.counts, [100, 100, 100, 100]);
//! ```
//!
//! The host functions are simulated per thread: [`crate::now_ns`] reads the
//! harness's fake clock ([`Harness::advance`]), [`crate::random_u64`] a
//! seeded PRNG ([`Harness::seed`]), [`crate::log`] goes to stderr and
//! [`logs`], and request attributes come from the [`Call`]'s [`Request`].
//! Creating a harness resets all of them; harnesses on one thread share
//! them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::ewma::PeakEwma;
use crate::view::off;
use crate::{CONTEXT_SIZE, Context, Endpoints, Level, Outcome, Policy, RECORD_SIZE, flags, native};

/// Where the fake clock starts: 1000 s (far from the ABI's "0 = never").
pub const START_NS: u64 = 1_000_000_000_000;
/// The host's EWMA time constant.
pub const EWMA_TAU_NS: u64 = 10_000_000_000;
/// What the host counts a failed connect as in the EWMA.
pub const FAILURE_PENALTY_NS: u64 = 1_000_000_000;

fn parse_addr(addr: &str, default_port: u16) -> SocketAddr {
    addr.parse::<SocketAddr>()
        .or_else(|_| {
            addr.parse::<IpAddr>()
                .map(|ip| SocketAddr::new(ip, default_port))
        })
        .unwrap_or_else(|_| panic!("not an address: {addr:?}"))
}

/// One endpoint of a test table: everything the ABI record carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Address and target port.
    pub addr: SocketAddr,
    /// Pod name (`targetRef.name`); empty for none.
    pub name: String,
    /// Node name; empty for none.
    pub node: String,
    /// Zone; empty for none.
    pub zone: String,
    /// EndpointSlice condition `ready` (flag bit 0).
    pub ready: bool,
    /// EndpointSlice condition `serving` (flag bit 1).
    pub serving: bool,
    /// EndpointSlice condition `terminating` (flag bit 2).
    pub terminating: bool,
    /// On this node (flag bit 3).
    pub local: bool,
    /// In this node's zone (flag bit 4).
    pub same_zone: bool,
    /// The record's `weight` (1 from the host today).
    pub weight: u32,
    /// Live `active` at the start.
    pub active: u32,
    /// Live `failures` at the start.
    pub failures: u32,
    /// Live `last_failure_ms` at the start (0: none).
    pub last_failure_ms: u32,
    /// Live `ewma_ns` at the start (0: no sample).
    pub ewma_ns: u64,
}

impl EndpointSpec {
    /// A ready, serving endpoint; `addr` is `ip:port` or a bare IP (port
    /// 8080). No name, node or zone. Panics on a malformed address.
    pub fn new(addr: &str) -> Self {
        Self::from_addr(parse_addr(addr, 8080))
    }

    /// A ready, serving endpoint at `addr`, with no name, node or zone.
    pub fn from_addr(addr: SocketAddr) -> Self {
        Self {
            addr,
            name: String::new(),
            node: String::new(),
            zone: String::new(),
            ready: true,
            serving: true,
            terminating: false,
            local: false,
            same_zone: false,
            weight: 1,
            active: 0,
            failures: 0,
            last_failure_ms: 0,
            ewma_ns: 0,
        }
    }

    /// `n` endpoints `10.0.x.y:8080` named `ep-0`, `ep-1`...
    pub fn many(n: usize) -> Vec<Self> {
        (0..n)
            .map(|i| {
                let ip = Ipv4Addr::from(0x0a00_0001 + i as u32);
                Self::from_addr(SocketAddr::new(ip.into(), 8080)).name(&format!("ep-{i}"))
            })
            .collect()
    }

    /// Sets the Pod name.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    /// Sets the node name.
    pub fn node(mut self, node: &str) -> Self {
        self.node = node.to_owned();
        self
    }

    /// Sets the zone.
    pub fn zone(mut self, zone: &str) -> Self {
        self.zone = zone.to_owned();
        self
    }

    /// Marks it as on this node (and so in this zone).
    pub fn local(mut self) -> Self {
        self.local = true;
        self.same_zone = true;
        self
    }

    /// Marks it as in this node's zone.
    pub fn same_zone(mut self) -> Self {
        self.same_zone = true;
        self
    }

    /// Serving and terminating, not ready.
    pub fn terminating(mut self) -> Self {
        self.ready = false;
        self.terminating = true;
        self
    }

    /// Neither ready nor serving.
    pub fn not_ready(mut self) -> Self {
        self.ready = false;
        self.serving = false;
        self
    }

    /// Sets the record's weight.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the initial live `active` count.
    pub fn active(mut self, active: u32) -> Self {
        self.active = active;
        self
    }

    /// Sets the initial live `failures` and `last_failure_ms`.
    pub fn failures(mut self, failures: u32, last_failure_ms: u32) -> Self {
        self.failures = failures;
        self.last_failure_ms = last_failure_ms;
        self
    }

    /// Sets the initial live `ewma_ns`.
    pub fn ewma_ns(mut self, ewma_ns: u64) -> Self {
        self.ewma_ns = ewma_ns;
        self
    }

    fn flags(&self) -> u8 {
        let mut f = 0;
        for (on, bit) in [
            (self.ready, flags::READY),
            (self.serving, flags::SERVING),
            (self.terminating, flags::TERMINATING),
            (self.local, flags::LOCAL),
            (self.same_zone, flags::SAME_ZONE),
        ] {
            if on {
                f |= bit;
            }
        }
        f
    }
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

fn put_ip(buf: &mut [u8], at: usize, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => put(buf, at, &v4.octets()),
        IpAddr::V6(v6) => put(buf, at, &v6.octets()),
    }
}

fn family(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 4 } else { 6 }
}

/// Encodes an endpoint table exactly as ABI.md lays it out: records, then
/// the strings (each at most 65535 bytes).
pub fn encode_table(specs: &[EndpointSpec]) -> Vec<u8> {
    let mut out = vec![0u8; specs.len() * RECORD_SIZE];
    for (i, spec) in specs.iter().enumerate() {
        let mut string = |s: &str| {
            let s = &s.as_bytes()[..s.len().min(usize::from(u16::MAX))];
            let at = if s.is_empty() { 0 } else { out.len() as u32 };
            out.extend_from_slice(s);
            (at, s.len() as u16)
        };
        let name = string(&spec.name);
        let node = string(&spec.node);
        let zone = string(&spec.zone);
        let r = &mut out[i * RECORD_SIZE..(i + 1) * RECORD_SIZE];
        r[off::FAMILY] = family(spec.addr.ip());
        r[off::FLAGS] = spec.flags();
        put(r, off::PORT, &spec.addr.port().to_le_bytes());
        put(r, off::WEIGHT, &spec.weight.to_le_bytes());
        put_ip(r, off::ADDRESS, spec.addr.ip());
        put(r, off::NAME_OFF, &name.0.to_le_bytes());
        put(r, off::NAME_LEN, &name.1.to_le_bytes());
        put(r, off::NODE_LEN, &node.1.to_le_bytes());
        put(r, off::NODE_OFF, &node.0.to_le_bytes());
        put(r, off::ZONE_OFF, &zone.0.to_le_bytes());
        put(r, off::ZONE_LEN, &zone.1.to_le_bytes());
        put(r, off::ACTIVE, &spec.active.to_le_bytes());
        put(r, off::FAILURES, &spec.failures.to_le_bytes());
        put(r, off::LAST_FAILURE_MS, &spec.last_failure_ms.to_le_bytes());
        put(r, off::EWMA_NS, &spec.ewma_ns.to_le_bytes());
    }
    out
}

/// An HTTP request, for L7-mode calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`...; `None`: absent.
    pub method: Option<String>,
    /// `:authority` / `Host`; `None`: absent.
    pub authority: Option<String>,
    /// Path with query; `None`: absent.
    pub path: Option<String>,
    /// `http` or `https`; `None`: absent.
    pub scheme: Option<String>,
    /// Names are stored lowercase, as the host passes them.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// `GET path` over http, no authority, no headers.
    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    /// A request with this method and path over http, no authority, no headers.
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: Some(method.to_owned()),
            path: Some(path.to_owned()),
            scheme: Some("http".to_owned()),
            ..Self::default()
        }
    }

    /// Sets the authority.
    pub fn authority(mut self, authority: &str) -> Self {
        self.authority = Some(authority.to_owned());
        self
    }

    /// Sets the scheme.
    pub fn scheme(mut self, scheme: &str) -> Self {
        self.scheme = Some(scheme.to_owned());
        self
    }

    /// Adds a header (the name is lowercased; the first of a name wins).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// The attribute of ABI kind `kind` (for kind 3, the first header named
    /// `name`, which must be lowercase, as with the host).
    pub fn attr(&self, kind: i32, name: &[u8]) -> Option<&[u8]> {
        fn field(f: &Option<String>) -> Option<&[u8]> {
            f.as_deref().map(str::as_bytes)
        }
        match kind {
            0 => field(&self.method),
            1 => field(&self.authority),
            2 => field(&self.path),
            3 => self
                .headers
                .iter()
                .find(|(n, _)| n.as_bytes() == name)
                .map(|(_, v)| v.as_bytes()),
            4 => field(&self.scheme),
            _ => None,
        }
    }
}

/// One pick call: the context record's inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The client's address and port.
    pub client: SocketAddr,
    /// The Service address and port connected to.
    pub frontend: SocketAddr,
    /// 0 for the first pick of a connection, 1.. for retries.
    pub attempt: u16,
    /// Bit `i`: endpoint `i` already failed for this connection.
    pub tried: u64,
    /// `Some` makes it an L7 call.
    pub request: Option<Request>,
}

impl Default for Call {
    fn default() -> Self {
        Self::new()
    }
}

impl Call {
    /// A first L4 attempt from 10.1.0.1:40000 to 10.96.0.1:80.
    pub fn new() -> Self {
        Self {
            client: parse_addr("10.1.0.1:40000", 0),
            frontend: parse_addr("10.96.0.1:80", 0),
            attempt: 0,
            tried: 0,
            request: None,
        }
    }

    /// From this client (`ip:port`, or a bare IP with port 40000).
    pub fn from_client(client: &str) -> Self {
        Self {
            client: parse_addr(client, 40000),
            ..Self::new()
        }
    }

    /// From client number `i`: a distinct IPv4 address per `i`
    /// (10.128.0.0 + i), port 40000.
    pub fn nth_client(i: usize) -> Self {
        let ip = Ipv4Addr::from(0x0a80_0000u32.wrapping_add(i as u32));
        Self {
            client: SocketAddr::new(ip.into(), 40000),
            ..Self::new()
        }
    }

    /// Sets the client's address and port.
    pub fn client(mut self, client: SocketAddr) -> Self {
        self.client = client;
        self
    }

    /// Sets the client's port only.
    pub fn client_port(mut self, port: u16) -> Self {
        self.client.set_port(port);
        self
    }

    /// Sets the Service address (`ip:port`; panics on a malformed one).
    pub fn frontend(mut self, frontend: &str) -> Self {
        self.frontend = parse_addr(frontend, 80);
        self
    }

    /// Sets the attempt number.
    pub fn attempt(mut self, attempt: u16) -> Self {
        self.attempt = attempt;
        self
    }

    /// Marks endpoints as already tried (indices of 64 and above cannot be
    /// expressed and are ignored, as in the ABI).
    pub fn tried(mut self, indices: &[usize]) -> Self {
        for &i in indices {
            if i < 64 {
                self.tried |= 1 << i;
            }
        }
        self
    }

    /// An L7 call for this request.
    pub fn l7(mut self, request: Request) -> Self {
        self.request = Some(request);
        self
    }

    /// The context record, as the host writes it.
    pub fn encode(&self, count: u32, now_ns: u64) -> [u8; CONTEXT_SIZE] {
        let mut r = [0u8; CONTEXT_SIZE];
        r[off::CTX_FAMILY] = family(self.client.ip());
        r[off::CTX_MODE] = u8::from(self.request.is_some());
        put(
            &mut r,
            off::CTX_CLIENT_PORT,
            &self.client.port().to_le_bytes(),
        );
        put(
            &mut r,
            off::CTX_FRONTEND_PORT,
            &self.frontend.port().to_le_bytes(),
        );
        put(&mut r, off::CTX_ATTEMPT, &self.attempt.to_le_bytes());
        put_ip(&mut r, off::CTX_CLIENT_ADDR, self.client.ip());
        put_ip(&mut r, off::CTX_FRONTEND_ADDR, self.frontend.ip());
        put(&mut r, off::CTX_NOW_NS, &now_ns.to_le_bytes());
        put(&mut r, off::CTX_TRIED, &self.tried.to_le_bytes());
        put(&mut r, off::CTX_COUNT, &count.to_le_bytes());
        r
    }

    /// The decoded context.
    pub fn context(&self, count: u32, now_ns: u64) -> Context {
        Context::from_bytes(&self.encode(count, now_ns))
    }
}

/// How often each endpoint was picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distribution {
    /// Picks per endpoint index.
    pub counts: Vec<usize>,
    /// "No choice" answers.
    pub none: usize,
}

impl Distribution {
    /// Picks plus "no choice" answers.
    pub fn total(&self) -> usize {
        self.counts.iter().sum::<usize>() + self.none
    }

    /// Endpoint `i`'s share of all picks, 0..=1.
    pub fn share(&self, i: usize) -> f64 {
        let total = self.total();
        if total == 0 {
            0.0
        } else {
            self.counts.get(i).copied().unwrap_or(0) as f64 / total as f64
        }
    }
}

/// Takes the log lines the policy wrote on this thread so far.
pub fn logs() -> Vec<(Level, String)> {
    native::take_logs()
}

/// Drives a policy as the host would: `new`, then `endpoints_changed` for
/// each table, `pick` with encoded context records, `outcome` after updating
/// the live fields the way the host does.
pub struct Harness<P: Policy> {
    policy: P,
    table: Vec<u8>,
    count: usize,
    ewma: Vec<PeakEwma>,
}

impl<P: Policy> std::fmt::Debug for Harness<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("endpoints", &self.endpoints())
            .finish()
    }
}

impl<P: Policy> Harness<P> {
    /// Resets the simulated host (clock at [`START_NS`], PRNG seed, no
    /// request, no logs) and builds the policy from `config` (`sy_init`).
    /// `Err` is the policy's rejection message.
    pub fn new(config: &str) -> Result<Self, String> {
        native::set_fake_now(Some(START_NS));
        native::seed(native::DEFAULT_SEED);
        native::set_request(None);
        native::take_logs();
        let policy = P::new(config.as_bytes())?;
        Ok(Self {
            policy,
            table: Vec::new(),
            count: 0,
            ewma: Vec::new(),
        })
    }

    /// [`Harness::new`] then [`Harness::set_endpoints`]; panics if the
    /// policy rejects the configuration.
    pub fn with_endpoints(config: &str, specs: &[EndpointSpec]) -> Self {
        let mut h = Self::new(config).unwrap_or_else(|e| panic!("config {config:?} rejected: {e}"));
        h.set_endpoints(specs);
        h
    }

    /// A new endpoint set (`sy_endpoints`), live fields from the specs.
    pub fn set_endpoints(&mut self, specs: &[EndpointSpec]) {
        self.set_table(encode_table(specs), specs.len());
    }

    /// A raw table, possibly malformed (`count` records claimed).
    pub fn set_table(&mut self, table: Vec<u8>, count: usize) {
        self.table = table;
        self.count = count;
        self.ewma = (0..self.endpoints().len())
            .map(|i| {
                let mut e = PeakEwma::new(EWMA_TAU_NS);
                let seed = self.endpoints().get(i).ewma_ns();
                if seed > 0 {
                    e.observe(seed as f64, crate::now_ns());
                }
                e
            })
            .collect();
        let now = crate::now_ns();
        let endpoints = Endpoints::new(&self.table, self.count, now);
        self.policy.endpoints_changed(&endpoints);
    }

    /// The current table, as the policy sees it now.
    pub fn endpoints(&self) -> Endpoints<'_> {
        Endpoints::new(&self.table, self.count, crate::now_ns())
    }

    /// Endpoints in the current table.
    pub fn len(&self) -> usize {
        self.endpoints().len()
    }

    /// Whether the current table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The policy under test.
    pub fn policy(&self) -> &P {
        &self.policy
    }

    /// The policy under test, mutably.
    pub fn policy_mut(&mut self) -> &mut P {
        &mut self.policy
    }

    /// The fake clock.
    pub fn now_ns(&self) -> u64 {
        crate::now_ns()
    }

    /// Sets the fake clock (what [`crate::now_ns`] returns).
    pub fn set_now_ns(&mut self, now_ns: u64) {
        native::set_fake_now(Some(now_ns));
    }

    /// Moves the fake clock forward.
    pub fn advance(&mut self, by: Duration) {
        let now = crate::now_ns().saturating_add(by.as_nanos().min(u128::from(u64::MAX)) as u64);
        native::set_fake_now(Some(now));
    }

    /// Reseeds the PRNG behind [`crate::random_u64`].
    pub fn seed(&mut self, seed: u64) {
        native::seed(seed);
    }

    /// One `sy_table` of `slots` slots, checked as the host checks it:
    /// `None` when the policy has no table, the set is empty, or a slot is
    /// left unfilled or out of range.
    pub fn table(&mut self, slots: usize) -> Option<(crate::TableKey, Vec<u32>)> {
        let endpoints = Endpoints::new(&self.table, self.count, crate::now_ns());
        if endpoints.is_empty() || slots == 0 {
            return None;
        }
        let mut filled = vec![u32::MAX; slots];
        let key = self.policy.table(&endpoints, &mut filled)?;
        filled
            .iter()
            .all(|&i| (i as usize) < endpoints.len())
            .then_some((key, filled))
    }

    /// One `sy_pick`: `None` for "no choice" and for an index out of range
    /// (what the SDK's `sy_pick` turns into `-1`).
    pub fn pick(&mut self, call: &Call) -> Option<usize> {
        let now = crate::now_ns();
        let endpoints = Endpoints::new(&self.table, self.count, now);
        let ctx = call.context(self.count as u32, now);
        native::set_request(call.request.clone());
        let choice = self.policy.pick(&ctx, &endpoints);
        native::set_request(None);
        usize::try_from(crate::pick_result(choice, endpoints.len())).ok()
    }

    /// `n` picks, call `i` made by `call(i)`; no outcomes reported.
    pub fn distribution(&mut self, n: usize, mut call: impl FnMut(usize) -> Call) -> Distribution {
        let mut d = Distribution {
            counts: vec![0; self.len()],
            none: 0,
        };
        for i in 0..n {
            match self.pick(&call(i)) {
                Some(e) => d.counts[e] += 1,
                None => d.none += 1,
            }
        }
        d
    }

    fn write_u32(&mut self, i: usize, at: usize, value: u32) {
        if i < self.len() {
            put(&mut self.table, i * RECORD_SIZE + at, &value.to_le_bytes());
        }
    }

    fn write_u64(&mut self, i: usize, at: usize, value: u64) {
        if i < self.len() {
            put(&mut self.table, i * RECORD_SIZE + at, &value.to_le_bytes());
        }
    }

    /// Live field `active` of endpoint `i`.
    pub fn set_active(&mut self, i: usize, active: u32) {
        self.write_u32(i, off::ACTIVE, active);
    }

    /// Live field `failures` of endpoint `i`.
    pub fn set_failures(&mut self, i: usize, failures: u32) {
        self.write_u32(i, off::FAILURES, failures);
    }

    /// Live field `last_failure_ms` of endpoint `i`.
    pub fn set_last_failure_ms(&mut self, i: usize, ms: u32) {
        self.write_u32(i, off::LAST_FAILURE_MS, ms);
    }

    /// Live field `ewma_ns` of endpoint `i` (also resets the harness's own EWMA to it).
    pub fn set_ewma_ns(&mut self, i: usize, ewma_ns: u64) {
        self.write_u64(i, off::EWMA_NS, ewma_ns);
        if let Some(e) = self.ewma.get_mut(i) {
            *e = PeakEwma::new(EWMA_TAU_NS);
            e.observe(ewma_ns as f64, crate::now_ns());
        }
    }

    fn sample(&mut self, i: usize, latency_ns: u64) {
        let now = crate::now_ns();
        if let Some(e) = self.ewma.get_mut(i) {
            e.observe(latency_ns as f64, now);
            let v = e.value() as u64;
            self.write_u64(i, off::EWMA_NS, v);
        }
    }

    /// The connection to `i` succeeded after `latency`: updates the live
    /// fields as the host does (active + 1, failures = 0, EWMA sample), then
    /// calls `outcome`.
    pub fn connected(&mut self, i: usize, latency: Duration) {
        let latency_ns = latency.as_nanos().min(u128::from(u64::MAX)) as u64;
        let e = self.endpoints().get(i);
        let active = e.active().saturating_add(1);
        self.write_u32(i, off::ACTIVE, active);
        self.write_u32(i, off::FAILURES, 0);
        self.sample(i, latency_ns);
        if i < self.len() {
            self.policy.outcome(i, Outcome::Connected { latency_ns });
        }
    }

    /// The connection to `i` failed after `latency`: failures + 1, last
    /// failure now, an EWMA sample of 1 s, then `outcome`.
    pub fn failed(&mut self, i: usize, latency: Duration) {
        let latency_ns = latency.as_nanos().min(u128::from(u64::MAX)) as u64;
        let failures = self.endpoints().get(i).failures().saturating_add(1);
        let now_ms = ((crate::now_ns() / 1_000_000) as u32).max(1);
        self.write_u32(i, off::FAILURES, failures);
        self.write_u32(i, off::LAST_FAILURE_MS, now_ms);
        self.sample(i, FAILURE_PENALTY_NS);
        if i < self.len() {
            self.policy.outcome(i, Outcome::Failed { latency_ns });
        }
    }

    /// A connection to `i` closed: active - 1.
    pub fn closed(&mut self, i: usize) {
        let active = self.endpoints().get(i).active().saturating_sub(1);
        self.write_u32(i, off::ACTIVE, active);
    }

    /// A whole connection with retries, as the host makes it: pick; if
    /// `reachable(index)` is false the connect fails (1 ms), the endpoint is
    /// marked tried and the next attempt picks again, up to one attempt per
    /// endpoint. Returns the endpoint connected to (1 ms), or `None`.
    pub fn connect(
        &mut self,
        call: &Call,
        mut reachable: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        let mut call = call.clone();
        for attempt in 0..self.len().max(1) {
            call.attempt = attempt as u16;
            let i = self.pick(&call)?;
            if reachable(i) {
                self.connected(i, Duration::from_millis(1));
                return Some(i);
            }
            self.failed(i, Duration::from_millis(1));
            call = call.tried(&[i]);
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::Attr;

    /// Records what it is told and answers from its config.
    struct Probe {
        answer: Option<usize>,
        seen: Vec<String>,
        outcomes: Vec<(usize, Outcome)>,
    }

    impl Policy for Probe {
        fn new(config: &[u8]) -> Result<Self, String> {
            match config {
                b"reject" => Err("no thanks".into()),
                b"none" => Ok(Probe {
                    answer: None,
                    seen: vec![],
                    outcomes: vec![],
                }),
                other => {
                    let n = std::str::from_utf8(other)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    Ok(Probe {
                        answer: Some(n),
                        seen: vec![],
                        outcomes: vec![],
                    })
                }
            }
        }

        fn endpoints_changed(&mut self, endpoints: &Endpoints<'_>) {
            self.seen = endpoints
                .iter()
                .map(|e| format!("{} {} {} {}", e.socket_addr(), e.name(), e.node(), e.zone()))
                .collect();
        }

        fn pick(&mut self, ctx: &Context, _endpoints: &Endpoints<'_>) -> Option<usize> {
            if let Some(path) = ctx.path() {
                crate::info!("path {path}");
            }
            self.answer
        }

        fn outcome(&mut self, endpoint: usize, outcome: Outcome) {
            self.outcomes.push((endpoint, outcome));
        }
    }

    #[test]
    fn table_bytes_follow_abi_md() {
        let specs = [
            EndpointSpec::new("10.244.1.11:8080")
                .name("web-0")
                .node("node-a")
                .zone("z1")
                .local()
                .weight(3),
            EndpointSpec::new("[fd00::12]:80")
                .node("node-b")
                .terminating()
                .active(4)
                .failures(2, 77)
                .ewma_ns(900),
        ];
        let t = encode_table(&specs);
        assert_eq!(
            &t[..4],
            &[
                4,
                flags::READY | flags::SERVING | flags::LOCAL | flags::SAME_ZONE,
                0x90,
                0x1f
            ]
        );
        assert_eq!(u32::from_le_bytes(t[4..8].try_into().unwrap()), 3);
        assert_eq!(&t[8..12], &[10, 244, 1, 11]);
        let name_off = u32::from_le_bytes(t[24..28].try_into().unwrap()) as usize;
        let name_len = u16::from_le_bytes(t[28..30].try_into().unwrap()) as usize;
        assert_eq!((name_off, name_len), (128, 5));
        assert_eq!(&t[name_off..name_off + name_len], b"web-0");
        assert_eq!(
            u16::from_le_bytes(t[30..32].try_into().unwrap()),
            6,
            "node_len"
        );
        assert_eq!(
            u32::from_le_bytes(t[32..36].try_into().unwrap()),
            133,
            "node_off"
        );
        assert_eq!(
            u32::from_le_bytes(t[36..40].try_into().unwrap()),
            139,
            "zone_off"
        );
        assert_eq!(
            u16::from_le_bytes(t[40..42].try_into().unwrap()),
            2,
            "zone_len"
        );
        let r = &t[64..128];
        assert_eq!((r[0], r[1]), (6, flags::SERVING | flags::TERMINATING));
        assert_eq!(&r[44..48], &4u32.to_le_bytes());
        assert_eq!(&r[48..52], &2u32.to_le_bytes());
        assert_eq!(&r[52..56], &77u32.to_le_bytes());
        assert_eq!(&r[56..64], &900u64.to_le_bytes());
        assert_eq!(&r[28..30], &[0, 0], "no name");
        assert_eq!(t.len(), 128 + 5 + 6 + 2 + 6);

        let eps = Endpoints::new(&t, 2, 0);
        let (a, b) = (eps.get(0), eps.get(1));
        assert_eq!(
            (a.name(), a.node(), a.zone(), a.weight()),
            ("web-0", "node-a", "z1", 3)
        );
        assert_eq!(b.socket_addr(), "[fd00::12]:80".parse().unwrap());
        assert_eq!(
            (b.name(), b.node(), b.active(), b.failures(), b.ewma_ns()),
            ("", "node-b", 4, 2, 900)
        );
        assert!(b.terminating() && !b.ready() && b.serving());
    }

    #[test]
    fn context_bytes_follow_abi_md() {
        let call = Call::from_client("10.1.2.3:5555")
            .frontend("10.96.0.9:443")
            .attempt(2)
            .tried(&[1, 63, 64]);
        let raw = call.encode(7, 99);
        assert_eq!(&raw[..8], &[4, 0, 0xb3, 0x15, 0xbb, 0x01, 2, 0]);
        assert_eq!(&raw[8..12], &[10, 1, 2, 3]);
        assert_eq!(&raw[24..28], &[10, 96, 0, 9]);
        assert_eq!(&raw[40..48], &99u64.to_le_bytes());
        assert_eq!(&raw[48..56], &((1u64 << 1) | (1 << 63)).to_le_bytes());
        assert_eq!(&raw[56..64], &[7, 0, 0, 0, 0, 0, 0, 0]);
        let ctx = call.context(7, 99);
        assert_eq!(ctx.client(), "10.1.2.3:5555".parse().unwrap());
        assert_eq!(ctx.frontend(), "10.96.0.9:443".parse().unwrap());
        assert!(!ctx.is_l7() && ctx.tried(1) && ctx.tried(63) && !ctx.tried(0));
    }

    #[test]
    fn harness_drives_the_policy_like_the_host() {
        assert_eq!(
            Harness::<Probe>::new("reject").err().as_deref(),
            Some("no thanks")
        );
        let specs = [
            EndpointSpec::new("10.0.0.1").name("a").node("n").zone("z"),
            EndpointSpec::new("10.0.0.2:81"),
        ];
        let mut h = Harness::<Probe>::with_endpoints("1", &specs);
        assert_eq!(h.policy().seen, ["10.0.0.1:8080 a n z", "10.0.0.2:81   "]);
        assert_eq!(h.pick(&Call::new()), Some(1));
        h.policy_mut().answer = Some(2);
        assert_eq!(h.pick(&Call::new()), None, "out of range is no choice");
        let mut none = Harness::<Probe>::with_endpoints("none", &specs);
        assert_eq!(
            none.distribution(3, |_| Call::new()),
            Distribution {
                counts: vec![0, 0],
                none: 3
            }
        );
    }

    #[test]
    fn outcomes_update_live_fields_first() {
        let mut h = Harness::<Probe>::with_endpoints("0", &EndpointSpec::many(2));
        h.connected(0, Duration::from_millis(2));
        h.connected(0, Duration::from_millis(1));
        let e = h.endpoints().get(0);
        assert_eq!((e.active(), e.failures(), e.ewma_ns()), (2, 0, 2_000_000));
        h.advance(Duration::from_secs(3));
        h.failed(1, Duration::from_millis(5));
        let e = h.endpoints().get(1);
        assert_eq!(
            (e.failures(), e.last_failure_ms(), e.ewma_ns()),
            (1, 1_003_000, FAILURE_PENALTY_NS)
        );
        h.advance(Duration::from_millis(250));
        assert_eq!(h.endpoints().get(1).last_failure_age_ms(), Some(250));
        assert!(h.endpoints().get(1).failed_within_ms(300));
        h.closed(0);
        assert_eq!(h.endpoints().get(0).active(), 1);
        assert_eq!(
            h.policy().outcomes,
            [
                (
                    0,
                    Outcome::Connected {
                        latency_ns: 2_000_000
                    }
                ),
                (
                    0,
                    Outcome::Connected {
                        latency_ns: 1_000_000
                    }
                ),
                (
                    1,
                    Outcome::Failed {
                        latency_ns: 5_000_000
                    }
                )
            ]
        );
    }

    #[test]
    fn connect_retries_on_other_endpoints() {
        struct FirstUntried;
        impl Policy for FirstUntried {
            fn new(_: &[u8]) -> Result<Self, String> {
                Ok(FirstUntried)
            }
            fn pick(&mut self, ctx: &Context, e: &Endpoints<'_>) -> Option<usize> {
                assert_eq!(ctx.attempt() as u32, ctx.tried_mask().count_ones());
                (0..e.len()).find(|&i| !ctx.tried(i))
            }
        }
        let mut h = Harness::<FirstUntried>::with_endpoints("{}", &EndpointSpec::many(3));
        assert_eq!(h.connect(&Call::new(), |i| i == 2), Some(2));
        assert_eq!(h.endpoints().get(0).failures(), 1);
        assert_eq!(h.connect(&Call::new(), |_| false), None);
    }

    #[test]
    fn l7_requests_reach_the_policy() {
        let mut h = Harness::<Probe>::with_endpoints("0", &EndpointSpec::many(1));
        let req = Request::get("/a?b=1")
            .authority("web")
            .header("X-Canary", "1");
        let call = Call::new().l7(req);
        h.pick(&call);
        assert_eq!(logs(), [(Level::Info, "path /a?b=1".to_owned())]);
        let ctx = call.context(1, 0);
        native::set_request(call.request.clone());
        assert!(ctx.is_l7());
        assert_eq!(ctx.method().as_deref(), Some("GET"));
        assert_eq!(ctx.authority().as_deref(), Some("web"));
        assert_eq!(ctx.scheme().as_deref(), Some("http"));
        assert_eq!(ctx.header("x-canary").as_deref(), Some("1"));
        assert_eq!(ctx.header("X-CANARY").as_deref(), Some("1"));
        assert!(ctx.attr_is(Attr::Header("x-canary"), "1"));
        assert!(!ctx.attr_is(Attr::Header("x-canary"), "10"));
        assert!(ctx.has_header("x-canary") && !ctx.has_header("x-other"));
        let mut small = [0u8; 3];
        assert_eq!(ctx.attr(Attr::Path, &mut small), Some(6));
        assert_eq!(&small, b"/a?");
        let long = "x".repeat(1000);
        native::set_request(Some(Request::get(&long).header("h", &long)));
        assert_eq!(ctx.path().map(|p| p.len()), Some(1000));
        assert!(ctx.attr_is(Attr::Header("h"), &long));
        native::set_request(None);
        assert_eq!(ctx.path(), None);
        // L4: attributes are absent without asking.
        assert_eq!(Call::new().context(1, 0).method(), None);
    }

    #[test]
    fn clock_and_randomness_are_reproducible() {
        let mut h = Harness::<Probe>::new("0").unwrap();
        assert_eq!(h.now_ns(), START_NS);
        h.advance(Duration::from_millis(5));
        assert_eq!(crate::now_ns(), START_NS + 5_000_000);
        h.seed(42);
        let a: Vec<u64> = (0..4).map(|_| crate::random_u64()).collect();
        h.seed(42);
        let b: Vec<u64> = (0..4).map(|_| crate::random_u64()).collect();
        assert_eq!(a, b);
        assert_ne!(a[0], a[1]);
    }

    #[test]
    fn malformed_tables_never_panic() {
        let mut h = Harness::<Probe>::new("0").unwrap();
        h.set_table(vec![0xff; 100], 1000);
        assert_eq!(h.len(), 1);
        let e = h.endpoints().get(0);
        assert_eq!((e.name(), e.node(), e.zone()), ("", "", ""));
        assert_eq!(h.pick(&Call::new()), Some(0));
        h.set_table(Vec::new(), 5);
        assert!(h.is_empty());
        assert_eq!(h.pick(&Call::new()), None);
        h.set_active(3, 1);
        h.connected(3, Duration::ZERO);
    }
}
