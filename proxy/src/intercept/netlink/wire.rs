//! The bytes of an nf_tables element batch (include/uapi/linux/netfilter/
//! nf_tables.h, nfnetlink.h): netlink header, `nfgenmsg`, attributes. Only
//! what element deltas need, so no netlink crate is pulled in for it.

use super::{Change, Element, Verb};

const NLMSG_HDRLEN: usize = 16;
pub const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_TABLE_NAME: u16 = 1;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
/// NFT_GOTO is -4 in the uapi's `enum nft_verdicts`.
const NFT_GOTO: i32 = -4;
const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;

const AF_UNSPEC: u8 = 0;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The netlink header (its length patched by the caller) and `nfgenmsg`.
fn header(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) {
    buf.extend_from_slice(&[0; 4]); // length, patched by the caller
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
    // nfgenmsg: family, version NFNETLINK_V0, resource id (big endian).
    buf.push(family);
    buf.push(0);
    buf.extend_from_slice(&res_id.to_be_bytes());
}

/// Appends one netlink message; `body` writes its attributes.
fn message(
    buf: &mut Vec<u8>,
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    body: impl FnOnce(&mut Vec<u8>),
) {
    let start = buf.len();
    header(buf, ty, flags, seq, family, res_id);
    body(buf);
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

fn attr(buf: &mut Vec<u8>, ty: u16, value: &[u8]) {
    let len = 4 + value.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(buf.len() + align4(len) - len, 0);
}

fn attr_str(buf: &mut Vec<u8>, ty: u16, s: &str) {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    attr(buf, ty, &v);
}

fn nest(buf: &mut Vec<u8>, ty: u16, body: impl FnOnce(&mut Vec<u8>)) {
    let start = open_nest(buf, ty);
    body(buf);
    close_nest(buf, start);
}

fn open_nest(buf: &mut Vec<u8>, ty: u16) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; 2]);
    buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    start
}

fn close_nest(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

fn data(buf: &mut Vec<u8>, ty: u16, value: &[u8]) {
    nest(buf, ty, |b| attr(b, NFTA_DATA_VALUE, value));
}

pub fn batch_begin(buf: &mut Vec<u8>, seq: u32) {
    message(
        buf,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        AF_UNSPEC,
        NFNL_SUBSYS_NFTABLES,
        |_| {},
    );
}

pub fn batch_end(buf: &mut Vec<u8>, seq: u32) {
    message(
        buf,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq,
        AF_UNSPEC,
        NFNL_SUBSYS_NFTABLES,
        |_| {},
    );
}

/// Starts one element message of `change`'s verb, set and table; its
/// elements follow (`element`), then `close_elements`. No ACK is asked
/// for: a batch of 100k successes would otherwise flood the receive
/// buffer; errors are reported regardless.
pub fn open_elements(buf: &mut Vec<u8>, seq: u32, change: &Change) -> Open {
    let (ty, flags) = match change.verb {
        // `add element`, not `create element`: an element already there is
        // no error.
        Verb::Add => (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_CREATE),
        Verb::Delete => (NFT_MSG_DELSETELEM, NLM_F_REQUEST),
    };
    let ty = (NFNL_SUBSYS_NFTABLES << 8) | ty;
    let message = buf.len();
    header(buf, ty, flags, seq, change.family as u8, 0);
    attr_str(buf, NFTA_SET_ELEM_LIST_TABLE, &change.table);
    attr_str(buf, NFTA_SET_ELEM_LIST_SET, &change.set);
    let list = open_nest(buf, NFTA_SET_ELEM_LIST_ELEMENTS);
    Open { message, list }
}

/// An element message being written: where it and its element list start.
#[derive(Debug, Clone, Copy)]
pub struct Open {
    message: usize,
    list: usize,
}

impl Open {
    /// Bytes of the element list so far: a nested attribute's length is 16
    /// bits, so a message takes elements while this stays below
    /// `MAX_LIST`.
    pub fn list_len(&self, buf: &[u8]) -> usize {
        buf.len() - self.list
    }
}

/// The most an element list may hold before its message is closed (its
/// length is a u16; an element is well under 1 KiB).
pub const MAX_LIST: usize = 60 * 1024;

pub fn close_elements(buf: &mut [u8], open: Open) {
    close_nest(buf, open.list);
    let len = (buf.len() - open.message) as u32;
    buf[open.message..open.message + 4].copy_from_slice(&len.to_ne_bytes());
}

/// One element of the open message.
pub fn element(buf: &mut Vec<u8>, e: &Element) {
    nest(buf, NFTA_LIST_ELEM, |b| {
        data(b, NFTA_SET_ELEM_KEY, &e.key);
        if let Some(end) = &e.key_end {
            data(b, NFTA_SET_ELEM_KEY_END, end);
        }
        if let Some(value) = &e.data {
            data(b, NFTA_SET_ELEM_DATA, value);
        }
        if let Some(chain) = &e.goto {
            nest(b, NFTA_SET_ELEM_DATA, |b| {
                nest(b, NFTA_DATA_VERDICT, |b| {
                    attr(b, NFTA_VERDICT_CODE, &NFT_GOTO.to_be_bytes());
                    attr_str(b, NFTA_VERDICT_CHAIN, chain);
                });
            });
        }
        if let Some(ms) = e.timeout_ms {
            attr(b, NFTA_SET_ELEM_TIMEOUT, &ms.to_be_bytes());
        }
        if e.interval_end {
            attr(
                b,
                NFTA_SET_ELEM_FLAGS,
                &NFT_SET_ELEM_INTERVAL_END.to_be_bytes(),
            );
        }
    });
}

/// One element in a message of its own.
#[cfg(test)]
pub fn set_element(buf: &mut Vec<u8>, seq: u32, change: &Change) {
    let open = open_elements(buf, seq, change);
    element(buf, &change.element);
    close_elements(buf, open);
}

/// A request the kernel answers after everything sent before it: its ACK
/// tells that the batch's errors, if any, have all been read.
pub fn get_generation(buf: &mut Vec<u8>, seq: u32) {
    message(
        buf,
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        AF_UNSPEC,
        0,
        |_| {},
    );
}

/// Asks for one table: the answer is the table and an ACK, or ENOENT.
pub fn get_table(buf: &mut Vec<u8>, seq: u32, family: u8, name: &str) {
    message(
        buf,
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        family,
        0,
        |b| attr_str(b, NFTA_TABLE_NAME, name),
    );
}

/// A received message: its type, sequence number and, for NLMSG_ERROR, the
/// (negative) errno, 0 being an ACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub ty: u16,
    pub seq: u32,
    pub error: Option<i32>,
}

