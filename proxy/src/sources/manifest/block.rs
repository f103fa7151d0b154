//! A reader for the plain block YAML that `kubectl get -o yaml` prints, and
//! nothing more: block mappings with simple keys, block sequences (also at
//! their key's indentation), one-line plain, single- or double-quoted
//! scalars, `{}` and `[]`. libyaml's scanner was two thirds of the file
//! source's start at 10,000 Services; this reads the same documents several
//! times faster.
//!
//! It vouches only for what it understands: anything else (anchors, tags,
//! flow collections, block or multi-line scalars, tabs, an ambiguous plain
//! scalar such as `0123`, `yes` or `1e3` asked for as a string) is a
//! refusal, and the caller reads the document with serde_norway instead.
//! So a value it gives is the value serde_norway gives.

use std::borrow::Cow;

use super::text;

mod de;

pub use de::from_str;

/// A document as a tree borrowing the text (quoted scalars with escapes
/// excepted).
#[derive(Debug, PartialEq)]
enum Node<'a> {
    Map(Vec<(&'a str, Node<'a>)>),
    Seq(Vec<Node<'a>>),
    /// Unquoted; `""` for a key with no value (null).
    Plain(&'a str),
    Quoted(Cow<'a, str>),
}

#[derive(Clone, Copy)]
struct Line<'a> {
    indent: usize,
    text: &'a str,
}

/// The document's tree, or `None` for what this reader does not handle.
fn parse(document: &str) -> Option<Node<'_>> {
    // Sized once: growing it line by line was a tenth of the parse.
    let mut lines = Vec::with_capacity(document.bytes().filter(|&b| b == b'\n').count() + 1);
    for raw in text::lines(document) {
        let content = text::trim_start_spaces(raw);
        let indent = raw.len() - content.len();
        let content = text::trim_end_blanks(content);
        if content.as_bytes().contains(&b'\t') {
            return None;
        }
        if content.is_empty() || text::starts_with_byte(content, b'#') {
            continue;
        }
        lines.push(Line {
            indent,
            text: content,
        });
    }
    let mut at = 0;
    let first = *lines.first()?;
    let node = block(&mut lines, &mut at, first.indent, 0)?;
    // Everything read: a line left over is indented in a way we did not
    // follow.
    (at == lines.len()).then_some(node)
}

fn is_item(text: &str) -> bool {
    text == "-" || text::starts_with_dash(text)
}

/// Deeper than any object we read; serde_norway takes the rest (and its
/// own recursion limit keeps the stack safe).
const MAX_DEPTH: usize = 32;

/// A mapping or a sequence whose lines start at `indent`.
fn block<'a>(
    lines: &mut [Line<'a>],
    at: &mut usize,
    indent: usize,
    depth: usize,
) -> Option<Node<'a>> {
    if depth > MAX_DEPTH {
        return None;
    }
    if is_item(lines.get(*at)?.text) {
        sequence(lines, at, indent, depth)
    } else {
        mapping(lines, at, indent, depth)
    }
}

fn mapping<'a>(
    lines: &mut [Line<'a>],
    at: &mut usize,
    indent: usize,
    depth: usize,
) -> Option<Node<'a>> {
    let mut entries: Vec<(&'a str, Node<'a>)> = Vec::new();
    while let Some(line) = lines.get(*at).copied() {
        if line.indent < indent {
            break;
        }
        if line.indent > indent || is_item(line.text) {
            return None;
        }
        let (key, rest) = key_value(line.text)?;
        if entries.iter().any(|(k, _)| *k == key) {
            return None;
        }
        *at += 1;
        let value = if rest.is_empty() {
            match lines.get(*at) {
                Some(next) if next.indent > indent => block(lines, at, next.indent, depth + 1)?,
                // kubectl's sequences sit at their key's indentation.
                Some(next) if next.indent == indent && is_item(next.text) => {
                    block(lines, at, indent, depth + 1)?
                }
                _ => Node::Plain(""),
            }
        } else {
            let value = scalar(rest)?;
            continuation(lines, *at, indent)?;
            value
        };
        entries.push((key, value));
    }
    Some(Node::Map(entries))
}

