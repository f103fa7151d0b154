//! Zero-copy, bounds-checked views of the endpoint table and the context
//! record (ABI.md, "Endpoint table" and "Context record"). A read outside
//! the bytes yields zero / empty, never a panic: a malformed table can make
//! a policy choose badly, not crash.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Size of one endpoint record.
pub const RECORD_SIZE: usize = 64;
/// Size of the context record.
pub const CONTEXT_SIZE: usize = 64;

/// Bits of an endpoint record's `flags` byte.
pub mod flags {
    /// Bit 0: `ready`.
    pub const READY: u8 = 1;
    /// Bit 1: `serving`.
    pub const SERVING: u8 = 1 << 1;
    /// Bit 2: `terminating`.
    pub const TERMINATING: u8 = 1 << 2;
    /// Bit 3: on this node.
    pub const LOCAL: u8 = 1 << 3;
    /// Bit 4: in this node's zone.
    pub const SAME_ZONE: u8 = 1 << 4;
}

/// Record field offsets.
pub(crate) mod off {
    pub const FAMILY: usize = 0;
    pub const FLAGS: usize = 1;
    pub const PORT: usize = 2;
    pub const WEIGHT: usize = 4;
    pub const ADDRESS: usize = 8;
    pub const NAME_OFF: usize = 24;
    pub const NAME_LEN: usize = 28;
    pub const NODE_LEN: usize = 30;
    pub const NODE_OFF: usize = 32;
    pub const ZONE_OFF: usize = 36;
    pub const ZONE_LEN: usize = 40;
    pub const ACTIVE: usize = 44;
    pub const FAILURES: usize = 48;
    pub const LAST_FAILURE_MS: usize = 52;
    pub const EWMA_NS: usize = 56;

    pub const CTX_FAMILY: usize = 0;
    pub const CTX_MODE: usize = 1;
    pub const CTX_CLIENT_PORT: usize = 2;
    pub const CTX_FRONTEND_PORT: usize = 4;
    pub const CTX_ATTEMPT: usize = 6;
    pub const CTX_CLIENT_ADDR: usize = 8;
    pub const CTX_FRONTEND_ADDR: usize = 24;
    pub const CTX_NOW_NS: usize = 40;
    pub const CTX_TRIED: usize = 48;
    pub const CTX_COUNT: usize = 56;
}

fn bytes<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    at.checked_add(N)
        .and_then(|end| b.get(at..end))
        .and_then(|s| s.try_into().ok())
        .unwrap_or([0; N])
}

fn u8_at(b: &[u8], at: usize) -> u8 {
    b.get(at).copied().unwrap_or(0)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes(b, at))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes(b, at))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes(b, at))
}

/// An address field: family 6 reads 16 bytes, anything else an IPv4
/// address from the first 4.
fn ip_at(b: &[u8], at: usize, family: u8) -> IpAddr {
    if family == 6 {
        IpAddr::V6(Ipv6Addr::from(bytes::<16>(b, at)))
    } else {
        IpAddr::V4(Ipv4Addr::from(bytes::<4>(b, at)))
    }
}

/// The endpoint table handed to `sy_endpoints`: `len()` records of 64 bytes
/// and a string area. Indices are what [`crate::Policy::pick`] returns.
///
/// Every endpoint in the table may be chosen: the host has already applied
/// Kubernetes' readiness rule (ready endpoints, or only serving+terminating
/// ones when none is ready). The flags are there for policies that care.
///
/// ```
/// use switchyard_policy::testing::{EndpointSpec, Harness};
/// # use switchyard_policy::{Context, Endpoints, Policy};
/// # struct Any;
/// # impl Policy for Any {
/// #     fn new(_: &[u8]) -> Result<Self, String> { Ok(Any) }
/// #     fn pick(&mut self, _: &Context, _: &Endpoints<'_>) -> Option<usize> { None }
/// # }
/// let specs = [
///     EndpointSpec::new("10.0.0.1:8080").name("web-a").active(3),
///     EndpointSpec::new("10.0.0.2:8080").name("web-b").failures(2, 1000),
/// ];
/// let h = Harness::<Any>::with_endpoints("{}", &specs);
/// let endpoints = h.endpoints();
/// let least = endpoints.iter().min_by_key(|e| e.active()).unwrap();
/// assert_eq!((least.name(), least.port(), least.failures()), ("web-b", 8080, 2));
/// assert_eq!(endpoints.get(7).name(), ""); // out of range reads as empty
/// ```
#[derive(Clone, Copy)]
pub struct Endpoints<'a> {
    table: &'a [u8],
    len: usize,
    now_ns: u64,
}

