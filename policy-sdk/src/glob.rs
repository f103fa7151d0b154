//! Shell-style patterns for endpoint names, nodes and zones: `*` matches
//! any run of bytes (including none), `?` exactly one byte, everything else
//! itself. `web-canary-*`, `*-v2-*`, `zone-?`. Kubernetes names are ASCII,
//! so bytes and characters coincide.
//!
//! ```
//! use switchyard_policy::glob::Glob;
//!
//! assert!(Glob::new("web-canary-*").matches("web-canary-7f9c"));
//! assert!(Glob::new("*-v2-*").matches("api-v2-abc"));
//! assert!(Glob::new("zone-?").matches("zone-a"));
//! assert!(!Glob::new("zone-?").matches("zone-ab"));
//! ```

/// A compiled pattern: literal, prefix and suffix patterns (the common
/// cases) skip the general matcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Glob {
    /// `*`: matches everything.
    Any,
    /// No wildcard: the text itself.
    Exact(String),
    /// `prefix*`.
    Prefix(String),
    /// `*suffix`.
    Suffix(String),
    /// Any other pattern, matched with backtracking on `*`.
    General(String),
}

impl Glob {
    /// Compiles a pattern (never fails: every string is a pattern).
    pub fn new(pattern: &str) -> Self {
        let wild = |c: char| c == '*' || c == '?';
        if pattern.chars().all(|c| c == '*') && !pattern.is_empty() {
            return Glob::Any;
        }
        if !pattern.contains(wild) {
            return Glob::Exact(pattern.to_owned());
        }
        if let Some(prefix) = pattern.strip_suffix('*')
            && !prefix.contains(wild)
        {
            return Glob::Prefix(prefix.to_owned());
        }
        if let Some(suffix) = pattern.strip_prefix('*')
            && !suffix.contains(wild)
        {
            return Glob::Suffix(suffix.to_owned());
        }
        Glob::General(pattern.to_owned())
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        match self {
            Glob::Any => true,
            Glob::Exact(s) => text == s,
            Glob::Prefix(p) => text.starts_with(p.as_str()),
            Glob::Suffix(s) => text.ends_with(s.as_str()),
            Glob::General(p) => glob_match(p, text),
        }
    }
}

/// Matches `text` against `pattern` without compiling it. Linear in
/// practice (backtracks only to the last `*`), no allocation.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn matches_shell_style() {
        let cases = [
            ("web-canary-*", "web-canary-7d9f-x2", true),
            ("web-canary-*", "web-canary-", true),
            ("web-canary-*", "web-stable-1", false),
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("*-v2-*", "web-v2-abc", true),
            ("*-v2-*", "web-v1-abc", false),
            ("zone-?", "zone-a", true),
            ("zone-?", "zone-ab", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("*c", "abc", true),
            ("a**", "a", true),
            ("web-0", "web-0", true),
            ("web-0", "web-01", false),
            ("*ab", "aab", true),
            ("a*ab", "aaab", true),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(glob_match(pattern, text), want, "{pattern} ~ {text}");
            assert_eq!(
                Glob::new(pattern).matches(text),
                want,
                "compiled {pattern} ~ {text}"
            );
        }
    }

    #[test]
    fn compiles_common_shapes() {
        assert_eq!(Glob::new("*"), Glob::Any);
        assert_eq!(Glob::new("web-*"), Glob::Prefix("web-".into()));
        assert_eq!(Glob::new("*-a"), Glob::Suffix("-a".into()));
        assert_eq!(Glob::new("web"), Glob::Exact("web".into()));
        assert!(matches!(Glob::new("w?b-*"), Glob::General(_)));
    }
}