fn sequence<'a>(
    lines: &mut [Line<'a>],
    at: &mut usize,
    indent: usize,
    depth: usize,
) -> Option<Node<'a>> {
    let mut items = Vec::new();
    while let Some(line) = lines.get(*at).copied() {
        if line.indent != indent || !is_item(line.text) {
            if line.indent > indent {
                return None;
            }
            break;
        }
        let rest = text::trim_start_spaces(&line.text[1..]);
        if rest.is_empty() || text::starts_with_byte(rest, b'#') {
            *at += 1;
            items.push(match lines.get(*at) {
                Some(next) if next.indent > indent => block(lines, at, next.indent, depth + 1)?,
                _ => Node::Plain(""),
            });
        } else if is_item(rest) {
            return None;
        } else if key_value(rest).is_some() {
            // `- key: value`: a mapping whose first line starts after the
            // dash; read it as if that line stood alone at its column.
            let column = indent + (line.text.len() - rest.len());
            lines[*at] = Line {
                indent: column,
                text: rest,
            };
            items.push(block(lines, at, column, depth + 1)?);
        } else {
            *at += 1;
            items.push(scalar(rest)?);
            continuation(lines, *at, indent)?;
        }
    }
    Some(Node::Seq(items))
}

/// A one-line value must not go on: a more indented next line would be a
/// multi-line scalar.
fn continuation(lines: &[Line<'_>], at: usize, indent: usize) -> Option<()> {
    match lines.get(at) {
        Some(next) if next.indent > indent => None,
        _ => Some(()),
    }
}

/// `key: rest` with a simple key; `rest` empty when the value is on the
/// next lines.
fn key_value(line: &str) -> Option<(&str, &str)> {
    let colon = line.bytes().position(|b| b == b':')?;
    let key = &line[..colon];
    let after = &line[colon + 1..];
    if !(after.is_empty() || text::starts_with_byte(after, b' ')) {
        return None;
    }
    let simple = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'/' | b'-' | b'_'));
    if !simple || !de::is_plain_string(key) {
        return None;
    }
    let rest = text::trim_start_spaces(after);
    let rest = if text::starts_with_byte(rest, b'#') {
        ""
    } else {
        rest
    };
    Some((key, rest))
}

/// A one-line scalar (or `{}` / `[]`), its trailing comment dropped.
fn scalar(line: &str) -> Option<Node<'_>> {
    let (node, tail) = if let Some(body) = line.strip_prefix('"') {
        double_quoted(body)?
    } else if let Some(body) = line.strip_prefix('\'') {
        single_quoted(body)?
    } else {
        let value = match text::find_pair(line, b" #") {
            Some(i) => line[..i].trim_end_matches(' '),
            None => line,
        };
        if value == "{}" {
            return Some(Node::Map(Vec::new()));
        }
        if value == "[]" {
            return Some(Node::Seq(Vec::new()));
        }
        let first = value.bytes().next()?;
        let indicator = matches!(
            first,
            b'{' | b'['
                | b']'
                | b'}'
                | b','
                | b'&'
                | b'*'
                | b'!'
                | b'|'
                | b'>'
                | b'%'
                | b'@'
                | b'`'
                | b'?'
                | b'"'
                | b'\''
        );
        let dash = value == "-" || text::starts_with_dash(value);
        let colon = text::find_pair(value, b": ").is_some() || value.ends_with(':');
        if indicator || dash || first == b':' || colon {
            return None;
        }
        return Some(Node::Plain(value));
    };
    let tail = tail.trim_start_matches(' ');
    (tail.is_empty() || tail.starts_with('#')).then_some(node)
}

/// The value and what follows the closing quote.
fn double_quoted(body: &str) -> Option<(Node<'_>, &str)> {
    let end = body.find(['"', '\\'])?;
    if body.as_bytes()[end] == b'"' {
        return Some((Node::Quoted(Cow::Borrowed(&body[..end])), &body[end + 1..]));
    }
    let mut out = String::from(&body[..end]);
    let mut chars = body[end..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((Node::Quoted(Cow::Owned(out)), &body[end + i + 1..])),
            '\\' => {
                let (_, e) = chars.next()?;
                out.push(match e {
                    '"' => '"',
                    '\\' => '\\',
                    '/' => '/',
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    '0' => '\0',
                    _ => return None,
                });
            }
            c => out.push(c),
        }
    }
    None
}

fn single_quoted(body: &str) -> Option<(Node<'_>, &str)> {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let end = rest.find('\'')?;
        if rest[end + 1..].starts_with('\'') {
            out.push_str(&rest[..=end]);
            rest = &rest[end + 2..];
        } else if out.is_empty() {
            return Some((Node::Quoted(Cow::Borrowed(&rest[..end])), &rest[end + 1..]));
        } else {
            out.push_str(&rest[..end]);
            return Some((Node::Quoted(Cow::Owned(out)), &rest[end + 1..]));
        }
    }
}

#[cfg(test)]
mod tests;
