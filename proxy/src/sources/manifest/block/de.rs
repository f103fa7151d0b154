//! serde over the block reader's tree, resolving scalars as serde_norway
//! does for every value it accepts, and refusing the ones where a doubt
//! exists (the caller then asks serde_norway).

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

use super::Node;

/// The typed object, or `None` when this reader does not vouch for the
/// document (including any document the typed decode rejects: serde_norway
/// gives that error its path).
pub fn from_str<T: DeserializeOwned>(document: &str) -> Option<T> {
    let node = super::parse(document)?;
    T::deserialize(&node).ok()
}

/// A refusal; its text is never shown.
#[derive(Debug)]
pub struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not read by the block reader")
    }
}

impl std::error::Error for Refused {}

impl de::Error for Refused {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Refused
    }
}

fn is_null(plain: &str) -> bool {
    matches!(plain, "" | "~" | "null" | "Null" | "NULL")
}

/// A plain scalar that YAML reads as a string and nothing else: not null,
/// not a boolean (1.2 or 1.1 spelling), not anything number-like.
pub fn is_plain_string(plain: &str) -> bool {
    // Most keys and values: a letter that starts no null, boolean or
    // number spelling (`inf` and `nan` start with i and n).
    if let Some(first) = plain.bytes().next()
        && first.is_ascii_alphabetic()
        && !b"tfynoi".contains(&first.to_ascii_lowercase())
    {
        return true;
    }
    let is = |word: &str| plain.eq_ignore_ascii_case(word);
    let starts = |prefix: &str| {
        plain
            .get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
    };
    let special = is_null(plain)
        || [
            "true", "false", "yes", "no", "on", "off", "y", "n", ".inf", ".nan",
        ]
        .into_iter()
        .any(is);
    let numeric = plain.parse::<f64>().is_ok()
        || plain.parse::<i128>().is_ok()
        || matches!(plain.as_bytes().first(), Some(b'+' | b'.'))
        || starts("-.")
        || radix_int(plain)
        || (plain.contains('_')
            && plain
                .bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')));
    !special && !numeric
}

/// Whether serde_norway may read `plain` as a `0x`/`0o`/`0b` integer
/// (`-` before the prefix too): the digits after the prefix are all of
/// the radix (or `_`, or one sign first, which it does not take either:
/// in doubt). A Kubernetes uid such as `0bf1dc7d-35a2-…` is a string: one
/// uid in 256 starts so, and refusing each sent ~400 documents of the
/// 10k-Service bench through the slow reader.
fn radix_int(plain: &str) -> bool {
    let unsigned = plain.strip_prefix('-').unwrap_or(plain);
    let Some(radix) = unsigned.get(..2).and_then(|p| match p {
        "0x" => Some(16),
        "0o" => Some(8),
        "0b" => Some(2),
        _ => None,
    }) else {
        return false;
    };
    let rest = &unsigned[2..];
    let rest = rest.strip_prefix(['+', '-']).unwrap_or(rest);
    rest.is_empty() || rest.chars().all(|c| c == '_' || c.is_digit(radix))
}

/// A decimal integer without sign tricks or leading zeros.
fn integer(plain: &str) -> Option<i128> {
    let digits = plain.strip_prefix('-').unwrap_or(plain);
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if canonical { plain.parse().ok() } else { None }
}

macro_rules! int {
    ($name:ident, $visit:ident, $ty:ty) => {
        fn $name<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
            match self {
                Node::Plain(p) => {
                    let v = integer(p).ok_or(Refused)?;
                    visitor.$visit(<$ty>::try_from(v).map_err(|_| Refused)?)
                }
                _ => Err(Refused),
            }
        }
    };
}

impl<'de, 'a> de::Deserializer<'de> for &'a Node<'a> {
    type Error = Refused;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        match self {
            Node::Map(_) => self.deserialize_map(visitor),
            Node::Seq(_) => self.deserialize_seq(visitor),
            Node::Quoted(q) => visitor.visit_str(q),
            Node::Plain(p) if is_null(p) => visitor.visit_unit(),
            Node::Plain("true") => visitor.visit_bool(true),
            Node::Plain("false") => visitor.visit_bool(false),
            Node::Plain(p) => match integer(p) {
                Some(v) if v >= 0 => visitor.visit_u64(u64::try_from(v).map_err(|_| Refused)?),
                Some(v) => visitor.visit_i64(i64::try_from(v).map_err(|_| Refused)?),
                None if is_plain_string(p) => visitor.visit_str(p),
                None => Err(Refused),
            },
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        match self {
            Node::Plain("true") => visitor.visit_bool(true),
            Node::Plain("false") => visitor.visit_bool(false),
            _ => Err(Refused),
        }
    }

    int!(deserialize_i8, visit_i8, i8);
    int!(deserialize_i16, visit_i16, i16);
    int!(deserialize_i32, visit_i32, i32);
    int!(deserialize_i64, visit_i64, i64);
    int!(deserialize_u8, visit_u8, u8);
    int!(deserialize_u16, visit_u16, u16);
    int!(deserialize_u32, visit_u32, u32);
    int!(deserialize_u64, visit_u64, u64);

    fn deserialize_f32<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Refused> {
        Err(Refused)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Refused> {
        Err(Refused)
    }

    fn deserialize_char<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Refused> {
        Err(Refused)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        match self {
            Node::Quoted(q) => visitor.visit_str(q),
            Node::Plain(p) if is_plain_string(p) => visitor.visit_str(p),
            _ => Err(Refused),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Refused> {
        Err(Refused)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Refused> {
        Err(Refused)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        match self {
            Node::Plain(p) if is_null(p) => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        match self {
            Node::Plain(p) if is_null(p) => visitor.visit_unit(),
            _ => Err(Refused),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Refused> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Refused> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        match self {
            Node::Seq(items) => {
                let mut access = de::value::SeqDeserializer::new(items.iter());
                let value = visitor.visit_seq(&mut access)?;
                access.end()?;
                Ok(value)
            }
            _ => Err(Refused),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, Refused> {
        Err(Refused)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        _: V,
    ) -> Result<V::Value, Refused> {
        Err(Refused)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        match self {
            Node::Map(entries) => visitor.visit_map(Entries {
                entries: entries.iter(),
                value: None,
            }),
            _ => Err(Refused),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Refused> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Refused> {
        Err(Refused)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        visitor.visit_unit()
    }
}

impl<'de, 'a> IntoDeserializer<'de, Refused> for &'a Node<'a> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

struct Entries<'a> {
    entries: std::slice::Iter<'a, (&'a str, Node<'a>)>,
    value: Option<&'a Node<'a>>,
}

impl<'de, 'a> de::MapAccess<'de> for Entries<'a> {
    type Error = Refused;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Refused> {
        match self.entries.next() {
            Some((key, value)) => {
                self.value = Some(value);
                seed.deserialize(de::value::StrDeserializer::<Refused>::new(key))
                    .map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Refused> {
        seed.deserialize(self.value.take().ok_or(Refused)?)
    }
}