impl<'a> Endpoints<'a> {
    /// A view of `count` records in `table`. `len()` is `count`, clamped to
    /// the number of whole records the bytes hold. `now_ns` is the clock
    /// used by [`Endpoint::last_failure_age_ms`] (the context's time during
    /// a pick).
    pub fn new(table: &'a [u8], count: usize, now_ns: u64) -> Self {
        let len = count.min(table.len() / RECORD_SIZE);
        Self { table, len, now_ns }
    }

    /// No endpoints.
    pub fn empty() -> Endpoints<'static> {
        Endpoints {
            table: &[],
            len: 0,
            now_ns: 0,
        }
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The clock reading this view was made with.
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    /// Endpoint `i`. Out of range, every field reads as zero / empty.
    pub fn get(&self, i: usize) -> Endpoint<'a> {
        let record = if i < self.len {
            self.table.get(i * RECORD_SIZE..(i + 1) * RECORD_SIZE)
        } else {
            None
        };
        Endpoint {
            record: record.unwrap_or(&[]),
            table: self.table,
            index: i,
            now_ns: self.now_ns,
        }
    }

    /// Endpoint `i`, or `None` out of range.
    pub fn try_get(&self, i: usize) -> Option<Endpoint<'a>> {
        (i < self.len).then(|| self.get(i))
    }

    /// The endpoints in index order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Endpoint<'a>> + DoubleEndedIterator + 'a {
        let this = *self;
        (0..self.len).map(move |i| this.get(i))
    }

    /// The index of the endpoint with this address and port (linear scan;
    /// build a map in `endpoints_changed` if you need it per pick).
    pub fn position(&self, addr: SocketAddr) -> Option<usize> {
        self.iter().position(|e| e.socket_addr() == addr)
    }

    /// The raw table bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.table
    }
}

impl std::fmt::Debug for Endpoints<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Identifies an endpoint by family, address and port ([`Endpoint::key`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    /// 4 or 6.
    pub family: u8,
    /// The address bytes (IPv4 in the first 4).
    pub addr: [u8; 16],
    /// The target port.
    pub port: u16,
}

/// One endpoint record.
#[derive(Clone, Copy)]
pub struct Endpoint<'a> {
    record: &'a [u8],
    table: &'a [u8],
    index: usize,
    now_ns: u64,
}

impl<'a> Endpoint<'a> {
    /// Its index in the table.
    pub fn index(&self) -> usize {
        self.index
    }

    /// 4 or 6 (0 when out of range).
    pub fn family(&self) -> u8 {
        u8_at(self.record, off::FAMILY)
    }

    /// The raw flags byte (bits in [`flags`](crate::flags)).
    pub fn flags(&self) -> u8 {
        u8_at(self.record, off::FLAGS)
    }

    /// Its IP address.
    pub fn address(&self) -> IpAddr {
        ip_at(self.record, off::ADDRESS, self.family())
    }

    /// The target port.
    pub fn port(&self) -> u16 {
        u16_at(self.record, off::PORT)
    }

