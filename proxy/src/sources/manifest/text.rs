//! Line splitting and trimming by bytes, for the manifest readers' hot
//! loops. std's `char` patterns compare each match (and each `starts_with`)
//! with a call to `memcmp`, and trim by decoding characters: together about
//! a tenth of the file parse's samples at 10,000 Services (`perf`, 13:55 UTC
//! 2026-12-06). The bytes searched for are ASCII, which never occurs inside
//! a multi-byte UTF-8 sequence, so every index found is a char boundary and
//! the results are exactly std's.

/// `text.split_inclusive('\n')`.
pub(super) fn split_inclusive_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest
            .bytes()
            .position(|b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let (line, next) = rest.split_at(end);
        rest = next;
        Some(line)
    })
}

/// `text.lines()`: split at `\n`, a `\r` right before it dropped too.
pub(super) fn lines(text: &str) -> impl Iterator<Item = &str> {
    split_inclusive_lines(text).map(|line| match line.as_bytes() {
        [.., b'\r', b'\n'] => &line[..line.len() - 2],
        [.., b'\n'] => &line[..line.len() - 1],
        _ => line,
    })
}

/// `s.trim_start_matches(' ')`.
pub(super) fn trim_start_spaces(s: &str) -> &str {
    let n = s.bytes().take_while(|&b| b == b' ').count();
    &s[n..]
}

/// `s.trim_end_matches([' ', '\r'])`.
pub(super) fn trim_end_blanks(s: &str) -> &str {
    let n = s
        .bytes()
        .rev()
        .take_while(|&b| b == b' ' || b == b'\r')
        .count();
    &s[..s.len() - n]
}

/// `s.starts_with(b as char)` for an ASCII `b`.
pub(super) fn starts_with_byte(s: &str, b: u8) -> bool {
    s.as_bytes().first() == Some(&b)
}

/// `s.find(pair)` for a two-byte ASCII `pair` (std builds a two-way
/// searcher for each call).
pub(super) fn find_pair(s: &str, pair: &[u8; 2]) -> Option<usize> {
    s.as_bytes().windows(2).position(|w| w == pair)
}

/// `s.starts_with("- ")`, the sequence item's dash.
pub(super) fn starts_with_dash(s: &str) -> bool {
    matches!(s.as_bytes(), [b'-', b' ', ..])
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLES: &[&str] = &[
        "",
        "\n",
        "\n\n",
        "a",
        "a\n",
        "a\r\n",
        "a\r",
        "\r\n\r\n",
        "a\r\rb\r\n",
        "  x: 1 \r\n\ty\n  \n# c\r\nlast  ",
        "é: ü\n  — \r\n😀 \r",
        "a\n\nb\r\n\r\nc\r",
        "k: v # c\n- x\n-\n- \n#\n #\nv: é #ü: \nurl: http://a:1/ # #\n",
    ];

    #[test]
    fn the_same_as_std() {
        for s in SAMPLES {
            let want: Vec<_> = s.split_inclusive('\n').collect();
            assert_eq!(split_inclusive_lines(s).collect::<Vec<_>>(), want, "{s:?}");
            let want: Vec<_> = s.lines().collect();
            assert_eq!(lines(s).collect::<Vec<_>>(), want, "{s:?}");
            for line in s.split('\n') {
                assert_eq!(trim_start_spaces(line), line.trim_start_matches(' '));
                assert_eq!(trim_end_blanks(line), line.trim_end_matches([' ', '\r']));
                for b in [b'#', b' ', b'\t', b'a'] {
                    assert_eq!(starts_with_byte(line, b), line.starts_with(b as char));
                }
                for pair in [b" #", b": "] {
                    let want = line.find(std::str::from_utf8(pair).unwrap_or_default());
                    assert_eq!(find_pair(line, pair), want, "{line:?}");
                }
                assert_eq!(starts_with_dash(line), line.starts_with("- "));
            }
        }
    }
}