/// Splits a datagram into messages; malformed tails are dropped.
pub fn replies(mut bytes: &[u8]) -> Vec<Reply> {
    let mut out = Vec::new();
    while bytes.len() >= NLMSG_HDRLEN {
        let word = |at: usize| {
            u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let len = word(0) as usize;
        if len < NLMSG_HDRLEN || len > bytes.len() {
            break;
        }
        let ty = u16::from_ne_bytes([bytes[4], bytes[5]]);
        let seq = word(8);
        let error =
            (ty == NLMSG_ERROR && len >= NLMSG_HDRLEN + 4).then(|| word(NLMSG_HDRLEN) as i32);
        out.push(Reply { ty, seq, error });
        bytes = &bytes[align4(len).min(bytes.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{Element, Family};
    use super::*;

    #[test]
    fn an_element_message_has_table_set_and_nested_key() {
        let change = Change {
            verb: Verb::Add,
            family: Family::Inet,
            table: "sy".into(),
            set: "nodeport".into(),
            element: Element::key(vec![6, 0, 0, 0, 0, 80, 0, 0], "tcp . 80"),
        };
        let mut buf = Vec::new();
        set_element(&mut buf, 7, &change);
        let expected: Vec<u8> = [
            // nlmsghdr: len 68, type 0x0a0c, flags REQUEST|CREATE, seq 7, pid 0
            &68u32.to_ne_bytes()[..],
            &0x0a0cu16.to_ne_bytes(),
            &0x0401u16.to_ne_bytes(),
            &7u32.to_ne_bytes(),
            &0u32.to_ne_bytes(),
            &[1, 0, 0, 0], // nfgenmsg: inet, v0, res 0
            &7u16.to_ne_bytes(),
            &1u16.to_ne_bytes(),
            b"sy\0\0",
            &13u16.to_ne_bytes(),
            &2u16.to_ne_bytes(),
            b"nodeport\0\0\0\0",
            &24u16.to_ne_bytes(),
            &(3u16 | NLA_F_NESTED).to_ne_bytes(),
            &20u16.to_ne_bytes(),
            &(1u16 | NLA_F_NESTED).to_ne_bytes(),
            &16u16.to_ne_bytes(),
            &(1u16 | NLA_F_NESTED).to_ne_bytes(),
            &12u16.to_ne_bytes(),
            &1u16.to_ne_bytes(),
            &[6, 0, 0, 0, 0, 80, 0, 0],
        ]
        .concat();
        assert_eq!(buf, expected);
        let back = replies(&buf);
        assert_eq!(
            back,
            vec![Reply {
                ty: 0x0a0c,
                seq: 7,
                error: None
            }]
        );
    }
}