    /// Address and target port.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address(), self.port())
    }

    /// Family, address and port: a cheap key identifying the endpoint
    /// across tables (for maps of per-endpoint state that must survive a
    /// reordered or changed set).
    pub fn key(&self) -> EndpointKey {
        EndpointKey {
            family: self.family(),
            addr: bytes::<16>(self.record, off::ADDRESS),
            port: self.port(),
        }
    }

    /// EndpointSlice condition `ready`.
    pub fn ready(&self) -> bool {
        self.flags() & flags::READY != 0
    }

    /// EndpointSlice condition `serving`.
    pub fn serving(&self) -> bool {
        self.flags() & flags::SERVING != 0
    }

    /// EndpointSlice condition `terminating`.
    pub fn terminating(&self) -> bool {
        self.flags() & flags::TERMINATING != 0
    }

    /// On this node.
    pub fn is_local(&self) -> bool {
        self.flags() & flags::LOCAL != 0
    }

    /// In this node's zone.
    pub fn same_zone(&self) -> bool {
        self.flags() & flags::SAME_ZONE != 0
    }

    /// Host-provided weight (1 today).
    pub fn weight(&self) -> u32 {
        u32_at(self.record, off::WEIGHT)
    }

    fn string(&self, off_at: usize, len_at: usize) -> &'a str {
        let start = u32_at(self.record, off_at) as usize;
        let len = u16_at(self.record, len_at) as usize;
        start
            .checked_add(len)
            .and_then(|end| self.table.get(start..end))
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("")
    }

    /// The Pod's name (`targetRef.name`, else `hostname`); "" when absent
    /// or not UTF-8.
    pub fn name(&self) -> &'a str {
        self.string(off::NAME_OFF, off::NAME_LEN)
    }

    /// `nodeName`; "" when absent.
    pub fn node(&self) -> &'a str {
        self.string(off::NODE_OFF, off::NODE_LEN)
    }

    /// `zone`; "" when absent.
    pub fn zone(&self) -> &'a str {
        self.string(off::ZONE_OFF, off::ZONE_LEN)
    }

    /// Live: connections this worker has open to the endpoint.
    pub fn active(&self) -> u32 {
        u32_at(self.record, off::ACTIVE)
    }

    /// Live: consecutive failed connects (0 after a success).
    pub fn failures(&self) -> u32 {
        u32_at(self.record, off::FAILURES)
    }

    /// Live: when the last failure happened, ms on the `now_ns` clock,
    /// truncated to 32 bits; 0 if none.
    pub fn last_failure_ms(&self) -> u32 {
        u32_at(self.record, off::LAST_FAILURE_MS)
    }

    /// Live: ms since the last failure (wrapping, as ABI.md says), or
    /// `None` if there was none. Measured against the view's clock.
    pub fn last_failure_age_ms(&self) -> Option<u32> {
        let last = self.last_failure_ms();
        (last != 0).then(|| ((self.now_ns / 1_000_000) as u32).wrapping_sub(last))
    }

    /// Live: the last connect failed (`failures() > 0`) less than
    /// `window_ms` ago.
    pub fn failed_within_ms(&self, window_ms: u32) -> bool {
        self.failures() > 0
            && self
                .last_failure_age_ms()
                .is_some_and(|age| age < window_ms)
    }

    /// Live: peak-EWMA of connect latency in ns (0 before the first sample).
    pub fn ewma_ns(&self) -> u64 {
        u64_at(self.record, off::EWMA_NS)
    }
}

impl std::fmt::Debug for Endpoint<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("index", &self.index)
            .field("addr", &self.socket_addr())
            .field("name", &self.name())
            .field("node", &self.node())
            .field("zone", &self.zone())
            .field("flags", &self.flags())
            .field("weight", &self.weight())
            .field("active", &self.active())
            .field("failures", &self.failures())
            .field("last_failure_ms", &self.last_failure_ms())
            .field("ewma_ns", &self.ewma_ns())
            .finish()
    }
}

/// A request attribute for [`Context::attr`] (L7 mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attr<'n> {
    /// `GET`, `POST`... as sent.
    Method,
    /// `:authority` / `Host`.
    Authority,
    /// Path with query.
    Path,
    /// A header by name (looked up lowercase).
    Header(&'n str),
    /// `http` or `https`.
    Scheme,
}

impl Attr<'_> {
    /// The ABI's `kind` code.
    pub fn kind(&self) -> i32 {
        match self {
            Attr::Method => 0,
            Attr::Authority => 1,
            Attr::Path => 2,
            Attr::Header(_) => 3,
            Attr::Scheme => 4,
        }
    }
}

/// Bytes copied on the stack before falling back to the heap.
const STACK_ATTR: usize = 256;

