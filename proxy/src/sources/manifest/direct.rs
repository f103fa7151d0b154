//! The fast path of a manifest file: each document decoded straight from its
//! text into the typed object, with no intermediate `Value` tree (building
//! and freeing that tree was about a third of the parse at 10,000 Services).
//!
//! It only takes files it can read without doubt: documents split by lines
//! that are exactly `---`, each a block mapping whose `kind:` and
//! `apiVersion:` keys sit at column 0. Anything else (directives, `...`,
//! flow documents, Lists, unknown versions of our kinds) and every decode
//! error sends the whole file back to the `Value` path, which names the
//! object and field exactly as before: errors cost a second parse, valid
//! files only one.

use std::path::Path;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{ManifestProblem, Manifests, accept, block};
use crate::catalog::{self, Severity};

/// The objects and problems of `text`, or `None` when the `Value` path must
/// read it.
pub(super) fn parse(text: &str, file: &Path) -> Option<(Manifests, Vec<ManifestProblem>)> {
    let mut out = Manifests::default();
    let mut problems = Vec::new();
    for (index, document) in split(text)?.into_iter().enumerate() {
        let problem = |field: &str, message: String| ManifestProblem {
            file: file.to_owned(),
            document: index,
            object: None,
            field: field.to_owned(),
            message,
            severity: Severity::Error,
        };
        let Some(header) = header(document)? else {
            continue;
        };
        match header {
            ("Service", "v1") => {
                let svc: Service = decode(document)?;
                let issues = catalog::validate_service(&svc);
                accept(svc, issues, &mut out.services, &mut problems, &problem);
            }
            ("EndpointSlice", "discovery.k8s.io/v1") => {
                let slice: EndpointSlice = decode(document)?;
                let issues = catalog::validate_endpoint_slice(&slice);
                accept(slice, issues, &mut out.slices, &mut problems, &problem);
            }
            ("Node", "v1") => out.nodes.push(decode(document)?),
            // Lists and unsupported versions of our kinds: the `Value` path.
            ("Service" | "EndpointSlice" | "List", _) => return None,
            (kind, _) => {
                // Checked, not skipped: a YAML error or a `kind:` line that
                // was not the key must reach the `Value` path.
                // As a `Value`, as the general path reads it: a duplicate
                // key is an error there too.
                let read: serde_norway::Value = serde_norway::from_str(document).ok()?;
                if read.get("kind").and_then(|k| k.as_str()) != Some(kind) {
                    return None;
                }
                tracing::debug!(kind, "ignoring object of another kind");
            }
        }
    }
    Some((out, problems))
}

/// The block reader only. serde_norway's typed decode is not a second tier:
/// it takes what the `Value` path refuses (a duplicate key in a map it
/// reads, or anywhere in what it ignores), so the two paths would disagree.
fn decode<T: serde::de::DeserializeOwned>(document: &str) -> Option<T> {
    block::from_str(document)
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
    for line in text.split_inclusive('\n') {
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
    document.lines().any(|l| {
        let l = l.trim_start_matches(' ');
        !l.is_empty() && !l.starts_with('#')
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
    for line in document.lines() {
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
