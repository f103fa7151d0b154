//! nf_tables set and map elements over one persistent NETLINK_NETFILTER
//! socket: a sync's element deltas go out as one batch (BATCH_BEGIN,
//! NEWSETELEM/DELSETELEM..., BATCH_END) that the kernel applies atomically,
//! and we wait for its answer. No `nft` process runs on the change path.
//!
//! Generic on purpose: an element is a set (or map) name plus key bytes,
//! with an optional interval end (`key_end`, for concatenated interval sets)
//! and optional data bytes (for maps). `key` encodes the keys of our sets.

pub mod key;
mod socket;
mod wire;

use std::io;
use std::sync::Arc;

/// The nf_tables family of a table (NFPROTO_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Family {
    Inet = 1,
    Ip = 2,
    Bridge = 7,
    Ip6 = 10,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Ip => "ip",
            Family::Bridge => "bridge",
            Family::Ip6 => "ip6",
        }
    }
}

/// One set or map element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub key: Vec<u8>,
    /// The end of a concatenated interval (NFTA_SET_ELEM_KEY_END).
    pub key_end: Option<Vec<u8>>,
    /// A map element's value (NFTA_SET_ELEM_DATA).
    pub data: Option<Vec<u8>>,
    /// A verdict map element's value: `goto <chain>`
    /// (NFTA_DATA_VERDICT), instead of `data`.
    pub goto: Option<String>,
    /// A per-element timeout in milliseconds (NFTA_SET_ELEM_TIMEOUT), for
    /// sets with `flags timeout`.
    pub timeout_ms: Option<u64>,
    /// The end of an interval in a non-concatenated interval set
    /// (NFT_SET_ELEM_INTERVAL_END): it ends where the previous one began.
    pub interval_end: bool,
    /// How nft would print it, for errors.
    pub label: String,
}

impl Element {
    pub fn key(key: Vec<u8>, label: impl Into<String>) -> Self {
        Self {
            key,
            key_end: None,
            data: None,
            goto: None,
            timeout_ms: None,
            interval_end: false,
            label: label.into(),
        }
    }

    pub fn with_data(mut self, data: Vec<u8>) -> Self {
        self.data = Some(data);
        self
    }

    pub fn with_goto(mut self, chain: impl Into<String>) -> Self {
        self.goto = Some(chain.into());
        self
    }

    pub fn with_timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    pub fn with_key_end(mut self, end: Vec<u8>) -> Self {
        self.key_end = Some(end);
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Add,
    Delete,
}

/// One element added to or deleted from one set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub verb: Verb,
    pub family: Family,
    /// Shared with the batch's other changes to the same table and set
    /// (a first sync at scale holds ~650k changes at once).
    pub table: Arc<str>,
    pub set: Arc<str>,
    pub element: Element,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = match self.verb {
            Verb::Add => "add",
            Verb::Delete => "delete",
        };
        write!(
            f,
            "{verb} element {} {} {} {{ {} }}",
            self.family.name(),
            self.table,
            self.set,
            self.element.label
        )
    }
}

/// The element changes of one sync, in order (deletions first, where a key
/// moves between sets).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub changes: Vec<Change>,
}

impl Batch {
    pub fn push(&mut self, verb: Verb, family: Family, table: &str, set: &str, element: Element) {
        // Changes come grouped by set: sharing the previous change's names
        // saves two allocations per element.
        let (table, set) = match self.changes.last() {
            Some(last) => (share(&last.table, table), share(&last.set, set)),
            None => (Arc::from(table), Arc::from(set)),
        };
        self.changes.push(Change {
            verb,
            family,
            table,
            set,
            element,
        });
    }