/// The context of one pick: who connects, to which Service address, which
/// attempt, which endpoints already failed. A 64-byte copy of the record.
///
/// ```
/// use switchyard_policy::{Attr, Context, Endpoints, Policy};
/// use switchyard_policy::testing::{Call, EndpointSpec, Harness, Request};
///
/// /// L7: `x-pod: <name>` picks that Pod; anything else the first untried.
/// struct ByHeader;
///
/// impl Policy for ByHeader {
///     fn new(_: &[u8]) -> Result<Self, String> {
///         Ok(ByHeader)
///     }
///
///     fn pick(&mut self, ctx: &Context, endpoints: &Endpoints<'_>) -> Option<usize> {
///         let mut buf = [0u8; 64];
///         if let Some(n) = ctx.attr(Attr::Header("x-pod"), &mut buf)
///             && let Some(e) = endpoints.iter().find(|e| e.name().as_bytes() == &buf[..n.min(64)])
///         {
///             return Some(e.index());
///         }
///         (0..endpoints.len()).find(|&i| !ctx.tried(i))
///     }
/// }
///
/// let specs = [EndpointSpec::new("10.0.0.1:80").name("a"), EndpointSpec::new("10.0.0.2:80").name("b")];
/// let mut h = Harness::<ByHeader>::with_endpoints("{}", &specs);
/// assert_eq!(h.pick(&Call::new().l7(Request::get("/").header("x-pod", "b"))), Some(1));
/// assert_eq!(h.pick(&Call::new()), Some(0)); // L4: no headers
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Context {
    raw: [u8; CONTEXT_SIZE],
}

