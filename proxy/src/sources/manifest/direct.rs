//! The fast path of a manifest file: each document decoded straight from its
//! text into the typed object, with no intermediate `Value` tree (building
//! and freeing that tree was about a third of the parse at 10,000 Services).
//!
//! It only takes files it can split without doubt: documents split by lines
//! that are exactly `---`, each a block mapping whose `kind:` and
//! `apiVersion:` keys sit at column 0. Anything else (directives, `...`,
//! characters or line breaks only libyaml knows) and every YAML error sends
//! the whole file back to the `Value` path, which reports it as before. A
//! document the block reader refuses (a List, another kind, a flow or
//! multi-line value, a decode error) is read by the `Value` path's reader,
//! that document only: the same objects, problems named as before.

use std::path::Path;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{ManifestProblem, Manifests, accept, add_object, block, text};
use crate::catalog;

/// The objects and problems of `text`, or `None` when the `Value` path must
/// read it.
pub(super) fn parse(text: &str, file: &Path) -> Option<(Manifests, Vec<ManifestProblem>)> {
    let mut out = Manifests::default();
    let mut problems = Vec::new();
    for (index, document) in split(text)?.into_iter().enumerate() {
        let problem =
            |field: &str, message: String| ManifestProblem::error(file, index, field, message);
        let Some(header) = header(document)? else {
            continue;
        };
        // What the block reader does not vouch for (and any other kind)
        // is read as the general path reads it, a `Value`, this document
        // only: the same objects and the same problems.
        let read = match header {
            ("Service", "v1") => block::from_str(document).map(|svc: Service| {
                let issues = catalog::validate_service(&svc);
                accept(svc, issues, &mut out.services, &mut problems, &problem);
            }),
            ("EndpointSlice", "discovery.k8s.io/v1") => {
                block::from_str(document).map(|slice: EndpointSlice| {
                    let issues = catalog::validate_endpoint_slice(&slice);
                    accept(slice, issues, &mut out.slices, &mut problems, &problem);
                })
            }
            ("Node", "v1") => block::from_str(document).map(|node| out.nodes.push(node)),
            _ => None,
        };
        if read.is_none() {
            by_value(document, &mut out, &mut problems, &problem)?;
        }
    }
    Some((out, problems))
}

/// One document through the general path's reader. serde_norway's own
/// typed decode would be quicker but is not the same reader: it takes
/// duplicate keys that the `Value` path refuses. A YAML error gives the
/// file back, so that the general path reports it as it always has.
fn by_value(
    document: &str,
    out: &mut Manifests,
    problems: &mut Vec<ManifestProblem>,
    problem: &dyn Fn(&str, String) -> ManifestProblem,
) -> Option<()> {
    match serde_norway::from_str(document).ok()? {
        serde_norway::Value::Null => {}
        value => add_object(value, out, problems, problem),
    }
    Some(())
}

/// The documents of a YAML stream, numbered as libyaml numbers them: text
/// before the first `---` is a document only if it has content; every
/// `---` starts one. `None` for what this plain split cannot vouch for.
fn split(text: &str) -> Option<Vec<&str>> {
    // libyaml also breaks lines at a lone CR, NEL, LS and PS, skips a
    // byte-order mark and refuses control characters: this split knows LF
    // and CRLF only, and printable text.
    let lone_cr = text
        .split('\r')
        .skip(1)
        .any(|after| !after.starts_with('\n'));
    if lone_cr || !printable(text) {
        return None;
    }
    let mut documents = Vec::new();
    let mut start = 0;
    let mut first = true;
    let mut at = 0;
    for line in super::text::split_inclusive_lines(text) {
        let body = line.trim_end_matches(['\n', '\r']);
        if body.starts_with("...") || body.starts_with('%') {
            return None;
        }
        if body.starts_with("---") {
            if body.trim_end_matches([' ', '\t']) != "---" {
                // `--- value`, `--- !tag`, `--- # comment`, `----`: let libyaml judge.
                return None;
            }
            let before = &text[start..at];
            if !first || has_content(before) {
                documents.push(before);
            }
            first = false;
            start = at + line.len();
        }
        at += line.len();
    }
    let last = &text[start..];
    if !first || has_content(last) {
        documents.push(last);
    }
    Some(documents)
}

/// Only characters YAML allows anywhere (libyaml refuses the file
/// otherwise, comments included), none of its other line breaks (NEL, LS,
/// PS) or a byte-order mark, and no tab (where a tab may stand, and what a
/// line of blanks and tabs is, is for libyaml to say).
fn printable(text: &str) -> bool {
    let ascii = |b: u8| matches!(b, b'\n' | b'\r' | b' '..=b'~');
    if text.is_ascii() {
        return text.bytes().all(ascii);
    }
    text.chars().all(|c| match c {
        '\0'..='\u{7f}' => ascii(c as u8),
        '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' => {
            !matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}')
        }
        c => c >= '\u{10000}',
    })
}

/// Whether a document has more than blank lines and comments. Blank is a
/// space only: YAML's white space is space and tab (tabs are refused
/// before), so a no-break space is content, a plain scalar.
fn has_content(document: &str) -> bool {
    text::lines(document).any(|l| {
        let l = text::trim_start_spaces(l);
        !l.is_empty() && !text::starts_with_byte(l, b'#')
    })
}

/// `(kind, apiVersion)` of a document from its column-0 keys; `Ok(None)`
/// for an empty document, `None` when the keys are not plain and single.
fn header(document: &str) -> Option<Option<(&str, &str)>> {
    if !has_content(document) {
        return Some(None);
    }
    let mut kind = None;
    let mut api_version = None;
    for line in text::lines(document) {
        let (slot, value) = if let Some(v) = line.strip_prefix("kind:") {
            (&mut kind, v)
        } else if let Some(v) = line.strip_prefix("apiVersion:") {
            (&mut api_version, v)
        } else {
            continue;
        };
        if slot.is_some() {
            return None;
        }
        *slot = Some(plain(value)?);
    }
    Some(Some((kind?, api_version.unwrap_or_default())))
}

/// A one-line scalar: plain, or quoted without escapes; `None` otherwise.
fn plain(value: &str) -> Option<&str> {
    let value = match value.find(" #") {
        Some(i) => &value[..i],
        None => value,
    };
    let value = value.trim_matches([' ', '\t', '\r']);
    let unquoted = ['"', '\'']
        .iter()
        .find_map(|q| value.strip_prefix(*q)?.strip_suffix(*q))
        .unwrap_or(value);
    let simple = !unquoted.is_empty()
        && unquoted
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/' || b == b'-');
    simple.then_some(unquoted)
}

#[cfg(test)]
mod tests;