    pub fn extend(&mut self, other: Batch) {
        self.changes.extend(other.changes);
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

/// One element message of a transaction: its sequence number and the
/// changes it holds.
#[derive(Debug, Clone, Copy)]
struct Message {
    seq: u32,
    first: usize,
    count: usize,
}

/// Whether two changes can share one element message.
fn same_set(a: &Change, b: &Change) -> bool {
    a.verb == b.verb && a.family == b.family && a.set == b.set && a.table == b.table
}

fn share(last: &Arc<str>, name: &str) -> Arc<str> {
    if **last == *name {
        last.clone()
    } else {
        Arc::from(name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a NETLINK_NETFILTER socket: {0}")]
    Open(io::Error),
    #[error("netlink send or receive failed: {0}")]
    Io(io::Error),
    /// The kernel refused one element; nothing of its batch applied.
    #[error("`{change}`: {source}")]
    Element { change: String, source: io::Error },
    /// The kernel refused the batch as a whole.
    #[error("nf_tables batch refused: {0}")]
    Batch(io::Error),
    /// Replies were dropped (ENOBUFS) or never came: whether the batch
    /// applied is unknown, so the caller must re-install from scratch.
    #[error("nf_tables batch outcome unknown: {0}")]
    Unknown(io::Error),
}

impl NetlinkError {
    /// Whether the kernel may hold part of what was sent (a split batch
    /// whose later part failed, or an outcome not heard).
    pub fn state_unknown(&self) -> bool {
        matches!(self, NetlinkError::Unknown(_) | NetlinkError::Io(_))
    }
}

/// The persistent socket and its sequence numbers.
#[derive(Debug, Default)]
pub struct Writer {
    socket: Option<socket::Socket>,
    seq: u32,
    /// A smaller send limit than the socket's (tests of splitting).
    max_send: Option<usize>,
    /// A receive buffer other than the default (tests of ENOBUFS).
    rcvbuf: Option<usize>,
}

impl Writer {
    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Applies `batch`: one atomic nf_tables transaction when it fits in
    /// one send (anything short of tens of thousands of elements), else
    /// consecutive transactions, each atomic, in order. Returns the number
    /// of transactions.
    pub fn apply(&mut self, batch: &Batch) -> Result<usize, NetlinkError> {
        if batch.is_empty() {
            return Ok(0);
        }
        if self.socket.is_none() {
            self.socket = Some(socket::Socket::open(self.rcvbuf).map_err(NetlinkError::Open)?);
        }
        let result = self.apply_open(batch);
        if let Err(e) = &result
            && e.state_unknown()
        {
            // Replies may still be queued; a fresh socket starts clean.
            self.socket = None;
        }
        result
    }

    /// Whether the kernel has this table: a fresh one can be filled over
    /// netlink after its skeleton, a live one is replaced atomically.
    pub fn table_exists(&mut self, family: Family, name: &str) -> Result<bool, NetlinkError> {
        if self.socket.is_none() {
            self.socket = Some(socket::Socket::open(self.rcvbuf).map_err(NetlinkError::Open)?);
        }
        let seq = self.next_seq();
        let mut req = Vec::new();
        wire::get_table(&mut req, seq, family as u8, name);
        let result = self.ask(&req, seq);
        if result.is_err() {
            self.socket = None;
        }
        match result? {
            0 => Ok(true),
            e if e == -libc::ENOENT => Ok(false),
            e => Err(NetlinkError::Batch(io::Error::from_raw_os_error(-e))),
        }
    }

    /// Sends one request and returns the errno of its ACK (0: done).
    fn ask(&self, req: &[u8], seq: u32) -> Result<i32, NetlinkError> {
        let Some(sock) = &self.socket else {
            return Err(NetlinkError::Io(io::Error::other("socket closed")));
        };
        sock.send(req).map_err(NetlinkError::Io)?;
        let mut rx = vec![0u8; 64 * 1024];
        loop {
            let n = sock.recv(&mut rx).map_err(NetlinkError::Unknown)?;
            for reply in wire::replies(&rx[..n]) {
                if reply.seq == seq
                    && let Some(errno) = reply.error
                {
                    return Ok(errno);
                }
            }
        }
    }

    fn apply_open(&mut self, batch: &Batch) -> Result<usize, NetlinkError> {
        let granted = self.socket.as_ref().map_or(0, |s| s.max_send);
        let max = self.max_send.map_or(granted, |m| m.min(granted));
        let mut sent = 0;
        let mut transactions = 0;
        while sent < batch.changes.len() {
            let first = sent;
            let (buf, messages, next) = self.encode(&batch.changes[first..], max, true);
            sent = first + next;
            let changes = &batch.changes[first..sent];
            let mut failure = self.transact(&buf, &messages, changes);
            if let Err(NetlinkError::Element { .. } | NetlinkError::Batch(_)) = &failure
                && messages.iter().any(|m| m.count > 1)
            {
                // Nothing of it applied (the kernel aborts the whole
                // transaction): the same changes one per message name the
                // refused element (or apply, if the refusal was passing).
                failure = self.apply_unpacked(changes, max);
            }
            if let Err(e) = failure {
                return Err(if transactions > 0 && !e.state_unknown() {
                    NetlinkError::Unknown(io::Error::other(format!(
                        "{transactions} part(s) of a split batch applied, then: {e}"
                    )))
                } else {
                    e
                });
            }
            transactions += 1;
        }
        Ok(transactions)
    }

    /// `changes` one element per message, in as many transactions as the
    /// send limit needs (after a packed transaction was refused).
    fn apply_unpacked(&mut self, changes: &[Change], max: usize) -> Result<(), NetlinkError> {
        let mut sent = 0;
        let mut transactions = 0;
        while sent < changes.len() {
            let (buf, messages, next) = self.encode(&changes[sent..], max, false);
            let part = &changes[sent..sent + next];
            if let Err(e) = self.transact(&buf, &messages, part) {
                return Err(if transactions > 0 && !e.state_unknown() {
                    NetlinkError::Unknown(io::Error::other(format!(
                        "{transactions} part(s) of a split batch applied, then: {e}"
                    )))
                } else {
                    e
                });
            }
            sent += next;
            transactions += 1;
        }
        Ok(())
    }

    /// One transaction of the leading changes that fit in `max` bytes:
    /// its bytes, its messages and how many changes it holds. `packed`:
    /// consecutive changes of one verb and set share a message (one header,
    /// one table and set name, one lookup of them in the kernel: at 100k
    /// elements about a third of the bytes, a fifth of our user time; the
    /// kernel's insert itself costs the same).
    fn encode(
        &mut self,
        changes: &[Change],
        max: usize,
        packed: bool,
    ) -> (Vec<u8>, Vec<Message>, usize) {
        let mut buf = Vec::with_capacity(max.min(changes.len().saturating_mul(96) + 64));
        let begin = self.next_seq();
        wire::batch_begin(&mut buf, begin);
        let mut messages: Vec<Message> = Vec::new();
        let mut open: Option<wire::Open> = None;
        let mut n = 0;
        while n < changes.len() {
            let change = &changes[n];
            let mark = buf.len();
            let joins = packed
                && n > 0
                && open.is_some_and(|o| o.list_len(&buf) < wire::MAX_LIST)
                && same_set(&changes[n - 1], change);
            let before = open;
            if !joins {
                if let Some(o) = open.take() {
                    wire::close_elements(&mut buf, o);
                }
                let seq = self.next_seq();
                open = Some(wire::open_elements(&mut buf, seq, change));
                messages.push(Message {
                    seq,
                    first: n,
                    count: 0,
                });
            }
            wire::element(&mut buf, &change.element);
            // 20 bytes of BATCH_END (and the message's close) must still fit.
            if buf.len() + 20 > max && n > 0 {
                // Closing only patched lengths in place: the previous
                // message stays whole, and is closed again (the same) below.
                buf.truncate(mark);
                if !joins {
                    messages.pop();
                }
                open = before;
                break;
            }
            if let Some(m) = messages.last_mut() {
                m.count += 1;
            }
            n += 1;
        }
        if let Some(o) = open {
            wire::close_elements(&mut buf, o);
        }
        let end = self.next_seq();
        wire::batch_end(&mut buf, end);
        (buf, messages, n)
    }

    /// Sends one batch and reads every reply up to the ACK of a GETGEN sent
    /// after it (the kernel handles a batch within our send, so its errors
    /// are queued before that ACK).
    fn transact(
        &mut self,
        buf: &[u8],
        messages: &[Message],
        changes: &[Change],
    ) -> Result<(), NetlinkError> {
        let fence = self.next_seq();
        let mut req = Vec::new();
        wire::get_generation(&mut req, fence);
        let Some(sock) = &self.socket else {
            return Err(NetlinkError::Io(io::Error::other("socket closed")));
        };
        sock.send(buf).map_err(NetlinkError::Io)?;
        sock.send(&req).map_err(NetlinkError::Unknown)?;
        let mut first_error: Option<NetlinkError> = None;
        let mut rx = vec![0u8; 64 * 1024];
        loop {
            let n = sock.recv(&mut rx).map_err(NetlinkError::Unknown)?;
            for reply in wire::replies(&rx[..n]) {
                let Some(errno) = reply.error else { continue };
                if reply.seq == fence {
                    return match first_error {
                        Some(e) => Err(e),
                        None if errno == 0 => Ok(()),
                        None => Err(NetlinkError::Unknown(io::Error::from_raw_os_error(-errno))),
                    };
                }
                if errno == 0 || first_error.is_some() {
                    continue;
                }
                let source = io::Error::from_raw_os_error(-errno);
                first_error = Some(match messages.iter().find(|m| m.seq == reply.seq) {
                    Some(m) if m.count == 1 => NetlinkError::Element {
                        change: changes[m.first].to_string(),
                        source,
                    },
                    Some(m) => NetlinkError::Element {
                        change: format!(
                            "{} (or one of the {} elements after it in its message)",
                            changes[m.first],
                            m.count - 1
                        ),
                        source,
                    },
                    // BATCH_BEGIN's or the commit's: the batch as a whole.
                    None => NetlinkError::Batch(source),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_features;