impl Context {
    /// Decodes a context record; missing bytes read as zero.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut raw = [0u8; CONTEXT_SIZE];
        let n = bytes.len().min(CONTEXT_SIZE);
        raw[..n].copy_from_slice(&bytes[..n]);
        Self { raw }
    }

    /// The 64 raw bytes.
    pub fn as_bytes(&self) -> &[u8; CONTEXT_SIZE] {
        &self.raw
    }

    /// The client's address family, 4 or 6.
    pub fn family(&self) -> u8 {
        u8_at(&self.raw, off::CTX_FAMILY)
    }

    /// 0 for a new L4 connection, 1 for an L7 request.
    pub fn mode(&self) -> u8 {
        u8_at(&self.raw, off::CTX_MODE)
    }

    /// An HTTP request (request attributes are available).
    pub fn is_l7(&self) -> bool {
        self.mode() == 1
    }

    /// The client's IP address.
    pub fn client_ip(&self) -> IpAddr {
        ip_at(&self.raw, off::CTX_CLIENT_ADDR, self.family())
    }

    /// The client's port.
    pub fn client_port(&self) -> u16 {
        u16_at(&self.raw, off::CTX_CLIENT_PORT)
    }

    /// The client's address and port.
    pub fn client(&self) -> SocketAddr {
        SocketAddr::new(self.client_ip(), self.client_port())
    }

    /// The client address's 16 raw bytes (IPv4 in the first 4): cheap to
    /// hash.
    pub fn client_ip_bytes(&self) -> [u8; 16] {
        bytes::<16>(&self.raw, off::CTX_CLIENT_ADDR)
    }

    /// The Service address and port the client connected to (a connection
    /// never changes family, so it has the client's family).
    pub fn frontend(&self) -> SocketAddr {
        SocketAddr::new(
            ip_at(&self.raw, off::CTX_FRONTEND_ADDR, self.family()),
            u16_at(&self.raw, off::CTX_FRONTEND_PORT),
        )
    }

    /// 0 for the first pick of a connection, 1.. for retries.
    pub fn attempt(&self) -> u16 {
        u16_at(&self.raw, off::CTX_ATTEMPT)
    }

    /// The host's clock at this call (same clock as [`crate::now_ns`]).
    pub fn now_ns(&self) -> u64 {
        u64_at(&self.raw, off::CTX_NOW_NS)
    }

    /// Endpoints already tried for this connection, as a bit mask (bit `i`
    /// for endpoint `i < 64`).
    pub fn tried_mask(&self) -> u64 {
        u64_at(&self.raw, off::CTX_TRIED)
    }

    /// Endpoint `i` already failed for this connection. Always `false` for
    /// `i >= 64` (the record has 64 bits).
    pub fn tried(&self, i: usize) -> bool {
        i < 64 && self.tried_mask() & (1 << i) != 0
    }

    /// The number of endpoints in the current table.
    pub fn count(&self) -> u32 {
        u32_at(&self.raw, off::CTX_COUNT)
    }

    /// Copies a request attribute into `out` (at most `out.len()` bytes) and
    /// returns its full length; `None` when absent and always in L4 mode
    /// (without calling the host). No allocation.
    pub fn attr(&self, attr: Attr<'_>, out: &mut [u8]) -> Option<usize> {
        if !self.is_l7() {
            return None;
        }
        let name = match attr {
            Attr::Header(name) => name,
            _ => "",
        };
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            let lower = name.to_ascii_lowercase();
            crate::request_attr(attr.kind(), lower.as_bytes(), out)
        } else {
            crate::request_attr(attr.kind(), name.as_bytes(), out)
        }
    }

    /// A request attribute as a `String` (invalid UTF-8 is replaced).
    /// Allocates; see [`Context::attr`] and [`Context::attr_is`] for
    /// allocation-free forms.
    pub fn attr_string(&self, attr: Attr<'_>) -> Option<String> {
        let mut buf = [0u8; STACK_ATTR];
        let len = self.attr(attr, &mut buf)?;
        if len <= buf.len() {
            return Some(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
        let mut big = vec![0u8; len];
        let len = self.attr(attr, &mut big)?.min(big.len());
        big.truncate(len);
        Some(
            String::from_utf8(big)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        )
    }

    /// The attribute is present and equal to `value` (no allocation for
    /// values up to 255 bytes).
    pub fn attr_is(&self, attr: Attr<'_>, value: &str) -> bool {
        let mut buf = [0u8; STACK_ATTR];
        if value.len() < buf.len() {
            return self
                .attr(attr, &mut buf)
                .is_some_and(|n| n == value.len() && &buf[..n] == value.as_bytes());
        }
        self.attr_string(attr).is_some_and(|v| v == value)
    }

    /// The HTTP method (L7 only).
    pub fn method(&self) -> Option<String> {
        self.attr_string(Attr::Method)
    }

    /// The authority (`Host`) (L7 only).
    pub fn authority(&self) -> Option<String> {
        self.attr_string(Attr::Authority)
    }

    /// The path with query (L7 only).
    pub fn path(&self) -> Option<String> {
        self.attr_string(Attr::Path)
    }

    /// The scheme (L7 only).
    pub fn scheme(&self) -> Option<String> {
        self.attr_string(Attr::Scheme)
    }

    /// A request header (L7 only; the name is matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<String> {
        self.attr_string(Attr::Header(name))
    }

    /// The header is present (L7 only; no allocation).
    pub fn has_header(&self, name: &str) -> bool {
        self.attr(Attr::Header(name), &mut []).is_some()
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("l7", &self.is_l7())
            .field("client", &self.client())
            .field("frontend", &self.frontend())
            .field("attempt", &self.attempt())
            .field("now_ns", &self.now_ns())
            .field("tried", &format_args!("{:#x}", self.tried_mask()))
            .field("count", &self.count())
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(i: usize, table: &mut [u8]) {
        let base = i * RECORD_SIZE;
        table[base] = 4;
        table[base + 1] = flags::READY | flags::LOCAL;
        table[base + 2..base + 4].copy_from_slice(&8080u16.to_le_bytes());
        table[base + 8..base + 12].copy_from_slice(&[10, 0, 0, i as u8 + 1]);
    }

    #[test]
    fn truncated_table_clamps_len_and_reads_zeros_out_of_range() {
        let mut t = vec![0u8; RECORD_SIZE * 2];
        record(0, &mut t);
        record(1, &mut t);
        t.truncate(RECORD_SIZE + 10);
        let eps = Endpoints::new(&t, 5, 0);
        assert_eq!(eps.len(), 1);
        assert_eq!(eps.get(0).socket_addr(), "10.0.0.1:8080".parse().unwrap());
        let out = eps.get(1);
        assert_eq!(
            (out.family(), out.port(), out.active(), out.ewma_ns()),
            (0, 0, 0, 0)
        );
        assert_eq!(out.address(), IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(out.name(), "");
        assert!(eps.try_get(1).is_none());
        assert!(eps.get(usize::MAX).name().is_empty());
    }

    #[test]
    fn strings_out_of_bounds_or_invalid_utf8_read_empty() {
        let mut t = vec![0u8; RECORD_SIZE];
        record(0, &mut t);
        t.extend_from_slice(b"web-0\xff\xfe");
        // name: in bounds
        t[24..28].copy_from_slice(&64u32.to_le_bytes());
        t[28..30].copy_from_slice(&5u16.to_le_bytes());
        // node: invalid UTF-8
        t[32..36].copy_from_slice(&69u32.to_le_bytes());
        t[30..32].copy_from_slice(&2u16.to_le_bytes());
        // zone: past the end, and an offset that would overflow
        t[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
        t[40..42].copy_from_slice(&u16::MAX.to_le_bytes());
        let eps = Endpoints::new(&t, 1, 0);
        let e = eps.get(0);
        assert_eq!(e.name(), "web-0");
        assert_eq!(e.node(), "");
        assert_eq!(e.zone(), "");
        assert!(e.ready() && e.is_local() && !e.serving() && !e.terminating() && !e.same_zone());
    }

    #[test]
    fn last_failure_age_wraps() {
        let mut t = vec![0u8; RECORD_SIZE];
        t[off::LAST_FAILURE_MS..off::LAST_FAILURE_MS + 4]
            .copy_from_slice(&(u32::MAX - 9).to_le_bytes());
        t[off::FAILURES..off::FAILURES + 4].copy_from_slice(&1u32.to_le_bytes());
        // now_ms = 2^32 + 5, truncated to 5: age = 15 ms.
        let now_ns = ((1u64 << 32) + 5) * 1_000_000;
        let e = Endpoints::new(&t, 1, now_ns).get(0);
        assert_eq!(e.last_failure_age_ms(), Some(15));
        assert!(e.failed_within_ms(16));
        assert!(!e.failed_within_ms(15));
        let none = Endpoints::new(&[0u8; RECORD_SIZE], 1, now_ns).get(0);
        assert_eq!(none.last_failure_age_ms(), None);
    }

    #[test]
    fn context_decodes_fields() {
        let mut raw = [0u8; CONTEXT_SIZE];
        raw[0] = 6;
        raw[1] = 1;
        raw[2..4].copy_from_slice(&40000u16.to_le_bytes());
        raw[4..6].copy_from_slice(&80u16.to_le_bytes());
        raw[6..8].copy_from_slice(&2u16.to_le_bytes());
        raw[8..24].copy_from_slice(&"fd00::7".parse::<Ipv6Addr>().unwrap().octets());
        raw[24..40].copy_from_slice(&"fd00::60".parse::<Ipv6Addr>().unwrap().octets());
        raw[40..48].copy_from_slice(&123u64.to_le_bytes());
        raw[48..56].copy_from_slice(&0b101u64.to_le_bytes());
        raw[56..60].copy_from_slice(&3u32.to_le_bytes());
        let c = Context::from_bytes(&raw);
        assert_eq!(c.client(), "[fd00::7]:40000".parse().unwrap());
        assert_eq!(c.frontend(), "[fd00::60]:80".parse().unwrap());
        assert!(c.is_l7());
        assert_eq!((c.attempt(), c.now_ns(), c.count()), (2, 123, 3));
        assert!(c.tried(0) && !c.tried(1) && c.tried(2) && !c.tried(64) && !c.tried(usize::MAX));
        let short = Context::from_bytes(&raw[..4]);
        assert_eq!(
            (short.attempt(), short.count(), short.tried_mask()),
            (0, 0, 0)
        );
    }

    #[test]
    fn l4_context_has_no_request_attributes() {
        let c = Context::from_bytes(&[4, 0]);
        assert_eq!(c.path(), None);
        assert!(!c.has_header("x"));
    }
}
